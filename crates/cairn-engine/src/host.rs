//! What the engine needs from the machine besides ZFS and the boot state: the clock, what
//! is running now, the journal file, and running programs inside a version's root
//! (migration hooks, package-based staging). [`RealHost`] does it for real with mounts and
//! `chroot`; [`SimHost`] does it in memory for tests and `cairnd --sim`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_zfs::cmd::{Cmd, Runner};
use cairn_zfs::model::ZfsModel;
use cairn_zfs::{DatasetName, MountOptions, Zfs};

use crate::boot::{Boot, BootKind, MemBoot};
use crate::{EngineError, VersionId};

/// The version running now and why it was booted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Booted {
    pub version: VersionId,
    pub kind: BootKind,
}

/// Why a hook or command in a version's root did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookFailure {
    Failed { status: String, output: String },
    TimedOut,
}

/// What a program run inside a root may touch.
#[derive(Debug, Clone)]
pub struct RootRun<'a> {
    pub root: &'a DatasetName,
    /// The config dataset, mounted at the layout's config path inside the root.
    pub config: Option<(&'a DatasetName, &'a Path)>,
    pub command: &'a [String],
    pub timeout: Duration,
}

pub trait Host: Send + Sync {
    /// Seconds since the epoch.
    fn now(&self) -> u64;
    /// The version running now (from the kernel command line), if cairn booted it.
    fn booted(&self) -> Option<Booted>;
    /// Appends one line to the journal and makes it durable.
    fn journal_append(&self, line: &str) -> Result<(), EngineError>;
    fn journal_read(&self) -> Result<Vec<String>, EngineError>;
    /// A directory for temporary mounts.
    fn work_dir(&self) -> PathBuf;
    /// Lets `writer` fill a fresh (empty) dataset through a directory.
    fn populate(
        &self,
        dataset: &DatasetName,
        writer: &mut crate::TreeWriter<'_>,
    ) -> Result<(), EngineError>;
    /// Runs a program inside a version's root (chroot), with its config mounted.
    fn run_in_root(&self, run: &RootRun<'_>) -> Result<Result<(), HookFailure>, EngineError>;
}

// ---------------------------------------------------------------------------------------

/// A simulated hook: what running it does to the model, given the root it runs in and the
/// config mounted for it.
pub type SimHook = Arc<
    dyn Fn(&ZfsModel, &DatasetName, Option<&DatasetName>) -> Result<(), HookFailure> + Send + Sync,
>;

/// The simulated machine: a clock, a boot loader that follows [`crate::BootState::select`],
/// an in-memory journal, and hooks registered by path.
pub struct SimHost {
    model: Arc<ZfsModel>,
    boot: Arc<MemBoot>,
    clock: Mutex<u64>,
    booted: Mutex<Option<Booted>>,
    journal: Mutex<Vec<String>>,
    hooks: Mutex<BTreeMap<String, SimHook>>,
}

impl std::fmt::Debug for SimHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHost")
            .field("booted", &self.booted)
            .finish_non_exhaustive()
    }
}

impl SimHost {
    pub fn new(model: Arc<ZfsModel>, boot: Arc<MemBoot>) -> Self {
        Self {
            model,
            boot,
            clock: Mutex::new(1_800_000_000),
            booted: Mutex::new(None),
            journal: Mutex::new(Vec::new()),
            hooks: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn advance(&self, secs: u64) {
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        *c += secs;
        self.model.set_clock(*c);
    }

    /// Pretends `version` is running (first boot after provisioning).
    pub fn set_booted(&self, version: &VersionId, kind: BootKind) {
        *self.booted.lock().unwrap_or_else(|e| e.into_inner()) = Some(Booted {
            version: version.clone(),
            kind,
        });
    }

    /// Reboots: the boot loader decides from the boot state, saves its next state,
    /// and "boots" the version. `baked` is what the menu falls back to.
    pub fn reboot(&self, baked: &VersionId) -> Result<Booted, EngineError> {
        let decision = self.boot.read()?.select(baked);
        self.boot.write(&decision.next)?;
        self.advance(60);
        let b = Booted {
            version: decision.version,
            kind: decision.kind,
        };
        *self.booted.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
        Ok(b)
    }

    pub fn register_hook(&self, path: &str, hook: SimHook) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned(), hook);
    }
}

