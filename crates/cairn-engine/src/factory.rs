//! The factory baseline and factory reset (BRIEF §2, §6).
//!
//! The baseline is `ROOT/factory` + `CONFIG/factory`, snapshotted `@factory` before
//! anything boots and held with the tag `cairn:factory`; it is never booted (its state is
//! `factory`, which no activation accepts) and never promoted or destroyed. The first
//! bootable version is a clone of it.
//!
//! Reset modes, each listed exactly by its dry run:
//! - `config`: the running version's config is replaced by a clone of that version's own
//!   defaults (`DEFAULTS/<id>@installed`, or the factory config for versions cloned from
//!   the baseline); the old config is kept as `CONFIG/<id>.before-reset-<n>`;
//! - `system`: a new version cloned from the baseline with the factory config becomes the
//!   default; data and older versions are kept, so the reset can be undone;
//! - `full`: `system`, then every customer data dataset is destroyed (with its snapshots)
//!   and recreated empty; needs the confirmation token [`FULL_RESET_TOKEN`].
//!
//! Every mode is a sequence of recorded steps; `reconcile` finishes an interrupted reset.

use cairn_zfs::{CreateOptions, DatasetName, DestroyOptions, PropName, ZfsError};
use serde::Serialize;

use crate::{Engine, EngineError, Payload, Stored, VersionId, layout, props};

/// The baseline's version id and snapshot name.
pub const FACTORY_ID: &str = "factory";
pub const FACTORY_SNAPSHOT: &str = "factory";
/// The hold tag that keeps the baseline snapshots from being destroyed.
pub const FACTORY_HOLD: &str = "cairn:factory";
/// What an operator must pass to erase customer data.
pub const FULL_RESET_TOKEN: &str = "ERASE-ALL-DATA";

/// A reset mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetMode {
    Config,
    System,
    Full,
}

impl ResetMode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "config" => Self::Config,
            "system" => Self::System,
            "full" => Self::Full,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::System => "system",
            Self::Full => "full",
        }
    }
}

/// One thing a reset does, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResetAction {
    pub step: String,
    pub what: String,
}

fn factory_id() -> VersionId {
    VersionId::new(FACTORY_ID).expect("valid")
}

impl Engine {
    /// Writes the factory baseline from a payload (and its default configuration), takes
    /// and holds the `@factory` snapshots, and creates the first bootable version
    /// `first` as a clone; that version becomes the default. Refuses a pool that already
    /// has versions.
    pub fn provision_factory(
        &self,
        version: &str,
        payload: Payload<'_>,
        defaults: Option<&mut crate::TreeWriter<'_>>,
        by: &str,
    ) -> Result<VersionId, EngineError> {
        self.require_init()?;
        if !self.versions()?.is_empty() {
            return Err(EngineError::VersionExists {
                id: "a version is already installed; the factory baseline comes first".into(),
            });
        }
        let f = factory_id();
        let (root, cfg) = (self.layout.root(&f), self.layout.config(&f));
        let now = self.host.now().to_string();
        let mut rprops = self.version_props(&f, version, Stored::Factory, None, &now);
        rprops.retain(|(k, _)| k != &props::zbm_commandline());
        match payload {
            Payload::FullStream(s) => {
                let mut rr = cairn_zfs::ReceiveRequest::new(root.clone());
                rr.no_mount = true;
                rr.props = rprops;
                self.zfs.receive(&rr, s)?;
            }
            Payload::Tree(w) => {
                self.zfs.create(
                    &root,
                    &CreateOptions {
                        parents: false,
                        props: rprops,
                    },
                )?;
                self.host.populate(&root, w)?;
            }
            Payload::IncrementalStream { .. } => {
                return Err(EngineError::Layout {
                    detail: "the factory baseline needs a full root, not a delta".into(),
                });
            }
        }
        let cprops = self.config_props(&f, version, Stored::Factory, None, &now);
        self.zfs.create(
            &cfg,
            &CreateOptions {
                parents: false,
                props: cprops,
            },
        )?;
        if let Some(w) = defaults {
            self.host.populate(&cfg, w)?;
        }
        let snaps = [
            root.snapshot(FACTORY_SNAPSHOT).map_err(ZfsError::from)?,
            cfg.snapshot(FACTORY_SNAPSHOT).map_err(ZfsError::from)?,
        ];
        self.zfs.snapshot(&snaps, &layout::managed_props())?;
        self.zfs.hold(&snaps, FACTORY_HOLD)?;
        // The baseline stays read-only from now on.
        for ds in [&root, &cfg] {
            self.zfs
                .set(&ds.into(), &[(PropName::native("readonly"), "on".into())])?;
        }
        let id = VersionId::from_version(version)?;
        self.clone_from_factory(&id, version)?;
        let mut state = self.boot.read()?;
        state.default = Some(id.clone());
        self.boot.write(&state)?;
        self.zfs
            .set_bootfs(&self.layout.pool, Some(&self.layout.root(&id)))?;
        self.journal(
            "provision-factory",
            by,
            id.as_str(),
            vec!["baseline".into(), "hold".into(), "clone".into()],
            "ok",
        )?;
        Ok(id)
    }

