//! Update bundles (BRIEF §3): one file, read as a stream without seeking.
//!
//! ```text
//! CAIRN-BUNDLE 1\n
//! manifest <len>\n<YAML manifest, len bytes>
//! signature <len>\n<minisign signature of the manifest bytes, len bytes>   (optional)
//! payload <name> <len>\n<bytes>          (one per manifest payload, in manifest order)
//! end\n
//! ```
//!
//! The signature is a plain minisign signature over the manifest bytes, so bundles signed
//! with the `minisign` tool verify here and ours verify with `minisign -V`. The manifest
//! carries each payload's size and SHA-256; payload bytes are checked as they stream.
//! Format description: `docs/bundle-format.md`.

pub mod install;
pub mod swu;
pub mod tarsafe;

use std::io::{BufRead, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MAGIC: &str = "CAIRN-BUNDLE 1\n";
/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 64 * 1024;
/// Largest signature block accepted.
const MAX_SIGNATURE: usize = 4096;

/// Why a bundle was refused. Each is a distinct, named refusal.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a cairn bundle (bad header)")]
    NotABundle,
    #[error("the bundle is truncated: {0}")]
    Truncated(String),
    #[error("the manifest is {0} bytes; at most {MAX_MANIFEST} are accepted")]
    ManifestTooLarge(usize),
    #[error("the manifest is not valid YAML for a cairn bundle: {0}")]
    BadManifest(String),
    #[error("the manifest names a key twice: {0}")]
    DuplicateKey(String),
    #[error("the bundle is not signed; cairn installs only signed bundles")]
    Unsigned,
    #[error("the bundle is signed by key {0}, which is not among the vendor keys configured here")]
    UnknownKey(String),
    #[error("the signature does not match the manifest: the bundle was altered or is corrupt")]
    BadSignature,
    #[error("the bundle is for product '{found}', this appliance is '{expected}'")]
    WrongProduct { expected: String, found: String },
    #[error("the bundle supports hardware {supported:?}, this appliance is '{hardware}'")]
    WrongHardware {
        hardware: String,
        supported: Vec<String>,
    },
    #[error("'{new}' is older than the running '{running}'; installing it needs --force")]
    Downgrade { new: String, running: String },
    #[error("'{new}' upgrades only from '{min}' or later; this appliance runs '{running}'")]
    TooOld {
        new: String,
        min: String,
        running: String,
    },
    #[error("payload '{name}' is {size} bytes; the limit is {limit}")]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("payload '{name}' does not match its digest: the bundle is corrupt")]
    DigestMismatch { name: String },
    #[error("payload '{name}' is not where the manifest says (found '{found}')")]
    PayloadOrder { name: String, found: String },
    #[error("archive entry '{0}' has an absolute path")]
    AbsolutePath(String),
    #[error("archive entry '{0}' climbs out of the target with '..'")]
    PathTraversal(String),
    #[error("archive entry '{path}' links outside the target ('{target}')")]
    LinkOutside { path: String, target: String },
    #[error("archive entry '{0}' is a device node, which the manifest does not allow")]
    DeviceNode(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signing failed: {0}")]
    Signing(String),
}

type Result<T, E = BundleError> = std::result::Result<T, E>;

/// What a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadKind {
    /// The root file system as a zstd-compressed tar.
    RootfsTarZst,
    /// A full `zfs send` stream of the root.
    ZfsFull,
    /// An incremental `zfs send` stream from the release named in `base`.
    ZfsIncremental,
    /// The version's default configuration as a zstd-compressed tar.
    ConfigTarZst,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadEntry {
    pub name: String,
    pub kind: PayloadKind,
    pub size: u64,
    pub sha256: String,
    /// For `zfs-incremental`: the release it is a delta from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecks {
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub wanted: Vec<String>,
}

/// The manifest, versioned by `format`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub product: String,
    pub version: String,
    pub hardware: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_from: Option<String>,
    pub payloads: Vec<PayloadEntry>,
    #[serde(default)]
    pub migrations: Vec<String>,
    #[serde(default)]
    pub health_checks: HealthChecks,
    /// Whether device nodes in tar payloads are accepted.
    #[serde(default)]
    pub allow_devices: bool,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_MANIFEST {
            return Err(BundleError::ManifestTooLarge(bytes.len()));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| BundleError::BadManifest("not UTF-8".into()))?;
        let m: Manifest = serde_saphyr::from_str(text).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("duplicate mapping key") {
                BundleError::DuplicateKey(msg.lines().last().unwrap_or_default().to_owned())
            } else {
                BundleError::BadManifest(msg.lines().next().unwrap_or_default().to_owned())
            }
        })?;
        if m.format != 1 {
            return Err(BundleError::BadManifest(format!(
                "format {} is not supported (this cairn reads 1)",
                m.format
            )));
        }
        if m.payloads
            .iter()
            .any(|p| p.kind == PayloadKind::ZfsIncremental && p.base.is_none())
        {
            return Err(BundleError::BadManifest(
                "an incremental payload needs a base".into(),
            ));
        }
        Ok(m)
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("manifests serialize")
    }
}