impl Host for SimHost {
    fn now(&self) -> u64 {
        *self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn booted(&self) -> Option<Booted> {
        self.booted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn journal_append(&self, line: &str) -> Result<(), EngineError> {
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.to_owned());
        Ok(())
    }

    fn journal_read(&self) -> Result<Vec<String>, EngineError> {
        Ok(self
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    fn work_dir(&self) -> PathBuf {
        PathBuf::from("/sim/work")
    }

    /// The writer fills a real temporary directory; its regular files go into the model.
    fn populate(
        &self,
        dataset: &DatasetName,
        writer: &mut crate::TreeWriter<'_>,
    ) -> Result<(), EngineError> {
        // Unique per call: simulated hosts in one process (parallel tests) must not share it.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cairn-sim-tree-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            dataset.basename()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| EngineError::Io { what, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("creating a tree directory"))?;
        let result = writer(&dir).map_err(io("writing the tree")).and_then(|()| {
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).map_err(io("reading the tree"))? {
                    let e = e.map_err(io("reading the tree"))?;
                    let ft = e.file_type().map_err(io("reading the tree"))?;
                    if ft.is_dir() {
                        stack.push(e.path());
                    } else if ft.is_file() {
                        let rel = e
                            .path()
                            .strip_prefix(&dir)
                            .expect("below dir")
                            .display()
                            .to_string();
                        let bytes = std::fs::read(e.path()).map_err(io("reading the tree"))?;
                        self.model
                            .write_file(dataset, &rel, &bytes)
                            .map_err(EngineError::Zfs)?;
                    }
                }
            }
            Ok(())
        });
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn run_in_root(&self, run: &RootRun<'_>) -> Result<Result<(), HookFailure>, EngineError> {
        let path = run.command.first().cloned().unwrap_or_default();
        // A hook runs only if the root really contains it, as chroot would require.
        let present = self
            .model
            .read_file(&run.root.into(), &path)
            .map_err(EngineError::Zfs)?
            .is_some();
        if !present {
            return Ok(Err(HookFailure::Failed {
                status: "exit status: 127".into(),
                output: format!("{path}: not found in {}", run.root),
            }));
        }
        let hook = self
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&path)
            .cloned();
        let Some(hook) = hook else {
            return Ok(Ok(()));
        };
        Ok(hook(&self.model, run.root, run.config.map(|(c, _)| c)))
    }
}

// ---------------------------------------------------------------------------------------

/// The real machine.
pub struct RealHost {
    zfs: Arc<dyn Zfs>,
    runner: Runner,
    journal_file: PathBuf,
    /// Where roots are mounted to run programs in them.
    work: PathBuf,
    cmdline: PathBuf,
}

impl std::fmt::Debug for RealHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealHost")
            .field("journal_file", &self.journal_file)
            .finish_non_exhaustive()
    }
}

impl RealHost {
    /// `journal_dir` is where the journal dataset is mounted; `work` a directory for
    /// temporary mounts; `cmdline` normally `/proc/cmdline`.
    pub fn new(zfs: Arc<dyn Zfs>, journal_dir: &Path, work: &Path, cmdline: &Path) -> Self {
        Self {
            zfs,
            runner: Runner::new(),
            journal_file: journal_dir.join("journal.jsonl"),
            work: work.to_owned(),
            cmdline: cmdline.to_owned(),
        }
    }

    fn io(what: String) -> impl FnOnce(std::io::Error) -> EngineError {
        move |source| EngineError::Io { what, source }
    }
}

