//! cairnd: cairn's D-Bus service (BRIEF §8). The objects and their methods are in
//! [`service`]; the wire contract (names, errors, client proxies) in [`api`]. The daemon
//! holds no state of its own: everything is in ZFS, the boot state and the journal.

pub mod adopt;
pub mod api;
pub mod service;
pub mod sim;
pub mod testbus;

use std::sync::Arc;

use cairn_engine::{BootKind, Engine, Layout, MemBoot, SimHost};
use cairn_zfs::model::ZfsModel;
use cairn_zfs::{CreateOptions, PoolName, SendRequest, Zfs};

pub use cairn_grub::menu::date;
pub use service::{AuthPolicy, Shared, Updater};

/// Serves the manager on `conn` (already connected to a bus) and claims the bus name.
pub async fn serve(conn: &zbus::Connection, shared: Arc<Shared>) -> zbus::Result<()> {
    conn.object_server()
        .at(api::MANAGER_PATH, Updater::new(shared))
        .await?;
    conn.request_name(api::BUS_NAME).await?;
    Ok(())
}

/// Where the real daemon finds its pieces (`/etc/cairn/layout.yaml` and the boot
/// partition).
#[derive(Debug, Clone)]
pub struct RealConfig {
    pub layout: std::path::PathBuf,
    pub grubenv: std::path::PathBuf,
    pub grub_dir: std::path::PathBuf,
    pub env_label: String,
    pub product: String,
    pub cmdline: String,
    pub work: std::path::PathBuf,
    /// Set when the pool is imported under an alternate root (image building): the
    /// journal is found under it.
    pub altroot: Option<std::path::PathBuf>,
}

/// The engine on the real machine: `zfs`/`zpool`, the GRUB environment block, the kernel
/// command line; after every change the GRUB menu is regenerated.
pub fn real_engine(cfg: &RealConfig) -> anyhow::Result<(Arc<Engine>, service::AfterChange)> {
    use anyhow::Context;
    let text = std::fs::read_to_string(&cfg.layout)
        .with_context(|| format!("reading {}", cfg.layout.display()))?;
    let layout =
        Layout::from_yaml(&text).with_context(|| format!("in {}", cfg.layout.display()))?;
    let zfs: Arc<dyn Zfs> = Arc::new(cairn_zfs::cli::ZfsCli::new()?);
    std::fs::create_dir_all(&cfg.work)
        .with_context(|| format!("creating {}", cfg.work.display()))?;
    let journal = match &cfg.altroot {
        Some(alt) => alt.join(
            layout
                .journal_mountpoint
                .strip_prefix("/")
                .unwrap_or(&layout.journal_mountpoint),
        ),
        None => layout.journal_mountpoint.clone(),
    };
    let host = Arc::new(cairn_engine::RealHost::new(
        zfs.clone(),
        &journal,
        &cfg.work,
        std::path::Path::new("/proc/cmdline"),
    ));
    let boot = Arc::new(cairn_grub::GrubBoot::new(&cfg.grubenv));
    let engine = Arc::new(Engine::new(zfs, boot, host, layout));
    let c = cfg.clone();
    let after: service::AfterChange = Arc::new(move |e: &Engine| {
        let menu = (|| -> anyhow::Result<()> {
            let versions = e.versions()?;
            let state = e.boot().read()?;
            let model = cairn_grub::menu_model(
                &c.product,
                e.layout(),
                &versions,
                &state,
                &c.env_label,
                &c.cmdline,
            );
            cairn_grub::write_menu(&c.grub_dir, &model)?;
            Ok(())
        })();
        if let Err(err) = menu {
            tracing::error!(error = %err, "the GRUB menu was not regenerated; the previous one stays");
        }
    });
    Ok((engine, after))
}

/// The appliance's support signing key (minisign, unencrypted): read from `key`, or
/// made and stored there (mode 0600, public half beside it as `.pub`) the first time.
pub fn support_key(key: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    if let Ok(text) = std::fs::read_to_string(key) {
        return Ok(text);
    }
    let kp =
        minisign::KeyPair::generate_unencrypted_keypair().map_err(|e| anyhow::anyhow!("{e}"))?;
    let sk = kp
        .sk
        .to_box(Some("cairn appliance support key"))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string();
    let pk = kp
        .pk
        .to_box()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string();
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)
        .and_then(|mut f| f.write_all(sk.as_bytes()))
        .with_context(|| format!("writing {}", key.display()))?;
    std::fs::write(key.with_extension("pub"), pk)
        .with_context(|| format!("writing {}.pub", key.display()))?;
    Ok(sk)
}

