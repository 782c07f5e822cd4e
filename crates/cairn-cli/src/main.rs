//! `cairnctl`: the operator's command line. A thin D-Bus client of `cairnd`: every
//! command is one call (or one job to follow), printed for people or as JSON.

mod health;

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::Context;
use cairn_daemon::api::{JobProxy, UpdaterProxy};
use cairn_zfs::cmd::{Cmd, Runner};
use clap::{CommandFactory, Parser, Subcommand};
use futures_util::StreamExt;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  the operation failed (the message says why)
  2  bad usage
  3  not authorized (needs root, the cairn admin group or a polkit rule)
  4  busy: another operation is running
  5  unknown version
  6  cairnd could not be reached
  7  cancelled
  8  confirmation required (a full factory reset needs --confirm ERASE-ALL-DATA)";

/// Operate cairn, the appliance update manager: versions, installs, trials, rollback.
#[derive(Parser, Debug)]
#[command(name = "cairnctl", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// D-Bus address of cairnd (default: the system bus).
    #[arg(long, global = true, env = "CAIRN_BUS_ADDRESS")]
    address: Option<String>,
    /// Print JSON (schema "cairn/1") instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// What runs, what boots next, every version and its state.
    Status,
    /// Every installed version, newest first.
    List,
    /// One version in detail.
    Show { id: String },
    /// Install a signed update bundle (a file, or - for stdin); it is verified, staged
    /// beside the running system, and activated separately.
    Install {
        file: PathBuf,
        /// Install even if it is older than the running version.
        #[arg(long)]
        force: bool,
        /// FILE is a raw `zfs send` stream of VERSION instead of a bundle.
        #[arg(long, requires = "version")]
        stream: bool,
        /// The version a raw stream contains.
        #[arg(long)]
        version: Option<String>,
        /// The raw stream is a delta from this installed version.
        #[arg(long, requires = "stream")]
        base: Option<String>,
    },
    /// Make a version boot next: for good, for a trial, or once.
    Activate {
        id: String,
        /// Try it on the next boots; it becomes the default only when its health checks pass.
        #[arg(long = "try")]
        trial: bool,
        /// How many boots a trial gets before falling back (1-9).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=9))]
        attempts: u8,
        /// Boot it once for testing, without making it the default.
        #[arg(long, conflicts_with = "trial")]
        once: bool,
        /// Activate even a version marked failed.
        #[arg(long)]
        force: bool,
    },
    /// Confirm the running trial (normally done by the health check).
    Confirm {
        #[arg(long, default_value = "")]
        health: String,
    },
    /// Mark a version failed, with the reason.
    MarkFailed {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Make an older version the default (STEPS back, default 1).
    Rollback {
        #[arg(default_value_t = 1)]
        steps: u32,
    },
    /// Make the next newer kept version the default.
    RollForward,
    /// Keep a version whatever retention says.
    Pin { id: String },
    /// Let retention consider a version again.
    Unpin { id: String },
    /// Mount a version's root (or --config) read-only at PATH.
    Mount {
        id: String,
        path: PathBuf,
        #[arg(long)]
        config: bool,
    },
    /// Remove expired versions as the retention policy says; --dry-run shows the plan.
    Cleanup {
        #[arg(long)]
        dry_run: bool,
    },
    /// Reset to factory defaults: `config` (this version's config), `system` (a fresh
    /// factory version, data kept), or `full` (also erases all customer data).
    FactoryReset {
        #[arg(value_parser = ["config", "system", "full"])]
        mode: String,
        /// Show exactly what would be done, and do nothing.
        #[arg(long)]
        dry_run: bool,
        /// For `full`: the confirmation token ERASE-ALL-DATA.
        #[arg(long, default_value = "")]
        confirm: String,
    },
    /// Support: export signed archives for the vendor, manage time-limited pull grants.
    #[command(subcommand)]
    Support(SupportCmd),
    /// Unmount what `mount` mounted.
    Unmount { path: PathBuf },
    /// Files changed in TO since FROM was installed.
    Diff { from: String, to: String },
    /// The update journal: what was done, by whom, with what result.
    Journal,
    /// On a trial boot: run the health checks, then confirm the trial or mark it failed
    /// and reboot into the default. Run by cairn-health.service before boot-complete.target.
    HealthCheck {
        /// Vendor checks: executables in DIR/required (must pass) and DIR/wanted (warn).
        #[arg(long, default_value = "/usr/lib/cairn/health.d")]
        checks_dir: PathBuf,
        /// Seconds each check may take.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// What to run to reboot after a failed check.
        #[arg(long, default_value = "/usr/bin/systemctl reboot")]
        reboot_cmd: String,
    },
    /// Take this installed root-on-ZFS system under management (root only). With
    /// --adopt: the running boot environment (`<pool>/ROOT/<be>`, as the OpenZFS guide lays
    /// it out) becomes a version in place, nothing is copied or moved; a config dataset
    /// and the journal are created and GRUB is installed with its files on cairn's boot
    /// partition (an ext4 or vfat partition labelled CAIRNBOOT at /boot/cairn). The plan
    /// is always shown first; --dry-run stops there. New appliances are provisioned at the
    /// factory instead (`cairnd provision`).
    Init {
        /// Adopt the installed system (the only way `init` works on a running system).
        #[arg(long)]
        adopt: bool,
        /// Show what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do it without asking (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
        /// The boot environment to adopt (default: the one mounted at /).
        #[arg(long)]
        be: Option<String>,
        /// The version recorded for it (default: debian-<contents of /etc/debian_version>).
        #[arg(long)]
        version: Option<String>,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Write man pages into DIR.
    Man { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
enum SupportCmd {
    /// Write a signed archive of versions (root; --config and --data are opt-in).
    Export {
        /// Versions to include (repeat); default: the running one.
        #[arg(long = "version")]
        versions: Vec<String>,
        #[arg(long)]
        config: bool,
        #[arg(long)]
        data: bool,
        /// Where to write the archive; - for stdout.
        #[arg(short, long, default_value = "-")]
        output: PathBuf,
    },
    /// Let an SSH key pull an export (and nothing else) until the grant expires.
    Grant {
        /// The vendor's SSH public key (the line, or a file holding it).
        #[arg(long)]
        key: String,
        /// How long: e.g. 24h, 3d.
        #[arg(long, default_value = "24h")]
        expires: String,
        #[arg(long, default_value = "/etc/cairn/support/authorized_keys")]
        file: PathBuf,
    },
    /// Withdraw a grant.
    Revoke {
        #[arg(long)]
        key: String,
        #[arg(long, default_value = "/etc/cairn/support/authorized_keys")]
        file: PathBuf,
    },
}

/// An error with the exit status it maps to.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// `cairnctl init --adopt`: runs `cairnd adopt` (the daemon's binary, as root, before
/// there is anything for the running daemon to manage): the plan first, then, confirmed,
/// the adoption.
fn init(
    adopt: bool,
    dry_run: bool,
    yes: bool,
    be: &Option<String>,
    version: &Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    if !adopt {
        return Err(fail(
            2,
            "`cairnctl init` takes over an installed system: use --adopt (see --help); new \
             appliances are provisioned at the factory with `cairnd provision`"
                .into(),
        ));
    }
    let cairnd = std::env::var_os("CAIRND").unwrap_or_else(|| "/usr/libexec/cairnd".into());
    let cairnd = std::path::PathBuf::from(cairnd);
    let run = |dry: bool| -> anyhow::Result<()> {
        let mut cmd = Cmd::new(&cairnd).arg("adopt");
        if dry {
            cmd = cmd.arg("--dry-run");
        }
        if json {
            cmd = cmd.arg("--json");
        }
        if let Some(b) = be {
            cmd = cmd.args(["--be", b]);
        }
        if let Some(v) = version {
            cmd = cmd.args(["--version", v]);
        }
        let fin = Runner::new()
            .run_unchecked(&cmd)
            .map_err(|e| fail(1, e.to_string()))?;
        print!("{}", fin.stdout);
        eprint!("{}", fin.stderr);
        if fin.success() {
            Ok(())
        } else {
            Err(fail(
                1,
                format!("adoption {}", if dry { "refused" } else { "failed" }),
            ))
        }
    };
    run(true)?;
    if dry_run {
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(fail(
                8,
                "not on a terminal: add --yes to adopt the system as shown".into(),
            ));
        }
        eprint!("Adopt this system as shown? Type 'yes' to go on: ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            return Err(fail(7, "not adopted: nothing was changed".into()));
        }
    }
    run(false)
}

pub(crate) fn fail(code: i32, message: String) -> anyhow::Error {
    anyhow::Error::new(Failure { code, message })
}

fn classify(e: &anyhow::Error) -> Failure {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return Failure {
            code: f.code,
            message: f.message.clone(),
        };
    }
    let code = match e.downcast_ref::<zbus::Error>() {
        Some(zbus::Error::MethodError(name, _, _)) => {
            match name.as_str().rsplit('.').next().unwrap_or("") {
                "NotAuthorized" => 3,
                "Busy" => 4,
                "UnknownVersion" => 5,
                "Cancelled" => 7,
                "ConfirmationRequired" => 8,
                "ServiceUnknown" | "NoReply" | "NameHasNoOwner" => 6,
                _ => 1,
            }
        }
        Some(zbus::Error::InputOutput(_)) | Some(zbus::Error::Address(_)) => 6,
        _ => 1,
    };
    let message = match e.downcast_ref::<zbus::Error>() {
        Some(zbus::Error::MethodError(_, Some(msg), _)) => msg.clone(),
        _ => format!("{e:#}"),
    };
    let hint = match code {
        3 => {
            " (run as root, as a member of the cairn admin group, or ask for a polkit rule for org.cairn.updater1.manage)"
        }
        4 => " (`cairnctl status` shows what is running)",
        6 => " (is cairnd running? `systemctl status cairnd`)",
        _ => "",
    };
    Failure {
        code,
        message: format!("{message}{hint}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        let f = classify(&e);
        eprintln!("cairnctl: {}", f.message);
        std::process::exit(f.code);
    }
}

async fn connect(address: Option<&str>) -> anyhow::Result<zbus::Connection> {
    let b = match address {
        Some(a) => zbus::connection::Builder::address(a),
        None => zbus::connection::Builder::system(),
    };
    b.build()
        .await
        .map_err(|e| fail(6, format!("cannot reach cairnd's bus: {e}")))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "cairnctl",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Command::Man { dir } => return write_man(dir),
        _ => {}
    }
    if let Command::Init {
        adopt,
        dry_run,
        yes,
        be,
        version,
    } = &cli.command
    {
        return init(*adopt, *dry_run, *yes, be, version, cli.json);
    }
    // Grants are local files sshd reads: no daemon involved.
    if let Command::Support(SupportCmd::Grant { key, expires, file }) = &cli.command {
        return grant(key, expires, file);
    }
    if let Command::Support(SupportCmd::Revoke { key, file }) = &cli.command {
        let key = key_text(key)?;
        let had = cairn_support::grant::revoke(file, &key).map_err(|e| fail(1, e.to_string()))?;
        println!(
            "{}",
            if had {
                "grant revoked"
            } else {
                "there was no grant for that key"
            }
        );
        return Ok(());
    }
    let conn = connect(cli.address.as_deref()).await?;
    let p = UpdaterProxy::new(&conn).await?;
    let json = cli.json;
    match cli.command {
        Command::Status => print_status(&p.get_status().await?, json),
        Command::List => print_versions(&p.list_versions().await?, json, None),
        Command::Show { id } => print_versions(&p.list_versions().await?, json, Some(&id)),
        Command::Install {
            file,
            force,
            stream,
            version,
            base,
        } => {
            let how = match (stream, version) {
                (true, Some(v)) => Source::Stream { version: v, base },
                _ => Source::Bundle { force },
            };
            install(&conn, &p, &file, how, json).await
        }
        Command::Activate {
            id,
            trial,
            attempts,
            once,
            force,
        } => {
            let (mode, n) = match (trial, once) {
                (true, _) => ("trial", attempts),
                (false, true) => ("once", 0),
                (false, false) => ("permanent", 0),
            };
            p.activate(&id, mode, n, force).await?;
            done(
                json,
                "activated",
                &id,
                &match mode {
                    "trial" => format!(
                        "{id} will be tried on the next {n} boots; it becomes the default when its health checks pass"
                    ),
                    "once" => {
                        format!("{id} boots once on the next boot; the default stays as it is")
                    }
                    _ => format!("{id} is the default from the next boot on"),
                },
            )
        }
        Command::Confirm { health } => {
            let v = p.confirm(&health).await?;
            done(
                json,
                "confirmed",
                &v,
                &format!("{v} is confirmed and is now the default"),
            )
        }
        Command::MarkFailed { id, reason } => {
            p.mark_failed(&id, &reason).await?;
            done(
                json,
                "marked-failed",
                &id,
                &format!("{id} is marked failed: {reason}"),
            )
        }
        Command::Rollback { steps } => {
            let v = p.rollback(steps).await?;
            done(
                json,
                "rolled-back",
                &v,
                &format!("{v} is the default from the next boot on"),
            )
        }
        Command::RollForward => {
            let v = p.roll_forward().await?;
            done(
                json,
                "rolled-forward",
                &v,
                &format!("{v} is the default from the next boot on"),
            )
        }
        Command::Pin { id } => {
            p.pin(&id, true).await?;
            done(
                json,
                "pinned",
                &id,
                &format!("{id} is pinned: retention keeps it"),
            )
        }
        Command::Unpin { id } => {
            p.pin(&id, false).await?;
            done(json, "unpinned", &id, &format!("{id} is no longer pinned"))
        }
        Command::Mount { id, path, config } => {
            let at = absolute(&path)?;
            let m = p
                .mount(&id, if config { "config" } else { "root" }, &at)
                .await?;
            done(
                json,
                "mounted",
                &id,
                &format!("{id} is mounted read-only at {m}; `cairnctl unmount {m}` when done"),
            )
        }
        Command::FactoryReset {
            mode,
            dry_run,
            confirm,
        } => {
            let text = p.factory_reset(&mode, &confirm, dry_run).await?;
            if json {
                println!("{text}");
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let verb = if dry_run { "would" } else { "did" };
            for a in v["data"]["actions"].as_array().into_iter().flatten() {
                println!("{verb} {}", a["what"].as_str().unwrap_or(""));
            }
            if dry_run {
                println!("run without --dry-run to do it");
            } else if mode != "config" {
                println!(
                    "reboot to start the factory version; the previous versions stay installed"
                );
            }
            Ok(())
        }
        Command::Support(cmd) => support(&p, cmd, json).await,
        Command::Cleanup { dry_run } => {
            let text = p.cleanup(dry_run).await?;
            if json {
                println!("{text}");
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let plan = &v["data"]["plan"];
            let steps = plan["steps"].as_array().cloned().unwrap_or_default();
            let verb = if dry_run { "would" } else { "did" };
            for n in plan["notices"].as_array().into_iter().flatten() {
                println!(
                    "expiring: {} on {}",
                    n[0].as_str().unwrap_or(""),
                    cairn_daemon::date(n[1].as_u64().unwrap_or(0))
                );
            }
            if steps.is_empty() {
                println!("nothing to remove");
            }
            for s in &steps {
                match s["action"].as_str() {
                    Some("promote") => println!(
                        "{verb} promote {} ({})",
                        s["dataset"].as_str().unwrap_or(""),
                        s["reason"].as_str().unwrap_or("")
                    ),
                    _ => println!(
                        "{verb} destroy {} ({}, frees about {})",
                        s["target"].as_str().unwrap_or(""),
                        s["reason"].as_str().unwrap_or(""),
                        human_bytes(s["frees"].as_u64().unwrap_or(0))
                    ),
                }
            }
            if dry_run && !steps.is_empty() {
                println!("run `cairnctl cleanup` to do it");
            }
            Ok(())
        }
        Command::Unmount { path } => {
            let at = absolute(&path)?;
            p.unmount(&at).await?;
            done(json, "unmounted", &at, &format!("{at} unmounted"))
        }
        Command::Diff { from, to } => {
            let text = p.diff(&from, &to).await?;
            if json {
                println!("{text}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                for e in v["data"].as_array().into_iter().flatten() {
                    let change = match e["change"]["change"].as_str().unwrap_or("") {
                        "added" => "+",
                        "removed" => "-",
                        "modified" => "M",
                        _ => "R",
                    };
                    println!(
                        "{change} {} {}",
                        e["file_type"].as_str().unwrap_or("?"),
                        e["path"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        Command::Journal => {
            let text = p.get_journal().await?;
            if json {
                println!("{text}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                for e in v["data"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<14} {:<10} by {:<10} {}",
                        e["at"],
                        e["op"].as_str().unwrap_or(""),
                        e["target"].as_str().unwrap_or(""),
                        e["by"].as_str().unwrap_or(""),
                        e["result"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        Command::HealthCheck {
            checks_dir,
            timeout,
            reboot_cmd,
        } => health::run(&p, &checks_dir, timeout, &reboot_cmd, json).await,
        Command::Completions { .. } | Command::Man { .. } | Command::Init { .. } => {
            unreachable!("handled above")
        }
    }
}

fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    let abs = if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(abs.display().to_string())
}

fn done(json: bool, what: &str, target: &str, text: &str) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::json!({"schema": "cairn/1", "kind": "result", "data": {"done": what, "target": target}})
        );
    } else {
        println!("{text}");
    }
    Ok(())
}

fn write_man(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    std::fs::write(dir.join("cairnctl.1"), buf)?;
    for sub in cmd.get_subcommands() {
        let name = format!("cairnctl-{}", sub.get_name());
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name.clone())).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
    }
    Ok(())
}

/// Follows a job to its end with a progress bar (hidden for --json or without a
/// terminal); returns (state, result, error name, error message).
async fn follow(
    conn: &zbus::Connection,
    path: &zbus::OwnedObjectPath,
    quiet: bool,
) -> anyhow::Result<(String, String, String, String)> {
    // Changes arrive through the caching proxy; the end state is read fresh from the
    // other, never from a cache a signal has not updated yet.
    let watch = JobProxy::builder(conn).path(path.clone()).build().await?;
    let job = JobProxy::builder(conn)
        .path(path.clone())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let mut progress = watch.receive_progress_changed().await;
    let mut finished = watch.receive_finished().await?;
    let bar = if quiet || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(indicatif::ProgressStyle::with_template(
            "{msg:>14} [{bar:40}] {pos:>3}%",
        )?);
        b
    };
    let mut last_message: Option<String> = None;
    while job.state().await? == "running" {
        tokio::select! {
            Some(c) = progress.next() => {
                bar.set_position(u64::from(c.get().await?));
                bar.set_message(watch.stage().await?);
            }
            Some(f) = finished.next() => {
                last_message = f.args().ok().map(|a| a.error_message().to_string());
                break;
            }
        }
    }
    bar.finish_and_clear();
    let state = job.state().await?;
    let result = job.result().await?;
    let error = job.error_name().await?;
    let message = match last_message {
        Some(m) if !m.is_empty() => m,
        _ => job.error_message().await?,
    };
    Ok((state, result, error, message))
}

/// A failed job as the exit status and message `cairnctl` reports.
fn job_failure(what: &str, state: &str, error: &str, message: &str) -> anyhow::Error {
    let code = match error.rsplit('.').next().unwrap_or("") {
        "Cancelled" => 7,
        "NotAuthorized" => 3,
        "UnknownVersion" => 5,
        _ => 1,
    };
    fail(
        code,
        format!("{what} {state}: {}", job_message(error, message)),
    )
}

/// What `install` was given.
enum Source {
    Bundle {
        force: bool,
    },
    Stream {
        version: String,
        base: Option<String>,
    },
}

async fn install(
    conn: &zbus::Connection,
    p: &UpdaterProxy<'_>,
    file: &std::path::Path,
    how: Source,
    json: bool,
) -> anyhow::Result<()> {
    let (fd, size): (std::os::fd::OwnedFd, u64) = if file.as_os_str() == "-" {
        (std::io::stdin().as_fd().try_clone_to_owned()?, 0)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let size = f.metadata()?.len();
        (f.into(), size)
    };
    let path = match &how {
        Source::Bundle { force } => p.install(zbus::Fd::from(&fd), *force).await?,
        Source::Stream { version, base } => {
            p.stage_stream(
                version,
                zbus::Fd::from(&fd),
                base.as_deref().unwrap_or(""),
                size,
            )
            .await?
        }
    };
    drop(fd);
    let (state, result, error, message) = follow(conn, &path, json).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"schema": "cairn/1", "kind": "job", "data": {"job": path.as_str(), "state": state, "result": result, "error": error}})
        );
    }
    if state != "done" {
        return Err(job_failure("install", &state, &error, &message));
    }
    if !json {
        println!(
            "installed {result}; `cairnctl activate --try {result}` tries it on the next boot"
        );
    }
    Ok(())
}

fn print_status(text: &str, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{text}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(text)?;
    let d = &v["data"];
    let booted = &d["booted"];
    println!(
        "running:   {} ({} boot)",
        booted["version"].as_str().unwrap_or("unknown"),
        booted["kind"].as_str().unwrap_or("?")
    );
    println!(
        "default:   {}",
        d["boot"]["default"].as_str().unwrap_or("none")
    );
    if let Some(t) = d["boot"]["trial"].as_str() {
        println!(
            "trial:     {t} ({} attempts left)",
            d["boot"]["attempts_left"]
        );
    }
    if let Some(j) = d["job"].as_str() {
        println!("job:       {j}");
    }
    println!();
    print_table(d["versions"].as_array().map(Vec::as_slice).unwrap_or(&[]));
    Ok(())
}

fn print_versions(text: &str, json: bool, only: Option<&str>) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let all = v["data"].as_array().cloned().unwrap_or_default();
    let rows: Vec<serde_json::Value> = match only {
        Some(id) => {
            let one: Vec<_> = all.into_iter().filter(|r| r["id"] == id).collect();
            if one.is_empty() {
                return Err(fail(
                    5,
                    format!(
                        "version '{id}' is not installed; `cairnctl list` shows the installed versions"
                    ),
                ));
            }
            one
        }
        None => all,
    };
    if json {
        let kind = if only.is_some() {
            "version"
        } else {
            "versions"
        };
        println!(
            "{}",
            serde_json::json!({"schema": "cairn/1", "kind": kind, "data": rows})
        );
    } else if only.is_some() {
        println!("{}", serde_json::to_string_pretty(&rows[0])?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[serde_json::Value]) {
    println!(
        "{:<12} {:<12} {:<16} {:<11} {:>10}  NOTES",
        "ID", "VERSION", "STATE", "CREATED", "SIZE"
    );
    for r in rows {
        let mut notes = Vec::new();
        if r["is_booted"] == true {
            notes.push("running".to_string());
        }
        if r["pinned"] == true {
            notes.push("pinned".into());
        }
        if let Some(f) = r["failed_reason"].as_str() {
            notes.push(format!("failed: {f}"));
        }
        println!(
            "{:<12} {:<12} {:<16} {:<11} {:>10}  {}",
            r["id"].as_str().unwrap_or(""),
            r["version"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            date(r["created"].as_u64().unwrap_or(0)),
            human_bytes(r["used"].as_u64().unwrap_or(0)),
            notes.join(", ")
        );
    }
}

fn date(epoch: u64) -> String {
    cairn_daemon::date(epoch)
}

/// The job's error message, or its error name when the message was missed.
fn job_message(name: &str, message: &str) -> String {
    if message.is_empty() {
        name.to_owned()
    } else {
        message.to_owned()
    }
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn key_text(key: &str) -> anyhow::Result<String> {
    Ok(if std::path::Path::new(key).is_file() {
        std::fs::read_to_string(key)?.trim().to_owned()
    } else {
        key.to_owned()
    })
}

fn grant(key: &str, expires: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let (n, unit) = expires.split_at(expires.len().saturating_sub(1));
    let n: u64 = n
        .parse()
        .map_err(|_| fail(2, format!("--expires {expires}: use e.g. 24h or 3d")))?;
    let secs = match unit {
        "h" => n * 3600,
        "d" => n * 86_400,
        "m" => n * 60,
        _ => return Err(fail(2, format!("--expires {expires}: use e.g. 24h or 3d"))),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    cairn_support::grant::add(
        file,
        &key_text(key)?,
        now + secs,
        "/usr/bin/cairnctl support export --version running",
    )
    .map_err(|e| fail(1, e.to_string()))?;
    println!(
        "granted until {} (UTC); `cairnctl support revoke --key ...` ends it sooner",
        cairn_daemon::date(now + secs)
    );
    Ok(())
}

async fn support(p: &UpdaterProxy<'_>, cmd: SupportCmd, json: bool) -> anyhow::Result<()> {
    let SupportCmd::Export {
        versions,
        config,
        data,
        output,
    } = cmd
    else {
        unreachable!("grants are local")
    };
    let status: serde_json::Value = serde_json::from_str(&p.get_status().await?)?;
    let running = status["data"]["booted"]["version"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let versions: Vec<String> = if versions.is_empty() || versions == ["running"] {
        vec![running]
    } else {
        versions
    };
    let refs: Vec<&str> = versions.iter().map(String::as_str).collect();
    let (fd, to_stdout): (std::os::fd::OwnedFd, bool) = if output.as_os_str() == "-" {
        (std::io::stdout().as_fd().try_clone_to_owned()?, true)
    } else {
        (
            std::fs::File::create(&output)
                .with_context(|| format!("creating {}", output.display()))?
                .into(),
            false,
        )
    };
    let path = p
        .support_export(zbus::Fd::from(&fd), &refs, config, data)
        .await?;
    drop(fd);
    // With the archive on stdout, progress and results go nowhere else.
    let (state, result, error, message) =
        follow(p.inner().connection(), &path, json || to_stdout).await?;
    if state != "done" {
        return Err(job_failure("support export", &state, &error, &message));
    }
    if !to_stdout && !json {
        println!(
            "wrote {} ({result}, signed); the vendor checks it with `cairn support inspect`",
            output.display()
        );
    }
    Ok(())
}
