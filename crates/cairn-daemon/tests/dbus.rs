//! cairnd against a real `dbus-daemon` started by the tests on a private address: every
//! method, named errors, job progress in order, Busy, Cancel, callers refused by their
//! bus credentials, and the introspection XML as committed.

#![allow(clippy::disallowed_methods)] // the bus daemon and busctl are test fixtures

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use cairn_daemon::api::{JobProxy, UpdaterProxy};
use cairn_daemon::{AuthPolicy, Shared, serve, sim_engine, sim_release_stream};
use futures_util::StreamExt;

struct Bus {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private bus that, like the system bus, lets any local user connect.
fn start_bus(name: &str) -> Bus {
    let dir = std::env::temp_dir().join(format!("cairn-bus-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
            dir.display()
        ),
    )
    .unwrap();
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon is needed: `cargo xtask host-deps` installs it");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Bus {
        child,
        address: line.trim().to_owned(),
        dir,
    }
}

async fn connect(bus: &Bus) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap()
}

fn admin() -> AuthPolicy {
    AuthPolicy {
        admin_gid: None,
        extra_uid: None,
        root_is_admin: true,
    }
}

/// A simulated appliance served on `bus`; returns the client connection too.
async fn served(
    bus: &Bus,
    policy: AuthPolicy,
) -> (zbus::Connection, zbus::Connection, Arc<Shared>) {
    let (engine, _model, _host) = sim_engine().unwrap();
    let shared = Shared::new(engine, policy);
    let server = connect(bus).await;
    serve(&server, shared.clone()).await.unwrap();
    (server, connect(bus).await, shared)
}

fn release_file(dir: &Path, version: &str) -> std::fs::File {
    let model = cairn_zfs::model::ZfsModel::new();
    let bytes = sim_release_stream(&model, version).unwrap();
    let p = dir.join(format!("release-{version}"));
    std::fs::write(&p, bytes).unwrap();
    std::fs::File::open(p).unwrap()
}

fn err_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("not a method error: {other}"),
    }
}

async fn status(p: &UpdaterProxy<'_>) -> serde_json::Value {
    serde_json::from_str(&p.get_status().await.unwrap()).unwrap()
}

