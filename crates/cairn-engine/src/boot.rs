//! Boot selection: the state the boot loader reads (default, trial target, attempts left,
//! boot-once target), the decision it makes from it, and the [`Boot`] trait through which
//! the engine reads and writes that state. The GRUB implementation lives in `cairn-grub`;
//! [`MemBoot`] keeps it in memory for tests and the simulator.

use std::sync::Mutex;

use serde::Serialize;

use crate::{EngineError, VersionId};

/// What the boot loader reads at every boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootState {
    /// The version booted when nothing else applies.
    pub default: Option<VersionId>,
    /// A version on trial: booted while attempts are left.
    pub trial: Option<VersionId>,
    /// Attempts left for the trial; the loader decrements before each attempt.
    pub attempts_left: u8,
    /// A version to boot exactly once (testing), without making it the default.
    pub once: Option<VersionId>,
}

/// Why a version was booted; passed to the kernel as `cairn.boot=<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootKind {
    Normal,
    Trial,
    /// A trial ran out of attempts; the default was booted instead.
    Fallback,
    Once,
}

impl BootKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Trial => "trial",
            Self::Fallback => "fallback",
            Self::Once => "once",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "normal" => Self::Normal,
            "trial" => Self::Trial,
            "fallback" => Self::Fallback,
            "once" => Self::Once,
            _ => return None,
        })
    }
}

/// The loader's decision: what to boot, and the state it saves *before* booting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDecision {
    pub version: VersionId,
    pub kind: BootKind,
    pub next: BootState,
}

impl BootState {
    /// What the boot loader does (the GRUB script implements exactly this):
    /// a boot-once target is consumed and booted; a trial with attempts left is booted
    /// after its counter is decremented; a trial with none left falls back to the
    /// default; with no usable default, `baked` (the last version known to the menu).
    pub fn select(&self, baked: &VersionId) -> BootDecision {
        let default = self.default.clone().unwrap_or_else(|| baked.clone());
        let mut next = self.clone();
        if let Some(once) = &self.once {
            next.once = None;
            return BootDecision {
                version: once.clone(),
                kind: BootKind::Once,
                next,
            };
        }
        match &self.trial {
            Some(t) if self.attempts_left > 0 => {
                next.attempts_left -= 1;
                BootDecision {
                    version: t.clone(),
                    kind: BootKind::Trial,
                    next,
                }
            }
            Some(_) => BootDecision {
                version: default,
                kind: BootKind::Fallback,
                next,
            },
            None => BootDecision {
                version: default,
                kind: BootKind::Normal,
                next,
            },
        }
    }
}

/// Where the boot selection state lives. Writes must be atomic: after a crash the loader
/// sees the old state or the new one, never a mix.
pub trait Boot: Send + Sync {
    fn read(&self) -> Result<BootState, EngineError>;
    fn write(&self, state: &BootState) -> Result<(), EngineError>;
}

/// Boot state in memory: tests and `cairnd --sim`.
#[derive(Debug, Default)]
pub struct MemBoot {
    state: Mutex<BootState>,
}

impl MemBoot {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Boot for MemBoot {
    fn read(&self) -> Result<BootState, EngineError> {
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn write(&self, state: &BootState) -> Result<(), EngineError> {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> VersionId {
        VersionId::new(s).unwrap()
    }

    #[test]
    fn trial_counts_down_then_falls_back() {
        let baked = id("v0");
        let mut st = BootState {
            default: Some(id("v1")),
            trial: Some(id("v2")),
            attempts_left: 2,
            once: None,
        };
        let mut seen = Vec::new();
        for _ in 0..4 {
            let d = st.select(&baked);
            seen.push((d.version.to_string(), d.kind, d.next.attempts_left));
            st = d.next;
        }
        assert_eq!(
            seen,
            [
                ("v2".into(), BootKind::Trial, 1),
                ("v2".into(), BootKind::Trial, 0),
                ("v1".into(), BootKind::Fallback, 0),
                ("v1".into(), BootKind::Fallback, 0),
            ]
        );
    }

    #[test]
    fn once_is_consumed_and_default_survives() {
        let st = BootState {
            default: Some(id("v2")),
            once: Some(id("v1")),
            ..Default::default()
        };
        let d = st.select(&id("v0"));
        assert_eq!((d.version.as_str(), d.kind), ("v1", BootKind::Once));
        let d2 = d.next.select(&id("v0"));
        assert_eq!((d2.version.as_str(), d2.kind), ("v2", BootKind::Normal));
    }

    #[test]
    fn empty_state_boots_the_baked_default() {
        let d = BootState::default().select(&id("factory"));
        assert_eq!((d.version.as_str(), d.kind), ("factory", BootKind::Normal));
    }
}
