//! Validated names for pools, datasets, snapshots and properties, checked as ZFS checks them.
//!
//! The rules follow OpenZFS `zfs_namecheck.c`: components of letters, digits and `_-.: `,
//! full names shorter than `ZFS_MAX_DATASET_NAME_LEN` (256), pool names that begin with a
//! letter and are not reserved. User properties follow `zfs_prop_user()`: lowercase
//! letters, digits and `_-.:`, with at least one `:`. A name that passes here is one ZFS
//! accepts; one ZFS rejects never gets this far.

use std::fmt;

/// Longest full name ZFS accepts (`ZFS_MAX_DATASET_NAME_LEN` minus the terminating NUL).
pub const MAX_NAME_LEN: usize = 255;
/// Longest pool name: ZFS keeps room for `pool/$ORIGIN@$ORIGIN`.
pub const MAX_POOL_NAME_LEN: usize = 256 - 2 - 2 * "$ORIGIN".len() - 1;
/// Longest user property name (`ZAP_MAXNAMELEN` minus NUL).
pub const MAX_PROPERTY_NAME_LEN: usize = 255;
/// Longest user property value ZFS stores (`ZAP_MAXVALUELEN`).
pub const MAX_PROPERTY_VALUE_LEN: usize = 8191;

/// Why a name was refused. Each message names the offending input and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name '{name}' is {len} characters long; ZFS allows at most {max}")]
    TooLong {
        kind: &'static str,
        name: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{kind} name '{name}' contains {ch:?}; ZFS allows only letters, digits, '_', '-', '.', ':' and space"
    )]
    InvalidChar {
        kind: &'static str,
        name: String,
        ch: char,
    },
    #[error("{kind} name '{name}' has an empty component (leading, trailing or double '/')")]
    EmptyComponent { kind: &'static str, name: String },
    #[error("{kind} name '{name}' has a '.' or '..' component, which ZFS reserves")]
    DotComponent { kind: &'static str, name: String },
    #[error("pool name '{name}' must begin with a letter")]
    PoolNoLetter { name: String },
    #[error("pool name '{name}' is reserved by ZFS (mirror, raidz, draid, spare, log)")]
    PoolReserved { name: String },
    #[error("pool name '{name}' looks like a disk device (c0...); ZFS refuses it")]
    PoolDiskLike { name: String },
    #[error("'{name}' is not a snapshot name; expected <dataset>@<snapshot>")]
    NotSnapshot { name: String },
    #[error("'{name}' is a snapshot name; expected a dataset name")]
    NotDataset { name: String },
    #[error("'{name}' has more than one '@'")]
    MultipleAt { name: String },
    #[error(
        "property name '{name}' is not valid: user properties need a ':' and only lowercase letters, digits, '_', '-', '.', ':'"
    )]
    BadProperty { name: String },
    #[error(
        "value for property '{name}' is not valid: {why} (cairn reads values back as tab-separated lines)"
    )]
    BadValue { name: String, why: &'static str },
    #[error("hold tag '{tag}' is not valid: {why}")]
    BadHoldTag { tag: String, why: &'static str },
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | ' ')
}

fn check_component(kind: &'static str, full: &str, comp: &str) -> Result<(), NameError> {
    if comp.is_empty() {
        return Err(NameError::EmptyComponent {
            kind,
            name: full.to_owned(),
        });
    }
    if comp == "." || comp == ".." {
        return Err(NameError::DotComponent {
            kind,
            name: full.to_owned(),
        });
    }
    if let Some(ch) = comp.chars().find(|c| !valid_char(*c)) {
        return Err(NameError::InvalidChar {
            kind,
            name: full.to_owned(),
            ch,
        });
    }
    Ok(())
}

fn check_len(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            len: name.len(),
            max,
        });
    }
    Ok(())
}

/// A pool name as `zpool create` accepts it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolName(String);