/// Waits for a job to end; returns (state, result, error name) and the stages it went
/// through, in the order the property changed.
async fn finish(
    conn: &zbus::Connection,
    path: &zbus::OwnedObjectPath,
) -> (String, String, String, Vec<String>) {
    let job = JobProxy::builder(conn)
        .path(path.clone())
        .build()
        .await
        .unwrap();
    let mut stages = job.receive_stage_changed().await;
    let mut finished = job.receive_finished().await.unwrap();
    let mut seen = Vec::new();
    loop {
        if job.state().await.unwrap() != "running" {
            break;
        }
        tokio::select! {
            Some(s) = stages.next() => seen.push(s.get().await.unwrap()),
            Some(_) = finished.next() => break,
            _ = tokio::time::sleep(std::time::Duration::from_secs(20)) => panic!("job did not finish"),
        }
    }
    // Drain stage changes delivered before the end.
    while let Ok(Some(s)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), stages.next()).await
    {
        seen.push(s.get().await.unwrap());
    }
    (
        job.state().await.unwrap(),
        job.result().await.unwrap(),
        job.error_name().await.unwrap(),
        seen,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn read_calls_and_properties() {
    let bus = start_bus("read");
    let (_s, c, _) = served(&bus, admin()).await;
    let p = UpdaterProxy::new(&c).await.unwrap();
    let st = status(&p).await;
    assert_eq!(st["schema"], "cairn/1");
    assert_eq!(st["kind"], "status");
    assert_eq!(st["data"]["booted"]["version"], "1.0");
    assert_eq!(st["data"]["versions"][0]["state"], "active");
    let list: serde_json::Value = serde_json::from_str(&p.list_versions().await.unwrap()).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let journal: serde_json::Value = serde_json::from_str(&p.get_journal().await.unwrap()).unwrap();
    assert!(
        journal["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["op"] == "init")
    );
    assert_eq!(p.default_version().await.unwrap(), "1.0");
    assert_eq!(p.booted_version().await.unwrap(), "1.0");
    assert_eq!(p.current_job().await.unwrap().as_str(), "/");
}

#[tokio::test(flavor = "multi_thread")]
async fn install_as_a_job_with_progress_in_order_then_activate_and_roll_back() {
    let bus = start_bus("job");
    let (_s, c, _) = served(&bus, admin()).await;
    let p = UpdaterProxy::new(&c).await.unwrap();
    let f = release_file(&bus.dir, "2.0");
    let path = p
        .stage_stream("2.0", zbus::Fd::from(&f), "", 4096)
        .await
        .unwrap();
    assert_eq!(p.current_job().await.unwrap(), path);
    let (state, result, err, stages) = finish(&c, &path).await;
    assert_eq!(
        (state.as_str(), result.as_str(), err.as_str()),
        ("done", "2.0", "")
    );
    let order = [
        "snapshot",
        "receive",
        "clone-config",
        "migrate",
        "mark-staged",
        "done",
    ];
    let positions: Vec<usize> = stages
        .iter()
        .filter_map(|s| order.iter().position(|o| o == s))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "stages out of order: {stages:?}"
    );
    assert_eq!(
        stages.last().map(String::as_str),
        Some("done"),
        "{stages:?}"
    );
    let st = status(&p).await;
    assert_eq!(st["data"]["versions"][0]["id"], "2.0");
    assert_eq!(st["data"]["versions"][0]["state"], "staged");
    p.activate("2.0", "trial", 2, false).await.unwrap();
    assert_eq!(status(&p).await["data"]["boot"]["trial"], "2.0");
    p.activate("2.0", "permanent", 0, false).await.unwrap();
    assert_eq!(p.default_version().await.unwrap(), "2.0");
    assert_eq!(p.rollback(1).await.unwrap(), "1.0");
    assert_eq!(p.roll_forward().await.unwrap(), "2.0");
    p.pin("1.0", true).await.unwrap();
    assert_eq!(status(&p).await["data"]["versions"][1]["pinned"], true);
    p.pin("1.0", false).await.unwrap();
    p.mark_failed("1.0", "broken on this hardware")
        .await
        .unwrap();
    assert_eq!(status(&p).await["data"]["versions"][1]["state"], "failed");
    let diff: serde_json::Value =
        serde_json::from_str(&p.diff("1.0", "2.0").await.unwrap_or_else(|e| {
            // 2.0 is a full stream, not a delta of 1.0: a named error, not a crash.
            assert_eq!(err_name(&e), "org.cairn.Updater1.Error.Failed");
            "{\"data\": []}".into()
        }))
        .unwrap();
    assert!(diff["data"].is_array());
    let at = bus.dir.join("mnt");
    assert_eq!(
        p.mount("2.0", "root", at.to_str().unwrap()).await.unwrap(),
        at.display().to_string()
    );
    p.unmount(at.to_str().unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn named_errors() {
    let bus = start_bus("errors");
    let (_s, c, _) = served(&bus, admin()).await;
    let p = UpdaterProxy::new(&c).await.unwrap();
    let e = |r: zbus::Result<()>| err_name(&r.unwrap_err());
    assert_eq!(
        e(p.activate("9.9", "permanent", 0, false).await),
        "org.cairn.Updater1.Error.UnknownVersion"
    );
    assert_eq!(
        e(p.activate("1.0", "sideways", 0, false).await),
        "org.cairn.Updater1.Error.InvalidArgument"
    );
    assert_eq!(
        e(p.activate("Bad Id", "permanent", 0, false).await),
        "org.cairn.Updater1.Error.InvalidArgument"
    );
    assert_eq!(
        err_name(&p.confirm("").await.unwrap_err()),
        "org.cairn.Updater1.Error.NoTrial"
    );
    assert_eq!(
        err_name(&p.rollback(1).await.unwrap_err()),
        "org.cairn.Updater1.Error.NothingToRollTo"
    );
    assert_eq!(
        e(p.pin("7", true).await),
        "org.cairn.Updater1.Error.UnknownVersion"
    );
    assert_eq!(
        err_name(&p.mount("1.0", "kernel", "/x").await.unwrap_err()),
        "org.cairn.Updater1.Error.InvalidArgument"
    );
    // Errors of a job arrive as its error name.
    let f = release_file(&bus.dir, "1.0");
    let path = p
        .stage_stream("1.0", zbus::Fd::from(&f), "", 1)
        .await
        .unwrap();
    let (state, _, err, _) = finish(&c, &path).await;
    assert_eq!(
        (state.as_str(), err.as_str()),
        ("failed", "org.cairn.Updater1.Error.VersionExists")
    );
    let f = release_file(&bus.dir, "0.5");
    let path = p
        .stage_stream("0.5", zbus::Fd::from(&f), "", 1)
        .await
        .unwrap();
    assert_eq!(
        finish(&c, &path).await.2,
        "org.cairn.Updater1.Error.Downgrade"
    );
    let f = release_file(&bus.dir, "3.0");
    let path = p
        .stage_stream("3.0", zbus::Fd::from(&f), "", 1 << 50)
        .await
        .unwrap();
    assert_eq!(
        finish(&c, &path).await.2,
        "org.cairn.Updater1.Error.NotEnoughSpace"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_mutating_job_at_a_time_and_cancel_undoes() {
    let bus = start_bus("busy");
    let (_s, c, shared) = served(&bus, admin()).await;
    let p = UpdaterProxy::new(&c).await.unwrap();
    // A stream that arrives slowly: the job sits in `receive` until the pipe closes.
    let (r, mut w) = std::io::pipe().unwrap();
    let path = p
        .stage_stream("2.0", zbus::Fd::from(&r), "", 4096)
        .await
        .unwrap();
    drop(r);
    let busy = |e: zbus::Error| assert_eq!(err_name(&e), "org.cairn.Updater1.Error.Busy");
    let f = release_file(&bus.dir, "3.0");
    busy(
        p.stage_stream("3.0", zbus::Fd::from(&f), "", 1)
            .await
            .unwrap_err(),
    );
    busy(p.activate("1.0", "permanent", 0, false).await.unwrap_err());
    busy(p.rollback(1).await.unwrap_err());
    assert!(
        status(&p).await["data"]["job"]
            .as_str()
            .unwrap()
            .contains("installing 2.0")
    );
    let job = JobProxy::builder(&c)
        .path(path.clone())
        .build()
        .await
        .unwrap();
    job.cancel().await.unwrap();
    let model = cairn_zfs::model::ZfsModel::new();
    w.write_all(&sim_release_stream(&model, "2.0").unwrap())
        .unwrap();
    drop(w);
    let (state, _, err, _) = finish(&c, &path).await;
    assert_eq!(
        (state.as_str(), err.as_str()),
        ("cancelled", "org.cairn.Updater1.Error.Cancelled")
    );
    let ids: Vec<String> = shared
        .engine
        .versions()
        .unwrap()
        .iter()
        .map(|v| v.id.to_string())
        .collect();
    assert_eq!(ids, ["1.0"], "the cancelled install left nothing");
    assert_eq!(
        err_name(&job.cancel().await.unwrap_err()),
        "org.cairn.Updater1.Error.InvalidArgument"
    );
    p.activate("1.0", "permanent", 0, false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mutating_method_refuses_a_caller_who_is_not_admin() {
    let bus = start_bus("auth");
    // This service trusts nobody: the root test client is refused by its bus credentials.
    let (_s, c, shared) = served(
        &bus,
        AuthPolicy {
            admin_gid: None,
            extra_uid: None,
            root_is_admin: false,
        },
    )
    .await;
    let p = UpdaterProxy::new(&c).await.unwrap();
    let denied = |e: zbus::Error| {
        assert_eq!(
            err_name(&e),
            "org.cairn.Updater1.Error.NotAuthorized",
            "{e}"
        )
    };
    let f = release_file(&bus.dir, "2.0");
    denied(
        p.stage_stream("2.0", zbus::Fd::from(&f), "", 1)
            .await
            .unwrap_err(),
    );
    denied(p.activate("1.0", "permanent", 0, false).await.unwrap_err());
    denied(p.confirm("").await.unwrap_err());
    denied(p.mark_failed("1.0", "x").await.unwrap_err());
    denied(p.rollback(1).await.unwrap_err());
    denied(p.roll_forward().await.unwrap_err());
    denied(p.pin("1.0", true).await.unwrap_err());
    denied(p.mount("1.0", "root", "/tmp/x").await.unwrap_err());
    denied(p.unmount("/tmp/x").await.unwrap_err());
    // Read-only calls stay open to everyone.
    p.get_status().await.unwrap();
    p.list_versions().await.unwrap();
    let journal = shared.engine.journal_entries().unwrap();
    assert!(
        journal
            .iter()
            .all(|e| e.op == "init" || e.op == "install-first"),
        "nothing was done: {journal:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_non_root_caller_is_refused_and_may_read() {
    let bus = start_bus("nonroot");
    let (_s, _c, _) = served(&bus, admin()).await;
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "busctl",
                "--address",
            ])
            .arg(&bus.address)
            .arg("call")
            .args([
                "org.cairn.Updater1",
                "/org/cairn/Updater1",
                "org.cairn.Updater1",
            ])
            .args(args)
            .output()
            .expect("setpriv and busctl")
    };
    let out = as_nobody(&["Activate", "ssyb", "1.0", "permanent", "0", "false"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("uid 65534 may not activate"), "{text}");
    let out = as_nobody(&["GetStatus"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_matches_the_committed_xml() {
    let bus = start_bus("xml");
    let (_s, c, _) = served(&bus, admin()).await;
    let p = UpdaterProxy::new(&c).await.unwrap();
    let (r, w) = std::io::pipe().unwrap();
    let job = p
        .stage_stream("2.0", zbus::Fd::from(&r), "", 1)
        .await
        .unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus");
    for (iface, path) in [
        ("org.cairn.Updater1", "/org/cairn/Updater1"),
        ("org.cairn.Updater1.Job", job.as_str()),
    ] {
        let out = Command::new("busctl")
            .arg("--address")
            .arg(&bus.address)
            .args(["introspect", "--xml-interface", "org.cairn.Updater1", path])
            .output()
            .expect("busctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let xml = String::from_utf8(out.stdout).unwrap();
        let start = xml
            .find(&format!("<interface name=\"{iface}\">"))
            .expect("interface present");
        let end = start + xml[start..].find("</interface>").unwrap() + "</interface>".len();
        let got = format!("{}\n", &xml[start..end]);
        let file = dir.join(format!("{iface}.xml"));
        if std::env::var("UPDATE_INTROSPECTION").is_ok() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &got).unwrap();
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        assert_eq!(
            got, want,
            "{iface} changed; review and rerun with UPDATE_INTROSPECTION=1"
        );
    }
    drop(w);
}
