//! Retention (BRIEF §7): a pure planner from what is on the pool to what may go, and in
//! which order. No I/O here: [`crate::Engine::inventory`] gathers the input and
//! [`crate::Engine::cleanup`] executes (or, dry, only shows) the plan.
//!
//! Rules:
//! - never planned: the booted version, the default, the trial target, the last known
//!   good, the factory baseline, pinned versions, and anything without `cairn:managed`;
//! - a version not booted for `expire_after_days` (or never booted, older than the default,
//!   for `expire_never_booted_days`) gets an expiry date `grace_days` ahead; it is
//!   removed once that date has passed; the date is cleared when the version no longer
//!   meets the criteria (booted again, pinned, policy changed);
//! - more than `keep_max` versions: the oldest unprotected ones expire too;
//! - at least `keep_min` versions always stay;
//! - below `free_space_percent`, versions whose expiry is set go before their grace ends
//!   (oldest first) until the target is met;
//! - a version whose snapshots other datasets are cloned from is removed after promoting
//!   those clones (never a clone of the factory baseline);
//! - pre-upgrade snapshots of data keep the newest `data_snapshots_keep`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{EngineError, VersionId};

const DAY: u64 = 86_400;

/// The retention policy, from `/etc/cairn/retention.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub keep_min: usize,
    pub keep_max: usize,
    pub expire_after_days: u64,
    pub expire_never_booted_days: u64,
    pub free_space_percent: u8,
    pub grace_days: u64,
    pub data_snapshots_keep: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            keep_min: 3,
            keep_max: 10,
            expire_after_days: 90,
            expire_never_booted_days: 14,
            free_space_percent: 20,
            grace_days: 7,
            data_snapshots_keep: 5,
        }
    }
}

impl Policy {
    pub fn from_yaml(text: &str) -> Result<Self, EngineError> {
        let p: Policy = serde_saphyr::from_str(text).map_err(|e| EngineError::Layout {
            detail: format!("retention policy: {e}"),
        })?;
        if p.keep_min == 0 || p.keep_max < p.keep_min || p.free_space_percent > 90 {
            return Err(EngineError::Layout {
                detail:
                    "retention policy: need 1 <= keep_min <= keep_max and free_space_percent <= 90"
                        .into(),
            });
        }
        Ok(p)
    }
}

/// One version as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionFacts {
    pub id: VersionId,
    pub created: u64,
    pub last_booted: Option<u64>,
    pub expires: Option<u64>,
    pub pinned: bool,
    pub managed: bool,
    pub booted: bool,
    pub default: bool,
    pub trial: bool,
    pub last_known_good: bool,
    pub factory: bool,
    /// The version's datasets (root, config).
    pub datasets: Vec<DsFacts>,
}

/// A version dataset: ZFS's `used`, its origin snapshot, its creation txg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DsFacts {
    pub name: String,
    pub used: u64,
    pub origin: Option<String>,
    pub createtxg: u64,
}

/// A snapshot: where it lives, what depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapFacts {
    pub name: String,
    pub dataset: String,
    pub createtxg: u64,
    pub used: u64,
    pub holds: u32,
    /// Datasets cloned from it.
    pub clones: Vec<String>,
    pub managed: bool,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    pub versions: Vec<VersionFacts>,
    pub snapshots: Vec<SnapFacts>,
    /// Customer data datasets (their pre-upgrade snapshots have their own keep-count).
    pub data: Vec<String>,
    pub pool_size: u64,
    pub pool_free: u64,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Step {
    /// `zfs promote`: the clone takes over the snapshots it depends on.
    Promote { dataset: String, reason: String },
    /// `zfs destroy -r` of a version dataset, or of one snapshot.
    Destroy {
        target: String,
        frees: u64,
        reason: String,
    },
}

/// An expiry date to set (or clear with `None`) on a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expiry {
    pub id: VersionId,
    pub expires: Option<u64>,
    pub why: String,
}

/// What a run will do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub expiries: Vec<Expiry>,
    /// Versions in their grace period, with the date they go.
    pub notices: Vec<(VersionId, u64)>,
    pub remove: Vec<VersionId>,
    pub steps: Vec<Step>,
    pub frees: u64,
}

/// Why a version may never be planned, if it may not.
pub fn protection(v: &VersionFacts) -> Option<&'static str> {
    Some(match () {
        _ if !v.managed => "not cairn's",
        _ if v.booted => "running",
        _ if v.default => "default",
        _ if v.trial => "trial target",
        _ if v.last_known_good => "last known good",
        _ if v.factory => "factory baseline",
        _ if v.pinned => "pinned",
        _ => return None,
    })
}

