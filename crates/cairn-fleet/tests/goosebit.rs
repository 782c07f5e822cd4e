//! The fleet client against a real DDI server: goosebit (PyPI, pinned in
//! `tests/fleet/goosebit-requirements.txt`, installed by `xtask/scripts/host-deps.sh`)
//! started on loopback by each test, and simulated appliances (`cairnd`'s in-memory
//! appliance served on private buses) with vendor keys made by the real `minisign`.
//! The `cairn-fleet` binary runs one cycle at a time (`--once`), so each step is seen.
//!
//! What the server shows (device state, software version, log, rollout counters) is
//! checked against what happened on each appliance.

#![allow(clippy::disallowed_methods)] // runs goosebit, curl, minisign and the binary under test

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_daemon::api::UpdaterProxy;
use cairn_daemon::testbus::{Bus, start_bus};
use cairn_daemon::{AuthPolicy, Shared, serve, serve_sim, sim_engine, sim_release_stream};

const TOKEN: &str = "tgt-5ecret-token-never-logged";

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> Tmp {
    let d = std::env::temp_dir().join(format!("cairn-fleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// goosebit on loopback, with an admin user; killed when dropped.
struct Goosebit {
    child: Child,
    url: String,
    admin: String,
}

impl Drop for Goosebit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl is needed: xtask/scripts/host-deps.sh");
    assert!(
        out.status.success(),
        "curl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Goosebit {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// With goosebit settings as environment variables (`GOOSEBIT_...`).
    fn start_with(dir: &Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fleet/goosebit-serve.sh");
        let log = std::fs::File::create(dir.join("goosebit.log")).unwrap();
        let child = Command::new("bash")
            .arg(script)
            .arg(dir.join("server"))
            .arg(port.to_string())
            .env("GOOSEBIT_POLL_TIME", "00:00:10")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let mut gb = Self {
            child,
            url,
            admin: String::new(),
        };
        let t0 = Instant::now();
        loop {
            if let Some(st) = gb.child.try_wait().unwrap() {
                panic!(
                    "goosebit exited ({st}): {}",
                    std::fs::read_to_string(dir.join("goosebit.log")).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "goosebit did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let setup = curl(&[
            "-X",
            "POST",
            "-F",
            "username=admin@example.com",
            "-F",
            "password=fleet-test-pw-1",
            &format!("{}/setup", gb.url),
        ]);
        let v: serde_json::Value = serde_json::from_str(&setup).unwrap();
        gb.admin = v["access_token"].as_str().unwrap().to_owned();
        gb
    }

    fn api(&self, method: &str, path: &str, json: Option<serde_json::Value>) -> serde_json::Value {
        let auth = format!("Authorization: Bearer {}", self.admin);
        let url = format!("{}/api/v1/{path}", self.url);
        let body = json.map(|j| j.to_string());
        let mut args = vec!["-X", method, "-H", &auth, &url];
        if let Some(b) = &body {
            args.extend(["-H", "Content-Type: application/json", "--data", b]);
        }
        let out = curl(&args);
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
    }

    /// Uploads an artifact; returns the software id.
    fn upload(&self, file: &Path) -> u64 {
        let out = curl(&[
            "-X",
            "PUT",
            "-H",
            &format!("Authorization: Bearer {}", self.admin),
            "-F",
            &format!("file=@{}", file.display()),
            &format!("{}/api/v1/software", self.url),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["id"].as_u64().unwrap_or_else(|| panic!("upload: {out}"))
    }

    fn rollout(&self, software: u64) -> u64 {
        self.api(
            "PUT",
            "rollouts",
            Some(serde_json::json!({"name": "v2", "feed": "default", "software_id": software})),
        );
        let all = self.api("GET", "rollouts", None);
        all["rollouts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["software"]["id"] == software || r["sw_file"].is_string())
            .and_then(|r| r["id"].as_u64())
            .unwrap_or_else(|| panic!("no rollout in {all}"))
    }

    fn device(&self, id: &str) -> serde_json::Value {
        let all = self.api("GET", "devices", None);
        all["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {all}"))
    }

    fn log(&self, id: &str) -> String {
        let v = self.api("GET", &format!("devices/{id}/log"), None);
        v["log"].as_str().unwrap_or_default().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goosebit_in_strict_device_auth_takes_the_target_token_and_refuses_a_wrong_one() {
    let t = tmp("auth");
    let gb = Goosebit::start_with(
        &t.0,
        &[
            ("GOOSEBIT_DEVICE_AUTH__ENABLE", "true"),
            ("GOOSEBIT_DEVICE_AUTH__MODE", "strict"),
        ],
    );
    let (public, _) = keypair(&t.0);
    // The operator registers the device with its token; box-x is not registered.
    gb.api(
        "PUT",
        "devices",
        Some(serde_json::json!({"devices": ["box-a"], "auth_token": TOKEN})),
    );
    let good = appliance(&t.0, "box-a", &gb.url, &public).await;
    cycle_ok(&good, "Idle").await;
    assert_eq!(gb.device("box-a")["sw_version"], "1.0");
    // A device the server does not know (strict mode registers no one).
    let bad = appliance(&t.0, "box-x", &gb.url, &public).await;
    let r = cycle(&bad).await;
    assert!(
        !r.ok && r.stderr.contains("refused this controller's token (401"),
        "{}",
        r.stderr
    );
    // Another token on the registered device.
    std::fs::write(t.0.join("box-a.token"), "someone-elses-token\n").unwrap();
    let r = cycle(&good).await;
    assert!(!r.ok && r.stderr.contains("refused"), "{}", r.stderr);
    let all = gb.api("GET", "devices", None);
    assert_eq!(all["devices"].as_array().unwrap().len(), 1, "{all}");
}

/// A minisign key pair made by the real tool (unencrypted).
fn keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let (p, s) = (dir.join("vendor.pub"), dir.join("vendor.key"));
    let st = Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&p)
        .arg("-s")
        .arg(&s)
        .output()
        .expect("minisign is needed: xtask/scripts/host-deps.sh");
    assert!(st.status.success());
    (p, s)
}

/// A signed bundle of simulator release `version`, wrapped as an SWU file.
fn swu(dir: &Path, key: &Path, version: &str) -> PathBuf {
    use sha2::Digest;
    let payload = sim_release_stream(&cairn_zfs::model::ZfsModel::new(), version).unwrap();
    let root = dir.join("root.stream");
    std::fs::write(&root, &payload).unwrap();
    let manifest = format!(
        "format: 1\nproduct: demo-appliance\nversion: '{version}'\nhardware: [demo-x86]\npayloads:\n  - name: root\n    kind: zfs-full\n    size: {}\n    sha256: {:x}\n",
        payload.len(),
        sha2::Sha256::digest(&payload)
    );
    let sig = cairn_bundle::sign(
        manifest.as_bytes(),
        &std::fs::read_to_string(key).unwrap(),
        None,
    )
    .unwrap();
    let bundle = dir.join(format!("demo-{version}.cairn"));
    let mut out = std::fs::File::create(&bundle).unwrap();
    cairn_bundle::write_bundle(
        &mut out,
        manifest.as_bytes(),
        Some(&sig),
        &[("root".into(), root)],
    )
    .unwrap();
    drop(out);
    let mut f = std::fs::File::open(&bundle).unwrap();
    let (sha256, size) = cairn_bundle::swu::sha256_of(&mut f).unwrap();
    let desc = cairn_bundle::swu::Description {
        version: version.into(),
        hardware: vec!["demo-x86".into()],
        filename: format!("demo-{version}.cairn"),
        sha256,
    };
    let swu = dir.join(format!("demo-{version}.swu"));
    let mut out = std::fs::File::create(&swu).unwrap();
    let mut f = std::fs::File::open(&bundle).unwrap();
    cairn_bundle::swu::write(&mut out, &desc, &mut f, size).unwrap();
    swu
}

/// A simulated appliance on its own bus, accepting bundles signed with `key`, and the
/// fleet client's configuration for it.
struct Box_ {
    name: String,
    bus: Bus,
    _server: zbus::Connection,
    client: zbus::Connection,
    config: PathBuf,
    state: PathBuf,
}

async fn appliance(dir: &Path, name: &str, server: &str, key: &Path) -> Box_ {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let bus = start_bus(&format!("fleet-{name}-{n}"));
    let (engine, _model, host) = sim_engine().unwrap();
    let keys = vec![cairn_bundle::public_key(&std::fs::read_to_string(key).unwrap()).unwrap()];
    let policy = AuthPolicy {
        admin_gid: None,
        extra_uid: None,
        root_is_admin: true,
    };
    let shared = Shared::new(engine, policy).with_bundles(cairn_bundle::install::Appliance {
        keys,
        product: "demo-appliance".into(),
        hardware: "demo-x86".into(),
    });
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    serve_sim(&conn, shared.clone(), host).await.unwrap();
    serve(&conn, shared).await.unwrap();
    let client = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    let token = dir.join(format!("{name}.token"));
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = dir.join(format!("{name}.yaml"));
    // The trial's reboot: the simulated boot loader, through the bus like `systemctl
    // reboot` would go through systemd.
    std::fs::write(
        &config,
        format!(
            "server: {server}\ncontroller_id: {name}\ntoken_file: {}\nhardware_id: demo-x86\nreboot_command: [busctl, '--address={}', call, org.cairn.Updater1, /org/cairn/Simulator1, org.cairn.Simulator1, Reboot]\n",
            token.display(),
            bus.address
        ),
    )
    .unwrap();
    Box_ {
        name: name.into(),
        state: dir.join(format!("{name}.state")),
        bus,
        _server: conn,
        client,
        config,
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// One cycle of the client for `b`.
async fn cycle(b: &Box_) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-fleet"));
    cmd.args(["--once", "--config"])
        .arg(&b.config)
        .arg("--state")
        .arg(&b.state)
        .arg("--address")
        .arg(&b.bus.address)
        .env("CAIRN_LOG", "debug")
        .env_remove("JOURNAL_STREAM");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let r = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !r.stdout.contains(TOKEN) && !r.stderr.contains(TOKEN),
        "the token reached the output"
    );
    r
}

async fn cycle_ok(b: &Box_, expect: &str) -> String {
    let r = cycle(b).await;
    assert!(
        r.ok && r.stdout.starts_with(expect),
        "{}: expected {expect}, got {}\n{}",
        b.name,
        r.stdout,
        r.stderr
    );
    r.stdout
}

async fn status(b: &Box_) -> serde_json::Value {
    let p = UpdaterProxy::new(&b.client).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&p.get_status().await.unwrap()).unwrap();
    let data = v["data"].clone();
    assert!(!data["versions"].as_array().unwrap().is_empty(), "{v}");
    data
}

fn version<'a>(st: &'a serde_json::Value, v: &str) -> Option<&'a serde_json::Value> {
    st["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["version"] == v)
}

fn booted_version(st: &serde_json::Value) -> String {
    st["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["is_booted"] == true)
        .unwrap_or_else(|| panic!("nothing booted: {st}"))["version"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// What `cairnctl health-check` does on the trial boot, over the same API: confirm, or
/// mark failed with the reason and reboot into the default.
async fn health(b: &Box_, pass: bool) {
    let p = UpdaterProxy::new(&b.client).await.unwrap();
    if pass {
        p.confirm("health checks passed: app-responds")
            .await
            .unwrap();
    } else {
        let st = status(b).await;
        let id = st["booted"]["version"].as_str().unwrap().to_owned();
        p.mark_failed(&id, "required check app-responds failed: exit status 1")
            .await
            .unwrap();
        let sim = cairn_daemon::api::SimulatorProxy::new(&b.client)
            .await
            .unwrap();
        sim.reboot().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_to_three_appliances_with_one_failing_its_health_check() {
    let t = tmp("rollout");
    let gb = Goosebit::start(&t.0);
    let (public, secret) = keypair(&t.0);
    let mut boxes = Vec::new();
    for n in ["box-1", "box-2", "box-3"] {
        boxes.push(appliance(&t.0, n, &gb.url, &public).await);
    }
    // First poll: each appliance registers and sends its attributes.
    for b in &boxes {
        cycle_ok(b, "Idle").await;
        let d = gb.device(&b.name);
        assert_eq!(d["sw_version"], "1.0", "{d}");
        assert_eq!(d["hardware"]["revision"], "demo-x86", "{d}");
    }
    let sw = gb.upload(&swu(&t.0, &secret, "2.0"));
    gb.rollout(sw);
    for b in &boxes {
        cycle_ok(b, "Staged").await;
        let st = status(b).await;
        assert_eq!(version(&st, "2.0").unwrap()["state"], "staged", "{st}");
        // Download progress as goosebit reads it (SWUpdate's wording).
        assert_eq!(gb.device(&b.name)["progress"], 100);
        assert!(gb.log(&b.name).contains("Downloaded 50%"));
        cycle_ok(b, "TrialStarted").await;
        let st = status(b).await;
        assert_eq!(booted_version(&st), "2.0", "{st}");
        assert_eq!(gb.device(&b.name)["last_state"], "Running");
        // Booted, health checks not run yet: nothing to report.
        cycle_ok(b, "TrialPending").await;
        assert_eq!(gb.device(&b.name)["last_state"], "Running");
        // The health checks of the trial boot; box-2's app does not answer.
        health(b, b.name != "box-2").await;
        cycle_ok(b, "Reported").await;
    }
    for b in &boxes {
        let st = status(b).await;
        let d = gb.device(&b.name);
        let log = gb.log(&b.name);
        if b.name == "box-2" {
            assert_eq!(booted_version(&st), "1.0", "{st}");
            assert_eq!(version(&st, "2.0").unwrap()["stored"], "failed");
            assert_eq!(d["last_state"], "Error", "{d}");
            assert_eq!(d["sw_version"], "1.0", "{d}");
            assert!(
                log.contains("failed its trial (required check app-responds failed"),
                "{log}"
            );
        } else {
            assert_eq!(booted_version(&st), "2.0", "{st}");
            assert_eq!(version(&st, "2.0").unwrap()["stored"], "confirmed");
            assert_eq!(d["last_state"], "Finished", "{d}");
            assert_eq!(d["sw_version"], "2.0", "{d}");
            assert!(
                log.contains("passed its health checks and was confirmed"),
                "{log}"
            );
        }
    }
    let r = &gb.api("GET", "rollouts", None)["rollouts"][0];
    assert_eq!(
        (r["success_count"].as_u64(), r["failure_count"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    // Nothing more to do: the confirmed ones run 2.0, the failed one is left alone.
    for b in &boxes {
        cycle_ok(b, "Idle").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_cancelled_before_its_trial_is_never_booted() {
    let t = tmp("cancel");
    let gb = Goosebit::start(&t.0);
    let (public, secret) = keypair(&t.0);
    let b = appliance(&t.0, "box-c", &gb.url, &public).await;
    cycle_ok(&b, "Idle").await;
    let sw = gb.upload(&swu(&t.0, &secret, "2.0"));
    let rollout = gb.rollout(sw);
    cycle_ok(&b, "Staged").await;
    // The operator pauses the rollout: goosebit withdraws the deployment (it has no
    // cancelAction; hawkBit's cancel is handled by the same code, see service.rs).
    gb.api(
        "PATCH",
        "rollouts",
        Some(serde_json::json!({"ids": [rollout], "paused": true})),
    );
    let out = cycle_ok(&b, "Cancelled").await;
    assert!(out.contains("withdrew"), "{out}");
    let st = status(&b).await;
    assert_eq!(booted_version(&st), "1.0");
    let v2 = version(&st, "2.0").unwrap();
    assert_eq!(v2["stored"], "failed", "{st}");
    assert!(st["boot"]["trial"].is_null(), "{st}");
    assert!(!t.0.join("box-c.state").exists());
    let log = gb.log("box-c");
    assert!(
        log.contains("withdrew the deployment before its trial"),
        "{log}"
    );
    assert_ne!(gb.device("box-c")["sw_version"], "2.0");
    cycle_ok(&b, "Idle").await;
}

/// A DDI look-alike that answers `body(path)` to everything; records what it was sent.
fn fake_server(
    body: fn(&str, u16) -> (u16, Vec<u8>),
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    slow_server(body, Duration::ZERO)
}

/// As [`fake_server`], sending downloads in 16 pieces `pause` apart.
fn slow_server(
    body: fn(&str, u16) -> (u16, Vec<u8>),
    pause: Duration,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = seen.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            // Headers, then a body of Content-Length bytes.
            loop {
                match s.read(&mut buf[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if n >= end + 4 + len {
                        break;
                    }
                }
            }
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
            rec.lock().unwrap().push(req);
            let (code, bytes) = body(&path, port);
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            if pause.is_zero() || !path.ends_with("/download") {
                let _ = s.write_all(&bytes);
            } else {
                // On its own thread, so the polls made meanwhile are answered.
                let piece = bytes.len().div_ceil(16).max(1);
                let mut s = s;
                std::thread::spawn(move || {
                    for c in bytes.chunks(piece) {
                        if s.write_all(c).is_err() {
                            break;
                        }
                        let _ = s.flush();
                        std::thread::sleep(pause);
                    }
                });
            }
        }
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_or_answers_garbage_stages_nothing() {
    let t = tmp("garbage");
    let (public, _secret) = keypair(&t.0);
    let down = format!("http://127.0.0.1:{}", free_port());
    let b = appliance(&t.0, "box-d", &down, &public).await;
    let before = status(&b).await["versions"].clone();

    let r = cycle(&b).await;
    assert!(
        !r.ok && r.stderr.contains("cannot be reached"),
        "{}",
        r.stderr
    );

    // Not a DDI document at all.
    let (html, _) = fake_server(|_, _| (200, b"<html>Service Unavailable</html>".to_vec()));
    std::fs::write(
        &b.config,
        std::fs::read_to_string(&b.config)
            .unwrap()
            .replace(&down, &html),
    )
    .unwrap();
    let r = cycle(&b).await;
    assert!(
        !r.ok && r.stderr.contains("not a DDI document"),
        "{}",
        r.stderr
    );
    let (err, _) = fake_server(|_, _| (500, b"{}".to_vec()));
    std::fs::write(
        &b.config,
        std::fs::read_to_string(&b.config)
            .unwrap()
            .replace(&html, &err),
    )
    .unwrap();
    let r = cycle(&b).await;
    assert!(!r.ok && r.stderr.contains("answered 500"), "{}", r.stderr);

    // A well-formed deployment whose artifact is garbage: refused by the bundle check,
    // reported as a failure, nothing staged.
    let (dep, seen) = fake_server(|path, port| {
        let base = format!("http://127.0.0.1:{port}/DEFAULT/controller/v1/box-d");
        if path.ends_with("/box-d") {
            (200, format!(r#"{{"config":{{"polling":{{"sleep":"00:00:30"}}}},"_links":{{"deploymentBase":{{"href":"{base}/deploymentBase/7"}}}}}}"#).into_bytes())
        } else if path.ends_with("/deploymentBase/7") {
            (200, format!(r#"{{"id":"7","deployment":{{"download":"forced","update":"forced","chunks":[{{"part":"os","version":"2.0","name":"demo","artifacts":[{{"filename":"demo-2.cairn","hashes":{{}},"size":4096,"_links":{{"download-http":{{"href":"{base}/download"}}}}}}]}}]}}}}"#).into_bytes())
        } else if path.ends_with("/download") {
            (200, (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect())
        } else {
            (200, b"{}".to_vec())
        }
    });
    std::fs::write(
        &b.config,
        std::fs::read_to_string(&b.config)
            .unwrap()
            .replace(&err, &dep),
    )
    .unwrap();
    let out = cycle_ok(&b, "Rejected").await;
    assert!(out.contains("not installed"), "{out}");
    let feedback: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("/deploymentBase/7/feedback"))
        .cloned()
        .collect();
    let last = feedback.last().expect("feedback sent");
    assert!(
        last.contains(r#""execution":"closed""#) && last.contains(r#""finished":"failure""#),
        "{last}"
    );
    assert_eq!(status(&b).await["versions"], before, "something was staged");
    assert!(!b.state.exists());

    // As a service, it backs off and keeps running against a server that is down.
    std::fs::write(
        &b.config,
        std::fs::read_to_string(&b.config)
            .unwrap()
            .replace(&dep, &down),
    )
    .unwrap();
    let mut svc = Command::new(env!("CARGO_BIN_EXE_cairn-fleet"))
        .arg("--config")
        .arg(&b.config)
        .arg("--state")
        .arg(&b.state)
        .arg("--address")
        .arg(&b.bus.address)
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(svc.try_wait().unwrap().is_none(), "the service exited");
    svc.kill().unwrap();
    let mut log = String::new();
    svc.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let _ = svc.wait();
    assert!(
        log.contains("cycle failed") && log.contains("retry_in=10"),
        "{log}"
    );
    assert!(!log.contains(TOKEN));
    assert_eq!(status(&b).await["versions"], before);
}

// hawkBit features goosebit does not have (maintenance windows, `cancelAction`), played by
// a scripted DDI look-alike serving a real signed bundle.

/// Each scripted server's bundle, by port (each test signs with its own key).
static BUNDLES: std::sync::Mutex<std::collections::BTreeMap<u16, Vec<u8>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The scripted server's answers: deployment 7 with the maintenance window `window`, and
/// with `cancel` a `cancelAction` 9 stopping it.
fn scripted(path: &str, port: u16, window: &str, cancel: bool) -> (u16, Vec<u8>) {
    let base = format!("http://127.0.0.1:{port}/DEFAULT/controller/v1/box-h");
    let link = if cancel {
        format!(r#""cancelAction":{{"href":"{base}/cancelAction/9"}}"#)
    } else {
        format!(r#""deploymentBase":{{"href":"{base}/deploymentBase/7"}}"#)
    };
    if path.ends_with("/box-h") {
        (
            200,
            format!(r#"{{"config":{{"polling":{{"sleep":"00:00:30"}}}},"_links":{{{link}}}}}"#)
                .into_bytes(),
        )
    } else if path.ends_with("/deploymentBase/7") {
        let size = BUNDLES.lock().unwrap()[&port].len();
        (200, format!(r#"{{"id":"7","deployment":{{"download":"forced","update":"forced","maintenanceWindow":"{window}","chunks":[{{"part":"os","version":"2.0","name":"demo","artifacts":[{{"filename":"demo-2.0.cairn","size":{size},"_links":{{"download-http":{{"href":"{base}/download"}}}}}}]}}]}}}}"#).into_bytes())
    } else if path.ends_with("/cancelAction/9") {
        (200, br#"{"id":"9","cancelAction":{"stopId":"7"}}"#.to_vec())
    } else if path.ends_with("/download") {
        (200, BUNDLES.lock().unwrap()[&port].clone())
    } else {
        (200, b"{}".to_vec())
    }
}

fn posted(seen: &std::sync::Mutex<Vec<String>>, path: &str) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with(&format!("POST {path}")) || r.contains(&format!(" {path} ")))
        .map(|r| r.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
        .collect()
}

async fn scripted_box(dir: &Path, server: &str) -> Box_ {
    let (public, secret) = keypair(dir);
    let bundle = swu(dir, &secret, "2.0").with_extension("cairn");
    let port: u16 = server.rsplit(':').next().unwrap().parse().unwrap();
    BUNDLES
        .lock()
        .unwrap()
        .insert(port, std::fs::read(bundle).unwrap());
    appliance(dir, "box-h", server, &public).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_maintenance_window_stages_and_waits_then_the_trial_follows() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static OPEN: AtomicBool = AtomicBool::new(false);
    let t = tmp("window");
    let (url, seen) = fake_server(|path, port| {
        let w = if OPEN.load(Ordering::SeqCst) {
            "available"
        } else {
            "unavailable"
        };
        scripted(path, port, w, false)
    });
    let b = scripted_box(&t.0, &url).await;
    cycle_ok(&b, "Staged").await;
    let out = cycle_ok(&b, "Waiting").await;
    assert!(out.contains("maintenance window"), "{out}");
    let st = status(&b).await;
    assert_eq!(booted_version(&st), "1.0");
    assert!(
        st["boot"]["trial"].is_null(),
        "trial started in a closed window: {st}"
    );
    OPEN.store(true, Ordering::SeqCst);
    cycle_ok(&b, "TrialStarted").await;
    assert_eq!(booted_version(&status(&b).await), "2.0");
    health(&b, true).await;
    cycle_ok(&b, "Reported").await;
    let fb = posted(
        &seen,
        "/DEFAULT/controller/v1/box-h/deploymentBase/7/feedback",
    );
    let execs: Vec<&str> = fb
        .iter()
        .map(|f| {
            ["proceeding", "downloaded", "closed"]
                .into_iter()
                .find(|e| f.contains(&format!(r#""execution":"{e}""#)))
                .unwrap_or("?")
        })
        .collect();
    assert_eq!(
        execs,
        [
            "proceeding", // downloading
            "proceeding", // 25 %
            "proceeding",
            "proceeding",
            "proceeding", // 100 %
            "downloaded",
            "proceeding", // rebooting into the trial
            "closed"
        ],
        "{fb:?}"
    );
    assert!(fb.last().unwrap().contains(r#""finished":"success""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_action_drops_the_staged_version_and_is_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static CANCEL: AtomicBool = AtomicBool::new(false);
    let t = tmp("cancel-action");
    let (url, seen) = fake_server(|path, port| {
        scripted(path, port, "unavailable", CANCEL.load(Ordering::SeqCst))
    });
    let b = scripted_box(&t.0, &url).await;
    cycle_ok(&b, "Staged").await;
    CANCEL.store(true, Ordering::SeqCst);
    cycle_ok(&b, "Cancelled").await;
    let st = status(&b).await;
    assert_eq!(version(&st, "2.0").unwrap()["stored"], "failed", "{st}");
    assert!(st["boot"]["trial"].is_null());
    assert_eq!(booted_version(&st), "1.0");
    let fb = posted(
        &seen,
        "/DEFAULT/controller/v1/box-h/cancelAction/9/feedback",
    );
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(
        fb[0].contains(r#""id":"9""#)
            && fb[0].contains(r#""execution":"closed""#)
            && fb[0].contains(r#""finished":"success""#),
        "{}",
        fb[0]
    );
    assert!(!b.state.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_download_stops_it_and_stages_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static CANCEL: AtomicBool = AtomicBool::new(false);
    let t = tmp("cancel-download");
    // The download takes about 10 s; the client asks every 5 s whether it still stands.
    let (url, seen) = slow_server(
        |path, port| scripted(path, port, "available", CANCEL.load(Ordering::SeqCst)),
        Duration::from_millis(600),
    );
    let b = scripted_box(&t.0, &url).await;
    let before = status(&b).await["versions"].clone();
    let (r, ()) = tokio::join!(cycle(&b), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        CANCEL.store(true, Ordering::SeqCst);
    });
    assert!(
        r.ok && r.stdout.starts_with("Cancelled"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("nothing had been staged"), "{}", r.stdout);
    assert_eq!(status(&b).await["versions"], before, "something was staged");
    assert!(!b.state.exists());
    let fb = posted(
        &seen,
        "/DEFAULT/controller/v1/box-h/cancelAction/9/feedback",
    );
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(fb[0].contains(r#""execution":"closed""#) && fb[0].contains(r#""finished":"success""#));
    // Nothing about the deployment reached 100 %.
    let dep = posted(
        &seen,
        "/DEFAULT/controller/v1/box-h/deploymentBase/7/feedback",
    );
    assert!(
        !dep.iter().any(|f| f.contains("Downloaded 100%")),
        "{dep:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_loses_the_state_file_or_the_reboot_is_picked_up_again() {
    let t = tmp("crash");
    let (url, seen) = fake_server(|path, port| scripted(path, port, "available", false));
    let b = scripted_box(&t.0, &url).await;
    cycle_ok(&b, "Staged").await;
    // Staged, then the process died before the state file was written.
    std::fs::remove_file(&b.state).unwrap();
    // The reboot command does nothing this time: as if the process died right before it.
    let config = std::fs::read_to_string(&b.config).unwrap();
    let reboot = config
        .lines()
        .find(|l| l.starts_with("reboot_command"))
        .unwrap();
    std::fs::write(
        &b.config,
        config.replace(reboot, "reboot_command: ['true']"),
    )
    .unwrap();
    // The staged version is taken up again, not downloaded twice or reported failed.
    cycle_ok(&b, "TrialStarted").await;
    let st = status(&b).await;
    assert_eq!(booted_version(&st), "1.0", "{st}");
    assert_eq!(version(&st, "2.0").unwrap()["is_trial"], true, "{st}");
    std::fs::write(&b.config, &config).unwrap();
    // Next cycle: the trial is set but was never booted, so it reboots into it.
    cycle_ok(&b, "TrialStarted").await;
    assert_eq!(booted_version(&status(&b).await), "2.0");
    health(&b, true).await;
    cycle_ok(&b, "Reported").await;
    let downloads = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/download "))
        .count();
    assert_eq!(downloads, 1, "downloaded again");
    let fb = posted(
        &seen,
        "/DEFAULT/controller/v1/box-h/deploymentBase/7/feedback",
    );
    assert!(
        !fb.iter().any(|f| f.contains(r#""finished":"failure""#)),
        "{fb:?}"
    );
    assert!(fb.last().unwrap().contains(r#""finished":"success""#));
    // A deployment of what already runs is closed as a success without a download.
    cycle_ok(&b, "Reported").await;
    assert!(
        posted(
            &seen,
            "/DEFAULT/controller/v1/box-h/deploymentBase/7/feedback"
        )
        .last()
        .unwrap()
        .contains("already runs here")
    );
}
