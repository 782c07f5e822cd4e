//! `cairnctl health-check`: the trial boot's health gate (BRIEF §4). Built-in checks (no
//! failed systemd units, cairnd answers) and the vendor's checks (required ones block,
//! wanted ones only warn), each with a timeout. Pass: confirm the trial. Fail: mark it
//! failed with the reason and reboot into the default.

use std::path::Path;

use cairn_daemon::api::UpdaterProxy;
use cairn_zfs::cmd::{Cmd, Runner};

#[derive(Debug, Default)]
struct Report {
    passed: Vec<String>,
    warnings: Vec<String>,
    failures: Vec<String>,
}

fn executables(dir: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .collect();
    v.sort();
    v
}

/// Runs one check with a timeout; `Err` says why it failed.
fn run_check(path: &Path, timeout: u64) -> Result<(), String> {
    let cmd = Cmd::new("/usr/bin/timeout")
        .args(["-k", "5", &timeout.to_string()])
        .arg(path);
    let fin = Runner::new()
        .run_unchecked(&cmd)
        .map_err(|e| e.to_string())?;
    match fin.status.code() {
        Some(0) => Ok(()),
        Some(124) | Some(137) => Err(format!("did not finish within {timeout} s")),
        _ => {
            let out =
                cairn_zfs::cmd::stderr_tail(format!("{}{}", fin.stdout, fin.stderr).as_bytes());
            Err(format!("{}: {out}", fin.status))
        }
    }
}

/// Failed systemd units, or `None` when the system is not running systemd.
fn failed_units() -> Option<Result<Vec<String>, String>> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    let cmd = Cmd::new("/usr/bin/systemctl").args([
        "list-units",
        "--state=failed",
        "--no-legend",
        "--plain",
    ]);
    Some(
        Runner::new()
            .run(&cmd)
            .map(|out| {
                out.lines()
                    .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                    .collect()
            })
            .map_err(|e| e.to_string()),
    )
}

pub async fn run(
    p: &UpdaterProxy<'_>,
    dir: &Path,
    timeout: u64,
    reboot_cmd: &str,
    json: bool,
) -> anyhow::Result<()> {
    let status: serde_json::Value = serde_json::from_str(&p.get_status().await?)?;
    let booted = &status["data"]["booted"];
    let (version, kind) = (
        booted["version"].as_str().unwrap_or(""),
        booted["kind"].as_str().unwrap_or(""),
    );
    if kind != "trial" {
        if json {
            println!(
                "{}",
                serde_json::json!({"schema": "cairn/1", "kind": "health", "data": {"trial": false}})
            );
        } else {
            println!("{version} was not booted as a trial: nothing to check");
        }
        return Ok(());
    }
    let mut r = Report::default();
    r.passed.push("cairnd answers".into());
    match failed_units() {
        None => r
            .warnings
            .push("failed-units check skipped: not running under systemd".into()),
        Some(Ok(units)) if units.is_empty() => r.passed.push("no failed units".into()),
        Some(Ok(units)) => r
            .failures
            .push(format!("failed units: {}", units.join(", "))),
        Some(Err(e)) => r.failures.push(format!("could not list failed units: {e}")),
    }
    for (kind, required) in [("required", true), ("wanted", false)] {
        for check in executables(&dir.join(kind)) {
            let name = check
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match run_check(&check, timeout) {
                Ok(()) => r.passed.push(name),
                Err(why) if required => r.failures.push(format!("{name} {why}")),
                Err(why) => r.warnings.push(format!("{name} {why}")),
            }
        }
    }
    let summary = format!("{} passed, {} warnings", r.passed.len(), r.warnings.len());
    if json {
        println!(
            "{}",
            serde_json::json!({"schema": "cairn/1", "kind": "health", "data": {
                "trial": true, "version": version, "passed": r.passed, "warnings": r.warnings, "failures": r.failures}})
        );
    }
    if r.failures.is_empty() {
        p.confirm(&summary).await?;
        if !json {
            for w in &r.warnings {
                eprintln!("cairnctl: warning: {w}");
            }
            println!("{version} passed its health checks ({summary}) and is now the default");
        }
        Ok(())
    } else {
        let reason = format!("health check failed: {}", r.failures.join("; "));
        p.mark_failed(version, &reason).await?;
        eprintln!("cairnctl: {version}: {reason}; rebooting into the default");
        let mut words = reboot_cmd.split_whitespace();
        if let Some(prog) = words.next() {
            let _ = Runner::new().run(&Cmd::new(prog).args(words));
        }
        Err(crate::fail(1, reason))
    }
}
