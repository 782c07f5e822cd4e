//! The GRUB side against real GRUB tools: snapshot tests of the generated menu, every
//! generated file through `grub-script-check`, the environment block read back by
//! `grub-editenv`, and the selection logic for every state and attempt count.

use std::path::{Path, PathBuf};

use cairn_engine::{Boot, BootKind, BootState, VersionId};
use cairn_grub::menu::{self, MAX_ATTEMPTS};
use cairn_grub::{FactoryEntry, GrubBoot, MenuModel, MenuVersion, script_check, write_menu};
use cairn_zfs::cmd::{Cmd, Runner};

fn tool(name: &str) -> PathBuf {
    Runner::which(name)
        .unwrap_or_else(|| panic!("{name} is needed: `cargo xtask host-deps` installs grub-common"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cairn-grub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn version(id: &str, created: u64, state: &str) -> MenuVersion {
    MenuVersion {
        id: id.into(),
        version: id.into(),
        created,
        state: state.into(),
        kernel: "/vmlinuz".into(),
        initrd: "/initrd.img".into(),
    }
}

fn model() -> MenuModel {
    MenuModel {
        product: "Demo Appliance".into(),
        pool: "rpool".into(),
        root_container: "ROOT".into(),
        env_label: "CAIRNBOOT".into(),
        env_path: "/grubenv".into(),
        baked_default: "2.0".into(),
        versions: vec![
            version("3.0", 1_795_500_000, "trial"),
            version("2.0", 1_795_400_000, "active"),
            version("1.0", 1_795_300_000, "last-known-good"),
        ],
        factory: Some(FactoryEntry {
            dataset: "ROOT/factory".into(),
            snapshot: "factory".into(),
            version: "1.0".into(),
            kernel: "/vmlinuz".into(),
            initrd: "/initrd.img".into(),
        }),
        cmdline: "console=ttyS0".into(),
    }
}

fn check_snapshot(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var("UPDATE_SNAPSHOTS").is_ok() {
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", path.display()));
    assert_eq!(
        text, want,
        "{name} changed; review and rerun with UPDATE_SNAPSHOTS=1"
    );
}

#[test]
fn menu_snapshots() {
    let m = model();
    check_snapshot("cairn.cfg", &menu::render_main(&m));
    check_snapshot("cairn-recovery.cfg", &menu::render_recovery(&m));
}

#[test]
fn every_generated_file_passes_grub_script_check() {
    tool("grub-script-check");
    let dir = tmpdir("check");
    let mut odd = model();
    odd.product = "Vendor's \"Box\" $HOME `x` ; {menu}".into();
    odd.versions[0].version = "3.0 'beta' \\ ;".into();
    let mut empty = model();
    empty.versions.clear();
    empty.factory = None;
    empty.cmdline.clear();
    let mut many = model();
    many.versions = (0..500)
        .map(|i| version(&format!("v{i}"), 1_700_000_000 + i, "staged"))
        .collect();
    for (i, m) in [model(), odd, empty, many].iter().enumerate() {
        for (name, text) in [
            ("main", menu::render_main(m)),
            ("recovery", menu::render_recovery(m)),
        ] {
            let p = dir.join(format!("{i}-{name}.cfg"));
            std::fs::write(&p, &text).unwrap();
            assert!(script_check(&p).unwrap_or_else(|e| panic!("model {i} {name}: {e}\n{text}")));
        }
    }
}

#[test]
fn the_loader_config_passes_grub_script_check_and_sources_the_menu() {
    tool("grub-script-check");
    let dir = tmpdir("loader");
    for (i, serial) in [Some((1, 9600)), None].into_iter().enumerate() {
        let text = menu::render_loader(serial);
        let p = dir.join(format!("loader-{i}.cfg"));
        std::fs::write(&p, &text).unwrap();
        assert!(script_check(&p).unwrap(), "{text}");
        assert!(text.contains("source \"$prefix/cairn.cfg\""), "{text}");
        assert_eq!(
            text.contains("serial --unit=1 --speed=9600"),
            serial.is_some()
        );
    }
}

#[test]
fn grub_script_check_catches_a_broken_file() {
    tool("grub-script-check");
    let dir = tmpdir("broken");
    let p = dir.join("bad.cfg");
    std::fs::write(&p, "menuentry 'x' {\n  linux /vmlinuz\n").unwrap();
    assert!(
        script_check(&p).is_err(),
        "an unclosed menuentry must be refused"
    );
}

#[test]
fn recovery_menu_is_bounded() {
    let mut m = model();
    m.versions = (0..5000)
        .map(|i| version(&format!("v{i}"), 1_700_000_000 + i, "staged"))
        .collect();
    let text = menu::render_recovery(&m);
    assert_eq!(text.matches("--id 'cairn-v-").count(), menu::MAX_ENTRIES);
    assert!(text.contains("(4968 older versions not listed)"));
    assert!(text.len() < 32 * 1024, "{} bytes", text.len());
    // The main file only grows by one line per known id.
    let main = menu::render_main(&m);
    assert!(main.len() < 5000 * 60 + 4096);
}

#[test]
fn default_entry_does_not_depend_on_the_recovery_file() {
    let main = menu::render_main(&model());
    let default_entry = main.find("menuentry").unwrap();
    let submenu = main.find("submenu 'Recovery'").unwrap();
    assert!(default_entry < submenu, "default entry first");
    assert!(
        main.contains("configfile \"$prefix/cairn-recovery.cfg\""),
        "recovery is a separate file"
    );
    assert!(main.contains("set default=cairn-default"));
}

#[test]
fn write_menu_is_checked_and_atomic() {
    let dir = tmpdir("write");
    write_menu(&dir, &model()).unwrap();
    let main = std::fs::read_to_string(dir.join("cairn.cfg")).unwrap();
    assert!(main.starts_with("# Generated by cairn"));
    assert!(dir.join("cairn-recovery.cfg").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".new"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left");
}

#[test]
fn grubenv_written_by_cairn_reads_back_with_grub_editenv() {
    let editenv = tool("grub-editenv");
    let dir = tmpdir("env");
    let path = dir.join("grubenv");
    // Start from a block made by GRUB's own tool, with a variable of GRUB's.
    Runner::new()
        .run(&Cmd::new(&editenv).arg(&path).arg("create"))
        .unwrap();
    Runner::new()
        .run(
            &Cmd::new(&editenv)
                .arg(&path)
                .args(["set", "saved_entry=keepme"]),
        )
        .unwrap();
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = ino(&path);
    let boot = GrubBoot::new(&path);
    let id = |s: &str| VersionId::new(s).unwrap();
    let st = BootState {
        default: Some(id("2.0")),
        trial: Some(id("3.0")),
        attempts_left: 3,
        once: None,
    };
    boot.write(&st).unwrap();
    assert_eq!(
        ino(&path),
        before,
        "written in place: GRUB's save_env needs the same blocks"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
    let listed = Runner::new()
        .run(&Cmd::new(&editenv).arg(&path).arg("list"))
        .unwrap();
    for want in [
        "saved_entry=keepme",
        "cairn_default=2.0",
        "cairn_trial=3.0",
        "cairn_left=3",
        "cairn_once=",
    ] {
        assert!(
            listed.lines().any(|l| l == want),
            "{want} missing in:\n{listed}"
        );
    }
    assert_eq!(boot.read().unwrap(), st);
    // What GRUB's save_env does to the counter, done with GRUB's tool, reads back too.
    Runner::new()
        .run(&Cmd::new(&editenv).arg(&path).args(["set", "cairn_left=2"]))
        .unwrap();
    assert_eq!(boot.read().unwrap().attempts_left, 2);
    // A missing block reads as empty; a corrupt one is an error, not a guess.
    let missing = GrubBoot::new(dir.join("none"));
    assert_eq!(missing.read().unwrap(), BootState::default());
    std::fs::write(dir.join("bad"), [0u8; 1024]).unwrap();
    assert!(GrubBoot::new(dir.join("bad")).read().is_err());
    let mut too_many = st.clone();
    too_many.attempts_left = MAX_ATTEMPTS + 1;
    assert!(boot.write(&too_many).is_err());
}

/// The engine's selection rule for every state and attempt count, and the GRUB script
/// implementing each counting step with a literal.
#[test]
fn selection_for_every_state_and_attempt_count() {
    let id = |s: &str| VersionId::new(s).unwrap();
    let baked = id("0.9");
    let main = menu::render_main(&model());
    for n in 1..=MAX_ATTEMPTS {
        let line = format!(
            "if [ \"$cairn_left\" = \"{n}\" ]; then set cairn_nl={}; fi",
            n - 1
        );
        assert!(
            main.contains(&line),
            "GRUB script lacks the step {n} -> {}",
            n - 1
        );
    }
    for default in [None, Some(id("2.0"))] {
        for trial in [None, Some(id("3.0"))] {
            for once in [None, Some(id("1.0"))] {
                for left in 0..=MAX_ATTEMPTS {
                    let st = BootState {
                        default: default.clone(),
                        trial: trial.clone(),
                        attempts_left: left,
                        once: once.clone(),
                    };
                    let d = st.select(&baked);
                    let base = default.clone().unwrap_or(baked.clone());
                    let (want_v, want_k, want_left) = match (&once, &trial) {
                        (Some(o), _) => (o.clone(), BootKind::Once, left),
                        (None, Some(t)) if left > 0 => (t.clone(), BootKind::Trial, left - 1),
                        (None, Some(_)) => (base, BootKind::Fallback, 0),
                        (None, None) => (base, BootKind::Normal, left),
                    };
                    assert_eq!(
                        (d.version.clone(), d.kind, d.next.attempts_left),
                        (want_v, want_k, want_left),
                        "{st:?}"
                    );
                    assert_eq!(d.next.once, None, "once is always consumed: {st:?}");
                    assert_eq!(
                        d.next.default, st.default,
                        "the loader never changes the default"
                    );
                }
            }
        }
    }
}

#[test]
fn grub_d_hook_includes_the_fragment() {
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../grub/09_cairn");
    let out = Runner::new().run(&Cmd::new("/bin/sh").arg(&hook)).unwrap();
    assert!(out.contains("source \"$prefix/cairn.cfg\""), "{out}");
    let dir = tmpdir("hook");
    let p = dir.join("hook-output.cfg");
    std::fs::write(&p, &out).unwrap();
    tool("grub-script-check");
    assert!(script_check(&p).unwrap());
}

#[test]
fn menu_model_from_the_engine_lists_bootable_versions_only() {
    use cairn_engine::suite::{ModelWorld, World};
    use cairn_engine::{Activation, Payload, StageRequest};
    let w = ModelWorld::new();
    let e = w.engine();
    e.init("t").unwrap();
    // A release stream made in the model.
    let zfs = w.h().zfs();
    let vendor = w.h().pool().root().child("vendor").unwrap();
    zfs.create(&vendor, &Default::default()).unwrap();
    let snap = vendor.snapshot("r1").unwrap();
    zfs.snapshot(std::slice::from_ref(&snap), &[]).unwrap();
    let mut full = Vec::new();
    zfs.send(&cairn_zfs::SendRequest::full(snap), &mut full)
        .unwrap();
    let v1 = e.install_first("1.0", &mut full.as_slice(), "t").unwrap();
    w.boot_into(&v1, BootKind::Normal);
    let mut s = full.as_slice();
    let v2 = e
        .stage(
            StageRequest {
                version: "2.0".into(),
                payload: Payload::FullStream(&mut s),
                size_hint: 1,
                migrations: vec![],
                migration_timeout: std::time::Duration::from_secs(1),
                bundle: None,
                allow_downgrade: false,
                defaults: None,
            },
            "t",
        )
        .unwrap();
    e.activate(&v2, Activation::Trial(2), false, "t").unwrap();
    let m = cairn_grub::menu_model(
        "Box",
        e.layout(),
        &e.versions().unwrap(),
        &e.boot().read().unwrap(),
        "CAIRNBOOT",
        "",
    );
    let ids: Vec<_> = m
        .versions
        .iter()
        .map(|v| (v.id.as_str(), v.state.as_str()))
        .collect();
    assert_eq!(ids, [("2.0", "trial"), ("1.0", "active")]);
    assert_eq!(m.baked_default, "1.0");
    assert_eq!(m.root_container, "ROOT");
    e.mark_failed(&v2, "bad", "t").unwrap();
    let m = cairn_grub::menu_model(
        "Box",
        e.layout(),
        &e.versions().unwrap(),
        &e.boot().read().unwrap(),
        "CAIRNBOOT",
        "",
    );
    assert_eq!(m.versions.len(), 1, "failed versions are not offered");
}
