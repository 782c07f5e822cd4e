//! An in-memory ZFS for unit tests and `cairnd --sim`: pools, datasets, snapshots, clones
//! with origins, promote, holds, user properties with inheritance, file contents and
//! block-level space accounting.
//!
//! It is only as good as the conformance suite: whatever real OpenZFS does differently is
//! a bug here. Space figures count file bytes only (no metadata), so they are exact where
//! ZFS's are approximate; callers compare, they never expect equality with real ZFS.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::error::{Result, ZfsError};
use crate::name::{DatasetName, ObjectName, PoolName, PropName, SnapshotName, check_hold_tag};
use crate::{
    Change, CreateOptions, DatasetType, DestroyOptions, DestroyReport, DiffEntry, Hold, ListEntry,
    ListRequest, MountOptions, PoolInfo, PropSource, PropValue, ReceiveRequest, SendRequest, Zfs,
    check_props,
};

/// Native properties the model lets callers set, with their defaults. Whether they
/// inherit follows ZFS (`canmount` does not).
const SETTABLE: &[(&str, &str, bool)] = &[
    ("mountpoint", "", true),
    ("canmount", "on", false),
    ("readonly", "off", true),
    ("compression", "on", true),
    ("atime", "on", true),
    ("quota", "0", false),
];

const STREAM_MAGIC: &[u8] = b"CAIRN-MODEL-STREAM-1\n";

#[derive(Debug, Clone)]
struct Block {
    id: u64,
    data: Arc<Vec<u8>>,
}

type Files = BTreeMap<String, Block>;

#[derive(Debug, Clone)]
struct Pool {
    guid: u64,
    size: u64,
    bootfs: Option<DatasetName>,
}

#[derive(Debug, Clone)]
struct Dataset {
    guid: u64,
    createtxg: u64,
    creation: u64,
    local: BTreeMap<String, String>,
    received: BTreeMap<String, String>,
    origin: Option<SnapshotName>,
    files: Files,
    mounted: bool,
}

#[derive(Debug, Clone)]
struct Snapshot {
    guid: u64,
    createtxg: u64,
    creation: u64,
    local: BTreeMap<String, String>,
    files: Files,
    holds: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    pools: BTreeMap<PoolName, Pool>,
    datasets: BTreeMap<DatasetName, Dataset>,
    snapshots: BTreeMap<SnapshotName, Snapshot>,
    mounts: BTreeMap<PathBuf, (ObjectName, bool)>,
    next_id: u64,
    txg: u64,
    clock: u64,
}