/// The planner. Pure: the same input gives the same plan.
pub fn plan(inv: &Inventory, policy: &Policy, now: u64) -> Plan {
    let mut out = Plan::default();
    let default_created = inv.versions.iter().find(|v| v.default).map(|v| v.created);
    // Oldest first.
    let mut versions: Vec<&VersionFacts> = inv.versions.iter().filter(|v| v.managed).collect();
    versions.sort_by_key(|v| (v.created, v.id.clone()));
    let unprotected: Vec<&VersionFacts> = versions
        .iter()
        .copied()
        .filter(|v| protection(v).is_none())
        .collect();
    let over_max = versions.len().saturating_sub(policy.keep_max);
    let over: BTreeSet<&VersionId> = unprotected.iter().take(over_max).map(|v| &v.id).collect();

    // 1. Expiry dates: set when the criteria are first met, cleared when they are not.
    let mut expires: BTreeMap<VersionId, u64> = BTreeMap::new();
    for v in &versions {
        let why = if protection(v).is_some() {
            None
        } else if over.contains(&v.id) {
            Some(format!("more than {} versions are kept", policy.keep_max))
        } else {
            match v.last_booted {
                Some(b) if now.saturating_sub(b) >= policy.expire_after_days * DAY => {
                    Some(format!("not booted for {} days", policy.expire_after_days))
                }
                None if default_created.is_some_and(|d| v.created < d)
                    && now.saturating_sub(v.created) >= policy.expire_never_booted_days * DAY =>
                {
                    Some(format!(
                        "never booted, older than the default, for {} days",
                        policy.expire_never_booted_days
                    ))
                }
                _ => None,
            }
        };
        match (why, v.expires) {
            (Some(why), None) => {
                let at = now + policy.grace_days * DAY;
                out.expiries.push(Expiry {
                    id: v.id.clone(),
                    expires: Some(at),
                    why,
                });
                expires.insert(v.id.clone(), at);
            }
            (Some(_), Some(at)) => {
                expires.insert(v.id.clone(), at);
            }
            (None, Some(_)) => out.expiries.push(Expiry {
                id: v.id.clone(),
                expires: None,
                why: protection(v)
                    .map(|p| format!("{p}: kept"))
                    .unwrap_or_else(|| "no longer meets the expiry criteria".into()),
            }),
            (None, None) => {}
        }
    }

    // 2. What goes: expired versions, then (under space pressure) pending ones.
    let mut keep_count = versions.len();
    let mut remove: Vec<VersionId> = Vec::new();
    for v in &unprotected {
        if let Some(at) = expires.get(&v.id)
            && *at <= now
            && keep_count > policy.keep_min
        {
            remove.push(v.id.clone());
            keep_count -= 1;
        }
    }
    let target_free = inv.pool_size / 100 * u64::from(policy.free_space_percent);
    let mut free = inv.pool_free + frees_of(&remove, inv);
    for v in &unprotected {
        if free >= target_free || keep_count <= policy.keep_min {
            break;
        }
        if expires.contains_key(&v.id) && !remove.contains(&v.id) {
            remove.push(v.id.clone());
            keep_count -= 1;
            free += frees_of(std::slice::from_ref(&v.id), inv);
        }
    }
    for (id, at) in &expires {
        if !remove.contains(id) {
            out.notices.push((id.clone(), *at));
        }
    }

    // 3. Steps, dependency-safe. Every dataset that stays but descends (through clone
    // origins) from datasets that go is promoted once per going ancestor in a row, so it
    // takes over the snapshots it needs; then what goes is destroyed, newest first
    // (clones are always newer than their origins).
    let all_ds: BTreeMap<&str, &DsFacts> = inv
        .versions
        .iter()
        .flat_map(|v| v.datasets.iter().map(|d| (d.name.as_str(), d)))
        .collect();
    let factory_ds: BTreeSet<&str> = inv
        .versions
        .iter()
        .filter(|v| v.factory)
        .flat_map(|v| v.datasets.iter().map(|d| d.name.as_str()))
        .collect();
    let held: BTreeSet<&str> = inv
        .snapshots
        .iter()
        .filter(|s| s.holds > 0)
        .map(|s| s.dataset.as_str())
        .collect();
    let ds_of = |id: &VersionId| -> Vec<&DsFacts> {
        inv.versions
            .iter()
            .filter(|v| &v.id == id)
            .flat_map(|v| v.datasets.iter())
            .collect()
    };
    // A version whose datasets hold snapshots that are held (or belong to the factory
    // baseline) cannot go: promote would move them, destroy would fail.
    remove.retain(|id| {
        ds_of(id)
            .iter()
            .all(|d| !held.contains(d.name.as_str()) && !factory_ds.contains(d.name.as_str()))
    });
    let going: BTreeSet<&str> = remove
        .iter()
        .flat_map(&ds_of)
        .map(|d| d.name.as_str())
        .collect();
    let parent = |d: &str| -> Option<&str> {
        all_ds
            .get(d)
            .and_then(|f| f.origin.as_deref())
            .map(|o| o.split('@').next().unwrap_or(o))
    };
    for (name, _) in all_ds.iter().filter(|(n, _)| !going.contains(*n)) {
        let mut n = 0;
        let mut cur = parent(name);
        while let Some(p) = cur {
            if !going.contains(p) {
                break;
            }
            n += 1;
            cur = parent(p);
        }
        for _ in 0..n {
            out.steps.push(Step::Promote {
                dataset: (*name).to_owned(),
                reason:
                    "it is cloned from a version that goes; it takes over the snapshots it needs"
                        .into(),
            });
        }
    }
    let mut destroy: Vec<(&DsFacts, &VersionId)> = remove
        .iter()
        .flat_map(|id| ds_of(id).into_iter().map(move |d| (d, id)))
        .collect();
    destroy.sort_by_key(|(d, _)| std::cmp::Reverse(d.createtxg));
    for (d, id) in destroy {
        out.steps.push(Step::Destroy {
            target: d.name.clone(),
            frees: d.used,
            reason: format!("version {id} expired"),
        });
        out.frees += d.used;
    }
    out.remove = remove;

    // 4. Pre-upgrade snapshots of customer data: keep the newest N.
    for data in &inv.data {
        let mut snaps: Vec<&SnapFacts> = inv
            .snapshots
            .iter()
            .filter(|s| &s.dataset == data && s.managed && s.name.contains("@cairn-pre-"))
            .collect();
        snaps.sort_by_key(|s| std::cmp::Reverse(s.createtxg));
        for s in snaps.into_iter().skip(policy.data_snapshots_keep) {
            if s.holds == 0 && s.clones.is_empty() {
                out.steps.push(Step::Destroy {
                    target: s.name.clone(),
                    frees: s.used,
                    reason: format!(
                        "more than {} pre-upgrade data snapshots",
                        policy.data_snapshots_keep
                    ),
                });
                out.frees += s.used;
            }
        }
    }
    out
}

