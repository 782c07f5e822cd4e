//! Support export (BRIEF §9): one signed archive with `zfs send` streams of chosen
//! versions (root and config; data only when asked), the update journal and the status,
//! for vendor forensics; and the vendor side: `inspect` (no ZFS needed) and `import` into
//! a lab pool.
//!
//! Streams flow straight from `zfs send` into the archive, so part sizes are not known in
//! advance: each part is framed in chunks, and a manifest *trailer* (sizes, SHA-256,
//! dataset, snapshot GUID and origin of every part) is signed with the appliance's own
//! minisign key.
//!
//! ```text
//! CAIRN-SUPPORT 1\n
//! part <name>\n  then  chunk <n>\n<n bytes> ... chunk 0\n      (repeated)
//! manifest <len>\n<JSON>
//! signature <len>\n<minisign signature of the manifest>
//! end\n
//! ```

pub mod grant;

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

use cairn_engine::{Engine, EngineError, VersionId};
use cairn_zfs::{
    DatasetName, ObjectName, PropName, ReceiveRequest, SendRequest, SnapshotName, Zfs, ZfsError,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MAGIC: &str = "CAIRN-SUPPORT 1\n";
const CHUNK: usize = 1 << 20;
const MAX_MANIFEST: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("not a cairn support archive")]
    NotAnArchive,
    #[error("the archive is truncated: {0}")]
    Truncated(String),
    #[error(
        "the archive's signature does not verify with the given appliance key: it was altered or is not from that appliance"
    )]
    BadSignature,
    #[error("part '{0}' does not match its digest: the archive was altered or is corrupt")]
    DigestMismatch(String),
    #[error("the archive's manifest is unreadable: {0}")]
    BadManifest(String),
    #[error("no grant for this key, or it expired at {0}")]
    GrantExpired(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signing: {0}")]
    Signing(String),
}

type Result<T, E = SupportError> = std::result::Result<T, E>;

fn io(what: &str) -> impl FnOnce(std::io::Error) -> SupportError + '_ {
    move |source| SupportError::Io {
        what: what.to_owned(),
        source,
    }
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    pub versions: Vec<VersionId>,
    /// Include each version's config (operator data: opt-in).
    pub config: bool,
    /// Include customer data (opt-in).
    pub data: bool,
}

/// One part of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub name: String,
    /// `zfs-full`, `zfs-incremental`, `journal`, `status`.
    pub kind: String,
    pub size: u64,
    pub sha256: String,
    /// For streams: the dataset, the snapshot sent, its GUID, and what it is
    /// incremental from (the factory baseline snapshot) or the dataset's origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
}

/// The signed trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub appliance: String,
    pub pool: String,
    pub cairn_version: String,
    pub created: u64,
    pub versions: Vec<String>,
    pub config: bool,
    pub data: bool,
    pub parts: Vec<PartInfo>,
}

/// Writes chunks; counts and hashes what passes.
struct ChunkWriter<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    size: u64,
    hash: Sha256,
}

