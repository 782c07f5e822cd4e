//! The snapshot engine: OS versions as ZFS boot environments (BRIEF §2, §4).
//!
//! It lays out the pool, stages new versions beside the running one, activates them
//! permanently, for one trial or for one boot, confirms or fails trials, rolls back and
//! forward, and reconciles half-done work after a crash. It talks to ZFS only through the
//! [`Zfs`] trait, to the boot loader only through [`Boot`], and to the rest of the
//! machine only through [`Host`]; it knows nothing of D-Bus or command lines.
//!
//! Crash safety: every mutating operation is a sequence of named steps. Before a step
//! runs, `cairn:op` on the ROOT container records the operation and the step (one atomic
//! `zfs set`); every step is idempotent; [`Engine::reconcile`] finishes or undoes what a
//! crash interrupted.

pub mod boot;
pub mod clock;
pub mod factory;
pub mod host;
mod layout;
pub mod retention;
pub mod suite;
mod version;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_zfs::{
    CreateOptions, DatasetName, DatasetType, DestroyOptions, DiffEntry, ErrorKind, ListRequest,
    MountOptions, ObjectName, PropName, ReceiveRequest, SnapshotName, Zfs, ZfsError,
};
use serde::Serialize;

pub use boot::{Boot, BootDecision, BootKind, BootState, MemBoot};
pub use host::{Booted, HookFailure, Host, RealHost, RootRun, SimHost};
pub use layout::{DataSpec, Layout, LayoutFile, VersionId, props};
pub use version::{Stored, Version, compare_versions};

/// What went wrong, named so the daemon can map each to a D-Bus error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("layout: {detail}")]
    Layout { detail: String },
    #[error("'{id}' is not a valid version id: use lowercase letters, digits, '.', '_' and '-'")]
    BadVersionId { id: String },
    #[error("version '{id}' is not installed; `cairnctl list` shows the installed versions")]
    UnknownVersion { id: String },
    #[error("version '{id}' is already installed")]
    VersionExists { id: String },
    #[error("version '{id}' failed ({reason}); activate it with force if you really mean to")]
    VersionFailed { id: String, reason: String },
    #[error("version '{id}' is not ready to boot (state {state})")]
    NotBootable { id: String, state: String },
    #[error("'{new}' is older than the running '{running}'; a downgrade needs force")]
    Downgrade { new: String, running: String },
    #[error(
        "not enough space in pool '{pool}': staging needs about {need} bytes, {free} are free; run `cairnctl cleanup` first"
    )]
    NotEnoughSpace { pool: String, need: u64, free: u64 },
    #[error("migration '{hook}' failed ({status}): {output}; nothing was installed")]
    MigrationFailed {
        hook: String,
        status: String,
        output: String,
    },
    #[error(
        "migration '{hook}' did not finish within {secs} s and was stopped; nothing was installed"
    )]
    MigrationTimedOut { hook: String, secs: u64 },
    #[error("the staging command failed ({status}): {output}; nothing was installed")]
    StagingCommandFailed { status: String, output: String },
    #[error(
        "no cairn version is running (the kernel command line names none); run this on a booted appliance"
    )]
    NotBooted,
    #[error("there is no trial to {what}: the running version was not booted as a trial")]
    NoTrial { what: &'static str },
    #[error("there is no {direction} version to go to")]
    NothingToRollTo { direction: &'static str },
    #[error(
        "the pool is not laid out for cairn yet; an installed root-on-ZFS system is taken over with `cairnctl init --adopt`"
    )]
    NotInitialized,
    #[error("the pool already has a cairn layout")]
    AlreadyInitialized,
    #[error("cannot adopt this system: {detail}; nothing was changed")]
    NotAdoptable { detail: String },
    #[error("'{name}' is not cairn's (no cairn:managed); cairn never touches it")]
    Foreign { name: String },
    #[error("stopped at step '{point}' (test crash point)")]
    Crashed { point: String },
    #[error("cancelled at step '{step}'; what was done is undone")]
    Cancelled { step: String },
    #[error("a full factory reset erases all customer data; confirm with the token {token}")]
    ConfirmationRequired { token: &'static str },
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the boot state could not be {what}: {detail}")]
    BootState { what: &'static str, detail: String },
}

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Where a new version's root comes from.
pub enum Payload<'a> {
    /// A full `zfs send` stream of the release.
    FullStream(&'a mut dyn Read),
    /// An incremental stream from an earlier release, received as a clone of that
    /// release's pristine snapshot.
    IncrementalStream {
        base: VersionId,
        stream: &'a mut dyn Read,
    },
    /// A file tree written into a fresh dataset by `writer` (e.g. a `rootfs.tar.zst`
    /// unpacked by the bundle reader), then snapshotted as `@installed`.
    Tree(&'a mut TreeWriter<'a>),
}

/// Writes a root file tree into the directory it is given.
pub type TreeWriter<'a> = dyn FnMut(&Path) -> std::io::Result<()> + Send + 'a;

/// The snapshot a tree payload's root gets once written: its pristine state.
pub const INSTALLED_SNAPSHOT: &str = "installed";

impl std::fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tree(_) => f.write_str("Tree"),
            Self::FullStream(_) => f.write_str("FullStream"),
            Self::IncrementalStream { base, .. } => write!(f, "IncrementalStream from {base}"),
        }
    }
}

/// A request to stage a new version.
pub struct StageRequest<'a> {
    pub version: String,
    pub payload: Payload<'a>,
    /// Expected bytes (from the bundle manifest), for the space check.
    pub size_hint: u64,
    /// Executables in the new root, run in order against the new config.
    pub migrations: Vec<String>,
    pub migration_timeout: Duration,
    /// Digest of the bundle this came from.
    pub bundle: Option<String>,
    pub allow_downgrade: bool,
    /// This version's default configuration (its factory defaults), kept in
    /// `DEFAULTS/<id>` for a config reset.
    pub defaults: Option<&'a mut TreeWriter<'a>>,
}

impl std::fmt::Debug for StageRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageRequest")
            .field("version", &self.version)
            .field("payload", &self.payload)
            .field("migrations", &self.migrations)
            .field("defaults", &self.defaults.is_some())
            .finish_non_exhaustive()
    }
}

/// How to activate a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "attempts")]
pub enum Activation {
    /// The default from now on.
    Permanent,
    /// Next boots only, this many attempts, then back to the default unless confirmed.
    Trial(u8),
    /// The next boot only, without health gate and without becoming the default.
    Once,
}

/// Which dataset of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Root,
    Config,
    /// The version's own default configuration.
    Defaults,
}

/// What adopting an existing system does (or, in a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Adoption {
    pub id: VersionId,
    pub root: DatasetName,
    pub snapshot: SnapshotName,
    pub version: String,
    #[serde(skip)]
    canmount: String,
    /// The steps, in order, in words.
    pub actions: Vec<String>,
    /// Other boot environments under ROOT: not cairn's, never touched.
    pub left_alone: Vec<String>,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JournalEntry {
    pub at: u64,
    pub op: String,
    pub by: String,
    pub target: String,
    pub steps: Vec<String>,
    pub result: String,
}

/// The names of the steps, in order, for each operation. Tests stop at each one.
pub mod steps {
    pub const UPGRADE: &[&str] = &[
        "snapshot",
        "receive",
        "clone-config",
        "defaults",
        "migrate",
        "mark-staged",
    ];
    pub const PACKAGES: &[&str] = &[
        "snapshot",
        "clone-root",
        "clone-config",
        "run",
        "migrate",
        "mark-staged",
    ];
    pub const ACTIVATE: &[&str] = &["boot", "bootfs", "lkg"];
    pub const CONFIRM: &[&str] = &["boot", "lkg", "bootfs", "mark"];
    pub const MARK_FAILED: &[&str] = &["mark", "boot"];
    pub const CLEANUP: &[&str] = &["expiries", "remove"];

    /// The steps of an operation by its journal name.
    pub fn of(op: &str) -> &'static [&'static str] {
        match op {
            "upgrade" => UPGRADE,
            "packages" => PACKAGES,
            "activate" => ACTIVATE,
            "confirm" => CONFIRM,
            "mark-failed" => MARK_FAILED,
            "cleanup" => CLEANUP,
            _ => &[],
        }
    }
}

/// Told about each step as it starts (operation, step, percent done); returning `false`
/// cancels the operation there.
pub type Observer = Arc<dyn Fn(&str, &str, u32) -> bool + Send + Sync>;

/// The engine.
pub struct Engine {
    zfs: Arc<dyn Zfs>,
    boot: Arc<dyn Boot>,
    host: Arc<dyn Host>,
    layout: Layout,
    crash_at: Mutex<Option<String>>,
    observer: Mutex<Option<Observer>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// What `cleanup` planned and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cleanup {
    pub plan: retention::Plan,
    /// Per destroy step: what ZFS reported it reclaimed.
    pub freed: Vec<(String, u64)>,
    pub dry_run: bool,
}

/// What `reconcile` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub actions: Vec<String>,
}

/// The operation in progress, as recorded in `cairn:op`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpRecord {
    op: String,
    target: String,
    arg: String,
    step: String,
}

