//! Versions as the engine reports them, and version-string ordering.

use std::cmp::Ordering;

use serde::Serialize;

use crate::VersionId;

/// The lifecycle state stored in `cairn:state` on a version's root and config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stored {
    /// Being built; removed by reconcile if the build did not finish.
    Staging,
    /// Complete and bootable, never confirmed yet.
    Staged,
    /// Booted and confirmed at least once.
    Confirmed,
    /// Failed its trial or was marked failed.
    Failed,
    /// The factory baseline (never booted).
    Factory,
}

impl Stored {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staging => "staging",
            Self::Staged => "staged",
            Self::Confirmed => "confirmed",
            Self::Failed => "failed",
            Self::Factory => "factory",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "staging" => Self::Staging,
            "staged" => Self::Staged,
            "confirmed" => Self::Confirmed,
            "failed" => Self::Failed,
            "factory" => Self::Factory,
            _ => return None,
        })
    }
}

/// One version, with everything `cairnctl status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub id: VersionId,
    pub version: String,
    pub stored: Stored,
    /// The one-word state an operator sees: active, trial, last-known-good, staged,
    /// failed, factory, staging.
    pub state: &'static str,
    pub created: u64,
    pub last_booted: Option<u64>,
    pub bundle: Option<String>,
    pub pinned: bool,
    pub health: Option<String>,
    pub failed_reason: Option<String>,
    pub is_default: bool,
    pub is_trial: bool,
    pub is_booted: bool,
    pub is_last_known_good: bool,
    /// Bytes used by the root and config datasets.
    pub used: u64,
    /// The root's origin snapshot, if it is a clone.
    pub origin: Option<String>,
    /// When retention removes it (seconds since the epoch), if it is expiring.
    pub expires: Option<u64>,
}

/// Compares version strings the way people read them: numeric runs as numbers
/// (`1.10 > 1.9`), other runs as text; a `-suffix` sorts before the plain release.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (a_main, a_pre) = a.split_once('-').map_or((a, None), |(m, p)| (m, Some(p)));
    let (b_main, b_pre) = b.split_once('-').map_or((b, None), |(m, p)| (m, Some(p)));
    match compare_runs(a_main, b_main) {
        Ordering::Equal => match (a_pre, b_pre) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => compare_runs(x, y),
        },
        o => o,
    }
}

fn compare_runs(a: &str, b: &str) -> Ordering {
    let split = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for c in s.chars() {
            if !c.is_ascii_alphanumeric() {
                v.push(String::new());
                continue;
            }
            match v.last_mut() {
                Some(last)
                    if !last.is_empty()
                        && last.chars().all(|x| x.is_ascii_digit()) == c.is_ascii_digit() =>
                {
                    last.push(c)
                }
                _ => v.push(c.to_string()),
            }
        }
        v.into_iter().filter(|s| !s.is_empty()).collect()
    };
    let (xa, xb) = (split(a), split(b));
    for (x, y) in xa.iter().zip(&xb) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    xa.len().cmp(&xb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_people_read_them() {
        use Ordering::*;
        for (a, b, want) in [
            ("1.10", "1.9", Greater),
            ("2.0", "2.0", Equal),
            ("2.0-rc1", "2.0", Less),
            ("2.0.1", "2.0", Greater),
            ("1.0", "1.0.0", Less),
            ("3", "20", Less),
            ("2.0-rc2", "2.0-rc10", Less),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        }
    }
}