/// What this appliance accepts.
#[derive(Debug, Clone)]
pub struct Acceptance {
    /// Vendor public keys (minisign, base64 or the full `.pub` text).
    pub keys: Vec<minisign_verify::PublicKey>,
    pub product: String,
    pub hardware: String,
    /// The running version, for ordering checks.
    pub running: Option<String>,
    pub allow_downgrade: bool,
    pub max_payload: u64,
}

/// Parses a minisign public key (the `.pub` file's text or its base64 line).
/// A vendor public key, as [`public_key`] reads it.
pub type PublicKey = minisign_verify::PublicKey;

pub fn public_key(text: &str) -> Result<minisign_verify::PublicKey> {
    cairn_sign::public_key(text).map_err(BundleError::Signing)
}

fn key_id(sig: &minisign_verify::Signature) -> String {
    // The untrusted comment of minisign signatures names the key; show it if present.
    sig.untrusted_comment().to_owned()
}

/// Compares version strings as people read them (`1.10 > 1.9`; `2.0-rc1 < 2.0`).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    cairn_engine::compare_versions(a, b)
}

/// Reads a bundle as a stream: header, manifest and signature first (checked before
/// anything else happens), then the payloads one by one, each checked against its digest.
pub struct BundleReader<R: BufRead> {
    input: R,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signature: Option<String>,
    /// A section line read ahead while looking for the signature.
    pending: Option<String>,
    next: usize,
    current: Option<Current>,
}

/// The payload being read: bytes left and the running digest.
struct Current {
    left: u64,
    hasher: Sha256,
    want: String,
    name: String,
}

impl<R: BufRead> std::fmt::Debug for BundleReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

fn read_line<R: BufRead>(r: &mut R, what: &str) -> Result<String> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(256)
        .read_until(b'\n', &mut line)
        .map_err(|source| BundleError::Io {
            what: what.into(),
            source,
        })?;
    if n == 0 || line.last() != Some(&b'\n') {
        return Err(BundleError::Truncated(format!("expected the {what} line")));
    }
    line.pop();
    String::from_utf8(line).map_err(|_| BundleError::NotABundle)
}

fn read_exact<R: Read>(r: &mut R, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::Truncated(format!("{what} ends early")),
        _ => BundleError::Io {
            what: what.into(),
            source: e,
        },
    })?;
    Ok(buf)
}

fn section<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.strip_prefix(name)?.strip_prefix(' ')
}

impl<R: BufRead> BundleReader<R> {
    /// Reads the header, the manifest and the signature; nothing is verified yet.
    pub fn open(mut input: R) -> Result<Self> {
        let mut magic = vec![0u8; MAGIC.len()];
        if input.read_exact(&mut magic).is_err() || magic != MAGIC.as_bytes() {
            return Err(BundleError::NotABundle);
        }
        let line = read_line(&mut input, "manifest")?;
        let len: usize = section(&line, "manifest")
            .and_then(|n| n.parse().ok())
            .ok_or(BundleError::NotABundle)?;
        if len > MAX_MANIFEST {
            return Err(BundleError::ManifestTooLarge(len));
        }
        let manifest_bytes = read_exact(&mut input, len, "the manifest")?;
        let manifest = Manifest::parse(&manifest_bytes)?;
        let line = read_line(&mut input, "signature or payload")?;
        let (signature, pending) = match section(&line, "signature").map(|n| n.parse::<usize>()) {
            Some(Ok(n)) if n <= MAX_SIGNATURE => {
                let s = read_exact(&mut input, n, "the signature")?;
                (
                    Some(String::from_utf8(s).map_err(|_| BundleError::BadSignature)?),
                    None,
                )
            }
            Some(_) => return Err(BundleError::BadSignature),
            None => (None, Some(line)),
        };
        Ok(Self {
            input,
            manifest,
            manifest_bytes,
            signature,
            pending,
            next: 0,
            current: None,
        })
    }