impl PoolName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_len("pool", &name, MAX_POOL_NAME_LEN)?;
        if let Some(ch) = name.chars().find(|c| !valid_char(*c)) {
            return Err(NameError::InvalidChar {
                kind: "pool",
                name,
                ch,
            });
        }
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NameError::PoolNoLetter { name });
        }
        let reserved = ["mirror", "raidz", "draid", "spare"]
            .iter()
            .any(|p| name.starts_with(p))
            || name == "log";
        if reserved {
            return Err(NameError::PoolReserved { name });
        }
        let b = name.as_bytes();
        if b[0] == b'c' && b.get(1).is_some_and(u8::is_ascii_digit) {
            return Err(NameError::PoolDiskLike { name });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pool's top-level dataset.
    pub fn root(&self) -> DatasetName {
        DatasetName(self.0.clone())
    }
}

/// A filesystem or volume name: `pool[/component]*`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_len("dataset", &name, MAX_NAME_LEN)?;
        if name.contains('@') {
            return Err(NameError::NotDataset { name });
        }
        let mut comps = name.split('/');
        let pool = comps.next().unwrap_or_default();
        check_component("dataset", &name, pool)?;
        if !pool.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NameError::PoolNoLetter { name });
        }
        for comp in comps {
            check_component("dataset", &name, comp)?;
        }
        Ok(Self(name))
    }

    /// A name taken as given, for tests that check the backend refuses what the
    /// validator refuses. Never use it for names that reach a real system.
    #[doc(hidden)]
    pub fn new_unchecked(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn pool(&self) -> PoolName {
        PoolName(self.0.split('/').next().unwrap_or_default().to_owned())
    }

    /// The parent dataset, or `None` for a pool's top-level dataset.
    pub fn parent(&self) -> Option<DatasetName> {
        self.0
            .rsplit_once('/')
            .map(|(p, _)| DatasetName(p.to_owned()))
    }

    /// The last component.
    pub fn basename(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }

    pub fn child(&self, component: &str) -> Result<DatasetName, NameError> {
        DatasetName::new(format!("{}/{component}", self.0))
    }

    pub fn snapshot(&self, snap: &str) -> Result<SnapshotName, NameError> {
        SnapshotName::new(format!("{}@{snap}", self.0))
    }

    /// True when `self` is `other` or lies beneath it.
    pub fn is_within(&self, other: &DatasetName) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// Depth below the pool: `pool` is 0, `pool/a` is 1.
    pub fn depth(&self) -> usize {
        self.0.matches('/').count()
    }
}

/// A snapshot name: `dataset@snap`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName {
    full: String,
    at: usize,
}

impl SnapshotName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let full = name.into();
        check_len("snapshot", &full, MAX_NAME_LEN)?;
        let Some(at) = full.find('@') else {
            return Err(NameError::NotSnapshot { name: full });
        };
        if full[at + 1..].contains('@') {
            return Err(NameError::MultipleAt { name: full });
        }
        DatasetName::new(&full[..at]).map_err(|e| match e {
            NameError::EmptyComponent { .. } | NameError::Empty { .. } => {
                NameError::EmptyComponent {
                    kind: "snapshot",
                    name: full.clone(),
                }
            }
            other => other,
        })?;
        check_component("snapshot", &full, &full[at + 1..])?;
        Ok(Self { full, at })
    }

    #[doc(hidden)]
    pub fn new_unchecked(name: impl Into<String>) -> Self {
        let full = name.into();
        let at = full.find('@').unwrap_or(full.len());
        Self { full, at }
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn dataset(&self) -> DatasetName {
        DatasetName(self.full[..self.at].to_owned())
    }

    /// The part after `@`.
    pub fn snap(&self) -> &str {
        self.full.get(self.at + 1..).unwrap_or_default()
    }

    pub fn pool(&self) -> PoolName {
        self.dataset().pool()
    }
}

/// Either a dataset or a snapshot, as many `zfs` subcommands take.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectName {
    Dataset(DatasetName),
    Snapshot(SnapshotName),
}

