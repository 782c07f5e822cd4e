//! cairn's boot side (BRIEF §4, §5): the boot selection state kept in a GRUB environment
//! block ([`GrubBoot`], the engine's [`Boot`]), and the generated GRUB menu ([`menu`],
//! pure) written atomically and checked with `grub-script-check` ([`write_menu`]).

pub mod env;
pub mod menu;

use std::path::{Path, PathBuf};

use cairn_engine::{Boot, BootState, EngineError, VersionId};
use cairn_zfs::cmd::{Cmd, Runner};

pub use menu::{FactoryEntry, MenuModel, MenuVersion};

/// The variables cairn keeps in the environment block.
pub mod vars {
    pub const DEFAULT: &str = "cairn_default";
    pub const TRIAL: &str = "cairn_trial";
    pub const LEFT: &str = "cairn_left";
    pub const ONCE: &str = "cairn_once";
}

/// Boot state in a GRUB environment block on the boot partition. Other variables in the
/// block (GRUB's own) are kept as they are.
#[derive(Debug, Clone)]
pub struct GrubBoot {
    path: PathBuf,
}

impl GrubBoot {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<env::Env, EngineError> {
        let bad = |detail: String| EngineError::BootState {
            what: "read",
            detail,
        };
        match env::read(&self.path).map_err(|e| bad(format!("{}: {e}", self.path.display())))? {
            None => Ok(env::Env::default()),
            Some(b) => {
                env::Env::parse(&b).map_err(|e| bad(format!("{}: {e}", self.path.display())))
            }
        }
    }
}

fn id_var(e: &env::Env, name: &str) -> Option<VersionId> {
    e.get(name)
        .filter(|v| !v.is_empty())
        .and_then(|v| VersionId::new(v).ok())
}

impl Boot for GrubBoot {
    fn read(&self) -> Result<BootState, EngineError> {
        let e = self.load()?;
        Ok(BootState {
            default: id_var(&e, vars::DEFAULT),
            trial: id_var(&e, vars::TRIAL),
            attempts_left: e.get(vars::LEFT).and_then(|v| v.parse().ok()).unwrap_or(0),
            once: id_var(&e, vars::ONCE),
        })
    }

    fn write(&self, state: &BootState) -> Result<(), EngineError> {
        if state.attempts_left > menu::MAX_ATTEMPTS {
            return Err(EngineError::BootState {
                what: "written",
                detail: format!(
                    "{} attempts; GRUB counts at most {}",
                    state.attempts_left,
                    menu::MAX_ATTEMPTS
                ),
            });
        }
        // Start from what is there, so GRUB's own variables survive; a corrupt block is
        // replaced (the engine's state is the truth).
        let mut e = self.load().unwrap_or_default();
        let set = |e: &mut env::Env, k: &str, v: Option<&VersionId>| match v {
            Some(v) => e.set(k, v.as_str()),
            None => e.set(k, ""),
        };
        let fail = |err: env::EnvError| EngineError::BootState {
            what: "written",
            detail: err.to_string(),
        };
        set(&mut e, vars::DEFAULT, state.default.as_ref()).map_err(fail)?;
        set(&mut e, vars::TRIAL, state.trial.as_ref()).map_err(fail)?;
        e.set(vars::LEFT, &state.attempts_left.to_string())
            .map_err(fail)?;
        set(&mut e, vars::ONCE, state.once.as_ref()).map_err(fail)?;
        let block = e.to_block().map_err(fail)?;
        env::write(&self.path, &block).map_err(|err| EngineError::BootState {
            what: "written",
            detail: format!("{}: {err}", self.path.display()),
        })
    }
}

/// Why a menu was not installed.
#[derive(Debug, thiserror::Error)]
pub enum MenuError {
    #[error(
        "the generated {file} does not pass grub-script-check: {detail}; the old menu was kept"
    )]
    Check { file: String, detail: String },
    #[error("writing {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `grub-script-check` on a file; `Ok(false)` when the tool is not installed.
pub fn script_check(path: &Path) -> Result<bool, MenuError> {
    let Some(tool) = Runner::which("grub-script-check") else {
        return Ok(false);
    };
    Runner::new()
        .run(&Cmd::new(tool).arg(path))
        .map(|_| true)
        .map_err(|e| MenuError::Check {
            file: path.display().to_string(),
            detail: e.to_string(),
        })
}

/// Writes `cairn.cfg` and `cairn-recovery.cfg` into `dir` (the GRUB prefix): each to a
/// temporary file, checked with `grub-script-check`, fsynced, renamed over the old one,
/// and the directory fsynced. The recovery file goes first, so the default entry never
/// points at a recovery menu that is not there yet.
pub fn write_menu(dir: &Path, model: &MenuModel) -> Result<(), MenuError> {
    for (name, text) in [
        ("cairn-recovery.cfg", menu::render_recovery(model)),
        ("cairn.cfg", menu::render_main(model)),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.new"));
        let io = |source| MenuError::Io {
            file: path.display().to_string(),
            source,
        };
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        if let Err(e) = script_check(&tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| MenuError::Io {
            file: dir.display().to_string(),
            source,
        })
}

/// Builds the menu model from the engine's versions (newest first, failed and
/// half-staged ones left out) and the boot state's default.
pub fn menu_model(
    product: &str,
    layout: &cairn_engine::Layout,
    versions: &[cairn_engine::Version],
    state: &BootState,
    env_label: &str,
    cmdline: &str,
) -> MenuModel {
    use cairn_engine::Stored;
    let base = layout.root_container();
    let pool_root = layout.pool.root();
    let rel = base.as_str()[pool_root.as_str().len()..]
        .trim_start_matches('/')
        .to_owned();
    let bootable: Vec<MenuVersion> = versions
        .iter()
        .filter(|v| matches!(v.stored, Stored::Staged | Stored::Confirmed))
        .map(|v| MenuVersion {
            id: v.id.to_string(),
            version: v.version.clone(),
            created: v.created,
            state: v.state.to_owned(),
            kernel: "/vmlinuz".into(),
            initrd: "/initrd.img".into(),
        })
        .collect();
    let baked = state
        .default
        .as_ref()
        .map(|d| d.to_string())
        .or_else(|| bootable.first().map(|v| v.id.clone()))
        .unwrap_or_default();
    MenuModel {
        product: product.to_owned(),
        pool: layout.pool.to_string(),
        root_container: rel,
        env_label: env_label.to_owned(),
        env_path: "/grubenv".into(),
        baked_default: baked,
        versions: bootable,
        factory: None,
        cmdline: cmdline.to_owned(),
    }
}