impl ChunkWriter<'_> {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            writeln!(self.out, "chunk {}", self.buf.len())?;
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<(u64, String)> {
        self.flush_chunk()?;
        writeln!(self.out, "chunk 0")?;
        Ok((self.size, format!("{:x}", self.hash.finalize())))
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hash.update(data);
        self.size += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn prop(z: &dyn Zfs, o: &ObjectName, p: &str) -> Result<Option<String>> {
    let pn = PropName::new(p).map_err(ZfsError::from)?;
    Ok(z.get(o, std::slice::from_ref(&pn))?
        .remove(&pn)
        .and_then(|v| v.value))
}

/// Exports the chosen versions into `out` and signs the manifest with the appliance's
/// minisign secret key. Streams go straight from `zfs send` into `out`.
pub fn export(
    engine: &Engine,
    req: &ExportRequest,
    appliance: &str,
    secret_key: &str,
    out: &mut dyn Write,
    by: &str,
) -> Result<Manifest> {
    let z = engine.zfs().as_ref();
    let l = engine.layout().clone();
    let now = engine.host().now();
    let known: Vec<VersionId> = engine.versions()?.into_iter().map(|v| v.id).collect();
    for v in &req.versions {
        if !known.contains(v) {
            return Err(EngineError::UnknownVersion { id: v.to_string() }.into());
        }
    }
    // What to send: each chosen dataset, snapshotted now in one call.
    let mut datasets: Vec<DatasetName> = Vec::new();
    for v in &req.versions {
        datasets.push(l.root(v));
        if req.config {
            datasets.push(l.config(v));
        }
    }
    if req.data {
        datasets.extend(l.data_datasets().cloned());
    }
    let tag = format!("cairn-support-{now}");
    let snaps: Vec<SnapshotName> = datasets
        .iter()
        .map(|d| d.snapshot(&tag))
        .collect::<std::result::Result<_, _>>()
        .map_err(ZfsError::from)?;
    if !snaps.is_empty() {
        z.snapshot(&snaps, &[])?;
    }
    let result = (|| -> Result<Manifest> {
        out.write_all(MAGIC.as_bytes())
            .map_err(io("writing the archive"))?;
        let mut parts = Vec::new();
        let factory = engine.factory_snapshots()?;
        // The factory baseline goes first (full, it never changes) when a chosen dataset
        // is a clone of it: the rest is then sent as small increments from it.
        let mut sends: Vec<(SnapshotName, bool)> = Vec::new();
        if let Some(f) = &factory {
            for b in f {
                let needed = snaps.iter().any(|s| {
                    prop(z, &(&s.dataset()).into(), "origin")
                        .ok()
                        .flatten()
                        .as_deref()
                        == Some(b.as_str())
                });
                if needed {
                    sends.push((b.clone(), false));
                }
            }
        }
        sends.extend(snaps.iter().map(|s| (s.clone(), true)));
        let total = sends.len().max(1) as u32;
        for (i, (s, may_be_incremental)) in sends.iter().enumerate() {
            if !engine.progress("support-export", s.as_str(), i as u32 * 100 / total) {
                return Err(EngineError::Cancelled {
                    step: s.to_string(),
                }
                .into());
            }
            let ds = s.dataset();
            let origin = prop(z, &(&ds).into(), "origin")?;
            // Incremental from the factory baseline when the dataset descends from it.
            let from = factory
                .as_ref()
                .filter(|_| *may_be_incremental)
                .and_then(|f| {
                    f.iter()
                        .find(|b| Some(b.as_str()) == origin.as_deref())
                        .cloned()
                });
            let name = s.as_str().replace(['/', '@'], "_");
            writeln!(out, "part {name}").map_err(io("writing the archive"))?;
            let mut w = ChunkWriter {
                out: &mut *out,
                buf: Vec::new(),
                size: 0,
                hash: Sha256::new(),
            };
            let mut sr = SendRequest::full(s.clone());
            sr.raw = true;
            sr.from = from.clone();
            z.send(&sr, &mut w)?;
            let (size, sha256) = w.finish().map_err(io("writing the archive"))?;
            parts.push(PartInfo {
                name,
                kind: if from.is_some() {
                    "zfs-incremental"
                } else {
                    "zfs-full"
                }
                .into(),
                size,
                sha256,
                dataset: Some(ds.to_string()),
                snapshot: Some(s.to_string()),
                guid: prop(z, &s.into(), "guid")?,
                from: from.map(|f| f.to_string()),
                origin,
                created: prop(z, &(&ds).into(), "creation")?.and_then(|c| c.parse().ok()),
            });
        }
        let journal = serde_json::to_vec(&engine.journal_entries()?).expect("journal serializes");
        let status = serde_json::to_vec(&serde_json::json!({
            "versions": engine.versions()?,
            "boot": engine.boot().read()?,
            "booted": engine.host().booted(),
        }))
        .expect("status serializes");
        for (name, bytes) in [("journal", journal), ("status", status)] {
            writeln!(out, "part {name}").map_err(io("writing the archive"))?;
            let mut w = ChunkWriter {
                out: &mut *out,
                buf: Vec::new(),
                size: 0,
                hash: Sha256::new(),
            };
            w.write_all(&bytes).map_err(io("writing the archive"))?;
            let (size, sha256) = w.finish().map_err(io("writing the archive"))?;
            parts.push(PartInfo {
                name: name.into(),
                kind: name.into(),
                size,
                sha256,
                dataset: None,
                snapshot: None,
                guid: None,
                from: None,
                origin: None,
                created: None,
            });
        }
        let manifest = Manifest {
            format: 1,
            appliance: appliance.to_owned(),
            pool: l.pool.to_string(),
            cairn_version: env!("CARGO_PKG_VERSION").to_owned(),
            created: now,
            versions: req.versions.iter().map(|v| v.to_string()).collect(),
            config: req.config,
            data: req.data,
            parts,
        };
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let sig = cairn_sign::sign(&text, secret_key, None).map_err(SupportError::Signing)?;
        writeln!(out, "manifest {}", text.len()).map_err(io("writing the archive"))?;
        out.write_all(&text).map_err(io("writing the archive"))?;
        writeln!(out, "signature {}", sig.len()).map_err(io("writing the archive"))?;
        out.write_all(sig.as_bytes())
            .map_err(io("writing the archive"))?;
        out.write_all(b"end\n").map_err(io("writing the archive"))?;
        out.flush().map_err(io("writing the archive"))?;
        Ok(manifest)
    })();
    // The export's snapshots are not kept.
    for s in &snaps {
        let _ = z.destroy(&s.into(), cairn_zfs::DestroyOptions::default());
    }
    let m = result?;
    let what = format!("{} parts: {}", m.parts.len(), m.versions.join(","));
    engine.record_event("support-export", by, &what, "ok")?;
    Ok(m)
}

fn read_line<R: BufRead>(r: &mut R) -> Result<String> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(512)
        .read_until(b'\n', &mut line)
        .map_err(io("reading the archive"))?;
    if n == 0 || line.last() != Some(&b'\n') {
        return Err(SupportError::Truncated("a section line is missing".into()));
    }
    line.pop();
    String::from_utf8(line).map_err(|_| SupportError::NotAnArchive)
}

