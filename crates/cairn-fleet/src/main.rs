//! `cairn-fleet`: the appliance as a client of a hawkBit DDI server (goosebit, hawkBit).
//! Polls at the interval the server asks for, installs deployments through cairnd, and
//! reports what happened. Logs go to the journal; the token never does.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cairn_fleet::config::Fleet;
use cairn_fleet::dbus::Cairnd;
use cairn_fleet::service::{Client, Outcome, backoff};
use clap::Parser;

/// Fleet updates for cairn through a hawkBit DDI server.
#[derive(Parser, Debug)]
#[command(name = "cairn-fleet", version, about)]
struct Args {
    /// The client's configuration (server, tenant, controller id, token file, CA).
    #[arg(long, default_value = "/etc/cairn/fleet.yaml")]
    config: PathBuf,
    /// Where a deployment under way is kept across reboots.
    #[arg(long, default_value = "/var/lib/cairn/fleet-state.json")]
    state: PathBuf,
    /// D-Bus address of cairnd (default: the system bus).
    #[arg(long, env = "CAIRN_BUS_ADDRESS")]
    address: Option<String>,
    /// One cycle, then exit (0: done, 1: the server or cairnd failed).
    #[arg(long)]
    once: bool,
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| "info".into());
    let registry = tracing_subscriber::registry().with(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    match journald {
        Some(j) => registry
            .with(j.with_syslog_identifier("cairn-fleet".into()))
            .init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    let cfg = Fleet::load(&args.config)?;
    let app = Cairnd::connect(args.address.as_deref(), cfg.reboot_command.clone())
        .context("connecting to cairnd")?;
    let client = Client::new(cfg, args.state.clone())?;
    if args.once {
        let outcome = client.cycle(&app)?;
        println!("{outcome:?}");
        return Ok(());
    }
    let mut failures = 0u32;
    loop {
        let wait = match client.cycle(&app) {
            // A staged deployment goes on to its trial without waiting a poll interval.
            Ok(Outcome::Staged { .. }) => Duration::ZERO,
            Ok(outcome) => {
                failures = 0;
                tracing::info!(?outcome, "cycle");
                client.sleep.get()
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures, client.cfg.poll_default);
                tracing::warn!(error = %e, retry_in = wait.as_secs(), "cycle failed");
                wait
            }
        };
        std::thread::sleep(wait);
    }
}
