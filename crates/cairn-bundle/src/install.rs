//! Installing a bundle: verified, then staged through the engine. When the bundle is a
//! regular file it is read twice: a first pass checks the signature, the compatibility
//! and every payload digest before anything is touched; the second pass stages. A bundle
//! from a pipe is checked as it streams, and the engine undoes the staging if a digest
//! turns out wrong.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use cairn_engine::{Engine, EngineError, Payload, StageRequest, VersionId};
use sha2::{Digest, Sha256};

use crate::{Acceptance, BundleError, BundleReader, PayloadKind, tarsafe};

/// What the appliance accepts bundles from and for.
#[derive(Debug, Clone)]
pub struct Appliance {
    pub keys: Vec<minisign_verify::PublicKey>,
    pub product: String,
    pub hardware: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Reads the current payload of a shared bundle reader.
struct Shared<'a, R: BufRead>(&'a Mutex<BundleReader<R>>);

impl<R: BufRead> Read for Shared<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_payload(buf)
    }
}

fn io_err(e: BundleError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Verifies and stages the bundle in `file`; returns the new version's id.
pub fn install(
    engine: &Engine,
    file: std::fs::File,
    app: &Appliance,
    force: bool,
    by: &str,
) -> Result<VersionId, InstallError> {
    with_bundle(
        engine,
        file,
        app,
        force,
        &mut |m, payload, defaults, digest| {
            engine.stage(
                StageRequest {
                    version: m.version.clone(),
                    payload,
                    size_hint: m.payloads.iter().map(|p| p.size).sum(),
                    migrations: m.migrations.clone(),
                    migration_timeout: Duration::from_secs(300),
                    bundle: Some(digest),
                    allow_downgrade: force,
                    defaults,
                },
                by,
            )
        },
    )
}

/// Provisioning: writes the factory baseline from a bundle (its root, and its config
/// payload as the factory configuration) and creates the first version as a clone of it.
pub fn provision(
    engine: &Engine,
    file: std::fs::File,
    app: &Appliance,
    by: &str,
) -> Result<VersionId, InstallError> {
    with_bundle(engine, file, app, true, &mut |m, payload, defaults, _| {
        engine.provision_factory(&m.version, payload, defaults, by)
    })
}

type Stager<'s> = dyn for<'x> FnMut(
        &crate::Manifest,
        Payload<'x>,
        Option<&'x mut cairn_engine::TreeWriter<'x>>,
        String,
    ) -> Result<VersionId, EngineError>
    + 's;

/// Verifies the bundle, then hands its root as a payload (and its config payload as a
/// tree writer) to `stage`.
fn with_bundle(
    engine: &Engine,
    mut file: std::fs::File,
    app: &Appliance,
    force: bool,
    stage: &mut Stager<'_>,
) -> Result<VersionId, InstallError> {
    let running = engine
        .versions()?
        .into_iter()
        .find(|v| v.is_booted)
        .map(|v| v.version);
    let acc = Acceptance {
        keys: app.keys.clone(),
        product: app.product.clone(),
        hardware: app.hardware.clone(),
        running,
        allow_downgrade: force,
        max_payload: u64::MAX,
    };
    if file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        let mut first = BundleReader::open(BufReader::new(&mut file))?;
        first.verify(&acc)?;
        first.check_payloads()?;
        drop(first);
        file.seek(SeekFrom::Start(0))
            .map_err(|source| BundleError::Io {
                what: "rewinding the bundle".into(),
                source,
            })?;
    }
    let mut r = BundleReader::open(BufReader::new(file))?;
    r.verify(&acc)?;
    let manifest = r.manifest.clone();
    let digest = format!("sha256:{:x}", Sha256::digest(&r.manifest_bytes));
    let root = r
        .begin_payload()?
        .filter(|p| p.name == "root")
        .ok_or_else(|| {
            BundleError::BadManifest("the first payload must be the root ('root')".into())
        })?;
    let allow = manifest.allow_devices;
    let shared = Mutex::new(r);
    let mut stream = Shared(&shared);
    let mut tree = |dir: &Path| -> std::io::Result<()> {
        tarsafe::extract_tar_zst(Shared(&shared), dir, allow)
            .map(drop)
            .map_err(io_err)
    };
    let mut defaults = |dir: &Path| -> std::io::Result<()> {
        let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
        match g.begin_payload().map_err(io_err)? {
            Some(p) if p.kind == PayloadKind::ConfigTarZst => {
                let mut rd = crate::PayloadReader::new(&mut g);
                tarsafe::extract_tar_zst(&mut rd, dir, false)
                    .map(drop)
                    .map_err(io_err)
            }
            _ => Ok(()),
        }
    };
    let has_defaults = manifest
        .payloads
        .iter()
        .any(|p| p.kind == PayloadKind::ConfigTarZst);
    let payload = match root.kind {
        PayloadKind::ZfsFull => Payload::FullStream(&mut stream),
        PayloadKind::ZfsIncremental => {
            let base = root.base.as_deref().unwrap_or_default();
            Payload::IncrementalStream {
                base: VersionId::from_version(base)?,
                stream: &mut stream,
            }
        }
        PayloadKind::RootfsTarZst => Payload::Tree(&mut tree),
        PayloadKind::ConfigTarZst => {
            return Err(BundleError::BadManifest(
                "the root payload cannot be a config archive".into(),
            )
            .into());
        }
    };
    let id = stage(
        &manifest,
        payload,
        if has_defaults {
            Some(&mut defaults)
        } else {
            None
        },
        digest,
    )?;
    Ok(id)
}