/// The in-memory ZFS. Cheap to share: all methods take `&self`.
#[derive(Debug, Default)]
pub struct ZfsModel {
    state: Mutex<State>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Referrer<'a> {
    Head(&'a DatasetName),
    Snap(&'a SnapshotName),
}

/// The header of a model send stream; file data follows in order.
#[derive(Serialize, Deserialize)]
struct StreamHeader {
    snapshot: String,
    guid: u64,
    from_guid: Option<u64>,
    /// path → (block id, length) for files new or changed since `from`.
    files: Vec<(String, u64, u64)>,
    removed: Vec<String>,
    props: BTreeMap<String, String>,
    raw: bool,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn pool(&self, p: &PoolName) -> Result<&Pool> {
        self.pools.get(p).ok_or_else(|| ZfsError::NotFound {
            name: p.to_string(),
        })
    }

    fn ds(&self, d: &DatasetName) -> Result<&Dataset> {
        self.datasets.get(d).ok_or_else(|| ZfsError::NotFound {
            name: d.to_string(),
        })
    }

    fn ds_mut(&mut self, d: &DatasetName) -> Result<&mut Dataset> {
        self.datasets.get_mut(d).ok_or_else(|| ZfsError::NotFound {
            name: d.to_string(),
        })
    }

    fn snap(&self, s: &SnapshotName) -> Result<&Snapshot> {
        self.snapshots.get(s).ok_or_else(|| ZfsError::NotFound {
            name: s.to_string(),
        })
    }

    fn exists(&self, o: &ObjectName) -> bool {
        match o {
            ObjectName::Dataset(d) => self.datasets.contains_key(d),
            ObjectName::Snapshot(s) => self.snapshots.contains_key(s),
        }
    }

    /// Snapshots of one dataset, oldest first.
    fn snaps_of(&self, d: &DatasetName) -> Vec<SnapshotName> {
        let mut v: Vec<_> = self
            .snapshots
            .iter()
            .filter(|(n, _)| &n.dataset() == d)
            .map(|(n, s)| (s.createtxg, n.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    fn descendants_of(&self, d: &DatasetName) -> Vec<DatasetName> {
        self.datasets
            .keys()
            .filter(|n| n.is_within(d) && *n != d)
            .cloned()
            .collect()
    }

    fn clones_of(&self, s: &SnapshotName) -> Vec<DatasetName> {
        self.datasets
            .iter()
            .filter(|(_, d)| d.origin.as_ref() == Some(s))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn block_sizes(&self) -> HashMap<u64, (u64, Vec<Referrer<'_>>)> {
        let mut m: HashMap<u64, (u64, Vec<Referrer<'_>>)> = HashMap::new();
        for (n, d) in &self.datasets {
            for b in d.files.values() {
                m.entry(b.id)
                    .or_insert((b.data.len() as u64, Vec::new()))
                    .1
                    .push(Referrer::Head(n));
            }
        }
        for (n, s) in &self.snapshots {
            for b in s.files.values() {
                m.entry(b.id)
                    .or_insert((b.data.len() as u64, Vec::new()))
                    .1
                    .push(Referrer::Snap(n));
            }
        }
        m
    }

    /// Bytes freed if every referrer in `set` went away: blocks nobody else refers to.
    fn freed(&self, set: &BTreeSet<Referrer<'_>>) -> u64 {
        self.block_sizes()
            .values()
            .filter(|(_, refs)| {
                refs.iter().any(|r| set.contains(r)) && refs.iter().all(|r| set.contains(r))
            })
            .map(|(size, _)| *size)
            .sum()
    }

    fn allocated(&self, pool: &PoolName) -> u64 {
        let mut seen = BTreeSet::new();
        let mut total = 0;
        let in_pool = |d: &DatasetName| &d.pool() == pool;
        for (n, d) in &self.datasets {
            if in_pool(n) {
                for b in d.files.values() {
                    if seen.insert(b.id) {
                        total += b.data.len() as u64;
                    }
                }
            }
        }
        for (n, s) in &self.snapshots {
            if in_pool(&n.dataset()) {
                for b in s.files.values() {
                    if seen.insert(b.id) {
                        total += b.data.len() as u64;
                    }
                }
            }
        }
        total
    }

    fn check_space(&self, pool: &PoolName, more: u64) -> Result<()> {
        let p = self.pool(pool)?;
        if self.allocated(pool) + more > p.size {
            return Err(ZfsError::NoSpace {
                name: pool.to_string(),
            });
        }
        Ok(())
    }

    /// A property as `zfs get` reports it, walking the inheritance chain.
    fn prop(&self, target: &ObjectName, name: &PropName) -> Result<PropValue> {
        if let Some(v) = self.computed(target, name)? {
            return Ok(PropValue {
                value: (v != "-").then_some(v),
                source: PropSource::None,
            });
        }
        let n = name.as_str();
        let settable = SETTABLE.iter().find(|(k, _, _)| *k == n);
        if !name.is_user() && settable.is_none() {
            return Err(ZfsError::RefusedName {
                name: n.to_owned(),
                detail: "the model does not know this property".into(),
            });
        }
        let inherits = name.is_user() || settable.is_some_and(|(_, _, i)| *i);
        // A snapshot's own value, then its dataset's chain.
        if let ObjectName::Snapshot(s) = target {
            if let Some(v) = self.snap(s)?.local.get(n) {
                return Ok(PropValue {
                    value: Some(v.clone()),
                    source: PropSource::Local,
                });
            }
            if !name.is_user() {
                // Snapshots show `-` for the dataset properties they cannot have.
                return Ok(PropValue {
                    value: None,
                    source: PropSource::None,
                });
            }
        }
        let start = target.dataset();
        let mut cur = Some(start.clone());
        while let Some(d) = cur {
            let ds = self.ds(&d)?;
            let own = ds
                .local
                .get(n)
                .map(|v| (v, PropSource::Local))
                .or_else(|| ds.received.get(n).map(|v| (v, PropSource::Received)));
            if let Some((v, src)) = own {
                let (value, source) = if d == start && matches!(target, ObjectName::Dataset(_)) {
                    (v.clone(), src)
                } else if n == "mountpoint" && v != "none" && v != "legacy" {
                    let rest = &start.as_str()[d.as_str().len()..];
                    (
                        format!("{}{rest}", v.trim_end_matches('/')),
                        PropSource::Inherited(d.clone()),
                    )
                } else {
                    (v.clone(), PropSource::Inherited(d.clone()))
                };
                return Ok(PropValue {
                    value: Some(value),
                    source,
                });
            }
            if !inherits {
                break;
            }
            cur = d.parent();
        }
        Ok(match settable {
            Some(("mountpoint", _, _)) => PropValue {
                value: Some(format!("/{}", start.as_str())),
                source: PropSource::Default,
            },
            Some((_, default, _)) => PropValue {
                value: Some((*default).to_owned()),
                source: PropSource::Default,
            },
            None => PropValue {
                value: None,
                source: PropSource::None,
            },
        })
    }

    /// Read-only properties ZFS computes.
    fn computed(&self, target: &ObjectName, name: &PropName) -> Result<Option<String>> {
        let n = name.as_str();
        let v = match target {
            ObjectName::Dataset(d) => {
                let ds = self.ds(d)?;
                let snaps = self.snaps_of(d);
                let mut family: BTreeSet<Referrer<'_>> = BTreeSet::new();
                let own_snaps: BTreeSet<Referrer<'_>> = self
                    .snapshots
                    .keys()
                    .filter(|s| &s.dataset() == d)
                    .map(Referrer::Snap)
                    .collect();
                let mut children: BTreeSet<Referrer<'_>> = BTreeSet::new();
                for (dn, _) in self
                    .datasets
                    .iter()
                    .filter(|(dn, _)| dn.is_within(d) && *dn != d)
                {
                    children.insert(Referrer::Head(dn));
                }
                for sn in self.snapshots.keys().filter(|s| {
                    let sd = s.dataset();
                    sd.is_within(d) && &sd != d
                }) {
                    children.insert(Referrer::Snap(sn));
                }
                let (head_key, _) = self.datasets.get_key_value(d).expect("checked above");
                family.insert(Referrer::Head(head_key));
                family.extend(own_snaps.iter().copied());
                family.extend(children.iter().copied());
                match n {
                    "type" => "filesystem".into(),
                    "guid" => ds.guid.to_string(),
                    "createtxg" => ds.createtxg.to_string(),
                    "creation" => ds.creation.to_string(),
                    "origin" => ds
                        .origin
                        .as_ref()
                        .map(|o| o.to_string())
                        .unwrap_or("-".into()),
                    "mounted" => if ds.mounted { "yes" } else { "no" }.into(),
                    "referenced" | "refer" => ds
                        .files
                        .values()
                        .map(|b| b.data.len() as u64)
                        .sum::<u64>()
                        .to_string(),
                    "used" => self.freed(&family).to_string(),
                    "usedbysnapshots" => self.freed(&own_snaps).to_string(),
                    "usedbychildren" => self.freed(&children).to_string(),
                    "usedbydataset" => {
                        let all = self.freed(&family);
                        all.saturating_sub(self.freed(&own_snaps))
                            .saturating_sub(self.freed(&children))
                            .to_string()
                    }
                    "available" | "avail" => {
                        let p = self.pool(&d.pool())?;
                        p.size.saturating_sub(self.allocated(&d.pool())).to_string()
                    }
                    "written" => {
                        let base = snaps
                            .last()
                            .and_then(|s| self.snapshots.get(s))
                            .map(|s| &s.files)
                            .or_else(|| {
                                ds.origin
                                    .as_ref()
                                    .and_then(|o| self.snapshots.get(o))
                                    .map(|s| &s.files)
                            });
                        let old: BTreeSet<u64> = base
                            .map(|f| f.values().map(|b| b.id).collect())
                            .unwrap_or_default();
                        ds.files
                            .values()
                            .filter(|b| !old.contains(&b.id))
                            .map(|b| b.data.len() as u64)
                            .sum::<u64>()
                            .to_string()
                    }
                    "name" => d.to_string(),
                    _ => return Ok(None),
                }
            }
            ObjectName::Snapshot(s) => {
                let sn = self.snap(s)?;
                let (key, _) = self.snapshots.get_key_value(s).expect("checked above");
                match n {
                    "type" => "snapshot".into(),
                    "guid" => sn.guid.to_string(),
                    "createtxg" => sn.createtxg.to_string(),
                    "creation" => sn.creation.to_string(),
                    "used" => self
                        .freed(&BTreeSet::from([Referrer::Snap(key)]))
                        .to_string(),
                    "referenced" | "refer" => sn
                        .files
                        .values()
                        .map(|b| b.data.len() as u64)
                        .sum::<u64>()
                        .to_string(),
                    "userrefs" => sn.holds.len().to_string(),
                    "clones" => {
                        let c: Vec<_> = self.clones_of(s).iter().map(|c| c.to_string()).collect();
                        if c.is_empty() {
                            "-".into()
                        } else {
                            c.join(",")
                        }
                    }
                    "origin" => "-".into(),
                    "name" => s.to_string(),
                    _ => return Ok(None),
                }
            }
        };
        Ok(Some(v))
    }

    fn auto_mount(&mut self, d: &DatasetName) -> Result<()> {
        let canmount = self.prop(&d.into(), &PropName::native("canmount"))?.value;
        let mp = self.prop(&d.into(), &PropName::native("mountpoint"))?.value;
        let mountable = canmount.as_deref() == Some("on")
            && !matches!(mp.as_deref(), Some("none") | Some("legacy") | None);
        self.ds_mut(d)?.mounted = mountable;
        Ok(())
    }

    fn check_settable(props: &[(PropName, String)]) -> Result<()> {
        check_props(props)?;
        for (k, _) in props {
            if !k.is_user() && !SETTABLE.iter().any(|(n, _, _)| *n == k.as_str()) {
                return Err(ZfsError::RefusedName {
                    name: k.to_string(),
                    detail: "not a property the model can set".into(),
                });
            }
        }
        Ok(())
    }

    fn new_dataset(&mut self, files: Files, origin: Option<SnapshotName>) -> Dataset {
        self.txg += 1;
        Dataset {
            guid: self.id() * 7919,
            createtxg: self.txg,
            creation: self.clock,
            local: BTreeMap::new(),
            received: BTreeMap::new(),
            origin,
            files,
            mounted: false,
        }
    }

    fn rename_dataset(&mut self, from: &DatasetName, to: &DatasetName) {
        let moved: Vec<DatasetName> = self
            .datasets
            .keys()
            .filter(|d| d.is_within(from))
            .cloned()
            .collect();
        let swap = |d: &DatasetName| {
            DatasetName::new_unchecked(format!("{}{}", to, &d.as_str()[from.as_str().len()..]))
        };
        let mut snap_map = BTreeMap::new();
        for d in &moved {
            let ds = self.datasets.remove(d).expect("listed");
            for s in self.snaps_of(d) {
                let snap = self.snapshots.remove(&s).expect("listed");
                let ns = SnapshotName::new_unchecked(format!("{}@{}", swap(d), s.snap()));
                snap_map.insert(s, ns.clone());
                self.snapshots.insert(ns, snap);
            }
            self.datasets.insert(swap(d), ds);
        }
        for ds in self.datasets.values_mut() {
            if let Some(o) = &ds.origin
                && let Some(n) = snap_map.get(o)
            {
                ds.origin = Some(n.clone());
            }
        }
        for p in self.pools.values_mut() {
            if let Some(b) = &p.bootfs
                && b.is_within(from)
            {
                p.bootfs = Some(swap(b));
            }
        }
    }
}

impl ZfsModel {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a pool of `size` bytes with its top-level dataset.
    pub fn create_pool(&self, pool: &PoolName, size: u64) -> Result<()> {
        let mut st = self.lock();
        if st.pools.contains_key(pool) {
            return Err(ZfsError::AlreadyExists {
                name: pool.to_string(),
            });
        }
        let guid = st.id() * 104_729;
        st.pools.insert(
            pool.clone(),
            Pool {
                guid,
                size,
                bootfs: None,
            },
        );
        let ds = st.new_dataset(Files::new(), None);
        st.datasets.insert(pool.root(), ds);
        st.auto_mount(&pool.root())
    }

    /// Sets the model's clock (seconds since the epoch) used for `creation`.
    pub fn set_clock(&self, now: u64) {
        self.lock().clock = now;
    }

    /// Writes a file into a dataset's live contents (what an application would do).
    pub fn write_file(&self, dataset: &DatasetName, path: &str, data: &[u8]) -> Result<()> {
        let mut st = self.lock();
        st.ds(dataset)?;
        st.check_space(&dataset.pool(), data.len() as u64)?;
        let id = st.id();
        let ds = st.ds_mut(dataset)?;
        ds.files.insert(
            normalize(path),
            Block {
                id,
                data: Arc::new(data.to_vec()),
            },
        );
        Ok(())
    }

    /// Removes a file from a dataset's live contents.
    pub fn remove_file(&self, dataset: &DatasetName, path: &str) -> Result<()> {
        let mut st = self.lock();
        st.ds_mut(dataset)?.files.remove(&normalize(path));
        Ok(())
    }

    /// Reads a file from a dataset or snapshot.
    pub fn read_file(&self, target: &ObjectName, path: &str) -> Result<Option<Vec<u8>>> {
        let st = self.lock();
        let files = match target {
            ObjectName::Dataset(d) => &st.ds(d)?.files,
            ObjectName::Snapshot(s) => &st.snap(s)?.files,
        };
        Ok(files.get(&normalize(path)).map(|b| b.data.to_vec()))
    }

    /// Reads a file through a mount made with [`Zfs::mount`].
    pub fn read_mounted(&self, mount: &Path, path: &str) -> Result<Option<Vec<u8>>> {
        let target = {
            let st = self.lock();
            st.mounts
                .get(mount)
                .map(|(o, _)| o.clone())
                .or_else(|| {
                    st.datasets.iter().find_map(|(n, d)| {
                        let mp = st
                            .prop(&n.into(), &PropName::native("mountpoint"))
                            .ok()?
                            .value?;
                        (d.mounted && Path::new(&mp) == mount)
                            .then(|| ObjectName::Dataset(n.clone()))
                    })
                })
                .ok_or_else(|| ZfsError::NotMounted {
                    name: mount.display().to_string(),
                })?
        };
        self.read_file(&target, path)
    }
}

fn normalize(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

/// The directories implied by a set of file paths ("/a/b/c" implies "/a" and "/a/b").
fn dirs_of(files: &Files) -> BTreeSet<String> {
    let mut d = BTreeSet::new();
    for p in files.keys() {
        let mut cur = p.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            d.insert(parent.to_owned());
            cur = parent;
        }
    }
    d
}

fn parent_dir(p: &str) -> String {
    match p.rsplit_once('/') {
        Some(("", _)) | None => "/".to_owned(),
        Some((parent, _)) => parent.to_owned(),
    }
}

impl Zfs for ZfsModel {
    fn list(&self, req: &ListRequest) -> Result<Vec<ListEntry>> {
        let st = self.lock();
        for r in &req.roots {
            st.ds(r)?;
        }
        let types: Vec<DatasetType> = if req.types.is_empty() {
            vec![DatasetType::Filesystem, DatasetType::Volume]
        } else {
            req.types.clone()
        };
        let in_scope = |d: &DatasetName, is_snap: bool| -> bool {
            if req.roots.is_empty() {
                return true;
            }
            req.roots.iter().any(|r| {
                if !d.is_within(r) {
                    return false;
                }
                let rel = d.depth() - r.depth() + usize::from(is_snap);
                match (req.depth, req.recursive) {
                    (Some(max), _) => rel <= max as usize,
                    (None, true) => true,
                    (None, false) => rel == 0,
                }
            })
        };
        let mut out = Vec::new();
        // ZFS lists each dataset followed by its snapshots, children in name order.
        for d in st.datasets.keys() {
            if types.contains(&DatasetType::Filesystem) && in_scope(d, false) {
                out.push((ObjectName::Dataset(d.clone()), DatasetType::Filesystem));
            }
            if types.contains(&DatasetType::Snapshot) && in_scope(d, true) {
                for s in st.snaps_of(d) {
                    out.push((ObjectName::Snapshot(s), DatasetType::Snapshot));
                }
            }
        }
        out.into_iter()
            .map(|(name, kind)| {
                let mut props = BTreeMap::new();
                for p in &req.props {
                    props.insert(p.clone(), st.prop(&name, p)?.value);
                }
                Ok(ListEntry { name, kind, props })
            })
            .collect()
    }

    fn get(
        &self,
        target: &ObjectName,
        props: &[PropName],
    ) -> Result<BTreeMap<PropName, PropValue>> {
        let st = self.lock();
        if !st.exists(target) {
            return Err(ZfsError::NotFound {
                name: target.to_string(),
            });
        }
        props
            .iter()
            .map(|p| Ok((p.clone(), st.prop(target, p)?)))
            .collect()
    }

    fn set(&self, target: &ObjectName, props: &[(PropName, String)]) -> Result<()> {
        State::check_settable(props)?;
        let mut st = self.lock();
        let local = match target {
            ObjectName::Dataset(d) => &mut st.ds_mut(d)?.local,
            ObjectName::Snapshot(s) => {
                if props.iter().any(|(k, _)| !k.is_user()) {
                    return Err(ZfsError::RefusedName {
                        name: s.to_string(),
                        detail: "snapshots take only user properties".into(),
                    });
                }
                &mut st
                    .snapshots
                    .get_mut(s)
                    .ok_or_else(|| ZfsError::NotFound {
                        name: s.to_string(),
                    })?
                    .local
            }
        };
        for (k, v) in props {
            local.insert(k.to_string(), v.clone());
        }
        if let ObjectName::Dataset(d) = target {
            let remount = props
                .iter()
                .any(|(k, _)| matches!(k.as_str(), "mountpoint" | "canmount"));
            if remount {
                for dd in std::iter::once(d.clone()).chain(st.descendants_of(d)) {
                    st.auto_mount(&dd)?;
                }
            }
        }
        Ok(())
    }

    fn inherit(&self, target: &ObjectName, prop: &PropName) -> Result<()> {
        let mut st = self.lock();
        match target {
            ObjectName::Dataset(d) => {
                st.ds_mut(d)?.local.remove(prop.as_str());
            }
            ObjectName::Snapshot(s) => {
                st.snapshots
                    .get_mut(s)
                    .ok_or_else(|| ZfsError::NotFound {
                        name: s.to_string(),
                    })?
                    .local
                    .remove(prop.as_str());
            }
        }
        Ok(())
    }

    fn create(&self, dataset: &DatasetName, opts: &CreateOptions) -> Result<()> {
        let dataset = DatasetName::new(dataset.as_str())?;
        State::check_settable(&opts.props)?;
        let mut st = self.lock();
        st.pool(&dataset.pool())?;
        if st.datasets.contains_key(&dataset) {
            return Err(ZfsError::AlreadyExists {
                name: dataset.to_string(),
            });
        }
        let mut missing = Vec::new();
        let mut cur = dataset.parent();
        while let Some(p) = cur {
            if st.datasets.contains_key(&p) {
                break;
            }
            missing.push(p.clone());
            cur = p.parent();
        }
        if !missing.is_empty() && !opts.parents {
            return Err(ZfsError::NotFound {
                name: missing[0].to_string(),
            });
        }
        for p in missing.into_iter().rev() {
            let ds = st.new_dataset(Files::new(), None);
            st.datasets.insert(p.clone(), ds);
            st.auto_mount(&p)?;
        }
        let mut ds = st.new_dataset(Files::new(), None);
        ds.local = opts
            .props
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        st.datasets.insert(dataset.clone(), ds);
        st.auto_mount(&dataset)
    }

    fn snapshot(&self, snapshots: &[SnapshotName], props: &[(PropName, String)]) -> Result<()> {
        check_props(props)?;
        if props.iter().any(|(k, _)| !k.is_user()) {
            return Err(ZfsError::RefusedName {
                name: "snapshot properties".into(),
                detail: "snapshots take only user properties".into(),
            });
        }
        let mut st = self.lock();
        let snapshots: Vec<SnapshotName> = snapshots
            .iter()
            .map(|s| SnapshotName::new(s.as_str()))
            .collect::<std::result::Result<_, _>>()?;
        for s in &snapshots {
            st.ds(&s.dataset())?;
            if st.snapshots.contains_key(s) {
                return Err(ZfsError::AlreadyExists {
                    name: s.to_string(),
                });
            }
        }
        st.txg += 1;
        let txg = st.txg;
        for s in snapshots {
            let files = st.ds(&s.dataset())?.files.clone();
            let guid = st.id() * 6151;
            let clock = st.clock;
            st.snapshots.insert(
                s,
                Snapshot {
                    guid,
                    createtxg: txg,
                    creation: clock,
                    local: props
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                    files,
                    holds: BTreeMap::new(),
                },
            );
        }
        Ok(())
    }

    fn clone_snapshot(
        &self,
        origin: &SnapshotName,
        target: &DatasetName,
        props: &[(PropName, String)],
    ) -> Result<()> {
        let target = DatasetName::new(target.as_str())?;
        State::check_settable(props)?;
        let mut st = self.lock();
        let files = st.snap(origin)?.files.clone();
        if st.datasets.contains_key(&target) {
            return Err(ZfsError::AlreadyExists {
                name: target.to_string(),
            });
        }
        if let Some(p) = target.parent() {
            st.ds(&p)?;
        }
        if target.pool() != origin.pool() {
            return Err(ZfsError::RefusedName {
                name: target.to_string(),
                detail: "clones must be in the same pool as their origin".into(),
            });
        }
        let mut ds = st.new_dataset(files, Some(origin.clone()));
        ds.local = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        st.datasets.insert(target.clone(), ds);
        st.auto_mount(&target)
    }

    fn promote(&self, dataset: &DatasetName) -> Result<()> {
        let mut st = self.lock();
        let Some(origin) = st.ds(dataset)?.origin.clone() else {
            return Err(ZfsError::NotAClone {
                name: dataset.to_string(),
            });
        };
        let parent_ds = origin.dataset();
        let cut = st.snap(&origin)?.createtxg;
        let moving: Vec<SnapshotName> = st
            .snaps_of(&parent_ds)
            .into_iter()
            .filter(|s| st.snapshots[s].createtxg <= cut)
            .collect();
        for s in &moving {
            if st.snapshots.contains_key(&dataset.snapshot(s.snap())?) {
                return Err(ZfsError::AlreadyExists {
                    name: dataset.snapshot(s.snap())?.to_string(),
                });
            }
        }
        let old_parent_origin = st.ds(&parent_ds)?.origin.clone();
        let mut renamed = BTreeMap::new();
        for s in moving {
            let snap = st.snapshots.remove(&s).expect("listed");
            let ns = dataset.snapshot(s.snap())?;
            st.snapshots.insert(ns.clone(), snap);
            renamed.insert(s, ns);
        }
        for ds in st.datasets.values_mut() {
            if let Some(o) = &ds.origin
                && let Some(n) = renamed.get(o)
            {
                ds.origin = Some(n.clone());
            }
        }
        // The promoted clone takes over the old parent's origin; the old parent becomes a
        // clone of the snapshot that moved.
        st.ds_mut(dataset)?.origin = old_parent_origin;
        let moved_origin = renamed.get(&origin).cloned();
        st.ds_mut(&parent_ds)?.origin = moved_origin;
        Ok(())
    }

    fn rollback(&self, snapshot: &SnapshotName, destroy_newer: bool) -> Result<()> {
        let mut st = self.lock();
        let txg = st.snap(snapshot)?.createtxg;
        let newer: Vec<_> = st
            .snaps_of(&snapshot.dataset())
            .into_iter()
            .filter(|s| st.snapshots[s].createtxg > txg)
            .collect();
        if !newer.is_empty() {
            if !destroy_newer {
                return Err(ZfsError::NewerSnapshots {
                    name: snapshot.to_string(),
                });
            }
            for s in &newer {
                if !st.clones_of(s).is_empty() {
                    return Err(ZfsError::HasDependentClones {
                        name: s.to_string(),
                    });
                }
                if !st.snapshots[s].holds.is_empty() {
                    return Err(ZfsError::Busy {
                        name: s.to_string(),
                    });
                }
            }
            for s in &newer {
                st.snapshots.remove(s);
            }
        }
        let files = st.snapshots[snapshot].files.clone();
        st.ds_mut(&snapshot.dataset())?.files = files;
        Ok(())
    }

    fn rename(&self, from: &ObjectName, to: &ObjectName) -> Result<()> {
        let mut st = self.lock();
        match (from, to) {
            (ObjectName::Dataset(f), ObjectName::Dataset(t)) => {
                let t = DatasetName::new(t.as_str())?;
                st.ds(f)?;
                if st.datasets.contains_key(&t) {
                    return Err(ZfsError::AlreadyExists {
                        name: t.to_string(),
                    });
                }
                if t.pool() != f.pool() || t.is_within(f) || f.parent().is_none() {
                    return Err(ZfsError::RefusedName {
                        name: t.to_string(),
                        detail: "a dataset can only be renamed within its pool, not below itself"
                            .into(),
                    });
                }
                if let Some(p) = t.parent() {
                    st.ds(&p)?;
                }
                st.rename_dataset(f, &t);
                Ok(())
            }
            (ObjectName::Snapshot(f), ObjectName::Snapshot(t)) => {
                let t = SnapshotName::new(t.as_str())?;
                st.snap(f)?;
                if t.dataset() != f.dataset() {
                    return Err(ZfsError::RefusedName {
                        name: t.to_string(),
                        detail: "snapshots can only be renamed within their dataset".into(),
                    });
                }
                if st.snapshots.contains_key(&t) {
                    return Err(ZfsError::AlreadyExists {
                        name: t.to_string(),
                    });
                }
                let snap = st.snapshots.remove(f).expect("checked");
                st.snapshots.insert(t.clone(), snap);
                for ds in st.datasets.values_mut() {
                    if ds.origin.as_ref() == Some(f) {
                        ds.origin = Some(t.clone());
                    }
                }
                Ok(())
            }
            _ => Err(ZfsError::RefusedName {
                name: to.to_string(),
                detail: "cannot rename between a dataset and a snapshot".into(),
            }),
        }
    }

    fn destroy(&self, target: &ObjectName, opts: DestroyOptions) -> Result<DestroyReport> {
        let mut st = self.lock();
        if !st.exists(target) {
            return Err(ZfsError::NotFound {
                name: target.to_string(),
            });
        }
        let (datasets, snapshots): (Vec<DatasetName>, Vec<SnapshotName>) = match target {
            ObjectName::Dataset(d) => {
                if d.parent().is_none() {
                    return Err(ZfsError::RefusedName {
                        name: d.to_string(),
                        detail: "a pool's top-level dataset is destroyed with the pool".into(),
                    });
                }
                let mut ds = vec![d.clone()];
                ds.extend(st.descendants_of(d));
                if !opts.recursive && (ds.len() > 1 || !st.snaps_of(d).is_empty()) {
                    return Err(ZfsError::HasChildren {
                        name: d.to_string(),
                    });
                }
                let snaps = ds.iter().flat_map(|d| st.snaps_of(d)).collect();
                (ds, snaps)
            }
            ObjectName::Snapshot(s) => {
                let mut snaps = vec![s.clone()];
                if opts.recursive {
                    for d in st.descendants_of(&s.dataset()) {
                        let c = d.snapshot(s.snap())?;
                        if st.snapshots.contains_key(&c) {
                            snaps.push(c);
                        }
                    }
                }
                (Vec::new(), snaps)
            }
        };
        for s in &snapshots {
            if st.clones_of(s).iter().any(|c| !datasets.contains(c)) {
                return Err(ZfsError::HasDependentClones {
                    name: s.to_string(),
                });
            }
        }
        let mut set: BTreeSet<Referrer<'_>> = BTreeSet::new();
        for d in &datasets {
            set.insert(Referrer::Head(
                st.datasets.get_key_value(d).expect("listed").0,
            ));
        }
        for s in &snapshots {
            set.insert(Referrer::Snap(
                st.snapshots.get_key_value(s).expect("listed").0,
            ));
        }
        let reclaim = st.freed(&set);
        let mut destroyed: Vec<String> = snapshots.iter().map(|s| s.to_string()).collect();
        let mut ds_sorted = datasets.clone();
        ds_sorted.sort_by_key(|d| std::cmp::Reverse(d.depth()));
        destroyed.extend(ds_sorted.iter().map(|d| d.to_string()));
        if opts.dry_run {
            return Ok(DestroyReport { destroyed, reclaim });
        }
        if let Some(s) = snapshots
            .iter()
            .find(|s| !st.snapshots[*s].holds.is_empty())
        {
            return Err(ZfsError::Busy {
                name: s.to_string(),
            });
        }
        for s in &snapshots {
            st.snapshots.remove(s);
        }
        for d in &datasets {
            st.datasets.remove(d);
            for p in st.pools.values_mut() {
                if p.bootfs.as_ref() == Some(d) {
                    p.bootfs = None;
                }
            }
        }
        st.mounts.retain(|_, (o, _)| match o {
            ObjectName::Dataset(d) => !datasets.contains(d),
            ObjectName::Snapshot(s) => !snapshots.contains(s),
        });
        Ok(DestroyReport { destroyed, reclaim })
    }

    fn hold(&self, snapshots: &[SnapshotName], tag: &str) -> Result<()> {
        check_hold_tag(tag)?;
        let mut st = self.lock();
        for s in snapshots {
            if st.snap(s)?.holds.contains_key(tag) {
                return Err(ZfsError::HoldExists {
                    name: s.to_string(),
                    tag: tag.to_owned(),
                });
            }
        }
        let now = st.clock;
        for s in snapshots {
            st.snapshots
                .get_mut(s)
                .expect("checked")
                .holds
                .insert(tag.to_owned(), now);
        }
        Ok(())
    }

    fn release(&self, snapshots: &[SnapshotName], tag: &str) -> Result<()> {
        check_hold_tag(tag)?;
        let mut st = self.lock();
        for s in snapshots {
            if !st.snap(s)?.holds.contains_key(tag) {
                return Err(ZfsError::NoSuchHold {
                    name: s.to_string(),
                    tag: tag.to_owned(),
                });
            }
        }
        for s in snapshots {
            st.snapshots.get_mut(s).expect("checked").holds.remove(tag);
        }
        Ok(())
    }

    fn holds(&self, snapshot: &SnapshotName) -> Result<Vec<Hold>> {
        let st = self.lock();
        Ok(st
            .snap(snapshot)?
            .holds
            .iter()
            .map(|(tag, created)| Hold {
                tag: tag.clone(),
                created: *created,
            })
            .collect())
    }

    fn send_estimate(&self, req: &SendRequest) -> Result<u64> {
        let mut sink = CountingSink(0);
        self.send(req, &mut sink)
    }

    fn send(&self, req: &SendRequest, out: &mut dyn Write) -> Result<u64> {
        let (header, data) = {
            let st = self.lock();
            let snap = st.snap(&req.snapshot)?;
            let (base, from_guid) = match &req.from {
                None => (Files::new(), None),
                Some(f) => {
                    let from = st.snap(f)?;
                    // The source must be an earlier snapshot of the same dataset or of its origin.
                    let same = f.dataset() == req.snapshot.dataset();
                    let via_origin = st.ds(&req.snapshot.dataset())?.origin.as_ref() == Some(f);
                    if !(same || via_origin) || from.createtxg >= snap.createtxg && same {
                        return Err(ZfsError::StreamMismatch {
                            name: req.snapshot.to_string(),
                            detail: format!(
                                "{f} is not an earlier snapshot of the same filesystem"
                            ),
                        });
                    }
                    (from.files.clone(), Some(from.guid))
                }
            };
            let mut files = Vec::new();
            let mut data = Vec::new();
            for (p, b) in &snap.files {
                if base.get(p).map(|o| o.id) != Some(b.id) {
                    files.push((p.clone(), b.id, b.data.len() as u64));
                    data.push(b.data.clone());
                }
            }
            let removed = base
                .keys()
                .filter(|p| !snap.files.contains_key(*p))
                .cloned()
                .collect();
            let props = if req.properties {
                st.ds(&req.snapshot.dataset())?.local.clone()
            } else {
                BTreeMap::new()
            };
            let header = StreamHeader {
                snapshot: req.snapshot.snap().to_owned(),
                guid: snap.guid,
                from_guid,
                files,
                removed,
                props,
                raw: req.raw,
            };
            (header, data)
        };
        let mut h = serde_json::to_vec(&header).map_err(|e| ZfsError::Parse {
            cmd: "model send".into(),
            detail: e.to_string(),
        })?;
        h.push(b'\n');
        let io = |source| ZfsError::Io {
            what: format!("writing the stream of {}", req.snapshot),
            source,
        };
        out.write_all(STREAM_MAGIC).map_err(io)?;
        out.write_all(&h).map_err(io)?;
        let mut n = (STREAM_MAGIC.len() + h.len()) as u64;
        for d in data {
            out.write_all(&d).map_err(io)?;
            n += d.len() as u64;
        }
        Ok(n)
    }

    fn receive(&self, req: &ReceiveRequest, input: &mut dyn Read) -> Result<SnapshotName> {
        let target = DatasetName::new(req.target.as_str())?;
        State::check_settable(&req.props)?;
        let mismatch = |detail: &str| ZfsError::StreamMismatch {
            name: target.to_string(),
            detail: detail.to_owned(),
        };
        let mut buf = Vec::new();
        input.read_to_end(&mut buf).map_err(|source| ZfsError::Io {
            what: "reading the stream".into(),
            source,
        })?;
        let body = buf
            .strip_prefix(STREAM_MAGIC)
            .ok_or_else(|| mismatch("not a send stream (bad header)"))?;
        let nl = body
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| mismatch("truncated stream header"))?;
        let header: StreamHeader =
            serde_json::from_slice(&body[..nl]).map_err(|_| mismatch("corrupt stream header"))?;
        let mut data = &body[nl + 1..];
        let total: u64 = header.files.iter().map(|f| f.2).sum();
        if data.len() as u64 != total {
            return Err(mismatch("stream is truncated or has trailing data"));
        }
        let snap_name = target.snapshot(&header.snapshot)?;
        let mut st = self.lock();
        if let Some(p) = target.parent() {
            st.ds(&p)?;
        }
        st.check_space(&target.pool(), total)?;
        let exists = st.datasets.contains_key(&target);
        let (base, origin) = match (header.from_guid, &req.origin) {
            (None, origin) => {
                if exists {
                    return Err(ZfsError::AlreadyExists {
                        name: target.to_string(),
                    });
                }
                if let Some(o) = origin {
                    st.snap(o)?;
                }
                (Files::new(), origin.clone())
            }
            (Some(from), Some(o)) => {
                if exists {
                    return Err(ZfsError::AlreadyExists {
                        name: target.to_string(),
                    });
                }
                let os = st.snap(o)?;
                if os.guid != from {
                    return Err(mismatch(&format!("incremental source does not match {o}")));
                }
                (os.files.clone(), Some(o.clone()))
            }
            (Some(from), None) => {
                if !exists {
                    return Err(ZfsError::NotFound {
                        name: target.to_string(),
                    });
                }
                // OpenZFS: "snap <name> already exists; ignoring", and exit 0.
                if st.snapshots.contains_key(&snap_name) {
                    return Ok(snap_name);
                }
                let latest = st
                    .snaps_of(&target)
                    .pop()
                    .ok_or_else(|| mismatch("destination has no snapshots"))?;
                let ls = &st.snapshots[&latest];
                if ls.guid != from {
                    return Err(mismatch(
                        "most recent snapshot does not match incremental source",
                    ));
                }
                let head = &st.datasets[&target];
                let modified = head.files.len() != ls.files.len()
                    || head
                        .files
                        .iter()
                        .any(|(p, b)| ls.files.get(p).map(|o| o.id) != Some(b.id));
                if modified && !req.force {
                    return Err(mismatch(
                        "destination has been modified since most recent snapshot",
                    ));
                }
                (ls.files.clone(), None)
            }
        };
        if st.snapshots.contains_key(&snap_name) {
            return Err(ZfsError::AlreadyExists {
                name: snap_name.to_string(),
            });
        }
        let mut files = base;
        for p in &header.removed {
            files.remove(p);
        }
        for (path, id, len) in &header.files {
            let (chunk, rest) = data.split_at(*len as usize);
            data = rest;
            files.insert(
                path.clone(),
                Block {
                    id: *id,
                    data: Arc::new(chunk.to_vec()),
                },
            );
        }
        if exists {
            st.ds_mut(&target)?.files = files.clone();
        } else {
            let mut ds = st.new_dataset(files.clone(), origin);
            ds.received = header.props.clone();
            ds.local = req
                .props
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            st.datasets.insert(target.clone(), ds);
        }
        st.txg += 1;
        let (txg, clock) = (st.txg, st.clock);
        st.snapshots.insert(
            snap_name.clone(),
            Snapshot {
                guid: header.guid,
                createtxg: txg,
                creation: clock,
                local: BTreeMap::new(),
                files,
                holds: BTreeMap::new(),
            },
        );
        if !exists {
            if req.no_mount {
                st.ds_mut(&target)?.mounted = false;
            } else {
                st.auto_mount(&target)?;
            }
        }
        Ok(snap_name)
    }

    fn diff(&self, from: &SnapshotName, to: &ObjectName) -> Result<Vec<DiffEntry>> {
        let st = self.lock();
        let a = &st.snap(from)?.files;
        let b = match to {
            ObjectName::Dataset(d) => &st.ds(d)?.files,
            ObjectName::Snapshot(s) => &st.snap(s)?.files,
        };
        // `to` must be a later state of `from`'s dataset, or a clone of `from`.
        let clone_of_from = st.ds(&to.dataset())?.origin.as_ref() == Some(from);
        if to.dataset() != from.dataset() && !clone_of_from {
            return Err(ZfsError::StreamMismatch {
                name: to.to_string(),
                detail: format!("not a later state of {}", from.dataset()),
            });
        }
        let mut out = BTreeSet::new();
        let mut touched_dirs = BTreeSet::new();
        for (p, blk) in b {
            match a.get(p) {
                None => {
                    out.insert(DiffEntry {
                        path: p.clone(),
                        change: Change::Added,
                        file_type: 'F',
                    });
                    touched_dirs.insert(parent_dir(p));
                }
                Some(old) if old.id != blk.id => {
                    out.insert(DiffEntry {
                        path: p.clone(),
                        change: Change::Modified,
                        file_type: 'F',
                    });
                }
                _ => {}
            }
        }
        for p in a.keys().filter(|p| !b.contains_key(*p)) {
            out.insert(DiffEntry {
                path: p.clone(),
                change: Change::Removed,
                file_type: 'F',
            });
            touched_dirs.insert(parent_dir(p));
        }
        let (da, db) = (dirs_of(a), dirs_of(b));
        for d in db.difference(&da) {
            out.insert(DiffEntry {
                path: d.clone(),
                change: Change::Added,
                file_type: '/',
            });
            touched_dirs.insert(parent_dir(d));
        }
        for d in da.difference(&db) {
            out.insert(DiffEntry {
                path: d.clone(),
                change: Change::Removed,
                file_type: '/',
            });
            touched_dirs.insert(parent_dir(d));
        }
        for d in touched_dirs {
            let existed = d == "/" || (da.contains(&d) && db.contains(&d));
            if existed {
                out.insert(DiffEntry {
                    path: d,
                    change: Change::Modified,
                    file_type: '/',
                });
            }
        }
        Ok(out.into_iter().collect())
    }

    fn mount(&self, target: &ObjectName, opts: &MountOptions) -> Result<PathBuf> {
        let mut st = self.lock();
        if !st.exists(target) {
            return Err(ZfsError::NotFound {
                name: target.to_string(),
            });
        }
        match (&opts.at, target) {
            (None, ObjectName::Dataset(d)) => {
                let mp = st
                    .prop(target, &PropName::native("mountpoint"))?
                    .value
                    .unwrap_or_default();
                if st.ds(d)?.mounted {
                    return Err(ZfsError::Busy {
                        name: d.to_string(),
                    });
                }
                st.ds_mut(d)?.mounted = true;
                Ok(PathBuf::from(mp))
            }
            (None, ObjectName::Snapshot(s)) => Err(ZfsError::NotMounted {
                name: format!("{s} (a snapshot needs a path to be mounted at)"),
            }),
            (Some(at), _) => {
                if st.mounts.contains_key(at) {
                    return Err(ZfsError::Busy {
                        name: at.display().to_string(),
                    });
                }
                let ro = opts.read_only || matches!(target, ObjectName::Snapshot(_));
                st.mounts.insert(at.clone(), (target.clone(), ro));
                Ok(at.clone())
            }
        }
    }

    fn unmount(&self, path: &Path) -> Result<()> {
        let mut st = self.lock();
        if st.mounts.remove(path).is_some() {
            return Ok(());
        }
        let found = st.datasets.iter().find_map(|(n, d)| {
            let mp = st
                .prop(&n.into(), &PropName::native("mountpoint"))
                .ok()?
                .value?;
            (d.mounted && Path::new(&mp) == path).then(|| n.clone())
        });
        match found {
            Some(n) => {
                st.ds_mut(&n)?.mounted = false;
                Ok(())
            }
            None => Err(ZfsError::NotMounted {
                name: path.display().to_string(),
            }),
        }
    }

    fn pool(&self, pool: &PoolName) -> Result<PoolInfo> {
        let st = self.lock();
        let p = st.pool(pool)?;
        let allocated = st.allocated(pool);
        Ok(PoolInfo {
            name: pool.clone(),
            guid: p.guid,
            size: p.size,
            allocated,
            free: p.size.saturating_sub(allocated),
            health: "ONLINE".into(),
            bootfs: p.bootfs.clone(),
        })
    }

    fn set_bootfs(&self, pool: &PoolName, dataset: Option<&DatasetName>) -> Result<()> {
        let mut st = self.lock();
        st.pool(pool)?;
        if let Some(d) = dataset {
            st.ds(d)?;
            if &d.pool() != pool {
                return Err(ZfsError::RefusedName {
                    name: d.to_string(),
                    detail: format!("bootfs must be a dataset in pool {pool}"),
                });
            }
        }
        st.pools.get_mut(pool).expect("checked").bootfs = dataset.cloned();
        Ok(())
    }

    fn sync(&self, pool: &PoolName) -> Result<()> {
        self.lock().pool(pool).map(drop)
    }
}

struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