    /// A new version `id` as clones of the baseline (root and config), plus its defaults.
    fn clone_from_factory(&self, id: &VersionId, version: &str) -> Result<(), EngineError> {
        let f = factory_id();
        let now = self.host.now().to_string();
        let pairs = [
            (
                self.layout.root(&f),
                self.layout.root(id),
                self.version_props(id, version, Stored::Staged, None, &now),
            ),
            (
                self.layout.config(&f),
                self.layout.config(id),
                self.config_props(id, version, Stored::Staged, None, &now),
            ),
        ];
        for (from, to, mut p) in pairs {
            if self.exists(&to)? {
                continue;
            }
            p.push((PropName::native("readonly"), "off".into()));
            let origin = from.snapshot(FACTORY_SNAPSHOT).map_err(ZfsError::from)?;
            self.zfs.clone_snapshot(&origin, &to, &p)?;
        }
        Ok(())
    }

    /// The baseline's snapshots, if the pool has a baseline.
    pub fn factory_snapshots(&self) -> Result<Option<[cairn_zfs::SnapshotName; 2]>, EngineError> {
        let f = factory_id();
        let (root, cfg) = (self.layout.root(&f), self.layout.config(&f));
        let s = [
            root.snapshot(FACTORY_SNAPSHOT).map_err(ZfsError::from)?,
            cfg.snapshot(FACTORY_SNAPSHOT).map_err(ZfsError::from)?,
        ];
        Ok(if self.snapshot_exists(&s[0])? {
            Some(s)
        } else {
            None
        })
    }

    /// Where a version's defaults come from: its own `DEFAULTS/<id>@installed`, or the
    /// factory config when it was cloned from the baseline.
    fn defaults_snapshot(&self, id: &VersionId) -> Result<cairn_zfs::SnapshotName, EngineError> {
        let own = self
            .layout
            .defaults(id)
            .snapshot(crate::INSTALLED_SNAPSHOT)
            .map_err(ZfsError::from)?;
        if self.snapshot_exists(&own)? {
            return Ok(own);
        }
        match self.factory_snapshots()? {
            Some([_, cfg]) => Ok(cfg),
            None => Err(EngineError::NotBootable {
                id: id.to_string(),
                state: "it has no default configuration to reset to".into(),
            }),
        }
    }

    fn next_free(
        &self,
        base: &str,
        exists: impl Fn(&str) -> Result<bool, EngineError>,
    ) -> Result<String, EngineError> {
        for n in 1..1000 {
            let cand = format!("{base}{n}");
            if !exists(&cand)? {
                return Ok(cand);
            }
        }
        Err(EngineError::Layout {
            detail: format!("no free name for {base}"),
        })
    }