/// Reads `cairn.version=<id>` and `cairn.boot=<kind>` from a kernel command line.
pub fn parse_cmdline(cmdline: &str) -> Option<Booted> {
    let mut version = None;
    let mut kind = BootKind::Normal;
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("cairn.version=") {
            version = VersionId::new(v).ok();
        } else if let Some(k) = word.strip_prefix("cairn.boot=") {
            kind = BootKind::parse(k).unwrap_or(BootKind::Normal);
        }
    }
    version.map(|version| Booted { version, kind })
}

impl Host for RealHost {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn booted(&self) -> Option<Booted> {
        std::fs::read_to_string(&self.cmdline)
            .ok()
            .and_then(|c| parse_cmdline(&c))
    }

    fn journal_append(&self, line: &str) -> Result<(), EngineError> {
        let what = format!("appending to {}", self.journal_file.display());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal_file)
            .map_err(Self::io(what.clone()))?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(Self::io(what))
    }

    fn journal_read(&self) -> Result<Vec<String>, EngineError> {
        match std::fs::read_to_string(&self.journal_file) {
            Ok(t) => Ok(t.lines().map(str::to_owned).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(EngineError::Io {
                what: format!("reading {}", self.journal_file.display()),
                source: e,
            }),
        }
    }

    fn work_dir(&self) -> PathBuf {
        self.work.clone()
    }

    fn populate(
        &self,
        dataset: &DatasetName,
        writer: &mut crate::TreeWriter<'_>,
    ) -> Result<(), EngineError> {
        let mnt = self.work.join(format!("tree-{}", dataset.basename()));
        let _ = std::fs::create_dir_all(&mnt);
        self.zfs.mount(
            &dataset.into(),
            &MountOptions {
                at: Some(mnt.clone()),
                read_only: false,
            },
        )?;
        let result = writer(&mnt).map_err(Self::io(format!(
            "writing the new root into {}",
            mnt.display()
        )));
        // Durable before it is snapshotted: the files, then the unmount.
        let unmounted = self.zfs.unmount(&mnt);
        result?;
        unmounted?;
        Ok(())
    }

    fn run_in_root(&self, run: &RootRun<'_>) -> Result<Result<(), HookFailure>, EngineError> {
        let mnt = self.work.join(format!("run-{}", run.root.basename()));
        let _ = std::fs::create_dir_all(&mnt);
        let opts = |at: PathBuf| MountOptions {
            at: Some(at),
            read_only: false,
        };
        self.zfs.mount(&run.root.into(), &opts(mnt.clone()))?;
        let mut mounted = vec![mnt.clone()];
        let result = (|| -> Result<Result<(), HookFailure>, EngineError> {
            let mut env = Vec::new();
            if let Some((config, path)) = run.config {
                let at = mnt.join(path.strip_prefix("/").unwrap_or(path));
                self.zfs.mount(&config.into(), &opts(at.clone()))?;
                mounted.push(at);
                env.push(format!("CAIRN_CONFIG={}", path.display()));
            }
            let secs = run.timeout.as_secs().max(1).to_string();
            let cmd = Cmd::new("/usr/bin/timeout")
                .args(["-k", "5", &secs, "/usr/bin/env"])
                .args(&env)
                .arg("/usr/sbin/chroot")
                .arg(&mnt)
                .args(run.command);
            let fin = self.runner.run_unchecked(&cmd)?;
            if fin.success() {
                return Ok(Ok(()));
            }
            // timeout(1) exits 124 when the time ran out (137 after its KILL).
            let code = fin.status.code();
            if code == Some(124) || code == Some(137) {
                return Ok(Err(HookFailure::TimedOut));
            }
            let output =
                cairn_zfs::cmd::stderr_tail(format!("{}{}", fin.stdout, fin.stderr).as_bytes());
            Ok(Err(HookFailure::Failed {
                status: fin.status.to_string(),
                output,
            }))
        })();
        for m in mounted.iter().rev() {
            let _ = self.zfs.unmount(m);
        }
        result
    }
}
