//! cairn's typed layer over OpenZFS: validated names, the [`Zfs`] trait, its real
//! implementation over the `zfs`/`zpool` commands ([`cli::ZfsCli`]), an in-memory model
//! ([`model::ZfsModel`]) and the conformance suite both must pass.
//!
//! This crate is the only code in cairn that runs `zfs` or `zpool`.

pub mod cli;
pub mod cmd;
pub mod conformance;
mod error;
pub mod model;
pub mod name;
pub mod parse;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use error::{ErrorKind, Result, ZfsError};
pub use name::{DatasetName, NameError, ObjectName, PoolName, PropName, SnapshotName};

/// The kinds of object `zfs list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetType {
    Filesystem,
    Volume,
    Snapshot,
    Bookmark,
}

impl DatasetType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filesystem => "filesystem",
            Self::Volume => "volume",
            Self::Snapshot => "snapshot",
            Self::Bookmark => "bookmark",
        }
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Roots to list; empty means every pool.
    pub roots: Vec<DatasetName>,
    /// Include descendants (`-r`), optionally limited (`-d`).
    pub recursive: bool,
    pub depth: Option<u32>,
    /// Types to include; empty means filesystems and volumes.
    pub types: Vec<DatasetType>,
    /// Properties to fetch for each entry, besides name and type.
    pub props: Vec<PropName>,
}

/// One line of `zfs list`: the object, its type, and the properties asked for
/// (`None` where ZFS printed `-`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListEntry {
    pub name: ObjectName,
    pub kind: DatasetType,
    pub props: BTreeMap<PropName, Option<String>>,
}

impl ListEntry {
    /// The value of a property that was asked for, if set.
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// A numeric property (as `-p` prints it).
    pub fn num(&self, name: &str) -> Option<u64> {
        self.prop(name).and_then(|v| v.parse().ok())
    }
}

/// Where a property value comes from, as `zfs get` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "from")]
pub enum PropSource {
    Local,
    Default,
    Inherited(DatasetName),
    Received,
    Temporary,
    /// Read-only, computed properties (and unset user properties).
    None,
}

/// A property value with its source; `value` is `None` for an unset user property.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PropValue {
    pub value: Option<String>,
    pub source: PropSource,
}

/// Options for `zfs create`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Create missing parents (`-p`).
    pub parents: bool,
    /// Properties set at creation (`-o`).
    pub props: Vec<(PropName, String)>,
}

/// What `zfs destroy` did or, in a dry run, would do.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct DestroyReport {
    /// Objects destroyed (or that would be), as ZFS lists them.
    pub destroyed: Vec<String>,
    /// Bytes ZFS reclaims (its own estimate).
    pub reclaim: u64,
}

/// Options for `zfs destroy`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DestroyOptions {
    /// Destroy children and snapshots too (`-r`); never dependent clones elsewhere.
    pub recursive: bool,
    /// Only report (`-n -v -p`).
    pub dry_run: bool,
}

/// A user hold on a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hold {
    pub tag: String,
    /// Seconds since the epoch.
    pub created: u64,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub snapshot: SnapshotName,
    /// Incremental from this earlier snapshot (`-i`).
    pub from: Option<SnapshotName>,
    /// Raw stream (`-w`): encrypted data stays encrypted.
    pub raw: bool,
    /// Include the dataset's properties (`-p`).
    pub properties: bool,
}

impl SendRequest {
    pub fn full(snapshot: SnapshotName) -> Self {
        Self {
            snapshot,
            from: None,
            raw: false,
            properties: false,
        }
    }

    pub fn incremental(from: SnapshotName, snapshot: SnapshotName) -> Self {
        Self {
            snapshot,
            from: Some(from),
            raw: false,
            properties: false,
        }
    }
}

/// Where and how to receive a stream.
#[derive(Debug, Clone)]
pub struct ReceiveRequest {
    /// The dataset the stream becomes (its snapshot keeps the stream's snapshot name).
    pub target: DatasetName,
    /// Receive as a clone of this snapshot (`-o origin=`).
    pub origin: Option<SnapshotName>,
    /// Roll the target back to its latest snapshot first (`-F`).
    pub force: bool,
    /// Do not mount what was received (`-u`).
    pub no_mount: bool,
    /// Properties to set on the received dataset (`-o`).
    pub props: Vec<(PropName, String)>,
}

impl ReceiveRequest {
    pub fn new(target: DatasetName) -> Self {
        Self {
            target,
            origin: None,
            force: false,
            no_mount: false,
            props: Vec::new(),
        }
    }
}

/// What a `zfs diff` line says changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "change", content = "to")]
pub enum Change {
    Added,
    Removed,
    Modified,
    Renamed(String),
}