/// Walks an archive: calls `sink(name)` for a writer per part, feeds it the part's
/// bytes, then checks the signed manifest against every part. Returns the manifest.
pub fn read_archive<R: BufRead>(
    mut r: R,
    key: &minisign_verify::PublicKey,
    sink: &mut dyn FnMut(&str, &mut dyn Read) -> Result<()>,
) -> Result<Manifest> {
    let mut magic = vec![0u8; MAGIC.len()];
    if r.read_exact(&mut magic).is_err() || magic != MAGIC.as_bytes() {
        return Err(SupportError::NotAnArchive);
    }
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    loop {
        let line = read_line(&mut r)?;
        if let Some(name) = line.strip_prefix("part ") {
            let mut reader = ChunkReader {
                input: &mut r,
                left: 0,
                done: false,
                size: 0,
                hash: Sha256::new(),
            };
            sink(name, &mut reader)?;
            // Drain what the sink did not read, so the digest covers the whole part.
            std::io::copy(&mut reader, &mut std::io::sink()).map_err(io("reading a part"))?;
            let (size, digest) = (reader.size, format!("{:x}", reader.hash.clone().finalize()));
            seen.insert(name.to_owned(), (size, digest));
        } else if let Some(len) = line.strip_prefix("manifest ") {
            let len: usize = len.parse().map_err(|_| SupportError::NotAnArchive)?;
            if len > MAX_MANIFEST {
                return Err(SupportError::BadManifest("too large".into()));
            }
            let mut text = vec![0u8; len];
            r.read_exact(&mut text)
                .map_err(|_| SupportError::Truncated("the manifest ends early".into()))?;
            let sline = read_line(&mut r)?;
            let slen: usize = sline
                .strip_prefix("signature ")
                .and_then(|n| n.parse().ok())
                .ok_or(SupportError::BadSignature)?;
            let mut sig = vec![0u8; slen.min(4096)];
            r.read_exact(&mut sig)
                .map_err(|_| SupportError::Truncated("the signature ends early".into()))?;
            let sig = minisign_verify::Signature::decode(&String::from_utf8_lossy(&sig))
                .map_err(|_| SupportError::BadSignature)?;
            key.verify(&text, &sig, false)
                .map_err(|_| SupportError::BadSignature)?;
            if read_line(&mut r)? != "end" {
                return Err(SupportError::Truncated("no end marker".into()));
            }
            let m: Manifest = serde_json::from_slice(&text)
                .map_err(|e| SupportError::BadManifest(e.to_string()))?;
            for p in &m.parts {
                match seen.get(&p.name) {
                    Some((size, digest)) if *size == p.size && digest == &p.sha256 => {}
                    _ => return Err(SupportError::DigestMismatch(p.name.clone())),
                }
            }
            if seen.len() != m.parts.len() {
                return Err(SupportError::BadManifest(
                    "parts in the archive that the manifest does not list".into(),
                ));
            }
            return Ok(m);
        } else {
            return Err(SupportError::NotAnArchive);
        }
    }
}

