//! cairnd against a real `dbus-daemon` started by the tests on a private address: every
//! method, named errors, job progress in order, Busy, Cancel, callers refused by their
//! bus credentials, and the introspection XML as committed.

#![allow(clippy::disallowed_methods)] // the bus daemon and busctl are test fixtures

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use cairn_daemon::api::{JobProxy, UpdaterProxy};
use cairn_daemon::testbus::{Bus, start_bus};
use cairn_daemon::{AuthPolicy, Shared, serve, sim_engine, sim_release_stream};
use futures_util::StreamExt;

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

/// A proxy that reads properties fresh (a cached value may lag the call that changed it).
async fn updater(c: &zbus::Connection) -> UpdaterProxy<'static> {
    UpdaterProxy::builder(c)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
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
    // Changes arrive through the caching proxy; values are read fresh from the other.
    let watch = JobProxy::builder(conn)
        .path(path.clone())
        .build()
        .await
        .unwrap();
    let job = JobProxy::builder(conn)
        .path(path.clone())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut stages = watch.receive_stage_changed().await;
    let mut finished = watch.receive_finished().await.unwrap();
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
    let p = updater(&c).await;
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
    let p = updater(&c).await;
    // The stream arrives through a pipe a little later, so the watcher below is
    // subscribed before the job gets past `receive`.
    let (r, mut w) = std::io::pipe().unwrap();
    let bytes = sim_release_stream(&cairn_zfs::model::ZfsModel::new(), "2.0").unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        w.write_all(&bytes).unwrap();
    });
    let path = p
        .stage_stream("2.0", zbus::Fd::from(&r), "", 4096)
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
    let p = updater(&c).await;
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
    let p = updater(&c).await;
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
    busy(p.factory_reset("system", "", false).await.unwrap_err());
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
    let p = updater(&c).await;
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
    denied(p.cleanup(false).await.unwrap_err());
    denied(p.factory_reset("config", "", false).await.unwrap_err());
    let sink = std::fs::File::create(bus.dir.join("export")).unwrap();
    denied(
        p.support_export(zbus::Fd::from(&sink), &["1.0"], false, false)
            .await
            .unwrap_err(),
    );
    // A dry run changes nothing, so anyone may look.
    p.cleanup(true).await.unwrap();
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