impl OpRecord {
    fn encode(&self) -> String {
        format!("{} {} {} {}", self.op, self.target, self.arg, self.step)
    }

    fn decode(s: &str) -> Option<Self> {
        let mut w = s.split(' ');
        Some(Self {
            op: w.next()?.to_owned(),
            target: w.next()?.to_owned(),
            arg: w.next()?.to_owned(),
            step: w.next()?.to_owned(),
        })
    }
}

/// A running operation: records itself and collects its steps for the journal.
struct Op<'e> {
    engine: &'e Engine,
    rec: OpRecord,
    by: String,
    done: Vec<String>,
    /// Whether `cairn:op` holds this operation yet.
    recorded: bool,
}

impl Op<'_> {
    /// Marks that `step` is about to run; a test crash point or the observer may stop
    /// here. The first step writes the durable record (`cairn:op`); later steps do not
    /// rewrite it: recovery depends on the operation and its target, never on the step
    /// (see `resume`), and each `zfs set` is a command and a transaction group more.
    fn step(&mut self, step: &str) -> Result<()> {
        self.rec.step = step.to_owned();
        if !self.recorded {
            self.engine.set_op(Some(&self.rec))?;
            self.recorded = true;
        }
        self.done.push(step.to_owned());
        self.engine.crash_point(&self.rec.op, step)?;
        let all = steps::of(&self.rec.op);
        let pos = all.iter().position(|s| *s == step).unwrap_or(0);
        let percent = (pos * 100 / all.len().max(1)) as u32;
        let observer = self
            .engine
            .observer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match observer {
            Some(o) if !o(&self.rec.op, step, percent) => Err(EngineError::Cancelled {
                step: step.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    fn finish(self, result: &str) -> Result<()> {
        if self.recorded {
            self.engine.set_op(None)?;
        }
        self.engine
            .journal(&self.rec.op, &self.by, &self.rec.target, self.done, result)
    }
}

impl Engine {
    pub fn new(
        zfs: Arc<dyn Zfs>,
        boot: Arc<dyn Boot>,
        host: Arc<dyn Host>,
        layout: Layout,
    ) -> Self {
        let crash_at = std::env::var("CAIRN_CRASH_AT").ok();
        Self {
            zfs,
            boot,
            host,
            layout,
            crash_at: Mutex::new(crash_at),
            observer: Mutex::new(None),
        }
    }

    /// Reports progress of a long operation that is not a step sequence (a support
    /// export) to the observer; `false` means the observer asked to cancel.
    pub fn progress(&self, op: &str, step: &str, percent: u32) -> bool {
        let observer = self
            .observer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        observer.is_none_or(|o| o(op, step, percent))
    }

    /// Installs (or removes) the step observer: progress reports and cancellation.
    pub fn set_observer(&self, observer: Option<Observer>) {
        *self.observer.lock().unwrap_or_else(|e| e.into_inner()) = observer;
    }

    /// Pins a version (retention never removes it) or unpins it.
    pub fn pin(&self, id: &VersionId, pinned: bool, by: &str) -> Result<()> {
        self.require_init()?;
        let root = self.layout.root(id);
        if !self.exists(&root)? {
            return Err(EngineError::UnknownVersion { id: id.to_string() });
        }
        if !self.is_managed(&root)? {
            return Err(EngineError::Foreign {
                name: root.to_string(),
            });
        }
        if pinned {
            self.zfs
                .set(&(&root).into(), &[(props::pinned(), "yes".into())])?;
        } else {
            self.zfs.inherit(&(&root).into(), &props::pinned())?;
        }
        let op = if pinned { "pin" } else { "unpin" };
        self.journal(op, by, id.as_str(), vec![op.into()], "ok")
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn zfs(&self) -> &Arc<dyn Zfs> {
        &self.zfs
    }

    pub fn boot(&self) -> &Arc<dyn Boot> {
        &self.boot
    }

    pub fn host(&self) -> &Arc<dyn Host> {
        &self.host
    }

    /// Makes the engine stop (return [`EngineError::Crashed`]) when `op:step` is about to
    /// run, as if the process died there. With `CAIRN_CRASH_AT` set in the environment the
    /// process aborts for real (VM power-loss tests).
    pub fn crash_at(&self, point: Option<&str>) {
        *self.crash_at.lock().unwrap_or_else(|e| e.into_inner()) = point.map(str::to_owned);
    }

    fn crash_point(&self, op: &str, step: &str) -> Result<()> {
        let point = format!("{op}:{step}");
        let armed = self
            .crash_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if armed.as_deref() == Some(point.as_str()) {
            if std::env::var("CAIRN_CRASH_AT").is_ok() {
                eprintln!("CAIRN-CRASH {point}");
                if let Ok(channel) = std::env::var("CAIRN_CRASH_CHANNEL") {
                    halt_at(&channel, &point);
                }
                std::process::abort();
            }
            return Err(EngineError::Crashed { point });
        }
        Ok(())
    }

    fn set_op(&self, rec: Option<&OpRecord>) -> Result<()> {
        let target = self.layout.root_container().into();
        match rec {
            Some(r) => self.zfs.set(&target, &[(props::op(), r.encode())])?,
            None => self.zfs.inherit(&target, &props::op())?,
        }
        Ok(())
    }

    fn get_op(&self) -> Result<Option<OpRecord>> {
        let v = self.get_prop(&self.layout.root_container().into(), &props::op())?;
        Ok(v.as_deref().and_then(OpRecord::decode))
    }

    fn begin(&self, op: &str, target: &str, arg: &str, by: &str) -> Op<'_> {
        Op {
            engine: self,
            rec: OpRecord {
                op: op.to_owned(),
                target: target.to_owned(),
                arg: arg.to_owned(),
                step: "begin".to_owned(),
            },
            by: by.to_owned(),
            done: Vec::new(),
            recorded: false,
        }
    }

    fn journal(
        &self,
        op: &str,
        by: &str,
        target: &str,
        steps: Vec<String>,
        result: &str,
    ) -> Result<()> {
        let entry = JournalEntry {
            at: self.host.now(),
            op: op.to_owned(),
            by: by.to_owned(),
            target: target.to_owned(),
            steps,
            result: result.to_owned(),
        };
        let line = serde_json::to_string(&entry).expect("journal entries serialize");
        tracing::info!(op, by, target, result, "journal");
        self.host.journal_append(&line)
    }

    /// Records a one-step event in the journal (support exports, grants).
    pub fn record_event(&self, op: &str, by: &str, target: &str, result: &str) -> Result<()> {
        self.journal(op, by, target, vec![op.to_owned()], result)
    }

    /// The journal, oldest first. Lines that do not parse are skipped (and logged).
    pub fn journal_entries(&self) -> Result<Vec<JournalEntry>> {
        Ok(self
            .host
            .journal_read()?
            .iter()
            .filter_map(|l| match serde_json::from_str(l) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(line = %l, error = %e, "unreadable journal line");
                    None
                }
            })
            .collect())
    }

    fn get_prop(&self, target: &ObjectName, prop: &PropName) -> Result<Option<String>> {
        let mut got = self.zfs.get(target, std::slice::from_ref(prop))?;
        Ok(got.remove(prop).and_then(|v| v.value))
    }

    fn exists(&self, ds: &DatasetName) -> Result<bool> {
        match self.zfs.get(&ds.into(), &[PropName::native("type")]) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn snapshot_exists(&self, s: &SnapshotName) -> Result<bool> {
        match self.zfs.get(&s.into(), &[PropName::native("type")]) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// True when cairn created `ds` (it carries `cairn:managed`).
    fn is_managed(&self, ds: &DatasetName) -> Result<bool> {
        Ok(self.get_prop(&ds.into(), &props::managed())?.as_deref() == Some(layout::MANAGED))
    }

    // -----------------------------------------------------------------------------------
    // layout

    /// Lays cairn's layout out on an empty pool: ROOT, CONFIG, DATA/<each>, JOURNAL.
    /// Refuses a pool that already has one.
    pub fn init(&self, by: &str) -> Result<Vec<DatasetName>> {
        let l = &self.layout;
        if self.exists(&l.root_container())? {
            self.require_init().map_err(|_| EngineError::NotAdoptable {
                detail: format!(
                    "{} exists but is not cairn's: take the system over with \
                         `cairnctl init --adopt` instead",
                    l.root_container()
                ),
            })?;
            return Err(EngineError::AlreadyInitialized);
        }
        let mut plan = vec![(
            l.root_container(),
            vec![
                (PropName::native("mountpoint"), "none".to_owned()),
                (PropName::native("canmount"), "off".to_owned()),
                (props::layout_version(), "1".into()),
            ],
        )];
        plan.extend(self.shared_datasets());
        let created = self.create_all(plan)?;
        self.journal("init", by, l.base().as_str(), vec!["create".into()], "ok")?;
        Ok(created)
    }

    /// The pool is cairn's once its ROOT container carries the layout version (a stock
    /// system's `ROOT` without it is not, until it is adopted).
    fn require_init(&self) -> Result<()> {
        match self.get_prop(
            &self.layout.root_container().into(),
            &props::layout_version(),
        ) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(EngineError::NotInitialized),
            Err(EngineError::Zfs(e)) if e.kind() == ErrorKind::NotFound => {
                Err(EngineError::NotInitialized)
            }
            Err(e) => Err(e),
        }
    }

    /// The datasets every cairn pool has besides ROOT: the CONFIG and DATA containers,
    /// the journal and the layout's data datasets, with their properties. Containers carry
    /// no cairn:managed: user properties inherit, and a dataset someone else creates
    /// under them must not look like ours.
    fn shared_datasets(&self) -> Vec<(DatasetName, Vec<(PropName, String)>)> {
        let l = &self.layout;
        let container = || {
            vec![
                (PropName::native("mountpoint"), "none".to_owned()),
                (PropName::native("canmount"), "off".to_owned()),
            ]
        };
        let mounted = |p: &Path| {
            let mut v = layout::managed_props();
            v.push((PropName::native("mountpoint"), p.display().to_string()));
            v
        };
        let mut plan = vec![
            (l.config_container(), container()),
            (l.data_container(), container()),
            (l.journal(), mounted(&l.journal_mountpoint)),
        ];
        for (d, m) in &l.data {
            plan.push((d.clone(), mounted(m)));
        }
        plan
    }

    /// Creates each dataset (with parents) in order; returns their names.
    fn create_all(
        &self,
        plan: Vec<(DatasetName, Vec<(PropName, String)>)>,
    ) -> Result<Vec<DatasetName>> {
        let mut created = Vec::new();
        for (ds, props) in plan {
            self.zfs.create(
                &ds,
                &CreateOptions {
                    parents: true,
                    props,
                },
            )?;
            created.push(ds);
        }
        Ok(created)
    }

    /// Installs the first version from a full stream, with an empty config. This is what
    /// provisioning does when there is no factory baseline (the factory crate builds one).
    pub fn install_first(
        &self,
        version: &str,
        stream: &mut dyn Read,
        by: &str,
    ) -> Result<VersionId> {
        self.require_init()?;
        let id = VersionId::from_version(version)?;
        let root = self.layout.root(&id);
        if self.exists(&root)? {
            return Err(EngineError::VersionExists { id: id.to_string() });
        }
        let now = self.host.now().to_string();
        let mut req = ReceiveRequest::new(root.clone());
        req.no_mount = true;
        req.props = self.version_props(&id, version, Stored::Staged, None, &now);
        self.zfs.receive(&req, stream)?;
        let props = self.config_props(&id, version, Stored::Staged, None, &now);
        self.zfs.create(
            &self.layout.config(&id),
            &CreateOptions {
                parents: false,
                props,
            },
        )?;
        let mut state = self.boot.read()?;
        if state.default.is_none() {
            state.default = Some(id.clone());
            self.boot.write(&state)?;
            self.zfs.set_bootfs(&self.layout.pool, Some(&root))?;
        }
        self.journal(
            "install-first",
            by,
            id.as_str(),
            vec!["receive".into(), "config".into()],
            "ok",
        )?;
        Ok(id)
    }

    fn version_props(
        &self,
        id: &VersionId,
        version: &str,
        state: Stored,
        bundle: Option<&str>,
        now: &str,
    ) -> Vec<(PropName, String)> {
        let mut v = layout::managed_props();
        v.push((props::version(), version.to_owned()));
        v.push((props::state(), state.as_str().to_owned()));
        v.push((props::created(), now.to_owned()));
        v.push((PropName::native("canmount"), "noauto".into()));
        v.push((PropName::native("mountpoint"), "/".into()));
        v.push((
            props::zbm_commandline(),
            format!("cairn.version={id} cairn.boot=normal"),
        ));
        if let Some(b) = bundle {
            v.push((props::bundle(), b.to_owned()));
        }
        v
    }

    /// A config dataset's properties: the version's, mounted at the layout's config path.
    fn config_props(
        &self,
        id: &VersionId,
        version: &str,
        state: Stored,
        bundle: Option<&str>,
        now: &str,
    ) -> Vec<(PropName, String)> {
        let mut props = self.version_props(id, version, state, bundle, now);
        props.retain(|(k, _)| k.as_str() != "mountpoint" && k != &props::zbm_commandline());
        props.push((
            PropName::native("mountpoint"),
            self.layout.config_mountpoint.display().to_string(),
        ));
        props
    }

    // -----------------------------------------------------------------------------------
    // reading

    /// Every version, newest first.
    pub fn versions(&self) -> Result<Vec<Version>> {
        // The last known good, and in the same `zfs get` whether cairn's layout is there.
        let lkg = match self.zfs.get(
            &self.layout.root_container().into(),
            &[props::last_known_good(), props::layout_version()],
        ) {
            Ok(mut got) => {
                if got
                    .remove(&props::layout_version())
                    .and_then(|v| v.value)
                    .is_none()
                {
                    return Err(EngineError::NotInitialized);
                }
                got.remove(&props::last_known_good()).and_then(|v| v.value)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(EngineError::NotInitialized),
            Err(e) => return Err(e.into()),
        };
        let want = [
            "cairn:managed",
            "cairn:version",
            "cairn:state",
            "cairn:created",
            "cairn:last-booted",
            "cairn:bundle",
            "cairn:pinned",
            "cairn:health",
            "cairn:failed-reason",
            "used",
            "origin",
            "cairn:expires",
        ];
        let props: Vec<PropName> = want
            .iter()
            .map(|w| PropName::new(*w).expect("valid"))
            .collect();
        let roots = self.zfs.list(&ListRequest {
            roots: vec![self.layout.root_container()],
            depth: Some(1),
            types: vec![DatasetType::Filesystem],
            props: props.clone(),
            ..Default::default()
        })?;
        let configs: BTreeMap<String, u64> = self
            .zfs
            .list(&ListRequest {
                roots: vec![self.layout.config_container()],
                depth: Some(1),
                props: vec![PropName::native("used")],
                ..Default::default()
            })?
            .into_iter()
            .map(|e| {
                (
                    e.name.dataset().basename().to_owned(),
                    e.num("used").unwrap_or(0),
                )
            })
            .collect();
        let boot = self.boot.read()?;
        let booted = self.host.booted();
        let mut out = Vec::new();
        for e in roots {
            let ds = e.name.dataset();
            let Some(id) = self.layout.id_of_root(&ds) else {
                continue;
            };
            if e.prop("cairn:managed") != Some(layout::MANAGED) {
                continue;
            }
            let stored = e
                .prop("cairn:state")
                .and_then(Stored::parse)
                .unwrap_or(Stored::Staging);
            let is_default = boot.default.as_ref() == Some(&id);
            let is_trial = boot.trial.as_ref() == Some(&id)
                && (boot.attempts_left > 0
                    || booted
                        .as_ref()
                        .is_some_and(|b| b.version == id && b.kind == BootKind::Trial));
            let is_booted = booted.as_ref().is_some_and(|b| b.version == id);
            let is_lkg = lkg.as_deref() == Some(id.as_str());
            let state = match stored {
                Stored::Staging => "staging",
                Stored::Failed => "failed",
                Stored::Factory => "factory",
                _ if is_trial => "trial",
                _ if is_default => "active",
                _ if is_lkg => "last-known-good",
                _ => "staged",
            };
            out.push(Version {
                version: e.prop("cairn:version").unwrap_or_default().to_owned(),
                stored,
                state,
                created: e.num("cairn:created").unwrap_or(0),
                last_booted: e.num("cairn:last-booted"),
                bundle: e.prop("cairn:bundle").map(str::to_owned),
                pinned: e.prop("cairn:pinned") == Some("yes"),
                health: e.prop("cairn:health").map(str::to_owned),
                failed_reason: e.prop("cairn:failed-reason").map(str::to_owned),
                is_default,
                is_trial,
                is_booted,
                is_last_known_good: is_lkg,
                used: e.num("used").unwrap_or(0) + configs.get(id.as_str()).copied().unwrap_or(0),
                origin: e.prop("origin").map(str::to_owned),
                expires: e.num("cairn:expires"),
                id,
            });
        }
        out.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then_with(|| compare_versions(&b.version, &a.version))
        });
        Ok(out)
    }

    pub fn version(&self, id: &VersionId) -> Result<Version> {
        self.versions()?
            .into_iter()
            .find(|v| &v.id == id)
            .ok_or_else(|| EngineError::UnknownVersion { id: id.to_string() })
    }

    /// The running version, required for operations that start from it.
    fn running(&self) -> Result<VersionId> {
        let b = self.host.booted().ok_or(EngineError::NotBooted)?;
        if !self.exists(&self.layout.root(&b.version))? {
            return Err(EngineError::UnknownVersion {
                id: b.version.to_string(),
            });
        }
        Ok(b.version)
    }

    // -----------------------------------------------------------------------------------
    // staging

    fn check_space(&self, need: u64) -> Result<()> {
        let info = self.zfs.pool(&self.layout.pool)?;
        // Keep 1/32 of the pool free as ZFS itself does (slop space).
        let usable = info.free.saturating_sub(info.size / 32);
        if need > usable {
            return Err(EngineError::NotEnoughSpace {
                pool: self.layout.pool.to_string(),
                need,
                free: usable,
            });
        }
        Ok(())
    }

    /// Every check that can be made before a dataset is touched.
    fn check_new_version(
        &self,
        version: &str,
        allow_downgrade: bool,
        size: u64,
    ) -> Result<(VersionId, VersionId)> {
        self.require_init()?;
        let id = VersionId::from_version(version)?;
        // What `running()` checks, and the running version's number, in one `zfs get`.
        let running = self.host.booted().ok_or(EngineError::NotBooted)?.version;
        let running_version = match self
            .zfs
            .get(&self.layout.root(&running).into(), &[props::version()])
        {
            Ok(mut got) => got
                .remove(&props::version())
                .and_then(|v| v.value)
                .unwrap_or_default(),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(EngineError::UnknownVersion {
                    id: running.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if self.exists(&self.layout.root(&id))? || self.exists(&self.layout.config(&id))? {
            return Err(EngineError::VersionExists { id: id.to_string() });
        }
        if !allow_downgrade && compare_versions(version, &running_version).is_lt() {
            return Err(EngineError::Downgrade {
                new: version.to_owned(),
                running: running_version,
            });
        }
        self.check_space(size)?;
        Ok((id, running))
    }

    fn pre_snapshots(&self, running: &VersionId, id: &VersionId) -> Vec<SnapshotName> {
        let mut v = vec![
            Layout::pre_snapshot(&self.layout.root(running), id),
            Layout::pre_snapshot(&self.layout.config(running), id),
        ];
        v.extend(
            self.layout
                .data_datasets()
                .map(|d| Layout::pre_snapshot(d, id)),
        );
        v
    }

    /// Step `snapshot`: root, config and data of the running version in one call.
    fn take_pre_snapshots(&self, running: &VersionId, id: &VersionId) -> Result<()> {
        let snaps = self.pre_snapshots(running, id);
        let existing = self.existing_snapshots(&snaps)?;
        let missing: Vec<&SnapshotName> = snaps.iter().filter(|s| !existing.contains(*s)).collect();
        if missing.len() == snaps.len() {
            self.zfs
                .snapshot(&snaps, &[(props::managed(), layout::MANAGED.into())])?;
        } else if !missing.is_empty() {
            // A partial set cannot come from one atomic call: refuse to guess.
            return Err(EngineError::Zfs(ZfsError::AlreadyExists {
                name: format!("part of the pre-upgrade snapshot set for {id}"),
            }));
        }
        Ok(())
    }

    /// Which of `snaps` exist: one `zfs list` of their datasets' snapshots (one command
    /// instead of one per snapshot), or one by one when a dataset itself is missing.
    fn existing_snapshots(&self, snaps: &[SnapshotName]) -> Result<Vec<SnapshotName>> {
        let mut roots: Vec<DatasetName> = snaps.iter().map(|s| s.dataset()).collect();
        roots.dedup();
        let listed = self.zfs.list(&ListRequest {
            roots,
            depth: Some(1),
            types: vec![DatasetType::Snapshot],
            ..Default::default()
        });
        match listed {
            Ok(entries) => Ok(snaps
                .iter()
                .filter(|s| {
                    entries
                        .iter()
                        .any(|e| matches!(&e.name, ObjectName::Snapshot(x) if x == *s))
                })
                .cloned()
                .collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let mut found = Vec::new();
                for s in snaps {
                    if self.snapshot_exists(s)? {
                        found.push(s.clone());
                    }
                }
                Ok(found)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Step `clone-config`: the running config, as of the pre-upgrade snapshot.
    fn clone_config(
        &self,
        running: &VersionId,
        id: &VersionId,
        version: &str,
        bundle: Option<&str>,
    ) -> Result<()> {
        let cfg = self.layout.config(id);
        if self.exists(&cfg)? {
            return Ok(());
        }
        let now = self.host.now().to_string();
        let props = self.config_props(id, version, Stored::Staging, bundle, &now);
        let origin = Layout::pre_snapshot(&self.layout.config(running), id);
        self.zfs.clone_snapshot(&origin, &cfg, &props)?;
        Ok(())
    }

    /// Step `migrate`: each hook from the new root, against the new config.
    fn migrate(&self, id: &VersionId, hooks: &[String], timeout: Duration) -> Result<()> {
        let root = self.layout.root(id);
        let cfg = self.layout.config(id);
        for hook in hooks {
            let command = vec![hook.clone()];
            let run = RootRun {
                root: &root,
                config: Some((&cfg, &self.layout.config_mountpoint)),
                command: &command,
                timeout,
            };
            match self.host.run_in_root(&run)? {
                Ok(()) => {}
                Err(HookFailure::TimedOut) => {
                    return Err(EngineError::MigrationTimedOut {
                        hook: hook.clone(),
                        secs: timeout.as_secs(),
                    });
                }
                Err(HookFailure::Failed { status, output }) => {
                    return Err(EngineError::MigrationFailed {
                        hook: hook.clone(),
                        status,
                        output,
                    });
                }
            }
        }
        Ok(())
    }

    /// Sets a version's state on its root, and on its config and defaults where they
    /// exist (a `zfs set` that finds no dataset is the existence check: one command each).
    fn mark(&self, id: &VersionId, state: Stored) -> Result<()> {
        let s = (props::state(), state.as_str().to_owned());
        self.zfs
            .set(&self.layout.root(id).into(), std::slice::from_ref(&s))?;
        for ds in [self.layout.config(id), self.layout.defaults(id)] {
            match self.zfs.set(&ds.into(), std::slice::from_ref(&s)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes everything an unfinished staging of `id` created: its config, its root
    /// (only while still `staging` and cairn's), and the pre-upgrade snapshots.
    fn undo_staging(&self, id: &VersionId, running: Option<&VersionId>) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for ds in [
            self.layout.defaults(id),
            self.layout.config(id),
            self.layout.root(id),
        ] {
            if !self.exists(&ds)? {
                continue;
            }
            if !self.is_managed(&ds)? {
                return Err(EngineError::Foreign {
                    name: ds.to_string(),
                });
            }
            let state = self.get_prop(&(&ds).into(), &props::state())?;
            if state.as_deref() != Some(Stored::Staging.as_str()) {
                continue;
            }
            self.zfs.destroy(
                &(&ds).into(),
                DestroyOptions {
                    recursive: true,
                    dry_run: false,
                },
            )?;
            done.push(format!("destroyed {ds}"));
        }
        if let Some(running) = running {
            for s in self.pre_snapshots(running, id) {
                if self.snapshot_exists(&s)? {
                    self.zfs.destroy(&(&s).into(), DestroyOptions::default())?;
                    done.push(format!("destroyed {s}"));
                }
            }
        }
        Ok(done)
    }

    /// Stages a new version beside the running one. On any failure after the first
    /// dataset was touched, everything is undone before the error is returned.
    pub fn stage(&self, req: StageRequest<'_>, by: &str) -> Result<VersionId> {
        let (id, running) =
            self.check_new_version(&req.version, req.allow_downgrade, req.size_hint)?;
        if let Payload::IncrementalStream { base, .. } = &req.payload {
            self.pristine(base)?;
        }
        for h in &req.migrations {
            if !h.starts_with('/') {
                return Err(EngineError::MigrationFailed {
                    hook: h.clone(),
                    status: "not run".into(),
                    output: "migration hooks must be absolute paths inside the new root".into(),
                });
            }
        }
        let mut op = self.begin("upgrade", id.as_str(), running.as_str(), by);
        let result = self.stage_steps(&mut op, req, &id, &running);
        self.end_staging(op, result, id, &running)
    }

    /// Ends a staging operation: journaled on success; on failure everything it made is
    /// undone first. A test crash leaves it for `reconcile`.
    fn end_staging(
        &self,
        op: Op<'_>,
        result: Result<()>,
        id: VersionId,
        running: &VersionId,
    ) -> Result<VersionId> {
        match result {
            Ok(()) => {
                op.finish("ok")?;
                Ok(id)
            }
            Err(EngineError::Crashed { point }) => Err(EngineError::Crashed { point }),
            Err(e) => {
                self.undo_staging(&id, Some(running))?;
                op.finish(&format!("failed: {e}"))?;
                Err(e)
            }
        }
    }

    fn stage_steps(
        &self,
        op: &mut Op<'_>,
        req: StageRequest<'_>,
        id: &VersionId,
        running: &VersionId,
    ) -> Result<()> {
        op.step("snapshot")?;
        self.take_pre_snapshots(running, id)?;
        op.step("receive")?;
        let now = self.host.now().to_string();
        let mut rr = ReceiveRequest::new(self.layout.root(id));
        rr.no_mount = true;
        rr.props = self.version_props(
            id,
            &req.version,
            Stored::Staging,
            req.bundle.as_deref(),
            &now,
        );
        match req.payload {
            Payload::FullStream(s) => {
                self.zfs.receive(&rr, s)?;
            }
            Payload::IncrementalStream { base, stream } => {
                rr.origin = Some(self.pristine(&base)?);
                self.zfs.receive(&rr, stream)?;
            }
            Payload::Tree(writer) => {
                let root = self.layout.root(id);
                self.zfs.create(
                    &root,
                    &CreateOptions {
                        parents: false,
                        props: rr.props.clone(),
                    },
                )?;
                self.host.populate(&root, writer)?;
                let snap = root.snapshot(INSTALLED_SNAPSHOT).map_err(ZfsError::from)?;
                self.zfs.snapshot(std::slice::from_ref(&snap), &[])?;
            }
        }
        op.step("clone-config")?;
        self.clone_config(running, id, &req.version, req.bundle.as_deref())?;
        op.step("defaults")?;
        if let Some(writer) = req.defaults {
            self.write_defaults(id, &req.version, writer)?;
        }
        op.step("migrate")?;
        self.migrate(id, &req.migrations, req.migration_timeout)?;
        op.step("mark-staged")?;
        self.mark(id, Stored::Staged)?;
        Ok(())
    }

    /// Step `defaults`: the version's own default configuration, in `DEFAULTS/<id>`,
    /// snapshotted as `@installed`.
    fn write_defaults(
        &self,
        id: &VersionId,
        version: &str,
        writer: &mut TreeWriter<'_>,
    ) -> Result<()> {
        let container = self.layout.defaults_container();
        if !self.exists(&container)? {
            let props = vec![
                (PropName::native("mountpoint"), "none".to_owned()),
                (PropName::native("canmount"), "off".to_owned()),
            ];
            self.zfs.create(
                &container,
                &CreateOptions {
                    parents: false,
                    props,
                },
            )?;
        }
        let ds = self.layout.defaults(id);
        if self.exists(&ds)? {
            return Ok(());
        }
        let now = self.host.now().to_string();
        let mut props = self.config_props(id, version, Stored::Staging, None, &now);
        props.retain(|(k, _)| k.as_str() != "mountpoint");
        props.push((
            PropName::native("mountpoint"),
            format!("/var/lib/cairn/defaults/{id}"),
        ));
        self.zfs.create(
            &ds,
            &CreateOptions {
                parents: false,
                props,
            },
        )?;
        self.host.populate(&ds, writer)?;
        let snap = ds.snapshot(INSTALLED_SNAPSHOT).map_err(ZfsError::from)?;
        self.zfs.snapshot(std::slice::from_ref(&snap), &[])?;
        Ok(())
    }

    /// The pristine snapshot of a version's root: the one it was received as.
    pub fn pristine(&self, id: &VersionId) -> Result<SnapshotName> {
        let root = self.layout.root(id);
        if !self.exists(&root)? {
            return Err(EngineError::UnknownVersion { id: id.to_string() });
        }
        if let Some(s) = self.first_snapshot(&root)? {
            return Ok(s);
        }
        // A clone without snapshots of its own (the first version, cloned from the
        // factory baseline) was received as its origin's dataset was.
        let origin = self
            .get_prop(&(&root).into(), &PropName::native("origin"))?
            .filter(|o| o != "-")
            .and_then(|o| SnapshotName::new(o).ok());
        match origin {
            Some(o) => Ok(self.first_snapshot(&o.dataset())?.unwrap_or(o)),
            None => Err(EngineError::UnknownVersion {
                id: format!("{id} (it has no pristine snapshot to build a delta on)"),
            }),
        }
    }

    /// The oldest snapshot of `ds` that cairn did not take before an operation.
    fn first_snapshot(&self, ds: &DatasetName) -> Result<Option<SnapshotName>> {
        let snaps = self.zfs.list(&ListRequest {
            roots: vec![ds.clone()],
            depth: Some(1),
            types: vec![DatasetType::Snapshot],
            props: vec![PropName::native("createtxg")],
            ..Default::default()
        })?;
        Ok(snaps
            .into_iter()
            .filter_map(|e| match e.name {
                ObjectName::Snapshot(s) if !s.snap().starts_with("cairn-pre-") => {
                    Some((e.props.values().next().cloned().flatten(), s))
                }
                _ => None,
            })
            .min_by_key(|(txg, _)| {
                txg.as_deref()
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(u64::MAX)
            })
            .map(|(_, s)| s))
    }

    /// Package-based staging: clones the running root and runs `command` inside the clone
    /// (e.g. `apt-get dist-upgrade`); the result becomes `version`. The running system is
    /// not touched.
    pub fn stage_packages(
        &self,
        version: &str,
        command: &[String],
        timeout: Duration,
        migrations: &[String],
        by: &str,
    ) -> Result<VersionId> {
        let used = self.get_prop(
            &self.layout.root(&self.running()?).into(),
            &PropName::native("referenced"),
        )?;
        let need = used.and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) / 4;
        let (id, running) = self.check_new_version(version, false, need)?;
        let mut op = self.begin("packages", id.as_str(), running.as_str(), by);
        let result = (|| -> Result<()> {
            op.step("snapshot")?;
            self.take_pre_snapshots(&running, &id)?;
            op.step("clone-root")?;
            if !self.exists(&self.layout.root(&id))? {
                let now = self.host.now().to_string();
                let props = self.version_props(&id, version, Stored::Staging, None, &now);
                let origin = Layout::pre_snapshot(&self.layout.root(&running), &id);
                self.zfs
                    .clone_snapshot(&origin, &self.layout.root(&id), &props)?;
            }
            op.step("clone-config")?;
            self.clone_config(&running, &id, version, None)?;
            op.step("run")?;
            let root = self.layout.root(&id);
            let cfg = self.layout.config(&id);
            let run = RootRun {
                root: &root,
                config: Some((&cfg, &self.layout.config_mountpoint)),
                command,
                timeout,
            };
            match self.host.run_in_root(&run)? {
                Ok(()) => {}
                Err(HookFailure::TimedOut) => {
                    return Err(EngineError::StagingCommandFailed {
                        status: "timed out".into(),
                        output: format!("stopped after {} s", timeout.as_secs()),
                    });
                }
                Err(HookFailure::Failed { status, output }) => {
                    return Err(EngineError::StagingCommandFailed { status, output });
                }
            }
            op.step("migrate")?;
            self.migrate(&id, migrations, timeout)?;
            op.step("mark-staged")?;
            self.mark(&id, Stored::Staged)?;
            Ok(())
        })();
        self.end_staging(op, result, id, &running)
    }

    // -----------------------------------------------------------------------------------
    // activation

    fn bootable(&self, id: &VersionId, force: bool) -> Result<()> {
        let root = self.layout.root(id);
        // One `zfs get` for all three properties (activation's cost is mostly commands).
        let want = [props::managed(), props::state(), props::failed_reason()];
        let mut got = match self.zfs.get(&(&root).into(), &want) {
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(EngineError::UnknownVersion { id: id.to_string() });
            }
            Err(e) => return Err(e.into()),
        };
        let [managed, state, reason] = want.map(|p| got.remove(&p).and_then(|v| v.value));
        if managed.as_deref() != Some(layout::MANAGED) {
            return Err(EngineError::Foreign {
                name: root.to_string(),
            });
        }
        let state = state.unwrap_or_default();
        match Stored::parse(&state) {
            Some(Stored::Staged | Stored::Confirmed) => Ok(()),
            Some(Stored::Failed) if force => Ok(()),
            Some(Stored::Failed) => Err(EngineError::VersionFailed {
                id: id.to_string(),
                reason: reason.unwrap_or_else(|| "no reason recorded".into()),
            }),
            _ => Err(EngineError::NotBootable {
                id: id.to_string(),
                state,
            }),
        }
    }

    /// Activates a version: as the default, for a trial of N attempts, or for one boot.
    pub fn activate(&self, id: &VersionId, how: Activation, force: bool, by: &str) -> Result<()> {
        self.require_init()?;
        self.bootable(id, force)?;
        let arg = match how {
            Activation::Permanent => "permanent".to_owned(),
            Activation::Trial(n) => format!("trial:{}", n.max(1)),
            Activation::Once => "once".to_owned(),
        };
        let mut op = self.begin("activate", id.as_str(), &arg, by);
        self.activate_steps(&mut op, id, &arg)?;
        op.finish("ok")
    }

    fn activate_steps(&self, op: &mut Op<'_>, id: &VersionId, arg: &str) -> Result<()> {
        let before = self.boot.read()?;
        op.step("boot")?;
        let mut state = before.clone();
        match arg.split_once(':') {
            Some(("trial", n)) => {
                state.trial = Some(id.clone());
                state.attempts_left = n.parse().unwrap_or(2);
            }
            _ if arg == "once" => state.once = Some(id.clone()),
            _ => {
                state.default = Some(id.clone());
                state.trial = None;
                state.attempts_left = 0;
                state.once = None;
            }
        }
        if state != before {
            self.boot.write(&state)?;
        }
        if arg == "permanent" {
            op.step("bootfs")?;
            self.zfs
                .set_bootfs(&self.layout.pool, Some(&self.layout.root(id)))?;
            op.step("lkg")?;
            if let Some(prev) = before.default.filter(|p| p != id) {
                self.zfs.set(
                    &self.layout.root_container().into(),
                    &[(props::last_known_good(), prev.to_string())],
                )?;
            }
        }
        Ok(())
    }

    /// Confirms the running trial: it becomes the default and the previous default the
    /// last known good. Called by the health unit after the checks pass.
    pub fn confirm(&self, health: &str, by: &str) -> Result<VersionId> {
        self.require_init()?;
        let booted = self.host.booted().ok_or(EngineError::NotBooted)?;
        let state = self.boot.read()?;
        if booted.kind != BootKind::Trial || state.trial.as_ref() != Some(&booted.version) {
            return Err(EngineError::NoTrial { what: "confirm" });
        }
        let id = booted.version;
        let prev = state
            .default
            .clone()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        let mut op = self.begin("confirm", id.as_str(), &prev, by);
        self.confirm_steps(&mut op, &id, &prev, health)?;
        op.finish("ok")?;
        Ok(id)
    }

    fn confirm_steps(
        &self,
        op: &mut Op<'_>,
        id: &VersionId,
        prev: &str,
        health: &str,
    ) -> Result<()> {
        op.step("boot")?;
        let mut state = self.boot.read()?;
        if state.default.as_ref() != Some(id) || state.trial.is_some() {
            state.default = Some(id.clone());
            state.trial = None;
            state.attempts_left = 0;
            self.boot.write(&state)?;
        }
        op.step("lkg")?;
        if prev != "-" && prev != id.as_str() {
            self.zfs.set(
                &self.layout.root_container().into(),
                &[(props::last_known_good(), prev.to_owned())],
            )?;
        }
        op.step("bootfs")?;
        self.zfs
            .set_bootfs(&self.layout.pool, Some(&self.layout.root(id)))?;
        op.step("mark")?;
        self.mark(id, Stored::Confirmed)?;
        let h = if health.is_empty() { "passed" } else { health };
        self.zfs.set(
            &self.layout.root(id).into(),
            &[(props::health(), sanitize(h))],
        )?;
        Ok(())
    }

    /// Marks a version failed with a reason; if it is the trial target, the trial ends and
    /// the next boot goes to the default.
    pub fn mark_failed(&self, id: &VersionId, reason: &str, by: &str) -> Result<()> {
        self.require_init()?;
        let root = self.layout.root(id);
        if !self.exists(&root)? {
            return Err(EngineError::UnknownVersion { id: id.to_string() });
        }
        if self.is_factory(id) {
            return Err(EngineError::NotBootable {
                id: id.to_string(),
                state: "the factory baseline never changes".into(),
            });
        }
        if self.boot.read()?.default.as_ref() == Some(id) {
            return Err(EngineError::NotBootable {
                id: id.to_string(),
                state: "the default version cannot be marked failed; activate another first".into(),
            });
        }
        let mut op = self.begin("mark-failed", id.as_str(), "-", by);
        self.mark_failed_steps(&mut op, id, reason)?;
        op.finish(&format!("failed: {reason}"))
    }

    fn mark_failed_steps(&self, op: &mut Op<'_>, id: &VersionId, reason: &str) -> Result<()> {
        op.step("mark")?;
        self.mark(id, Stored::Failed)?;
        self.zfs.set(
            &self.layout.root(id).into(),
            &[(props::failed_reason(), sanitize(reason))],
        )?;
        op.step("boot")?;
        let mut state = self.boot.read()?;
        if state.trial.as_ref() == Some(id) || state.once.as_ref() == Some(id) {
            if state.trial.as_ref() == Some(id) {
                state.trial = None;
                state.attempts_left = 0;
            }
            if state.once.as_ref() == Some(id) {
                state.once = None;
            }
            self.boot.write(&state)?;
        }
        Ok(())
    }

    /// Version ids by creation, oldest first: one `zfs list` of one native property, the
    /// cheapest list there is. It still grows with the versions kept (seconds at 500
    /// under emulation, see docs/bench.md); a flat rollback would need an index.
    fn ids_by_creation(&self) -> Result<Vec<VersionId>> {
        let txg = PropName::native("createtxg");
        let mut ids: Vec<(u64, VersionId)> = self
            .zfs
            .list(&ListRequest {
                roots: vec![self.layout.root_container()],
                depth: Some(1),
                types: vec![DatasetType::Filesystem],
                props: vec![txg],
                ..Default::default()
            })?
            .into_iter()
            .filter_map(|e| {
                let id = self.layout.id_of_root(&e.name.dataset())?;
                Some((e.num("createtxg").unwrap_or(u64::MAX), id))
            })
            .collect();
        ids.sort();
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }

    /// Whether `id` could be activated without force (cairn's, staged or confirmed).
    fn is_bootable(&self, id: &VersionId) -> Result<bool> {
        match self.bootable(id, false) {
            Ok(()) => Ok(true),
            Err(
                EngineError::UnknownVersion { .. }
                | EngineError::Foreign { .. }
                | EngineError::VersionFailed { .. }
                | EngineError::NotBootable { .. },
            ) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes the version `steps` places older than the default the new default: counted
    /// among bootable versions in creation order (from the newest when the default is not
    /// bootable). Checks versions one by one from the default back, so its cost does not
    /// grow with the number of versions kept.
    pub fn rollback(&self, steps: usize, by: &str) -> Result<VersionId> {
        let ids = self.ids_by_creation()?;
        let default = self.boot.read()?.default;
        let start = match default
            .as_ref()
            .and_then(|d| ids.iter().position(|i| i == d))
        {
            Some(p) if self.is_bootable(&ids[p])? => p,
            _ => ids.len(),
        };
        let mut left = steps.max(1);
        let mut target = None;
        for id in ids[..start].iter().rev() {
            if self.is_bootable(id)? {
                left -= 1;
                if left == 0 {
                    target = Some(id.clone());
                    break;
                }
            }
        }
        let id = target.ok_or(EngineError::NothingToRollTo { direction: "older" })?;
        self.activate(&id, Activation::Permanent, false, by)?;
        Ok(id)
    }

    /// Makes the next newer bootable version the default.
    pub fn roll_forward(&self, by: &str) -> Result<VersionId> {
        let ids = self.ids_by_creation()?;
        let none = EngineError::NothingToRollTo { direction: "newer" };
        let default = self.boot.read()?.default;
        let Some(pos) = default
            .as_ref()
            .and_then(|d| ids.iter().position(|i| i == d))
        else {
            return Err(none);
        };
        if !self.is_bootable(&ids[pos])? {
            return Err(none);
        }
        let mut target = None;
        for id in &ids[pos + 1..] {
            if self.is_bootable(id)? {
                target = Some(id.clone());
                break;
            }
        }
        let id = target.ok_or(none)?;
        self.activate(&id, Activation::Permanent, false, by)?;
        Ok(id)
    }

    // -----------------------------------------------------------------------------------
    // read-only access

    /// Mounts a version's root or config (or one of their snapshots) read-only at `at`.
    pub fn mount(
        &self,
        id: &VersionId,
        part: Part,
        snapshot: Option<&str>,
        at: &Path,
    ) -> Result<PathBuf> {
        let ds = match part {
            Part::Root => self.layout.root(id),
            Part::Config => self.layout.config(id),
            Part::Defaults => self.layout.defaults(id),
        };
        if !self.exists(&ds)? {
            return Err(EngineError::UnknownVersion { id: id.to_string() });
        }
        let target: ObjectName = match snapshot {
            Some(s) => ds.snapshot(s).map_err(ZfsError::from)?.into(),
            None => ds.into(),
        };
        Ok(self.zfs.mount(
            &target,
            &MountOptions {
                at: Some(at.to_owned()),
                read_only: true,
            },
        )?)
    }

    /// Early boot (before `zfs mount -a`): mounts the journal dataset so that what is
    /// done now is journaled where it belongs, not hidden under the later mount.
    pub fn mount_journal(&self) -> Result<()> {
        let ds = self.layout.journal();
        if self
            .get_prop(&(&ds).into(), &PropName::native("mounted"))?
            .as_deref()
            == Some("yes")
        {
            return Ok(());
        }
        self.zfs.mount(
            &ds.into(),
            &MountOptions {
                at: None,
                read_only: false,
            },
        )?;
        Ok(())
    }

    /// Early boot: mounts the booted version's own config dataset at the layout's config
    /// path (read-only for the factory baseline). `None` when the kernel command line
    /// names no version cairn knows (the box was not booted through cairn's menu).
    pub fn mount_booted_config(&self) -> Result<Option<PathBuf>> {
        self.require_init()?;
        let Some(b) = self.host.booted() else {
            return Ok(None);
        };
        let cfg = self.layout.config(&b.version);
        if !self.exists(&cfg)? {
            return Ok(None);
        }
        let read_only = self.is_factory(&b.version);
        Ok(Some(self.zfs.mount(
            &cfg.into(),
            &MountOptions {
                at: None,
                read_only,
            },
        )?))
    }

    pub fn unmount(&self, at: &Path) -> Result<()> {
        Ok(self.zfs.unmount(at)?)
    }

    /// What changed in `to`'s root since `from` was installed: `to` must descend from
    /// `from`'s pristine snapshot (a delta, or a package upgrade).
    /// `zfs diff` needs both datasets mounted; versions that are not running are mounted
    /// read-only in the host's work directory for the comparison.
    pub fn diff(&self, from: &VersionId, to: &VersionId) -> Result<Vec<DiffEntry>> {
        let base = self.pristine(from)?;
        let to_root = self.layout.root(to);
        if !self.exists(&to_root)? {
            return Err(EngineError::UnknownVersion { id: to.to_string() });
        }
        let mut mounted = Vec::new();
        let result = (|| -> Result<Vec<DiffEntry>> {
            for ds in [base.dataset(), to_root.clone()] {
                if self
                    .get_prop(&(&ds).into(), &PropName::native("mounted"))?
                    .as_deref()
                    == Some("yes")
                    || mounted.iter().any(|(d, _)| d == &ds)
                {
                    continue;
                }
                let at = self.host.work_dir().join(format!("diff-{}", ds.basename()));
                self.zfs.mount(
                    &(&ds).into(),
                    &MountOptions {
                        at: Some(at.clone()),
                        read_only: true,
                    },
                )?;
                mounted.push((ds, at));
            }
            Ok(self.zfs.diff(&base, &to_root.clone().into())?)
        })();
        for (_, at) in mounted.iter().rev() {
            if let Err(e) = self.zfs.unmount(at) {
                tracing::warn!(path = %at.display(), error = %e, "could not unmount after diff");
            }
        }
        result
    }

    // -----------------------------------------------------------------------------------
    // retention

    /// What the retention planner looks at, read from the pool in three `zfs list` calls.
    pub fn inventory(&self) -> Result<retention::Inventory> {
        let versions = self.versions()?;
        let props: Vec<PropName> = ["used", "origin", "createtxg"]
            .iter()
            .map(|p| PropName::native(p))
            .collect();
        let mut ds: BTreeMap<String, retention::DsFacts> = BTreeMap::new();
        for container in [
            self.layout.root_container(),
            self.layout.config_container(),
            self.layout.defaults_container(),
        ] {
            if !self.exists(&container)? {
                continue;
            }
            for e in self.zfs.list(&ListRequest {
                roots: vec![container],
                depth: Some(1),
                props: props.clone(),
                ..Default::default()
            })? {
                let name = e.name.to_string();
                ds.insert(
                    name.clone(),
                    retention::DsFacts {
                        name,
                        used: e.num("used").unwrap_or(0),
                        origin: e.prop("origin").map(str::to_owned),
                        createtxg: e.num("createtxg").unwrap_or(0),
                    },
                );
            }
        }
        let snap_props: Vec<PropName> =
            ["createtxg", "used", "userrefs", "clones", "cairn:managed"]
                .iter()
                .map(|p| PropName::new(*p).expect("valid"))
                .collect();
        let snapshots = self
            .zfs
            .list(&ListRequest {
                roots: vec![self.layout.base().clone()],
                recursive: true,
                types: vec![DatasetType::Snapshot],
                props: snap_props,
                ..Default::default()
            })?
            .into_iter()
            .map(|e| retention::SnapFacts {
                name: e.name.to_string(),
                dataset: e.name.dataset().to_string(),
                createtxg: e.num("createtxg").unwrap_or(0),
                used: e.num("used").unwrap_or(0),
                holds: e.num("userrefs").unwrap_or(0) as u32,
                clones: e
                    .prop("clones")
                    .map(|c| {
                        c.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
                managed: e.prop("cairn:managed") == Some(layout::MANAGED),
            })
            .collect();
        let pool = self.zfs.pool(&self.layout.pool)?;
        Ok(retention::Inventory {
            versions: versions
                .iter()
                .map(|v| retention::VersionFacts {
                    id: v.id.clone(),
                    created: v.created,
                    last_booted: v.last_booted,
                    expires: v.expires,
                    pinned: v.pinned,
                    managed: true,
                    booted: v.is_booted,
                    default: v.is_default,
                    trial: v.is_trial,
                    last_known_good: v.is_last_known_good,
                    factory: v.stored == Stored::Factory,
                    datasets: [
                        self.layout.root(&v.id),
                        self.layout.config(&v.id),
                        self.layout.defaults(&v.id),
                    ]
                    .iter()
                    .filter_map(|d| ds.get(d.as_str()).cloned())
                    .collect(),
                })
                .collect(),
            snapshots,
            data: self.layout.data_datasets().map(|d| d.to_string()).collect(),
            pool_size: pool.size,
            pool_free: pool.free,
        })
    }

    /// Plans retention and, unless `dry_run`, carries the plan out: expiry dates first,
    /// then the steps in order. Returns the plan and, per destroy, what ZFS reclaimed.
    pub fn cleanup(&self, policy: &retention::Policy, dry_run: bool, by: &str) -> Result<Cleanup> {
        self.require_init()?;
        let plan = retention::plan(&self.inventory()?, policy, self.host.now());
        let mut freed = Vec::new();
        if dry_run {
            return Ok(Cleanup {
                plan,
                freed,
                dry_run,
            });
        }
        let mut op = self.begin("cleanup", self.layout.pool.as_str(), "-", by);
        op.step("expiries")?;
        for e in &plan.expiries {
            let root: ObjectName = self.layout.root(&e.id).into();
            match e.expires {
                Some(at) => self.zfs.set(&root, &[(props::expires(), at.to_string())])?,
                None => self.zfs.inherit(&root, &props::expires())?,
            }
        }
        if !plan.notices.is_empty() {
            let list: Vec<String> = plan
                .notices
                .iter()
                .map(|(id, at)| format!("{id} at {at}"))
                .collect();
            tracing::warn!(versions = %list.join(", "), "versions expiring after their grace period");
            self.journal(
                "expiry-notice",
                by,
                &list.join(","),
                vec!["notice".into()],
                "pending",
            )?;
        }
        op.step("remove")?;
        for step in &plan.steps {
            match step {
                retention::Step::Promote { dataset, .. } => {
                    self.zfs
                        .promote(&DatasetName::new(dataset.as_str()).map_err(ZfsError::from)?)?;
                }
                retention::Step::Destroy { target, .. } => {
                    let t = ObjectName::parse(target).map_err(ZfsError::from)?;
                    if let ObjectName::Dataset(d) = &t
                        && !self.is_managed(d)?
                    {
                        return Err(EngineError::Foreign {
                            name: d.to_string(),
                        });
                    }
                    let recursive = matches!(t, ObjectName::Dataset(_));
                    let r = self.zfs.destroy(
                        &t,
                        DestroyOptions {
                            recursive,
                            dry_run: false,
                        },
                    )?;
                    freed.push((target.clone(), r.reclaim));
                }
            }
        }
        let result = format!(
            "removed {} versions, {} steps",
            plan.remove.len(),
            plan.steps.len()
        );
        op.finish(&result)?;
        Ok(Cleanup {
            plan,
            freed,
            dry_run,
        })
    }

    // -----------------------------------------------------------------------------------
    // adoption and reconcile

    /// Versions the journal never recorded (restored from a replica, say): checked and
    /// taken back under management. Returns their ids. Foreign datasets are left alone.
    pub fn adopt(&self, by: &str) -> Result<Vec<VersionId>> {
        let known: std::collections::BTreeSet<String> = self
            .journal_entries()?
            .into_iter()
            .filter(|e| e.result == "ok")
            .map(|e| e.target)
            .collect();
        let mut adopted = Vec::new();
        for v in self.versions()? {
            if known.contains(v.id.as_str()) || v.stored == Stored::Staging {
                continue;
            }
            if !self.exists(&self.layout.config(&v.id))? || v.version.is_empty() {
                tracing::warn!(id = %v.id, "not adopting: no config dataset or no cairn:version");
                continue;
            }
            self.journal("adopt", by, v.id.as_str(), vec!["check".into()], "ok")?;
            adopted.push(v.id);
        }
        Ok(adopted)
    }

    /// Takes an existing root-on-ZFS system (laid out as the OpenZFS guide does:
    /// `<pool>/ROOT/<be>` mounted at `/`) under management without moving it: `be` becomes
    /// the version `version` under its own name, beside a new config dataset, the journal
    /// and the layout's data datasets. Everything is checked before anything is touched;
    /// with `dry_run` nothing is touched at all and the returned plan says what would be.
    pub fn adopt_system(
        &self,
        be: &str,
        version: &str,
        dry_run: bool,
        by: &str,
    ) -> Result<Adoption> {
        let plan = self.plan_adoption(be, version)?;
        if dry_run {
            return Ok(plan);
        }
        let l = &self.layout;
        let (id, root) = (&plan.id, &plan.root);
        let now = self.host.now().to_string();
        if !self.snapshot_exists(&plan.snapshot)? {
            self.zfs
                .snapshot(std::slice::from_ref(&plan.snapshot), &[])?;
        }
        let mut create = self.shared_datasets();
        create.push((
            l.config(id),
            self.config_props(id, version, Stored::Confirmed, None, &now),
        ));
        self.create_all(create)?;
        // The root keeps its mountpoint (`/`, checked) and is mounted: only cairn's
        // properties and, if it differs, canmount are set on it.
        let mut props = self.version_props(id, version, Stored::Confirmed, None, &now);
        props.retain(|(k, v)| {
            k.as_str() != "mountpoint" && !(k.as_str() == "canmount" && plan.canmount == *v)
        });
        self.zfs.set(&root.into(), &props)?;
        let mut state = self.boot.read()?;
        state.default = Some(id.clone());
        state.trial = None;
        state.attempts_left = 0;
        self.boot.write(&state)?;
        self.zfs.set_bootfs(&l.pool, Some(root))?;
        // Last: the layout marker that makes the pool cairn's (before it, `adopt_system`
        // can run again and finishes what an interrupted run began).
        self.zfs.set(
            &l.root_container().into(),
            &[(props::layout_version(), "1".into())],
        )?;
        self.journal(
            "adopt-system",
            by,
            id.as_str(),
            vec![
                "snapshot".into(),
                "create".into(),
                "mark".into(),
                "boot".into(),
            ],
            "ok",
        )?;
        Ok(plan)
    }

    fn plan_adoption(&self, be: &str, version: &str) -> Result<Adoption> {
        let l = &self.layout;
        let not = |detail: String| EngineError::NotAdoptable { detail };
        let id = VersionId::new(be)?;
        if version.trim().is_empty() {
            return Err(not("the version to record is empty".into()));
        }
        let container = l.root_container();
        let layout_version = match self
            .zfs
            .get(&(&container).into(), &[props::layout_version()])
        {
            Ok(mut got) => got.remove(&props::layout_version()).and_then(|v| v.value),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(not(format!(
                    "there is no {container}: cairn adopts a root-on-ZFS system whose \
                     boot environments are under {container} (the OpenZFS guide's layout)"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if layout_version.is_some() {
            return Err(EngineError::AlreadyInitialized);
        }
        let root = l.root(&id);
        let want = [
            props::managed(),
            PropName::native("mountpoint"),
            PropName::native("canmount"),
        ];
        let got = match self.zfs.get(&(&root).into(), &want) {
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(not(format!("there is no boot environment {root}")));
            }
            Err(e) => return Err(e.into()),
        };
        let val = |p: &PropName| got.get(p).and_then(|v| v.value.clone()).unwrap_or_default();
        let mountpoint = val(&PropName::native("mountpoint"));
        if mountpoint != "/" {
            return Err(not(format!(
                "{root} is mounted at '{mountpoint}', not '/': it is not a root file system"
            )));
        }
        let canmount = val(&PropName::native("canmount"));
        let snapshot = root
            .snapshot("cairn-adopted")
            .expect("a valid snapshot name");
        let partial = self.snapshot_exists(&snapshot)?;
        if !val(&props::managed()).is_empty() && !partial {
            return Err(not(format!(
                "{root} already carries cairn:managed but the pool has no cairn layout"
            )));
        }
        let mut create: Vec<DatasetName> =
            self.shared_datasets().into_iter().map(|(d, _)| d).collect();
        create.push(l.config(&id));
        // A dataset in the way is someone else's: adoption never takes it over. Only an
        // interrupted adoption (its snapshot is there) may have made them already.
        let mut actions = vec![format!(
            "snapshot {snapshot}: the system as it was before adoption"
        )];
        for ds in &create {
            if self.exists(ds)? {
                if partial {
                    continue;
                }
                return Err(not(format!(
                    "{ds} already exists and adoption would create it; move it away first"
                )));
            }
            actions.push(format!("create {ds}"));
        }
        actions.push(format!(
            "mark {root} as cairn's version {version} (id '{id}'): cairn:* properties and \
             org.zfsbootmenu:commandline; its mountpoint and contents stay as they are"
        ));
        if canmount != "noauto" {
            actions.push(format!(
                "set canmount=noauto on {root} (it is '{canmount}')"
            ));
        }
        actions.push(format!(
            "make '{id}' the default boot and {}'s bootfs",
            l.pool
        ));
        actions.push(format!("record cairn's layout on {container}"));
        let others = self.zfs.list(&ListRequest {
            roots: vec![container.clone()],
            depth: Some(1),
            types: vec![DatasetType::Filesystem],
            ..Default::default()
        })?;
        let left_alone = others
            .into_iter()
            .filter_map(|e| match e.name {
                ObjectName::Dataset(d) if d != container && d != root => Some(d.to_string()),
                _ => None,
            })
            .collect();
        Ok(Adoption {
            id,
            root,
            snapshot,
            version: version.to_owned(),
            canmount,
            actions,
            left_alone,
        })
    }

    /// Run at start: finishes or undoes what a crash interrupted, records the boot, and
    /// turns a fallback boot into a failed trial.
    pub fn reconcile(&self, by: &str) -> Result<ReconcileReport> {
        self.require_init()?;
        let mut report = ReconcileReport::default();
        if let Some(rec) = self.get_op()? {
            report.actions.push(format!(
                "found unfinished {} of {} (recorded at its first step, {})",
                rec.op, rec.target, rec.step
            ));
            self.resume(&rec, by, &mut report)?;
        }
        // Leftovers of a staging whose record was lost.
        for v in self.versions()? {
            if v.stored == Stored::Staging && !v.is_booted {
                report.actions.extend(self.undo_staging(&v.id, None)?);
            }
        }
        if let Some(b) = self.host.booted() {
            let root = self.layout.root(&b.version);
            if self.exists(&root)? {
                self.zfs.set(
                    &(&root).into(),
                    &[(props::last_booted(), self.host.now().to_string())],
                )?;
            }
            let state = self.boot.read()?;
            if b.kind == BootKind::Fallback
                && let Some(t) = state.trial.clone()
            {
                let reason = "the trial did not confirm before its boot attempts ran out";
                self.mark_failed(&t, reason, by)?;
                report.actions.push(format!(
                    "trial of {t} failed: {reason}; booted {} instead",
                    b.version
                ));
            }
        }
        Ok(report)
    }

    fn resume(&self, rec: &OpRecord, by: &str, report: &mut ReconcileReport) -> Result<()> {
        let id = VersionId::new(&rec.target).or_else(|_| VersionId::new("unknown"))?;
        match rec.op.as_str() {
            "upgrade" | "packages" => {
                let state = self
                    .get_prop(&self.layout.root(&id).into(), &props::state())
                    .ok()
                    .flatten();
                let staged = self.exists(&self.layout.root(&id))?
                    && state.as_deref() == Some(Stored::Staged.as_str());
                if staged {
                    report
                        .actions
                        .push(format!("{id} was staged completely; kept"));
                    self.set_op(None)?;
                    self.journal(&rec.op, by, &rec.target, vec!["reconcile".into()], "ok")?;
                } else {
                    let running = VersionId::new(&rec.arg)?;
                    report
                        .actions
                        .extend(self.undo_staging(&id, Some(&running))?);
                    self.set_op(None)?;
                    self.journal(
                        &rec.op,
                        by,
                        &rec.target,
                        vec!["reconcile".into()],
                        "undone after a crash",
                    )?;
                }
            }
            "activate" => {
                let mut op = self.begin("activate", id.as_str(), &rec.arg, by);
                self.activate_steps(&mut op, &id, &rec.arg)?;
                op.finish("ok (finished by reconcile)")?;
                report
                    .actions
                    .push(format!("finished activating {id} ({})", rec.arg));
            }
            "confirm" => {
                let mut op = self.begin("confirm", id.as_str(), &rec.arg, by);
                self.confirm_steps(&mut op, &id, &rec.arg, "passed")?;
                op.finish("ok (finished by reconcile)")?;
                report.actions.push(format!("finished confirming {id}"));
            }
            "mark-failed" => {
                let reason = self
                    .get_prop(&self.layout.root(&id).into(), &props::failed_reason())?
                    .unwrap_or_else(|| "marked failed (interrupted)".into());
                let mut op = self.begin("mark-failed", id.as_str(), "-", by);
                self.mark_failed_steps(&mut op, &id, &reason)?;
                op.finish("failed (finished by reconcile)")?;
                report.actions.push(format!("finished marking {id} failed"));
            }
            op if op.starts_with("reset-") => {
                let done = self.resume_reset(op, &rec.target, &rec.arg, by)?;
                report.actions.push(done);
            }
            "cleanup" => {
                // Each step of a cleanup is one atomic zfs call; the next run plans again
                // from what is there.
                self.set_op(None)?;
                self.journal(
                    "cleanup",
                    by,
                    &rec.target,
                    vec!["reconcile".into()],
                    "interrupted; the next run plans again",
                )?;
                report
                    .actions
                    .push("cleanup was interrupted; the next run plans again".into());
            }
            other => {
                tracing::warn!(op = other, "unknown operation record; clearing it");
                self.set_op(None)?;
            }
        }
        Ok(())
    }
}

/// Power-loss tests (VM): announces `point` on the debug channel (a serial port the test
/// host watches) and stops here for good, so the host can cut the power at exactly this
/// step. Nothing after the announcement is written by this process.
fn halt_at(channel: &str, point: &str) -> ! {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(channel) {
        let _ = writeln!(f, "CAIRN-STEP {point}");
        let _ = f.flush();
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Makes free text safe for a property value: one line, no tabs.
fn sanitize(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let t = t.trim();
    let t = if t.is_empty() || t == "-" {
        "(none)"
    } else {
        t
    };
    t.chars().take(1000).collect()
}