impl ObjectName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.contains('@') {
            SnapshotName::new(name).map(Self::Snapshot)
        } else {
            DatasetName::new(name).map(Self::Dataset)
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Dataset(d) => d.as_str(),
            Self::Snapshot(s) => s.as_str(),
        }
    }

    /// The dataset itself, or the dataset a snapshot belongs to.
    pub fn dataset(&self) -> DatasetName {
        match self {
            Self::Dataset(d) => d.clone(),
            Self::Snapshot(s) => s.dataset(),
        }
    }

    pub fn pool(&self) -> PoolName {
        self.dataset().pool()
    }
}

impl From<DatasetName> for ObjectName {
    fn from(d: DatasetName) -> Self {
        Self::Dataset(d)
    }
}

impl From<SnapshotName> for ObjectName {
    fn from(s: SnapshotName) -> Self {
        Self::Snapshot(s)
    }
}

impl From<&DatasetName> for ObjectName {
    fn from(d: &DatasetName) -> Self {
        Self::Dataset(d.clone())
    }
}

impl From<&SnapshotName> for ObjectName {
    fn from(s: &SnapshotName) -> Self {
        Self::Snapshot(s.clone())
    }
}

/// A property name: a native one (`mountpoint`, `used`) or a user one (`cairn:state`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PropName(String);

