//! cairnctl end to end: the real binary against cairnd's service (simulated appliance) on
//! a private dbus-daemon. Checks what an operator sees, the JSON schema, and exit codes.

#![allow(clippy::disallowed_methods)] // runs the binary under test and setpriv

use std::process::{Command, Output};
use std::sync::Arc;

use cairn_daemon::testbus::{Bus, start_bus};
use cairn_daemon::{AuthPolicy, Shared, serve, serve_sim, sim_release_stream};

/// The service runs on its own runtime thread for the whole test.
fn appliance(name: &str) -> (Bus, Arc<Shared>) {
    appliance_with(name, None)
}

fn appliance_with(
    name: &str,
    bundles: Option<cairn_bundle::install::Appliance>,
) -> (Bus, Arc<Shared>) {
    appliance_full(name, bundles, false)
}

fn appliance_full(
    name: &str,
    bundles: Option<cairn_bundle::install::Appliance>,
    factory: bool,
) -> (Bus, Arc<Shared>) {
    appliance_keyed(name, bundles, factory, None)
}

fn appliance_keyed(
    name: &str,
    bundles: Option<cairn_bundle::install::Appliance>,
    factory: bool,
    support_key: Option<String>,
) -> (Bus, Arc<Shared>) {
    let bus = start_bus(name);
    let (engine, _m, host) = cairn_daemon::sim_engine_with(factory).unwrap();
    let mut shared = Shared::new(
        engine,
        AuthPolicy {
            admin_gid: None,
            extra_uid: None,
            root_is_admin: true,
        },
    );
    if let Some(b) = bundles {
        shared = shared.with_bundles(b);
    }
    if let Some(k) = support_key {
        shared = shared.with_support_key("box-42".into(), k);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let address = bus.address.clone();
    let s2 = shared.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let conn = zbus::connection::Builder::address(address.as_str())
                .build()
                .await
                .unwrap();
            serve_sim(&conn, s2.clone(), host).await.unwrap();
            serve(&conn, s2).await.unwrap();
            tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap();
    (bus, shared)
}

fn cairnctl(bus: &Bus, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .arg("--address")
        .arg(&bus.address)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn operator_session_install_try_rollback() {
    let (bus, _shared) = appliance("session");
    let status = ok(&cairnctl(&bus, &["status"]));
    assert!(status.contains("running:   1.0 (normal boot)"), "{status}");
    assert!(
        status.contains("1.0          1.0          active"),
        "{status}"
    );
    let release = bus.dir.join("r2.stream");
    let model = cairn_zfs::model::ZfsModel::new();
    std::fs::write(&release, sim_release_stream(&model, "2.0").unwrap()).unwrap();
    let out = ok(&cairnctl(
        &bus,
        &[
            "install",
            "--stream",
            "--version",
            "2.0",
            release.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("installed 2.0"), "{out}");
    let out = ok(&cairnctl(&bus, &["activate", "--try", "2.0"]));
    assert_eq!(
        code(&cairnctl(
            &bus,
            &["activate", "--try", "--attempts", "12", "2.0"]
        )),
        2
    );
    assert!(out.contains("tried on the next 2 boots"), "{out}");
    let st: serde_json::Value =
        serde_json::from_str(&ok(&cairnctl(&bus, &["status", "--json"]))).unwrap();
    assert_eq!(st["schema"], "cairn/1");
    assert_eq!(st["data"]["boot"]["trial"], "2.0");
    ok(&cairnctl(&bus, &["activate", "2.0"]));
    let out = ok(&cairnctl(&bus, &["rollback"]));
    assert!(out.contains("1.0 is the default"), "{out}");
    ok(&cairnctl(&bus, &["roll-forward"]));
    ok(&cairnctl(&bus, &["pin", "1.0"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(&cairnctl(&bus, &["list", "--json"]))).unwrap();
    assert_eq!(list["kind"], "versions");
    assert_eq!(list["data"][1]["pinned"], true);
    let show: serde_json::Value =
        serde_json::from_str(&ok(&cairnctl(&bus, &["show", "2.0", "--json"]))).unwrap();
    assert_eq!(show["data"][0]["state"], "active");
    let journal = ok(&cairnctl(&bus, &["journal"]));
    assert!(
        journal.contains("upgrade") && journal.contains("by uid:0"),
        "{journal}"
    );
    // Install from stdin too.
    let model = cairn_zfs::model::ZfsModel::new();
    let stream = sim_release_stream(&model, "3.0").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .arg("--address")
        .arg(&bus.address)
        .args(["install", "--json", "--stream", "--version", "3.0", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    let out = child.wait_with_output().unwrap();
    let job: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(job["data"]["state"], "done");
    assert_eq!(job["data"]["result"], "3.0");
}

#[test]
fn exit_codes_and_messages() {
    let (bus, _shared) = appliance("codes");
    let out = cairnctl(&bus, &["activate", "9.9"]);
    assert_eq!(code(&out), 5);
    assert!(String::from_utf8_lossy(&out.stderr).contains("version '9.9' is not installed"));
    assert_eq!(code(&cairnctl(&bus, &["show", "9.9"])), 5);
    assert_eq!(code(&cairnctl(&bus, &["confirm"])), 1);
    assert_eq!(code(&cairnctl(&bus, &["frobnicate"])), 2);
    let release = bus.dir.join("old.stream");
    let model = cairn_zfs::model::ZfsModel::new();
    std::fs::write(&release, sim_release_stream(&model, "0.5").unwrap()).unwrap();
    let out = cairnctl(
        &bus,
        &[
            "install",
            "--stream",
            "--version",
            "0.5",
            release.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("downgrade"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unreachable = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["--address", "unix:path=/nonexistent/bus", "status"])
        .output()
        .unwrap();
    assert_eq!(code(&unreachable), 6);
    // A real non-root user is refused with exit status 3, and may still read.
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_cairnctl"))
            .arg("--address")
            .arg(&bus.address)
            .args(args)
            .output()
            .unwrap()
    };
    let out = nobody(&["rollback"]);
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cairn admin group"));
    ok(&nobody(&["status"]));
}

#[test]
fn completions_and_man_pages() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(ok(&out).contains("cairnctl"));
    let dir = std::env::temp_dir().join(format!("cairnctl-man-{}", std::process::id()));
    ok(&Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .arg("man")
        .arg(&dir)
        .output()
        .unwrap());
    let page = std::fs::read_to_string(dir.join("cairnctl.1")).unwrap();
    assert!(
        page.contains(".TH cairnctl") && page.contains("Exit status"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(dir.join("cairnctl-install.1").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// Reboots the simulated appliance; returns (version, kind).
fn reboot(bus: &Bus) -> (String, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = zbus::connection::Builder::address(bus.address.as_str())
            .build()
            .await
            .unwrap();
        cairn_daemon::api::SimulatorProxy::new(&c)
            .await
            .unwrap()
            .reboot()
            .await
            .unwrap()
    })
}

fn install(bus: &Bus, version: &str) {
    let release = bus.dir.join(format!("r{version}.stream"));
    let model = cairn_zfs::model::ZfsModel::new();
    std::fs::write(&release, sim_release_stream(&model, version).unwrap()).unwrap();
    ok(&cairnctl(
        bus,
        &[
            "install",
            "--stream",
            "--version",
            version,
            release.to_str().unwrap(),
        ],
    ));
}

fn check(dir: &std::path::Path, kind: &str, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join(kind)).unwrap();
    let p = dir.join(kind).join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn health_check_confirms_a_good_trial_and_fails_a_bad_one() {
    let (bus, _shared) = appliance("health");
    // Not a trial boot: nothing to do.
    assert!(
        ok(&cairnctl(
            &bus,
            &["health-check", "--checks-dir", "/nonexistent"]
        ))
        .contains("not booted as a trial")
    );
    install(&bus, "2.0");
    ok(&cairnctl(&bus, &["activate", "--try", "2.0"]));
    assert_eq!(reboot(&bus), ("2.0".into(), "trial".into()));
    let good = bus.dir.join("good");
    check(&good, "required", "10-app-answers", "exit 0");
    check(
        &good,
        "wanted",
        "50-slow-disk",
        "echo disk is slow >&2; exit 1",
    );
    let out = ok(&cairnctl(
        &bus,
        &["health-check", "--checks-dir", good.to_str().unwrap()],
    ));
    assert!(out.contains("2.0 passed its health checks"), "{out}");
    let st: serde_json::Value =
        serde_json::from_str(&ok(&cairnctl(&bus, &["status", "--json"]))).unwrap();
    assert_eq!(st["data"]["versions"][0]["state"], "active");
    assert!(
        st["data"]["versions"][0]["health"]
            .as_str()
            .unwrap()
            .contains(" passed, ")
    );
    assert_eq!(st["data"]["versions"][1]["state"], "last-known-good");

    install(&bus, "3.0");
    ok(&cairnctl(&bus, &["activate", "--try", "3.0"]));
    assert_eq!(reboot(&bus), ("3.0".into(), "trial".into()));
    let bad = bus.dir.join("bad");
    check(
        &bad,
        "required",
        "10-app-answers",
        "echo app does not answer >&2; exit 3",
    );
    let marker = bus.dir.join("rebooted");
    let out = cairnctl(
        &bus,
        &[
            "health-check",
            "--checks-dir",
            bad.to_str().unwrap(),
            "--reboot-cmd",
            &format!("/usr/bin/touch {}", marker.display()),
        ],
    );
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("app does not answer"));
    assert!(marker.exists(), "the reboot command ran");
    let st: serde_json::Value =
        serde_json::from_str(&ok(&cairnctl(&bus, &["status", "--json"]))).unwrap();
    let v3 = &st["data"]["versions"][0];
    assert_eq!(v3["state"], "failed");
    assert!(
        v3["failed_reason"]
            .as_str()
            .unwrap()
            .contains("app does not answer")
    );
    assert_eq!(
        reboot(&bus),
        ("2.0".into(), "normal".into()),
        "back on the default"
    );
    let status = ok(&cairnctl(&bus, &["status"]));
    assert!(status.contains("failed: health check failed"), "{status}");
}

#[test]
fn a_trial_that_never_confirms_falls_back_and_is_reported() {
    let (bus, _shared) = appliance("fallback");
    install(&bus, "2.0");
    ok(&cairnctl(
        &bus,
        &["activate", "--try", "--attempts", "2", "2.0"],
    ));
    let boots: Vec<_> = (0..3).map(|_| reboot(&bus)).collect();
    assert_eq!(
        boots,
        [
            ("2.0".into(), "trial".into()),
            ("2.0".into(), "trial".into()),
            ("1.0".into(), "fallback".into())
        ]
    );
    let st: serde_json::Value =
        serde_json::from_str(&ok(&cairnctl(&bus, &["status", "--json"]))).unwrap();
    assert_eq!(st["data"]["versions"][0]["state"], "failed");
    assert!(
        st["data"]["versions"][0]["failed_reason"]
            .as_str()
            .unwrap()
            .contains("attempts ran out")
    );
}

#[test]
fn cleanup_dry_run_then_for_real() {
    let (bus, _shared) = appliance("cleanup");
    let out = ok(&cairnctl(&bus, &["cleanup", "--dry-run"]));
    assert!(out.contains("nothing to remove"), "{out}");
    let out = ok(&cairnctl(&bus, &["cleanup"]));
    assert!(out.contains("nothing to remove"), "{out}");
    let plan: serde_json::Value =
        serde_json::from_str(&ok(&cairnctl(&bus, &["cleanup", "--dry-run", "--json"]))).unwrap();
    assert_eq!(plan["kind"], "cleanup");
    assert_eq!(plan["data"]["dry_run"], true);
}

/// A signed rootfs bundle of `version`, built with the library as the vendor tool does.
fn bundle(dir: &std::path::Path, version: &str, key: &std::path::Path) -> std::path::PathBuf {
    use sha2::Digest;
    let root = dir.join(format!("root-{version}"));
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/version"), format!("{version}\n")).unwrap();
    let tar = dir.join(format!("root-{version}.tar.zst"));
    cairn_bundle::tarsafe::pack_dir(&root, std::fs::File::create(&tar).unwrap()).unwrap();
    let bytes = std::fs::read(&tar).unwrap();
    let manifest = format!(
        "format: 1\nproduct: demo-appliance\nversion: '{version}'\nhardware: [demo-x86]\npayloads:\n  - name: root\n    kind: rootfs-tar-zst\n    size: {}\n    sha256: {:x}\n",
        bytes.len(),
        sha2::Sha256::digest(&bytes)
    );
    let sig = cairn_bundle::sign(
        manifest.as_bytes(),
        &std::fs::read_to_string(key).unwrap(),
        None,
    )
    .unwrap();
    let out = dir.join(format!("{version}.cairn"));
    let mut f = std::fs::File::create(&out).unwrap();
    cairn_bundle::write_bundle(
        &mut f,
        manifest.as_bytes(),
        Some(&sig),
        &[("root".into(), tar)],
    )
    .unwrap();
    out
}

#[test]
fn install_signed_bundles() {
    let keys = std::env::temp_dir().join(format!("cairnctl-keys-{}", std::process::id()));
    std::fs::create_dir_all(&keys).unwrap();
    let (p, s) = (keys.join("v.pub"), keys.join("v.key"));
    let st = Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&p)
        .arg("-s")
        .arg(&s)
        .output()
        .unwrap();
    assert!(st.status.success());
    let app = cairn_bundle::install::Appliance {
        keys: vec![cairn_bundle::public_key(&std::fs::read_to_string(&p).unwrap()).unwrap()],
        product: "demo-appliance".into(),
        hardware: "demo-x86".into(),
    };
    let (bus, shared) = appliance_with("bundles", Some(app));
    let b2 = bundle(&bus.dir, "2.0", &s);
    let out = ok(&cairnctl(&bus, &["install", b2.to_str().unwrap()]));
    assert!(out.contains("installed 2.0"), "{out}");
    let v = shared
        .engine
        .versions()
        .unwrap()
        .into_iter()
        .find(|v| v.id.as_str() == "2.0")
        .unwrap();
    assert!(v.bundle.unwrap().starts_with("sha256:"));
    // Tampered: refused, named, nothing installed.
    let mut bytes = std::fs::read(&b2).unwrap();
    let pos = bytes.windows(5).position(|w| w == b"'2.0'").unwrap();
    bytes[pos + 1] = b'3';
    let bad = bus.dir.join("tampered.cairn");
    std::fs::write(&bad, bytes).unwrap();
    let out = cairnctl(&bus, &["install", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(shared.engine.versions().unwrap().len(), 2);
    // Older than what runs: refused unless forced.
    let b05 = bundle(&bus.dir, "0.5", &s);
    let out = cairnctl(&bus, &["install", b05.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("older"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&cairnctl(
        &bus,
        &["install", "--force", b05.to_str().unwrap()],
    ));
    let _ = std::fs::remove_dir_all(keys);
}

#[test]
fn factory_reset_from_the_cli() {
    let (bus, shared) = appliance_full("factory", None, true);
    let st: serde_json::Value =
        serde_json::from_str(&ok(&cairnctl(&bus, &["status", "--json"]))).unwrap();
    let states: Vec<_> = st["data"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .collect();
    assert!(states.contains(&"factory".to_string()), "{states:?}");
    let out = ok(&cairnctl(&bus, &["factory-reset", "system", "--dry-run"]));
    assert!(
        out.contains("would clone") && out.contains("would make the default 1.0-reset-1"),
        "{out}"
    );
    assert_eq!(
        shared.engine.versions().unwrap().len(),
        2,
        "dry run changed nothing"
    );
    let out = cairnctl(&bus, &["factory-reset", "full"]);
    assert_eq!(code(&out), 8, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ERASE-ALL-DATA"));
    let out = ok(&cairnctl(&bus, &["factory-reset", "system"]));
    assert!(out.contains("reboot to start the factory version"), "{out}");
    assert_eq!(
        shared
            .engine
            .boot()
            .read()
            .unwrap()
            .default
            .unwrap()
            .as_str(),
        "1.0-reset-1"
    );
    let out = ok(&cairnctl(
        &bus,
        &[
            "factory-reset",
            "full",
            "--confirm",
            "ERASE-ALL-DATA",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["data"]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["step"] == "erase-data")
    );
}

#[test]
fn support_export_and_grants() {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let sk = kp.sk.to_box(None).unwrap().to_string();
    let pk = minisign_verify::PublicKey::from_base64(&kp.pk.to_base64()).unwrap();
    let (bus, _shared) = appliance_keyed("support", None, true, Some(sk));
    let out = bus.dir.join("box.support");
    let text = ok(&cairnctl(
        &bus,
        &["support", "export", "--config", "-o", out.to_str().unwrap()],
    ));
    assert!(text.contains("parts,") && text.contains("signed"), "{text}");
    let m = cairn_support::inspect(
        std::io::BufReader::new(std::fs::File::open(&out).unwrap()),
        &pk,
    )
    .unwrap();
    assert_eq!(m.appliance, "box-42");
    assert_eq!(m.versions, ["1.0"], "the running version by default");
    assert!(m.config && !m.data);
    assert!(
        m.parts.iter().any(|p| p.kind == "zfs-incremental"),
        "1.0 as an increment on the factory baseline"
    );
    // Grants: added with an expiry sshd enforces, revoked on request.
    let keys = bus.dir.join("authorized_keys");
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeLBLWDK6ZcZ0vZyZ2Jr0hC7P3xF8y2W0Zb6cE4sKqE vendor";
    let out = ok(&cairnctl(
        &bus,
        &[
            "support",
            "grant",
            "--key",
            key,
            "--expires",
            "24h",
            "--file",
            keys.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("granted until"), "{out}");
    let line = std::fs::read_to_string(&keys).unwrap();
    assert!(
        line.contains("restrict,command=") && line.contains("expiry-time="),
        "{line}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    cairn_support::grant::check(&keys, key, now).unwrap();
    assert!(
        cairn_support::grant::check(&keys, key, now + 2 * 86_400).is_err(),
        "expired after 24h"
    );
    ok(&cairnctl(
        &bus,
        &[
            "support",
            "revoke",
            "--key",
            key,
            "--file",
            keys.to_str().unwrap(),
        ],
    ));
    assert!(
        cairn_support::grant::check(&keys, key, now).is_err(),
        "revoked"
    );
    assert_eq!(
        code(&cairnctl(
            &bus,
            &[
                "support",
                "grant",
                "--key",
                key,
                "--expires",
                "soon",
                "--file",
                keys.to_str().unwrap()
            ]
        )),
        2
    );
}

/// `init --adopt` shows cairnd's plan first; a refused plan stops there, a dry run stops
/// after it, and without a terminal nothing is adopted unless --yes says so.
#[test]
fn init_adopt_shows_the_plan_first_and_asks() {
    let dir = std::env::temp_dir().join(format!("cairnctl-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let calls = dir.join("calls");
    let fake = |refuse: bool| {
        let path = dir.join(if refuse { "refuse" } else { "accept" });
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\necho plan\nexit {}\n",
                calls.display(),
                u8::from(refuse)
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let init = |cairnd: &std::path::Path, args: &[&str]| {
        let _ = std::fs::remove_file(&calls);
        let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
            .env("CAIRND", cairnd)
            .arg("init")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let said = std::fs::read_to_string(&calls).unwrap_or_default();
        (code(&out), said)
    };
    let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "init without --adopt is a usage error");
    let (accept, refuse) = (fake(false), fake(true));
    assert_eq!(
        init(&refuse, &["--adopt", "--yes"]),
        (1, "adopt --dry-run\n".into()),
        "a refused plan is not carried out"
    );
    assert_eq!(
        init(&accept, &["--adopt", "--dry-run", "--be", "debian"]),
        (0, "adopt --dry-run --be debian\n".into())
    );
    assert_eq!(
        init(&accept, &["--adopt"]),
        (8, "adopt --dry-run\n".into()),
        "no terminal, no --yes: only the plan"
    );
    assert_eq!(
        init(&accept, &["--adopt", "--yes", "--version", "13.2"]),
        (
            0,
            "adopt --dry-run --version 13.2\nadopt --version 13.2\n".into()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