struct ChunkReader<'a, R: BufRead> {
    input: &'a mut R,
    left: usize,
    done: bool,
    size: u64,
    hash: Sha256,
}

impl<R: BufRead> Read for ChunkReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let line = read_line(self.input).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e.to_string())
            })?;
            let n: usize = line
                .strip_prefix("chunk ")
                .and_then(|n| n.parse().ok())
                .filter(|n| *n <= CHUNK)
                .ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk header")
                })?;
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = n;
        }
        let cap = buf.len().min(self.left);
        let n = self.input.read(&mut buf[..cap])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "part ends early",
            ));
        }
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        self.left -= n;
        Ok(n)
    }
}

/// Verifies an archive without ZFS: signature and every part's digest.
pub fn inspect<R: BufRead>(r: R, key: &minisign_verify::PublicKey) -> Result<Manifest> {
    read_archive(r, key, &mut |_, _| Ok(()))
}

/// Receives a verified archive's streams into `lab` (a dataset in the lab pool),
/// preserving the origin chain: the factory baseline parts first, then clones of them.
/// `archive` is read twice: verified completely first, then received.
pub fn import(
    zfs: &dyn Zfs,
    lab: &DatasetName,
    path: &std::path::Path,
    key: &minisign_verify::PublicKey,
) -> Result<Vec<SnapshotName>> {
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(io("opening the archive"))
    };
    let manifest = inspect(open()?, key)?;
    let by_name: BTreeMap<String, PartInfo> = manifest
        .parts
        .iter()
        .map(|p| (p.name.clone(), p.clone()))
        .collect();
    let mut received: BTreeMap<String, SnapshotName> = BTreeMap::new();
    let mut out = Vec::new();
    read_archive(open()?, key, &mut |name, data| {
        let Some(p) = by_name.get(name) else {
            return Ok(());
        };
        let Some(ds) = &p.dataset else { return Ok(()) };
        // One lab dataset per part: the source's name, flattened.
        let leaf = ds.replace('/', "_");
        let target = lab.child(&leaf).map_err(ZfsError::from)?;
        let mut rr = ReceiveRequest::new(target);
        rr.no_mount = true;
        if let Some(from) = &p.from {
            // An incremental from the factory baseline: received as a clone of it.
            let base = received.get(from).cloned().ok_or_else(|| {
                SupportError::BadManifest(format!(
                    "{name} needs {from}, which the archive does not carry"
                ))
            })?;
            rr.origin = Some(base);
        }
        let snap = zfs.receive(&rr, data)?;
        // For inspection only: read-only, mounted under the lab dataset.
        let ds = snap.dataset();
        zfs.set(
            &(&ds).into(),
            &[
                (PropName::native("readonly"), "on".into()),
                (PropName::native("canmount"), "on".into()),
            ],
        )?;
        if let Err(e) = zfs.mount(&(&ds).into(), &cairn_zfs::MountOptions::default()) {
            tracing::warn!(dataset = %ds, error = %e, "received but not mounted");
        }
        if let Some(s) = &p.snapshot {
            received.insert(s.clone(), snap.clone());
        }
        out.push(snap);
        Ok(())
    })?;
    Ok(out)
}