/// One changed path, relative to the dataset's root (`/etc/hosts`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DiffEntry {
    pub path: String,
    pub change: Change,
    /// The `-F` type character: `F` file, `/` directory, `@` symlink, ...
    pub file_type: char,
}

/// Options for mounting.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Mount here instead of at the `mountpoint` property.
    pub at: Option<PathBuf>,
    pub read_only: bool,
}

/// The pool figures cairn needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolInfo {
    pub name: PoolName,
    pub guid: u64,
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
    pub health: String,
    pub bootfs: Option<DatasetName>,
}

/// Everything cairn does with ZFS. Two implementations: [`cli::ZfsCli`] over the real
/// commands, and [`model::ZfsModel`] in memory. The conformance suite
/// ([`conformance`]) pins down that they behave the same.
pub trait Zfs: Send + Sync {
    /// `zfs list -H -p -o name,type,<props>`.
    fn list(&self, req: &ListRequest) -> Result<Vec<ListEntry>>;
    /// `zfs get -H -p -o property,value,source` for one object.
    fn get(&self, target: &ObjectName, props: &[PropName])
    -> Result<BTreeMap<PropName, PropValue>>;
    /// `zfs set`: several properties in one call (atomic in ZFS).
    fn set(&self, target: &ObjectName, props: &[(PropName, String)]) -> Result<()>;
    /// `zfs inherit`: clears a local value.
    fn inherit(&self, target: &ObjectName, prop: &PropName) -> Result<()>;
    /// `zfs create`.
    fn create(&self, dataset: &DatasetName, opts: &CreateOptions) -> Result<()>;
    /// `zfs snapshot` of several snapshots in one call: all are created, or none.
    fn snapshot(&self, snapshots: &[SnapshotName], props: &[(PropName, String)]) -> Result<()>;
    /// `zfs clone`.
    fn clone_snapshot(
        &self,
        origin: &SnapshotName,
        target: &DatasetName,
        props: &[(PropName, String)],
    ) -> Result<()>;
    /// `zfs promote`.
    fn promote(&self, dataset: &DatasetName) -> Result<()>;
    /// `zfs rollback`, with `-r` when `destroy_newer`.
    fn rollback(&self, snapshot: &SnapshotName, destroy_newer: bool) -> Result<()>;
    /// `zfs rename` of a dataset or a snapshot (within its dataset).
    fn rename(&self, from: &ObjectName, to: &ObjectName) -> Result<()>;
    /// `zfs destroy`, or its dry run with the space estimate.
    fn destroy(&self, target: &ObjectName, opts: DestroyOptions) -> Result<DestroyReport>;
    /// `zfs hold`: the same tag on several snapshots, atomically.
    fn hold(&self, snapshots: &[SnapshotName], tag: &str) -> Result<()>;
    /// `zfs release`.
    fn release(&self, snapshots: &[SnapshotName], tag: &str) -> Result<()>;
    /// `zfs holds -H -p`.
    fn holds(&self, snapshot: &SnapshotName) -> Result<Vec<Hold>>;
    /// `zfs send -n -v -P`: the stream size ZFS expects.
    fn send_estimate(&self, req: &SendRequest) -> Result<u64>;
    /// `zfs send` into `out`; returns the bytes written.
    fn send(&self, req: &SendRequest, out: &mut dyn Write) -> Result<u64>;
    /// `zfs receive` from `input`; returns the snapshot that was received.
    fn receive(&self, req: &ReceiveRequest, input: &mut dyn Read) -> Result<SnapshotName>;
    /// `zfs diff -H -F` between a snapshot and a later snapshot or the live dataset.
    fn diff(&self, from: &SnapshotName, to: &ObjectName) -> Result<Vec<DiffEntry>>;
    /// Mount a dataset or snapshot; returns where it is mounted.
    fn mount(&self, target: &ObjectName, opts: &MountOptions) -> Result<PathBuf>;
    /// Unmount what is mounted at `path`.
    fn unmount(&self, path: &Path) -> Result<()>;
    /// `zpool get` of the figures in [`PoolInfo`].
    fn pool(&self, pool: &PoolName) -> Result<PoolInfo>;
    /// `zpool set bootfs=` (or clear it with `None`).
    fn set_bootfs(&self, pool: &PoolName, dataset: Option<&DatasetName>) -> Result<()>;
    /// `zpool sync`: everything written so far is on disk and in the space figures.
    fn sync(&self, pool: &PoolName) -> Result<()>;
}

/// Checks every value of a property list before anything is written.
/// Refuses a list that names one property twice, as `zfs` does ("specified multiple times").
pub(crate) fn check_props(props: &[(PropName, String)]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in props {
        name.check_value(value)?;
        if !seen.insert(name) {
            return Err(ZfsError::RefusedName {
                name: name.to_string(),
                detail: "property specified multiple times".into(),
            });
        }
    }
    Ok(())
}