impl PropName {
    /// Any property name: user properties are checked by ZFS's user-property rules,
    /// native ones must be lowercase words (`usedbysnapshots`, `org.x` is refused).
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.contains(':') {
            return Self::user(name);
        }
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Self(name))
        } else {
            Err(NameError::BadProperty { name })
        }
    }

    /// A user property (`module:name`).
    pub fn user(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= MAX_PROPERTY_NAME_LEN
            && name.contains(':')
            && name.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | ':')
            });
        if ok {
            Ok(Self(name))
        } else {
            Err(NameError::BadProperty { name })
        }
    }

    /// A native property name known at compile time.
    pub fn native(name: &'static str) -> Self {
        debug_assert!(!name.contains(':'));
        Self(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_user(&self) -> bool {
        self.0.contains(':')
    }

    /// Checks a value before it is written, so that every value reads back unchanged.
    pub fn check_value(&self, value: &str) -> Result<(), NameError> {
        let why = if value.len() > MAX_PROPERTY_VALUE_LEN {
            Some("longer than 8191 bytes")
        } else if value.contains(['\t', '\n', '\r', '\0']) {
            Some("contains a tab, newline or NUL")
        } else if value == "-" {
            Some("'-' means 'unset' in ZFS output")
        } else if value.is_empty() && self.is_user() {
            Some("empty (use inherit to clear a user property)")
        } else {
            None
        };
        match why {
            Some(why) => Err(NameError::BadValue {
                name: self.0.clone(),
                why,
            }),
            None => Ok(()),
        }
    }
}

/// Checks a hold tag: ZFS allows up to 255 bytes, no NUL; we also refuse tabs and
/// newlines, which `zfs holds -H` could not carry.
pub fn check_hold_tag(tag: &str) -> Result<(), NameError> {
    let why = if tag.is_empty() {
        Some("empty")
    } else if tag.len() > 255 {
        Some("longer than 255 bytes")
    } else if tag.contains(['\t', '\n', '\r', '\0']) {
        Some("contains a tab, newline or NUL")
    } else {
        None
    };
    match why {
        Some(why) => Err(NameError::BadHoldTag {
            tag: tag.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.as_str())
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(PoolName, DatasetName, SnapshotName, ObjectName, PropName);

macro_rules! deserialize_via_new {
    ($($t:ty => $ctor:path),*) => {$(
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $ctor(s).map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_via_new!(
    PoolName => PoolName::new,
    DatasetName => DatasetName::new,
    SnapshotName => SnapshotName::new,
    PropName => PropName::new
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_accept_what_zfs_accepts() {
        for ok in ["rpool", "rpool/ROOT/v1", "a/b c/d:e.f-g_h", "p/x"] {
            assert!(DatasetName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn datasets_refuse_what_zfs_refuses() {
        let long = format!("p/{}", "a".repeat(254));
        type Check = fn(&NameError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, NameError::Empty { .. })),
            ("p//a", |e| matches!(e, NameError::EmptyComponent { .. })),
            ("p/a/", |e| matches!(e, NameError::EmptyComponent { .. })),
            ("/p", |e| matches!(e, NameError::EmptyComponent { .. })),
            ("p/a*b", |e| {
                matches!(e, NameError::InvalidChar { ch: '*', .. })
            }),
            ("p/%x", |e| {
                matches!(e, NameError::InvalidChar { ch: '%', .. })
            }),
            ("p/..", |e| matches!(e, NameError::DotComponent { .. })),
            ("p/a@b", |e| matches!(e, NameError::NotDataset { .. })),
            ("1p/a", |e| matches!(e, NameError::PoolNoLetter { .. })),
            (&long, |e| matches!(e, NameError::TooLong { len: 256, .. })),
        ];
        for (name, want) in cases {
            let err = DatasetName::new(*name).expect_err(name);
            assert!(want(&err), "{name}: {err}");
            assert!(!err.to_string().is_empty());
        }
        // exactly at the limit is fine
        assert!(DatasetName::new(format!("p/{}", "a".repeat(253))).is_ok());
    }

    #[test]
    fn pools() {
        assert!(PoolName::new("rpool").is_ok());
        for (bad, want) in [
            ("mirror0", "reserved"),
            ("raidz", "reserved"),
            ("log", "reserved"),
            ("c0t0", "disk"),
            ("9p", "letter"),
            ("a/b", "'/'"),
        ] {
            let e = PoolName::new(bad).expect_err(bad).to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(PoolName::new("logs").is_ok());
        assert!(PoolName::new("a".repeat(MAX_POOL_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn snapshots() {
        let s = SnapshotName::new("rpool/ROOT/v1@factory").unwrap();
        assert_eq!(s.dataset().as_str(), "rpool/ROOT/v1");
        assert_eq!(s.snap(), "factory");
        assert_eq!(s.pool().as_str(), "rpool");
        for bad in ["rpool/ROOT", "p@a@b", "p@", "@s", "p@a/b", "p@a*"] {
            assert!(SnapshotName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_relate() {
        let d = DatasetName::new("p/ROOT/v1").unwrap();
        assert_eq!(d.parent().unwrap().as_str(), "p/ROOT");
        assert_eq!(d.basename(), "v1");
        assert!(d.is_within(&DatasetName::new("p/ROOT").unwrap()));
        assert!(
            !DatasetName::new("p/ROOTx")
                .unwrap()
                .is_within(&DatasetName::new("p/ROOT").unwrap())
        );
        assert_eq!(d.depth(), 2);
        assert!(d.child("a/b").is_ok());
        assert!(d.child("").is_err());
    }

    #[test]
    fn properties() {
        assert!(PropName::user("cairn:state").is_ok());
        assert!(PropName::new("org.zfsbootmenu:commandline").is_ok());
        assert!(PropName::new("mountpoint").is_ok());
        for bad in ["Cairn:state", "cairnstate", "cairn state:x", "", "a:b\t"] {
            assert!(PropName::user(bad).is_err(), "{bad}");
        }
        assert!(PropName::new("Used").is_err());
        let p = PropName::user("cairn:x").unwrap();
        assert!(p.check_value("ok value").is_ok());
        for bad in ["a\tb", "a\nb", "-", ""] {
            assert!(p.check_value(bad).is_err(), "{bad:?}");
        }
        assert!(p.check_value(&"x".repeat(8192)).is_err());
    }

    #[test]
    fn hold_tags() {
        assert!(check_hold_tag("cairn:factory").is_ok());
        assert!(check_hold_tag("").is_err());
        assert!(check_hold_tag("a\nb").is_err());
    }

    #[test]
    fn serde_validates() {
        let d: DatasetName = serde_json::from_str("\"p/a\"").unwrap();
        assert_eq!(d.as_str(), "p/a");
        assert!(serde_json::from_str::<DatasetName>("\"p//a\"").is_err());
    }
}