/// Calls a manager method with `busctl` as uid 65534 (nobody), no groups.
fn call_as_nobody(bus: &Bus, args: &[&str]) -> std::process::Output {
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
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_non_root_caller_is_refused_and_may_read() {
    let bus = start_bus("nonroot");
    let (_s, _c, _) = served(&bus, admin()).await;
    let as_nobody = |args: &[&str]| call_as_nobody(&bus, args);
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
    let p = updater(&c).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn cairnd_sim_binary_serves_a_simulated_appliance() {
    let bus = start_bus("bin");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairnd"))
        .args(["--sim", "--address", &bus.address])
        .spawn()
        .unwrap();
    let c = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    let dbus = zbus::fdo::DBusProxy::new(&c).await.unwrap();
    let name = zbus::names::BusName::try_from("org.cairn.Updater1").unwrap();
    let mut up = false;
    for _ in 0..600 {
        if dbus.name_has_owner(name.clone()).await.unwrap() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "cairnd --sim did not claim its name");
    let p = updater(&c).await;
    assert_eq!(status(&p).await["data"]["booted"]["version"], "1.0");
    // `cairnd sim-release` writes a stream the simulator installs.
    let file = bus.dir.join("r2");
    let st = Command::new(env!("CARGO_BIN_EXE_cairnd"))
        .arg("sim-release")
        .arg("2.0")
        .arg(&file)
        .status()
        .unwrap();
    assert!(st.success());
    let f = std::fs::File::open(&file).unwrap();
    let path = p
        .stage_stream("2.0", zbus::Fd::from(&f), "", 1)
        .await
        .unwrap();
    assert_eq!(finish(&c, &path).await.0, "done");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bus_policy_and_units_are_well_formed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let conf = std::fs::read_to_string(root.join("systemd/org.cairn.Updater1.conf")).unwrap();
    assert!(conf.contains("<allow own=\"org.cairn.Updater1\"/>"));
    // dbus-daemon itself parses the policy: a config that includes it must load.
    let dir = std::env::temp_dir().join(format!("cairn-policy-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("d")).unwrap();
    std::fs::copy(
        root.join("systemd/org.cairn.Updater1.conf"),
        dir.join("d/org.cairn.Updater1.conf"),
    )
    .unwrap();
    std::fs::write(
        dir.join("bus.conf"),
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig><listen>unix:path={}/bus</listen><includedir>{}/d</includedir></busconfig>\n",
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new("dbus-daemon")
        .arg(format!("--config-file={}/bus.conf", dir.display()))
        .args(["--print-address", "--fork", "--print-pid"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(pid) = text.lines().nth(1) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let unit = std::fs::read_to_string(root.join("systemd/cairnd.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("BusName=org.cairn.Updater1"));
}

#[test]
fn real_mode_says_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairnd"))
        .args(["--layout", "/nonexistent/layout.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reading /nonexistent/layout.yaml"), "{err}");
    let dir = std::env::temp_dir().join(format!("cairnd-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.yaml"), "pool: rpool\nbogus: 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairnd"))
        .arg("--layout")
        .arg(dir.join("bad.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `bogus`"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_plans_announces_and_removes() {
    let bus = start_bus("cleanup");
    let (engine, _model, _host) = sim_engine().unwrap();
    let policy = cairn_engine::retention::Policy {
        keep_min: 1,
        keep_max: 2,
        grace_days: 0,
        ..Default::default()
    };
    let shared = Shared::new(engine, admin()).with_retention(policy);
    let server = connect(&bus).await;
    serve(&server, shared.clone()).await.unwrap();
    let c = connect(&bus).await;
    let p = updater(&c).await;
    for v in ["2.0", "3.0"] {
        let f = release_file(&bus.dir, v);
        let path = p.stage_stream(v, zbus::Fd::from(&f), "", 1).await.unwrap();
        assert_eq!(finish(&c, &path).await.0, "done");
    }
    let dry: serde_json::Value = serde_json::from_str(&p.cleanup(true).await.unwrap()).unwrap();
    assert_eq!(dry["kind"], "cleanup");
    assert_eq!(dry["data"]["dry_run"], true);
    assert_eq!(dry["data"]["plan"]["remove"], serde_json::json!(["2.0"]));
    assert_eq!(
        shared.engine.versions().unwrap().len(),
        3,
        "dry run removed nothing"
    );
    let done: serde_json::Value = serde_json::from_str(&p.cleanup(false).await.unwrap()).unwrap();
    assert_eq!(
        done["data"]["plan"], dry["data"]["plan"],
        "the dry run is what ran"
    );
    let ids: Vec<String> = shared
        .engine
        .versions()
        .unwrap()
        .iter()
        .map(|v| v.id.to_string())
        .collect();
    assert_eq!(ids, ["3.0", "1.0"]);
    let freed = done["data"]["freed"].as_array().unwrap();
    assert!(
        freed
            .iter()
            .any(|f| f[0].as_str().unwrap().ends_with("ROOT/2.0"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_announces_expiry_during_grace() {
    let bus = start_bus("grace");
    let (engine, _model, _host) = sim_engine().unwrap();
    let policy = cairn_engine::retention::Policy {
        keep_min: 1,
        keep_max: 2,
        grace_days: 7,
        ..Default::default()
    };
    let shared = Shared::new(engine, admin()).with_retention(policy);
    let server = connect(&bus).await;
    serve(&server, shared.clone()).await.unwrap();
    let c = connect(&bus).await;
    let p = updater(&c).await;
    for v in ["2.0", "3.0"] {
        let f = release_file(&bus.dir, v);
        let path = p.stage_stream(v, zbus::Fd::from(&f), "", 1).await.unwrap();
        assert_eq!(finish(&c, &path).await.0, "done");
    }
    let mut notices = p.receive_expiry_notice().await.unwrap();
    let done: serde_json::Value = serde_json::from_str(&p.cleanup(false).await.unwrap()).unwrap();
    assert_eq!(
        done["data"]["plan"]["remove"],
        serde_json::json!([]),
        "grace first"
    );
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), notices.next())
        .await
        .unwrap()
        .unwrap();
    let args = n.args().unwrap();
    assert_eq!(args.id(), &"2.0");
    let st = status(&p).await;
    let v2 = st["data"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "2.0")
        .unwrap()
        .clone();
    assert_eq!(
        v2["expires"].as_u64(),
        Some(*args.at()),
        "status shows the date"
    );
    assert_eq!(shared.engine.versions().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn staging_short_of_space_runs_retention_first_and_never_removes_protected() {
    let bus = start_bus("room");
    let (engine, _model, _host) = sim_engine().unwrap();
    let policy = cairn_engine::retention::Policy {
        keep_min: 1,
        keep_max: 2,
        grace_days: 0,
        ..Default::default()
    };
    let shared = Shared::new(engine, admin()).with_retention(policy);
    let server = connect(&bus).await;
    serve(&server, shared.clone()).await.unwrap();
    let c = connect(&bus).await;
    let p = updater(&c).await;
    for v in ["2.0", "3.0"] {
        let f = release_file(&bus.dir, v);
        let path = p.stage_stream(v, zbus::Fd::from(&f), "", 1).await.unwrap();
        assert_eq!(finish(&c, &path).await.0, "done");
    }
    // Far more than the pool holds: retention runs, then staging still refuses.
    let f = release_file(&bus.dir, "4.0");
    let path = p
        .stage_stream("4.0", zbus::Fd::from(&f), "", 1 << 50)
        .await
        .unwrap();
    let (state, _, err, _) = finish(&c, &path).await;
    assert_eq!(
        (state.as_str(), err.as_str()),
        ("failed", "org.cairn.Updater1.Error.NotEnoughSpace")
    );
    let ids: Vec<String> = shared
        .engine
        .versions()
        .unwrap()
        .iter()
        .map(|v| v.id.to_string())
        .collect();
    assert_eq!(
        ids,
        ["3.0", "1.0"],
        "retention removed the oldest unprotected version; the running one stays"
    );
    assert!(
        shared
            .engine
            .journal_entries()
            .unwrap()
            .iter()
            .any(|e| e.op == "cleanup")
    );
}

/// The real polkitd on the test bus, in a private mount namespace where its action and
/// rules directories hold only cairn's action file and `rules`. Killed when dropped.
struct Polkitd(std::process::Child);

impl Drop for Polkitd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_polkitd(bus: &Bus, rules: &str) -> Polkitd {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (actions, rules_dir) = (bus.dir.join("pk-actions"), bus.dir.join("pk-rules"));
    std::fs::create_dir_all(&actions).unwrap();
    std::fs::create_dir_all(&rules_dir).unwrap();
    std::fs::copy(
        root.join("packaging/polkit/org.cairn.updater1.policy"),
        actions.join("org.cairn.updater1.policy"),
    )
    .unwrap();
    std::fs::write(rules_dir.join("50-cairn-test.rules"), rules).unwrap();
    let script = format!(
        "mount --bind {a} /usr/share/polkit-1/actions && \
         mount --bind {r} /usr/share/polkit-1/rules.d && \
         mount --bind {r} /etc/polkit-1/rules.d && \
         exec /usr/lib/polkit-1/polkitd --no-debug",
        a = actions.display(),
        r = rules_dir.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .spawn()
        .expect("polkitd (package polkitd, from `cargo xtask host-deps`) and unshare");
    let pk = Polkitd(child);
    let c = connect(bus).await;
    let dbus = zbus::fdo::DBusProxy::new(&c).await.unwrap();
    let name = zbus::names::BusName::try_from("org.freedesktop.PolicyKit1").unwrap();
    for _ in 0..200 {
        if dbus.name_has_owner(name.clone()).await.unwrap() {
            return pk;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("polkitd did not take its name on the test bus within 10 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn polkit_decides_for_callers_who_are_not_admins() {
    let bus = start_bus("polkit");
    let (_s, _c, shared) = served(&bus, admin()).await;
    let journal_len = || shared.engine.journal_entries().unwrap().len();
    let before = journal_len();
    let pin = ["Pin", "sb", "1.0", "true"];
    // Without polkit on the bus, nobody is refused, as before.
    let out = call_as_nobody(&bus, &pin);
    assert!(!out.status.success());
    assert_eq!(journal_len(), before);

    // polkit decides per operation (polkit itself always allows uid 0, hence nobody here).
    let _pk = start_polkitd(
        &bus,
        r#"polkit.addRule(function(action, subject) {
    if (action.id == "org.cairn.updater1.manage" && subject.user == "nobody") {
        if (action.lookup("cairn.operation") == "reset to factory defaults")
            return polkit.Result.NO;
        return polkit.Result.YES;
    }
});
"#,
    )
    .await;
    let out = call_as_nobody(&bus, &pin);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the rule allows pinning: {text}");
    let journal = shared.engine.journal_entries().unwrap();
    assert_eq!(journal.len(), before + 1, "{journal:?}");
    assert_eq!(journal.last().unwrap().by, "uid:65534");
    // The rule refuses a factory reset: refused by name, nothing done.
    let out = call_as_nobody(&bus, &["FactoryReset", "ssb", "config", "", "true"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("polkit refused"), "{text}");
    assert_eq!(journal_len(), before + 1);
}
