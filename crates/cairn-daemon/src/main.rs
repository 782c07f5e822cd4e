//! `cairnd`: sets up logging and the runtime, builds the engine, serves it on the bus.

use anyhow::Context;
use cairn_daemon::{AuthPolicy, Shared, serve, serve_sim, sim_engine, sim_release_stream};
use clap::{Parser, Subcommand};

/// cairn's update service on the system bus (org.cairn.Updater1).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Serve a simulated appliance (in-memory ZFS) instead of the real one.
    #[arg(long)]
    sim: bool,
    /// Bus address to serve on (default: the system bus; with --sim, the session bus).
    #[arg(long, env = "CAIRN_BUS_ADDRESS")]
    address: Option<String>,
    /// Members of this group may call mutating methods besides root.
    #[arg(long, default_value = "cairn-admin")]
    admin_group: String,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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
    if let Some(Cmd::SimRelease { version, output }) = &args.command {
        let model = cairn_zfs::model::ZfsModel::new();
        let bytes = sim_release_stream(&model, version)?;
        std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))?;
        return Ok(());
    }
    if !args.sim {
        anyhow::bail!(
            "only the simulator is served so far (`cairnd --sim`); the real engine on the system bus comes with the packaging issue"
        );
    }
    let (engine, _model, host) = sim_engine()?;
    let own_uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok();
    let policy = AuthPolicy {
        admin_gid: gid_of(&args.admin_group),
        extra_uid: own_uid,
        root_is_admin: true,
    };
    let shared = Shared::new(engine, policy);
    let builder = match &args.address {
        Some(a) => zbus::connection::Builder::address(a.as_str()),
        None => zbus::connection::Builder::session(),
    };
    let conn = builder.build().await.context("connecting to the bus")?;
    serve_sim(&conn, shared.clone(), host)
        .await
        .context("serving the simulator")?;
    serve(&conn, shared)
        .await
        .context("claiming org.cairn.Updater1")?;
    tracing::info!(sim = args.sim, "cairnd ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
