//! The appliance layout: where versions, configs, data and the journal live in the pool,
//! read from `/etc/cairn/layout.yaml`.

use std::path::PathBuf;

use cairn_zfs::{DatasetName, PoolName, PropName, SnapshotName};
use serde::Deserialize;

use crate::EngineError;

/// The layout file, as an operator writes it.
///
/// ```yaml
/// pool: rpool
/// prefix: ""            # datasets go under <pool>/<prefix>/ROOT ...; empty for <pool>/ROOT
/// config_mountpoint: /etc/appliance
/// data:                 # customer data datasets, shared by all versions
///   - name: app
///     mountpoint: /var/lib/app
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LayoutFile {
    pub pool: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_config_mountpoint")]
    pub config_mountpoint: PathBuf,
    #[serde(default)]
    pub data: Vec<DataSpec>,
    #[serde(default = "default_journal_mountpoint")]
    pub journal_mountpoint: PathBuf,
}

fn default_config_mountpoint() -> PathBuf {
    PathBuf::from("/etc/appliance")
}

fn default_journal_mountpoint() -> PathBuf {
    PathBuf::from("/var/lib/cairn/journal")
}

/// One customer data dataset.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub name: String,
    pub mountpoint: PathBuf,
}

/// The layout, validated: every dataset name is one ZFS accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub pool: PoolName,
    base: DatasetName,
    pub config_mountpoint: PathBuf,
    pub journal_mountpoint: PathBuf,
    pub data: Vec<(DatasetName, PathBuf)>,
}

/// Properties cairn writes. All of cairn's state is in these (BRIEF §2).
pub mod props {
    use cairn_zfs::PropName;

    fn p(n: &'static str) -> PropName {
        PropName::user(n).expect("cairn property names are valid")
    }
    /// Set on everything cairn created; cairn never touches a dataset without it.
    pub fn managed() -> PropName {
        p("cairn:managed")
    }
    pub fn version() -> PropName {
        p("cairn:version")
    }
    pub fn state() -> PropName {
        p("cairn:state")
    }
    pub fn created() -> PropName {
        p("cairn:created")
    }
    pub fn last_booted() -> PropName {
        p("cairn:last-booted")
    }
    pub fn pinned() -> PropName {
        p("cairn:pinned")
    }
    pub fn expires() -> PropName {
        p("cairn:expires")
    }
    pub fn bundle() -> PropName {
        p("cairn:bundle")
    }
    pub fn health() -> PropName {
        p("cairn:health")
    }
    pub fn failed_reason() -> PropName {
        p("cairn:failed-reason")
    }
    /// On the ROOT container: the version that was default before the current one.
    pub fn last_known_good() -> PropName {
        p("cairn:last-known-good")
    }
    /// On the ROOT container: the operation in progress and its step (crash safety).
    pub fn op() -> PropName {
        p("cairn:op")
    }
    /// On the ROOT container: the layout format.
    pub fn layout_version() -> PropName {
        p("cairn:layout")
    }
    /// ZFSBootMenu reads this to build a BE's kernel command line.
    pub fn zbm_commandline() -> PropName {
        p("org.zfsbootmenu:commandline")
    }
}

impl Layout {
    pub fn from_yaml(text: &str) -> Result<Self, EngineError> {
        let file: LayoutFile = serde_saphyr::from_str(text).map_err(|e| EngineError::Layout {
            detail: e.to_string(),
        })?;
        Self::from_file(&file)
    }

    pub fn from_file(f: &LayoutFile) -> Result<Self, EngineError> {
        let bad = |detail: String| EngineError::Layout { detail };
        let pool = PoolName::new(&f.pool).map_err(|e| bad(e.to_string()))?;
        let base = if f.prefix.is_empty() {
            pool.root()
        } else {
            pool.root()
                .child(f.prefix.trim_matches('/'))
                .map_err(|e| bad(format!("prefix: {e}")))?
        };
        let mut data = Vec::new();
        for d in &f.data {
            let ds = base
                .child("DATA")
                .and_then(|b| b.child(&d.name))
                .map_err(|e| bad(format!("data '{}': {e}", d.name)))?;
            if !d.mountpoint.is_absolute() {
                return Err(bad(format!(
                    "data '{}': mountpoint must be absolute",
                    d.name
                )));
            }
            data.push((ds, d.mountpoint.clone()));
        }
        for m in [&f.config_mountpoint, &f.journal_mountpoint] {
            if !m.is_absolute() {
                return Err(bad(format!("{} must be an absolute path", m.display())));
            }
        }
        Ok(Self {
            pool,
            base,
            config_mountpoint: f.config_mountpoint.clone(),
            journal_mountpoint: f.journal_mountpoint.clone(),
            data,
        })
    }

