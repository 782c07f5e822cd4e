//! `cairnd`: sets up logging and the runtime, builds the engine, serves it on the bus.

use anyhow::Context;
use cairn_daemon::{
    AuthPolicy, RealConfig, Shared, real_engine, serve, serve_sim, sim_release_stream,
};
use clap::{Parser, Subcommand};

/// cairn's update service on the system bus (org.cairn.Updater1).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Serve a simulated appliance (in-memory ZFS) instead of the real one.
    #[arg(long)]
    sim: bool,
    /// With --sim: provision the simulated appliance from a factory baseline.
    #[arg(long, requires = "sim")]
    sim_factory: bool,
    /// Bus address to serve on (default: the system bus; with --sim, the session bus).
    #[arg(long, env = "CAIRN_BUS_ADDRESS")]
    address: Option<String>,
    /// Members of this group may call mutating methods besides root.
    #[arg(long, default_value = "cairn-admin")]
    admin_group: String,
    /// The appliance layout.
    #[arg(long, default_value = "/etc/cairn/layout.yaml")]
    layout: std::path::PathBuf,
    /// The GRUB environment block holding the boot state (on the non-ZFS boot partition).
    #[arg(long, default_value = "/boot/cairn/grubenv")]
    grubenv: std::path::PathBuf,
    /// Where the generated GRUB menu goes (GRUB's prefix).
    #[arg(long, default_value = "/boot/cairn/grub")]
    grub_dir: std::path::PathBuf,
    /// Filesystem label of the boot partition, for GRUB's search.
    #[arg(long, default_value = "CAIRNBOOT")]
    env_label: String,
    /// Product name in the boot menu.
    #[arg(long, env = "CAIRN_PRODUCT", default_value = "Appliance")]
    product: String,
    /// Extra kernel arguments for every menu entry.
    #[arg(long, env = "CAIRN_CMDLINE", default_value = "")]
    cmdline: String,
    /// Vendor public keys (minisign `.pub` files) bundles must be signed with.
    #[arg(long, default_value = "/etc/cairn/keys")]
    keys_dir: std::path::PathBuf,
    /// This appliance's product id, as bundles name it.
    #[arg(long, env = "CAIRN_PRODUCT_ID", default_value = "demo-appliance")]
    product_id: String,
    /// This appliance's hardware id, as bundles list it.
    #[arg(long, env = "CAIRN_HARDWARE_ID", default_value = "demo-x86")]
    hardware_id: String,
    /// The appliance's support signing key (made on first use); its `.pub` goes to the vendor.
    #[arg(long, default_value = "/etc/cairn/support.key")]
    support_key: std::path::PathBuf,
    /// This appliance's name in support archives (default: the host name).
    #[arg(long)]
    appliance_name: Option<String>,
    /// The retention policy (defaults apply when the file is missing).
    #[arg(long, default_value = "/etc/cairn/retention.yaml")]
    retention: std::path::PathBuf,
    /// The pool is imported under this alternate root (`zpool import -R`), as when
    /// provisioning a disk image; paths in the layout are found under it.
    #[arg(long)]
    altroot: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Early boot: carry out the factory reset the GRUB recovery menu asked for
    /// (`cairn.reset=<mode>` on the kernel command line), before data is mounted.
    ResetFromCmdline,
    /// Early boot: mount the booted version's own configuration dataset at the layout's
    /// config path (cairn-config.service).
    MountConfig,
    /// Factory line: lay cairn's layout out on an empty pool and write the never-booted
    /// factory baseline from a signed bundle (a full root); its first version becomes the
    /// default, and the boot state and GRUB menu are written.
    Provision { bundle: std::path::PathBuf },
    /// Package scripts: write the GRUB menu from the pool's state, as after any change.
    /// On a system cairn does not manage (no layout file, or no `cairn init` yet) it
    /// says so and changes nothing.
    WriteMenu,
    /// Take an installed root-on-ZFS system (`<pool>/ROOT/<be>` at `/`, as the OpenZFS
    /// guide lays it out) under management in place: the root becomes a version, a config
    /// dataset and the journal are created, GRUB is installed with its files on cairn's
    /// boot partition. `cairnctl init --adopt` runs this; see its --help.
    Adopt {
        /// The boot environment to adopt (default: the one mounted at /).
        #[arg(long)]
        be: Option<String>,
        /// The version recorded for it (default: debian-<contents of /etc/debian_version>).
        #[arg(long)]
        version: Option<String>,
        /// Say what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The disk GRUB is installed to (default: the disk of the boot partition).
        #[arg(long)]
        grub_disk: Option<std::path::PathBuf>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a release stream the simulator accepts (`cairnctl install --version V FILE`).
    SimRelease {
        version: String,
        output: std::path::PathBuf,
    },
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| "info".into());
    let registry = tracing_subscriber::registry().with(filter);
    match tracing_journald::layer() {
        Ok(journald) => registry
            .with(journald.with_syslog_identifier("cairnd".into()))
            .init(),
        Err(_) => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

fn real_config(args: &Args) -> RealConfig {
    RealConfig {
        layout: args.layout.clone(),
        grubenv: args.grubenv.clone(),
        grub_dir: args.grub_dir.clone(),
        env_label: args.env_label.clone(),
        product: args.product.clone(),
        cmdline: args.cmdline.clone(),
        work: std::path::PathBuf::from("/run/cairn"),
        altroot: args.altroot.clone(),
    }
}

fn adopt(
    args: &Args,
    be: &Option<String>,
    version: &Option<String>,
    dry_run: bool,
    grub_disk: &Option<std::path::PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    use cairn_daemon::adopt;
    let (engine, _) = real_engine(&real_config(args))?;
    let req = adopt::Request {
        be: be.clone(),
        version: version.clone(),
        dry_run,
        grub_disk: grub_disk.clone(),
        grubenv: args.grubenv.clone(),
        grub_dir: args.grub_dir.clone(),
        env_label: args.env_label.clone(),
        cmdline: args.cmdline.clone(),
        defaults_file: "/etc/default/cairnd".into(),
    };
    let write_menu = |e: &cairn_engine::Engine, cmdline: &str| {
        let mut cfg = real_config(args);
        cfg.cmdline = cmdline.to_owned();
        match real_engine(&cfg) {
            Ok((_, after)) => after(e),
            Err(err) => tracing::error!(error = %err, "the GRUB menu was not written"),
        }
    };
    let plan = adopt::adopt(&engine, &req, &write_menu)?;
    let a = &plan.adoption;
    if json {
        let v = serde_json::json!({
            "schema": "cairn/1",
            "dry_run": dry_run,
            "root": a.root.to_string(),
            "id": a.id.to_string(),
            "version": a.version,
            "actions": a.actions.iter().chain(&plan.boot).collect::<Vec<_>>(),
            "left_alone": a.left_alone,
            "grub_disk": plan.disk,
            "cmdline": plan.cmdline,
        });
        println!("{v:#}");
        return Ok(());
    }
    println!(
        "{} {} as version {} (id '{}'):",
        if dry_run { "Would adopt" } else { "Adopted" },
        a.root,
        a.version,
        a.id
    );
    for (n, step) in a.actions.iter().chain(&plan.boot).enumerate() {
        println!("  {}. {step}", n + 1);
    }
    if !a.left_alone.is_empty() {
        println!("Left alone (not cairn's): {}", a.left_alone.join(", "));
    }
    println!("Customer data and every other dataset stay where they are; nothing is copied.");
    if dry_run {
        println!(
            "Dry run: nothing was changed. Run the same command without --dry-run to do the above."
        );
    } else {
        println!(
            "Done. Reboot to start through cairn's menu; `cairnctl status` shows the version."
        );
    }
    Ok(())
}

fn gid_of(group: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&group))
            .then(|| f.get(2)?.parse().ok())
            .flatten()
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    if let Some(Cmd::ResetFromCmdline) = &args.command {
        let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
        let Some(mode) = cairn_daemon::reset_requested(&cmdline) else {
            tracing::info!("no factory reset requested");
            return Ok(());
        };
        let cfg = real_config(&args);
        let (engine, after) = real_engine(&cfg)?;
        engine.mount_journal()?;
        engine.reconcile("boot")?;
        // The menu's confirmation submenu was the operator's confirmation.
        let token = cairn_engine::factory::FULL_RESET_TOKEN;
        let actions = engine.factory_reset(mode, token, false, "grub-menu")?;
        for a in &actions {
            tracing::warn!(step = %a.step, action = %a.what, "factory reset");
        }
        after(&engine);
        println!(
            "factory reset ({}) done: {} steps",
            mode.as_str(),
            actions.len()
        );
        return Ok(());
    }
    if let Some(Cmd::MountConfig) = &args.command {
        let (engine, _) = real_engine(&real_config(&args))?;
        match engine.mount_booted_config()? {
            Some(at) => println!("configuration mounted at {}", at.display()),
            None => println!("not booted through cairn's menu: no configuration to mount"),
        }
        return Ok(());
    }
    if let Some(Cmd::WriteMenu) = &args.command {
        if !args.layout.exists() {
            println!(
                "no {}: not managed by cairn, no menu written",
                args.layout.display()
            );
            return Ok(());
        }
        let (engine, after) = real_engine(&real_config(&args))?;
        match engine.versions() {
            Ok(v) => {
                after(&engine);
                println!("boot menu written: {} versions", v.len());
            }
            Err(e) => println!("not managed by cairn ({e}): no menu written"),
        }
        return Ok(());
    }
    if let Some(Cmd::Provision { bundle }) = &args.command {
        let (engine, after) = real_engine(&real_config(&args))?;
        let keys = vendor_keys(&args.keys_dir);
        anyhow::ensure!(
            !keys.is_empty(),
            "no vendor keys in {}: a bundle cannot be verified without them",
            args.keys_dir.display()
        );
        if engine.versions().is_err() {
            engine.init("provision")?;
        }
        let file =
            std::fs::File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
        let app = cairn_bundle::install::Appliance {
            keys,
            product: args.product_id.clone(),
            hardware: args.hardware_id.clone(),
        };
        let id = cairn_bundle::install::provision(&engine, file, &app, "provision")?;
        after(&engine);
        println!("provisioned: factory baseline and version {id} (the default)");
        return Ok(());
    }
    if let Some(Cmd::Adopt {
        be,
        version,
        dry_run,
        grub_disk,
        json,
    }) = &args.command
    {
        return adopt(&args, be, version, *dry_run, grub_disk, *json);
    }
    if let Some(Cmd::SimRelease { version, output }) = &args.command {
        let model = cairn_zfs::model::ZfsModel::new();
        let bytes = sim_release_stream(&model, version)?;
        std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))?;
        return Ok(());
    }
    let own_uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok();
    let admin_gid = gid_of(&args.admin_group);
    let retention = match std::fs::read_to_string(&args.retention) {
        Ok(text) => cairn_engine::retention::Policy::from_yaml(&text)
            .with_context(|| format!("in {}", args.retention.display()))?,
        Err(_) => cairn_engine::retention::Policy::default(),
    };
    let (shared, sim_host) = if args.sim {
        let (engine, _model, host) = cairn_daemon::sim_engine_with(args.sim_factory)?;
        let policy = AuthPolicy {
            admin_gid,
            extra_uid: own_uid,
            root_is_admin: true,
        };
        (Shared::new(engine, policy), Some(host))
    } else {
        let (engine, after) = real_engine(&real_config(&args))?;
        // Finish or undo what a crash interrupted, and record this boot, before serving.
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || e.reconcile("cairnd")).await? {
            Ok(report) => {
                for a in &report.actions {
                    tracing::warn!(action = %a, "reconcile");
                }
            }
            // Served all the same: status says how to take the system over.
            Err(cairn_engine::EngineError::NotInitialized) => {
                tracing::warn!("this system is not managed by cairn yet (`cairnctl init --adopt`)");
            }
            Err(e) => return Err(e.into()),
        }
        after(&engine);
        let policy = AuthPolicy {
            admin_gid,
            extra_uid: None,
            root_is_admin: true,
        };
        (Shared::new(engine, policy).with_after_change(after), None)
    };
    let shared = shared.with_retention(retention);
    let name = args.appliance_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "appliance".into())
    });
    let shared = match cairn_daemon::support_key(&args.support_key) {
        Ok(k) => shared.with_support_key(name, k),
        Err(e) => {
            tracing::warn!(error = %e, "no support key: support export is unavailable");
            shared
        }
    };
    let keys = vendor_keys(&args.keys_dir);
    let shared = if keys.is_empty() {
        tracing::warn!(dir = %args.keys_dir.display(), "no vendor keys: bundles will be refused");
        shared
    } else {
        shared.with_bundles(cairn_bundle::install::Appliance {
            keys,
            product: args.product_id.clone(),
            hardware: args.hardware_id.clone(),
        })
    };
    let builder = match (&args.address, args.sim) {
        (Some(a), _) => zbus::connection::Builder::address(a.as_str()),
        (None, true) => zbus::connection::Builder::session(),
        (None, false) => zbus::connection::Builder::system(),
    };
    let conn = builder.build().await.context("connecting to the bus")?;
    if let Some(host) = sim_host {
        serve_sim(&conn, shared.clone(), host)
            .await
            .context("serving the simulator")?;
    }
    serve(&conn, shared)
        .await
        .context("claiming org.cairn.Updater1")?;
    tracing::info!(sim = args.sim, "cairnd ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// The vendor public keys (minisign `.pub` files) in `dir`; unreadable ones are logged
/// and skipped.
fn vendor_keys(dir: &std::path::Path) -> Vec<cairn_bundle::PublicKey> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pub"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            match cairn_bundle::public_key(&text) {
                Ok(k) => Some(k),
                Err(err) => {
                    tracing::warn!(key = %e.path().display(), error = %err, "ignoring an unreadable vendor key");
                    None
                }
            }
        })
        .collect()
}