fn frees_of(ids: &[VersionId], inv: &Inventory) -> u64 {
    ids.iter()
        .filter_map(|id| inv.versions.iter().find(|v| &v.id == id))
        .flat_map(|v| v.datasets.iter().map(|d| d.used))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str, created: u64) -> VersionFacts {
        VersionFacts {
            id: VersionId::new(id).unwrap(),
            created,
            last_booted: Some(created),
            expires: None,
            pinned: false,
            managed: true,
            booted: false,
            default: false,
            trial: false,
            last_known_good: false,
            factory: false,
            datasets: vec![
                DsFacts {
                    name: format!("p/ROOT/{id}"),
                    used: 100,
                    origin: None,
                    createtxg: created,
                },
                DsFacts {
                    name: format!("p/CONFIG/{id}"),
                    used: 10,
                    origin: None,
                    createtxg: created,
                },
            ],
        }
    }

    fn inv(versions: Vec<VersionFacts>) -> Inventory {
        Inventory {
            versions,
            snapshots: vec![],
            data: vec![],
            pool_size: 1000,
            pool_free: 900,
        }
    }

    #[test]
    fn policy_yaml() {
        let p = Policy::from_yaml("keep_min: 2\nkeep_max: 4\n").unwrap();
        assert_eq!((p.keep_min, p.keep_max, p.grace_days), (2, 4, 7));
        assert!(Policy::from_yaml("keep_min: 5\nkeep_max: 2\n").is_err());
        assert!(Policy::from_yaml("bogus: 1\n").is_err());
    }

    #[test]
    fn expiry_is_set_then_taken_after_grace_then_cleared_when_booted() {
        let policy = Policy {
            keep_min: 1,
            ..Default::default()
        };
        let now = 200 * DAY;
        let mut old = v("1.0", 0);
        let mut cur = v("2.0", 150 * DAY);
        cur.default = true;
        cur.booted = true;
        let p = plan(&inv(vec![old.clone(), cur.clone()]), &policy, now);
        assert_eq!(p.expiries.len(), 1);
        assert_eq!(p.expiries[0].expires, Some(now + 7 * DAY));
        assert!(p.steps.is_empty(), "grace first");
        old.expires = Some(now + 7 * DAY);
        let p = plan(&inv(vec![old.clone(), cur.clone()]), &policy, now + 8 * DAY);
        assert_eq!(p.remove, [VersionId::new("1.0").unwrap()]);
        assert_eq!(p.frees, 110);
        old.last_booted = Some(now + 8 * DAY);
        let p = plan(&inv(vec![old, cur]), &policy, now + 9 * DAY);
        assert_eq!(p.expiries[0].expires, None, "booted again: cleared");
        assert!(p.remove.is_empty());
    }
}