/// The reset the GRUB recovery menu asked for (`cairn.reset=<mode>` on the kernel
/// command line), if any.
pub fn reset_requested(cmdline: &str) -> Option<cairn_engine::factory::ResetMode> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cairn.reset="))
        .and_then(cairn_engine::factory::ResetMode::parse)
}

/// Serves the simulator's control object beside the manager (`cairnd --sim`).
pub async fn serve_sim(
    conn: &zbus::Connection,
    shared: Arc<Shared>,
    host: Arc<SimHost>,
) -> zbus::Result<()> {
    let baked = cairn_engine::VersionId::new("1.0").expect("valid");
    conn.object_server()
        .at(
            sim::SIM_PATH,
            sim::Simulator {
                shared,
                host,
                baked,
            },
        )
        .await?;
    Ok(())
}

/// A simulated appliance: an 8 GiB model pool laid out by cairn, version 1.0 installed
/// and booted. `cairnd --sim` serves it so the CLI can be tried without ZFS or root.
pub fn sim_engine() -> anyhow::Result<(Arc<Engine>, Arc<ZfsModel>, Arc<SimHost>)> {
    sim_engine_with(false)
}

/// The simulated appliance; with `factory`, 1.0 comes from a factory baseline (so factory
/// resets can be tried), otherwise it is installed directly.
pub fn sim_engine_with(
    factory: bool,
) -> anyhow::Result<(Arc<Engine>, Arc<ZfsModel>, Arc<SimHost>)> {
    let model = Arc::new(ZfsModel::new());
    let pool = PoolName::new("rpool")?;
    model.create_pool(&pool, 8 << 30)?;
    let boot = Arc::new(MemBoot::new());
    let host = Arc::new(SimHost::new(model.clone(), boot.clone()));
    // The simulator runs on the real clock, so dates in `cairnctl status` make sense.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    host.advance(now.saturating_sub(cairn_engine::Host::now(host.as_ref())));
    let engine = Arc::new(Engine::new(
        model.clone(),
        boot,
        host.clone(),
        Layout::simple(&pool),
    ));
    engine.init("sim")?;
    let stream = sim_release_stream(&model, "1.0")?;
    let v1 = if factory {
        let mut defaults = |d: &std::path::Path| std::fs::write(d.join("app.conf"), "schema=1\n");
        engine.provision_factory(
            "1.0",
            cairn_engine::Payload::FullStream(&mut stream.as_slice()),
            Some(&mut defaults),
            "sim",
        )?
    } else {
        engine.install_first("1.0", &mut stream.as_slice(), "sim")?
    };
    host.set_booted(&v1, BootKind::Normal);
    engine.reconcile("sim")?;
    Ok((engine, model, host))
}

/// A release stream the simulator understands (a model `zfs send` stream of a root with
/// `/etc/version`): what `cairnd sim-release` writes for trying `cairnctl install`.
pub fn sim_release_stream(model: &ZfsModel, version: &str) -> anyhow::Result<Vec<u8>> {
    let vendor = PoolName::new("vendor")?;
    if model.pool(&vendor).is_err() {
        model.create_pool(&vendor, 1 << 30)?;
    }
    let ds = vendor.root().child("release")?;
    if model
        .get(&(&ds).into(), &[cairn_zfs::PropName::native("type")])
        .is_err()
    {
        model.create(&ds, &CreateOptions::default())?;
    }
    model.write_file(&ds, "/etc/version", format!("{version}\n").as_bytes())?;
    let snap = ds.snapshot(&format!(
        "rel-{}",
        cairn_engine::VersionId::from_version(version)?
    ))?;
    model.snapshot(std::slice::from_ref(&snap), &[])?;
    let mut out = Vec::new();
    model.send(&SendRequest::full(snap), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use cairn_engine::factory::ResetMode;

    #[test]
    fn reset_flag_from_the_kernel_command_line() {
        assert_eq!(
            super::reset_requested("root=ZFS=p/ROOT/1 cairn.reset=full quiet"),
            Some(ResetMode::Full)
        );
        assert_eq!(
            super::reset_requested("cairn.reset=config"),
            Some(ResetMode::Config)
        );
        assert_eq!(super::reset_requested("cairn.reset=bogus"), None);
        assert_eq!(super::reset_requested("root=ZFS=p/ROOT/1"), None);
    }
}