    /// A layout with defaults for `pool`, one data dataset `app` (tests, simulator).
    pub fn simple(pool: &PoolName) -> Self {
        Self::from_file(&LayoutFile {
            pool: pool.to_string(),
            prefix: String::new(),
            config_mountpoint: default_config_mountpoint(),
            data: vec![DataSpec {
                name: "app".into(),
                mountpoint: PathBuf::from("/var/lib/app"),
            }],
            journal_mountpoint: default_journal_mountpoint(),
        })
        .expect("the simple layout is valid")
    }

    fn join(&self, rel: &str) -> DatasetName {
        self.base.child(rel).expect("layout names are valid")
    }

    pub fn base(&self) -> &DatasetName {
        &self.base
    }
    pub fn root_container(&self) -> DatasetName {
        self.join("ROOT")
    }
    pub fn config_container(&self) -> DatasetName {
        self.join("CONFIG")
    }
    pub fn data_container(&self) -> DatasetName {
        self.join("DATA")
    }
    /// Each version's own default configuration (from its bundle).
    pub fn defaults_container(&self) -> DatasetName {
        self.join("DEFAULTS")
    }
    pub fn defaults(&self, id: &VersionId) -> DatasetName {
        self.join(&format!("DEFAULTS/{id}"))
    }
    pub fn journal(&self) -> DatasetName {
        self.join("JOURNAL")
    }
    pub fn root(&self, id: &VersionId) -> DatasetName {
        self.join(&format!("ROOT/{id}"))
    }
    pub fn config(&self, id: &VersionId) -> DatasetName {
        self.join(&format!("CONFIG/{id}"))
    }
    pub fn data_datasets(&self) -> impl Iterator<Item = &DatasetName> {
        self.data.iter().map(|(d, _)| d)
    }
    /// The name of a pre-upgrade snapshot taken before installing `id`.
    pub fn pre_snapshot(ds: &DatasetName, id: &VersionId) -> SnapshotName {
        ds.snapshot(&format!("cairn-pre-{id}"))
            .expect("valid snapshot name")
    }

    /// The version id of a ROOT/<id> dataset, if it is one.
    pub fn id_of_root(&self, ds: &DatasetName) -> Option<VersionId> {
        let parent = ds.parent()?;
        (parent == self.root_container())
            .then(|| VersionId::new(ds.basename()).ok())
            .flatten()
    }
}

/// A version id: the dataset basename of a BE. Restricted to `[a-z0-9._-]`, starting with
/// a letter or digit, so it is safe in dataset names, GRUB scripts, kernel command lines
/// and snapshot names (never a substring trap for zfs-initramfs: see boot.md §1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct VersionId(String);

impl VersionId {
    pub fn new(s: &str) -> Result<Self, EngineError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(EngineError::BadVersionId { id: s.to_owned() })
        }
    }

    /// An id derived from a version string: lowercase, other characters as `-`.
    pub fn from_version(version: &str) -> Result<Self, EngineError> {
        let s: String = version
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        Self::new(s.trim_start_matches(['.', '_', '-']))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for VersionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Values for `cairn:managed`.
pub const MANAGED: &str = "yes";

/// The property list every cairn-created dataset gets.
pub fn managed_props() -> Vec<(PropName, String)> {
    vec![(props::managed(), MANAGED.into())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let l = Layout::from_yaml(
            "pool: rpool\nprefix: appl\ndata:\n  - name: app\n    mountpoint: /var/lib/app\n",
        )
        .unwrap();
        assert_eq!(l.root_container().as_str(), "rpool/appl/ROOT");
        assert_eq!(l.data[0].0.as_str(), "rpool/appl/DATA/app");
        assert_eq!(l.config_mountpoint, PathBuf::from("/etc/appliance"));
        for bad in [
            "pool: 9pool\n",
            "pool: rpool\nbogus: 1\n",
            "pool: rpool\ndata:\n  - name: a*b\n    mountpoint: /x\n",
            "pool: rpool\ndata:\n  - name: a\n    mountpoint: rel\n",
            "pool: [\n",
        ] {
            let e = Layout::from_yaml(bad).expect_err(bad);
            assert!(matches!(e, EngineError::Layout { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn version_ids() {
        assert_eq!(
            VersionId::from_version("2.0 Beta").unwrap().as_str(),
            "2.0-beta"
        );
        assert!(VersionId::new("v1").is_ok());
        for bad in ["", "-x", "V1", "a/b", "a@b", "a b"] {
            assert!(VersionId::new(bad).is_err(), "{bad}");
        }
        let l = Layout::simple(&PoolName::new("p").unwrap());
        let id = VersionId::new("v2").unwrap();
        assert_eq!(l.id_of_root(&l.root(&id)), Some(id.clone()));
        assert_eq!(l.id_of_root(&l.config(&id)), None);
    }
}