    /// Everything that can be checked before a payload is read: signature against the
    /// configured keys, product, hardware, version order, sizes.
    pub fn verify(&self, acc: &Acceptance) -> Result<()> {
        let sig_text = self.signature.as_deref().ok_or(BundleError::Unsigned)?;
        let sig =
            minisign_verify::Signature::decode(sig_text).map_err(|_| BundleError::BadSignature)?;
        let mut key_known = false;
        for k in &acc.keys {
            match k.verify(&self.manifest_bytes, &sig, false) {
                Ok(()) => {
                    key_known = true;
                    break;
                }
                Err(minisign_verify::Error::UnexpectedKeyId) => continue,
                Err(_) => return Err(BundleError::BadSignature),
            }
        }
        if !key_known {
            return Err(BundleError::UnknownKey(key_id(&sig)));
        }
        let m = &self.manifest;
        if m.product != acc.product {
            return Err(BundleError::WrongProduct {
                expected: acc.product.clone(),
                found: m.product.clone(),
            });
        }
        if !m.hardware.iter().any(|h| h == &acc.hardware) {
            return Err(BundleError::WrongHardware {
                hardware: acc.hardware.clone(),
                supported: m.hardware.clone(),
            });
        }
        if let Some(running) = &acc.running {
            if !acc.allow_downgrade && compare_versions(&m.version, running).is_lt() {
                return Err(BundleError::Downgrade {
                    new: m.version.clone(),
                    running: running.clone(),
                });
            }
            if let Some(min) = &m.min_from
                && compare_versions(running, min).is_lt()
            {
                return Err(BundleError::TooOld {
                    new: m.version.clone(),
                    min: min.clone(),
                    running: running.clone(),
                });
            }
        }
        for p in &m.payloads {
            if p.size > acc.max_payload {
                return Err(BundleError::TooLarge {
                    name: p.name.clone(),
                    size: p.size,
                    limit: acc.max_payload,
                });
            }
        }
        Ok(())
    }

    /// The next payload, as a reader that yields exactly its bytes and fails at the end
    /// if they do not match the manifest's digest. `None` after the last one.
    pub fn next_payload(&mut self) -> Result<Option<(PayloadEntry, PayloadReader<'_, R>)>> {
        Ok(self
            .begin_payload()?
            .map(|e| (e, PayloadReader { bundle: self })))
    }

    /// Moves to the next payload; its bytes are then read with [`Self::read_payload`].
    pub fn begin_payload(&mut self) -> Result<Option<PayloadEntry>> {
        let Some(entry) = self.manifest.payloads.get(self.next).cloned() else {
            let line = match self.pending.take() {
                Some(l) => l,
                None => read_line(&mut self.input, "end")?,
            };
            return if line == "end" {
                Ok(None)
            } else {
                Err(BundleError::NotABundle)
            };
        };
        self.next += 1;
        let line = match self.pending.take() {
            Some(l) => l,
            None => read_line(&mut self.input, "payload")?,
        };
        let rest = section(&line, "payload")
            .ok_or_else(|| BundleError::Truncated("expected a payload".into()))?;
        let (name, len) = rest.rsplit_once(' ').ok_or(BundleError::NotABundle)?;
        if name != entry.name {
            return Err(BundleError::PayloadOrder {
                name: entry.name.clone(),
                found: name.to_owned(),
            });
        }
        let len: u64 = len.parse().map_err(|_| BundleError::NotABundle)?;
        if len != entry.size {
            return Err(BundleError::DigestMismatch {
                name: entry.name.clone(),
            });
        }
        self.current = Some(Current {
            left: len,
            hasher: Sha256::new(),
            want: entry.sha256.clone(),
            name: entry.name.clone(),
        });
        Ok(Some(entry))
    }