    /// Plans (dry run) or performs a factory reset. Returns the actions, which a dry run
    /// lists exactly as a real run performs them.
    pub fn factory_reset(
        &self,
        mode: ResetMode,
        token: &str,
        dry_run: bool,
        by: &str,
    ) -> Result<Vec<ResetAction>, EngineError> {
        self.require_init()?;
        if mode == ResetMode::Full && token != FULL_RESET_TOKEN {
            return Err(EngineError::ConfirmationRequired {
                token: FULL_RESET_TOKEN,
            });
        }
        let actions = self.plan_reset(mode)?;
        if dry_run {
            return Ok(actions);
        }
        let target = actions
            .first()
            .map(|a| a.what.split_whitespace().last().unwrap_or("").to_owned())
            .unwrap_or_default();
        let arg = actions
            .iter()
            .map(|a| a.what.split_whitespace().last().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(",");
        let mut op = self.begin(&format!("reset-{}", mode.as_str()), &target, &arg, by);
        self.run_reset(&mut op, mode, &actions)?;
        op.finish("ok")?;
        Ok(actions)
    }

    fn plan_reset(&self, mode: ResetMode) -> Result<Vec<ResetAction>, EngineError> {
        let a = |step: &str, what: String| ResetAction {
            step: step.into(),
            what,
        };
        let mut out = Vec::new();
        match mode {
            ResetMode::Config => {
                let running = self.running()?;
                let from = self.defaults_snapshot(&running)?;
                let cfg = self.layout.config(&running);
                let keep = self.next_free(&format!("{running}.before-reset-"), |n| {
                    self.exists(
                        &self
                            .layout
                            .config_container()
                            .child(n)
                            .map_err(ZfsError::from)?,
                    )
                })?;
                let fresh = format!("{running}.reset-new");
                out.push(a(
                    "clone-defaults",
                    format!(
                        "clone {from} as {}",
                        self.layout
                            .config_container()
                            .child(&fresh)
                            .map_err(ZfsError::from)?
                    ),
                ));
                out.push(a(
                    "keep-old",
                    format!(
                        "rename {cfg} to {}",
                        self.layout
                            .config_container()
                            .child(&keep)
                            .map_err(ZfsError::from)?
                    ),
                ));
                out.push(a(
                    "swap",
                    format!(
                        "rename {} to {cfg}",
                        self.layout
                            .config_container()
                            .child(&fresh)
                            .map_err(ZfsError::from)?
                    ),
                ));
            }
            ResetMode::System | ResetMode::Full => {
                let [froot, fcfg] =
                    self.factory_snapshots()?
                        .ok_or_else(|| EngineError::NotBootable {
                            id: FACTORY_ID.into(),
                            state: "this pool has no factory baseline".into(),
                        })?;
                let fversion = self
                    .get_prop(&self.layout.root(&factory_id()).into(), &props::version())?
                    .unwrap_or_default();
                let id = self.next_free(
                    &format!("{}-reset-", VersionId::from_version(&fversion)?),
                    |n| {
                        VersionId::new(n)
                            .map(|v| self.exists(&self.layout.root(&v)))
                            .unwrap_or(Ok(true))
                    },
                )?;
                let id = VersionId::new(&id)?;
                out.push(a(
                    "clone-root",
                    format!("clone {froot} as {}", self.layout.root(&id)),
                ));
                out.push(a(
                    "clone-config",
                    format!("clone {fcfg} as {}", self.layout.config(&id)),
                ));
                out.push(a("activate", format!("make the default {id}")));
                if mode == ResetMode::Full {
                    for d in self.layout.data_datasets() {
                        out.push(a(
                            "erase-data",
                            format!("destroy with its snapshots and recreate empty {d}"),
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    fn run_reset(
        &self,
        op: &mut crate::Op<'_>,
        mode: ResetMode,
        actions: &[ResetAction],
    ) -> Result<(), EngineError> {
        let last = |a: &ResetAction| a.what.split_whitespace().last().unwrap_or("").to_owned();
        match mode {
            ResetMode::Config => {
                let running = self.running()?;
                let cfg = self.layout.config(&running);
                let fresh = DatasetName::new(last(&actions[0])).map_err(ZfsError::from)?;
                let keep = DatasetName::new(last(&actions[1])).map_err(ZfsError::from)?;
                op.step("clone-defaults")?;
                if !self.exists(&fresh)? {
                    let from = self.defaults_snapshot(&running)?;
                    let version = self
                        .get_prop(&self.layout.root(&running).into(), &props::version())?
                        .unwrap_or_default();
                    let mut p = self.config_props(
                        &running,
                        &version,
                        Stored::Staged,
                        None,
                        &self.host.now().to_string(),
                    );
                    p.push((PropName::native("readonly"), "off".into()));
                    self.zfs.clone_snapshot(&from, &fresh, &p)?;
                }
                op.step("keep-old")?;
                if self.exists(&cfg)? && !self.exists(&keep)? {
                    self.zfs.rename(&(&cfg).into(), &(&keep).into())?;
                }
                op.step("swap")?;
                if !self.exists(&cfg)? {
                    self.zfs.rename(&(&fresh).into(), &(&cfg).into())?;
                }
            }
            ResetMode::System | ResetMode::Full => {
                let root = DatasetName::new(last(&actions[0])).map_err(ZfsError::from)?;
                let id = self
                    .layout
                    .id_of_root(&root)
                    .ok_or_else(|| EngineError::Layout {
                        detail: format!("{root} is not a version root"),
                    })?;
                let fversion = self
                    .get_prop(&self.layout.root(&factory_id()).into(), &props::version())?
                    .unwrap_or_default();
                op.step("clone-root")?;
                op.step("clone-config")?;
                self.clone_from_factory(&id, &fversion)?;
                op.step("activate")?;
                let mut sub = self.begin("activate", id.as_str(), "permanent", &op.by);
                self.activate_steps(&mut sub, &id, "permanent")?;
                sub.finish("ok (factory reset)")?;
                if mode == ResetMode::Full {
                    op.step("erase-data")?;
                    for (d, mp) in self.layout.data.clone() {
                        if self.exists(&d)? {
                            self.zfs.destroy(
                                &(&d).into(),
                                DestroyOptions {
                                    recursive: true,
                                    dry_run: false,
                                },
                            )?;
                        }
                        let mut p = layout::managed_props();
                        p.push((PropName::native("mountpoint"), mp.display().to_string()));
                        self.zfs.create(
                            &d,
                            &CreateOptions {
                                parents: true,
                                props: p,
                            },
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Finishes a reset a crash interrupted (called by `reconcile`).
    pub(crate) fn resume_reset(
        &self,
        op_name: &str,
        target: &str,
        arg: &str,
        by: &str,
    ) -> Result<String, EngineError> {
        let mode = ResetMode::parse(op_name.trim_start_matches("reset-")).ok_or_else(|| {
            EngineError::Layout {
                detail: format!("unknown reset {op_name}"),
            }
        })?;
        // Rebuild the recorded plan's targets from the op record.
        let targets: Vec<&str> = arg.split(',').collect();
        let steps: Vec<&str> = match mode {
            ResetMode::Config => vec!["clone-defaults", "keep-old", "swap"],
            ResetMode::System => vec!["clone-root", "clone-config", "activate"],
            ResetMode::Full => {
                let mut v = vec!["clone-root", "clone-config", "activate"];
                v.extend(std::iter::repeat_n(
                    "erase-data",
                    targets.len().saturating_sub(3),
                ));
                v
            }
        };
        let actions: Vec<ResetAction> = steps
            .iter()
            .zip(targets.iter())
            .map(|(s, t)| ResetAction {
                step: (*s).into(),
                what: format!("resume {t}"),
            })
            .collect();
        let mut op = self.begin(op_name, target, arg, by);
        self.run_reset(&mut op, mode, &actions)?;
        op.finish("ok (finished by reconcile)")?;
        Ok(format!("finished the interrupted {op_name} of {target}"))
    }

    /// True for the baseline: no activation, mark or removal applies to it.
    pub fn is_factory(&self, id: &VersionId) -> bool {
        id.as_str() == FACTORY_ID
    }
}