    /// Reads the current payload's bytes. At its end the digest is checked: a mismatch
    /// is an `InvalidData` error, so whatever consumes the stream fails before it finishes.
    pub fn read_payload(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(c) = self.current.as_mut() else {
            return Ok(0);
        };
        let check = |c: &Current| {
            if format!("{:x}", c.hasher.clone().finalize()) == c.want {
                Ok(())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("payload '{}' digest mismatch", c.name),
                ))
            }
        };
        if c.left == 0 {
            check(c)?;
            return Ok(0);
        }
        let cap = buf.len().min(c.left as usize);
        let n = self.input.read(&mut buf[..cap])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "payload ends early",
            ));
        }
        c.hasher.update(&buf[..n]);
        c.left -= n as u64;
        if c.left == 0 {
            check(c)?;
        }
        Ok(n)
    }

    /// Reads every payload to its end, checking digests (`cairn bundle verify`).
    pub fn check_payloads(&mut self) -> Result<Vec<(String, u64)>> {
        let mut seen = Vec::new();
        while let Some((entry, mut r)) = self.next_payload()? {
            let n = std::io::copy(&mut r, &mut std::io::sink())
                .map_err(|e| unwrap_payload_error(e, &entry.name))?;
            seen.push((entry.name, n));
        }
        Ok(seen)
    }
}

/// Turns an I/O error from a [`PayloadReader`] back into the bundle error it carries.
pub fn unwrap_payload_error(e: std::io::Error, name: &str) -> BundleError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        BundleError::DigestMismatch {
            name: name.to_owned(),
        }
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
        BundleError::Truncated(format!("payload '{name}' ends early"))
    } else {
        BundleError::Io {
            what: format!("reading payload '{name}'"),
            source: e,
        }
    }
}

/// One payload's bytes, read through its bundle (see [`BundleReader::read_payload`]).
pub struct PayloadReader<'a, R: BufRead> {
    bundle: &'a mut BundleReader<R>,
}

impl<'a, R: BufRead> PayloadReader<'a, R> {
    /// Reads the payload `bundle` is on (after [`BundleReader::begin_payload`]).
    pub fn new(bundle: &'a mut BundleReader<R>) -> Self {
        Self { bundle }
    }
}

impl<R: BufRead> std::fmt::Debug for PayloadReader<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadReader").finish_non_exhaustive()
    }
}

impl<R: BufRead> Read for PayloadReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.bundle.read_payload(buf)
    }
}

/// SHA-256 and size of a file.
pub fn digest_file(path: &std::path::Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|source| BundleError::Io {
        what: format!("opening {}", path.display()),
        source,
    })?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(|source| BundleError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    Ok((format!("{:x}", h.finalize()), n))
}

/// Signs manifest bytes with a minisign secret key (`minisign -G` format; `password`
/// for encrypted keys); returns the signature file's text.
pub fn sign(manifest: &[u8], secret_key: &str, password: Option<String>) -> Result<String> {
    cairn_sign::sign(manifest, secret_key, password).map_err(BundleError::Signing)
}

/// Writes a bundle: header, manifest, signature (if any), then each payload file.
pub fn write_bundle(
    out: &mut dyn Write,
    manifest_bytes: &[u8],
    signature: Option<&str>,
    payloads: &[(String, std::path::PathBuf)],
) -> Result<()> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| BundleError::Io { what, source }
    };
    out.write_all(MAGIC.as_bytes())
        .map_err(io("writing the bundle"))?;
    writeln!(out, "manifest {}", manifest_bytes.len()).map_err(io("writing the bundle"))?;
    out.write_all(manifest_bytes)
        .map_err(io("writing the bundle"))?;
    if let Some(sig) = signature {
        writeln!(out, "signature {}", sig.len()).map_err(io("writing the bundle"))?;
        out.write_all(sig.as_bytes())
            .map_err(io("writing the bundle"))?;
    }
    for (name, path) in payloads {
        let len = std::fs::metadata(path)
            .map_err(io("reading a payload"))?
            .len();
        writeln!(out, "payload {name} {len}").map_err(io("writing the bundle"))?;
        let mut f = std::fs::File::open(path).map_err(io("reading a payload"))?;
        std::io::copy(&mut f, out).map_err(io("writing the bundle"))?;
    }
    out.write_all(b"end\n").map_err(io("writing the bundle"))?;
    out.flush().map_err(io("writing the bundle"))
}
