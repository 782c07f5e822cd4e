//! Bundles end to end: round trips for each payload kind, interop with the real
//! `minisign` tool both ways, and one distinct named error for each bad input.

#![allow(clippy::disallowed_methods)] // runs the `cairn` binary under test and `minisign`

use std::io::{BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_bundle::{Acceptance, BundleError, BundleReader, public_key, tarsafe};

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> Tmp {
    let d = std::env::temp_dir().join(format!("cairn-bundle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

/// A minisign key pair made by the real tool (unencrypted: -W).
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (p, s) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    let st = Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&p)
        .arg("-s")
        .arg(&s)
        .output()
        .expect("minisign is needed: `cargo xtask host-deps`");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    (p, s)
}

const TEMPLATE: &str = "format: 1\nproduct: demo-appliance\nversion: '2.0'\nhardware: [demo-x86]\nmin_from: '1.0'\nmigrations: [/usr/lib/app/migrate-2]\nhealth_checks:\n  required: [/usr/lib/app/check]\n";

fn cairn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rootfs(dir: &Path) -> PathBuf {
    let r = dir.join("rootfs");
    std::fs::create_dir_all(r.join("usr/lib/app")).unwrap();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::write(r.join("usr/lib/app/version"), "2.0\n").unwrap();
    std::fs::write(r.join("usr/lib/app/migrate-2"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        r.join("usr/lib/app/migrate-2"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("../lib/app/version", r.join("usr/lib/version-link")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/app/version", r.join("etc/version")).unwrap();
    r
}

fn acceptance(pubkey: &Path) -> Acceptance {
    Acceptance {
        keys: vec![public_key(&std::fs::read_to_string(pubkey).unwrap()).unwrap()],
        product: "demo-appliance".into(),
        hardware: "demo-x86".into(),
        running: Some("1.0".into()),
        allow_downgrade: false,
        max_payload: 1 << 30,
    }
}

fn reader(path: &Path) -> Result<BundleReader<BufReader<std::fs::File>>, BundleError> {
    BundleReader::open(BufReader::new(std::fs::File::open(path).unwrap()))
}

/// Opens, verifies and reads every payload: the first error wins.
fn check(path: &Path, acc: &Acceptance) -> Result<(), BundleError> {
    let mut r = reader(path)?;
    r.verify(acc)?;
    r.check_payloads().map(drop)
}

fn build(dir: &Path, key: &Path, extra: &[&str]) -> PathBuf {
    let t = dir.join("template.yaml");
    std::fs::write(&t, TEMPLATE).unwrap();
    let out = dir.join("b.cairn");
    let mut args = vec![
        "bundle",
        "build",
        "--template",
        t.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(cairn(&args));
    out
}

#[test]
fn rootfs_and_config_round_trip() {
    let d = tmp("rootfs");
    let (p, s) = keypair(&d.0, "vendor");
    let root = rootfs(&d.0);
    let cfg = d.0.join("cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("app.conf"), "schema=2\n").unwrap();
    let b = build(
        &d.0,
        &s,
        &[
            "--root",
            root.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let mut r = reader(&b).unwrap();
    r.verify(&acceptance(&p)).unwrap();
    assert_eq!(r.manifest.version, "2.0");
    assert_eq!(r.manifest.migrations, ["/usr/lib/app/migrate-2"]);
    let dest = d.0.join("out-root");
    std::fs::create_dir_all(&dest).unwrap();
    let (entry, pr) = r.next_payload().unwrap().unwrap();
    assert_eq!(entry.name, "root");
    tarsafe::extract_tar_zst(pr, &dest, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(dest.join("usr/lib/app/version")).unwrap(),
        "2.0\n"
    );
    let mode = std::fs::metadata(dest.join("usr/lib/app/migrate-2"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o750, "modes kept");
    assert_eq!(
        std::fs::read_link(dest.join("etc/version")).unwrap(),
        Path::new("/usr/lib/app/version")
    );
    let (entry, pr) = r.next_payload().unwrap().unwrap();
    assert_eq!(entry.name, "config");
    let cdest = d.0.join("out-cfg");
    std::fs::create_dir_all(&cdest).unwrap();
    tarsafe::extract_tar_zst(pr, &cdest, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(cdest.join("app.conf")).unwrap(),
        "schema=2\n"
    );
    assert!(r.next_payload().unwrap().is_none());
    let out = ok(cairn(&[
        "bundle",
        "verify",
        b.to_str().unwrap(),
        "--pubkey",
        p.to_str().unwrap(),
        "--product",
        "demo-appliance",
        "--hardware",
        "demo-x86",
        "--running",
        "1.0",
    ]));
    assert!(out.contains("signature good, 2 payloads verified"), "{out}");
    let info = ok(cairn(&["bundle", "inspect", b.to_str().unwrap()]));
    assert!(
        info.contains("version:  2.0") && info.contains("signed:   yes"),
        "{info}"
    );
}

#[test]
fn zfs_stream_payloads_round_trip() {
    let d = tmp("zfs");
    let (p, s) = keypair(&d.0, "vendor");
    let full: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(d.0.join("full.zstream"), &full).unwrap();
    let b = build(
        &d.0,
        &s,
        &["--zfs-full", d.0.join("full.zstream").to_str().unwrap()],
    );
    let mut r = reader(&b).unwrap();
    r.verify(&acceptance(&p)).unwrap();
    let (e, mut pr) = r.next_payload().unwrap().unwrap();
    assert_eq!(e.kind, cairn_bundle::PayloadKind::ZfsFull);
    let mut got = Vec::new();
    pr.read_to_end(&mut got).unwrap();
    assert_eq!(got, full);
    let inc = b"incremental stream bytes".repeat(100);
    std::fs::write(d.0.join("inc.zstream"), &inc).unwrap();
    let spec = format!("1.0={}", d.0.join("inc.zstream").display());
    let b = build(&d.0, &s, &["--zfs-incremental", &spec]);
    let mut r = reader(&b).unwrap();
    r.verify(&acceptance(&p)).unwrap();
    let (e, mut pr) = r.next_payload().unwrap().unwrap();
    assert_eq!(
        (e.kind, e.base.as_deref()),
        (cairn_bundle::PayloadKind::ZfsIncremental, Some("1.0"))
    );
    let mut got = Vec::new();
    pr.read_to_end(&mut got).unwrap();
    assert_eq!(got, inc);
}

#[test]
fn signatures_interoperate_with_the_minisign_tool() {
    let d = tmp("interop");
    let (p, s) = keypair(&d.0, "vendor");
    let root = rootfs(&d.0);
    // Ours, checked by minisign -V.
    let b = build(&d.0, &s, &["--root", root.to_str().unwrap()]);
    let manifest = d.0.join("manifest.yaml");
    std::fs::write(
        &manifest,
        ok(cairn(&["bundle", "manifest", b.to_str().unwrap()])),
    )
    .unwrap();
    let r = reader(&b).unwrap();
    std::fs::write(d.0.join("ours.minisig"), r.signature.clone().unwrap()).unwrap();
    let v = Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(&p)
        .arg("-m")
        .arg(&manifest)
        .arg("-x")
        .arg(d.0.join("ours.minisig"))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "minisign -V refused our signature: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    // minisign's, embedded and checked by us.
    let unsigned_out = d.0.join("unsigned.cairn");
    let t = d.0.join("template.yaml");
    ok(cairn(&[
        "bundle",
        "build",
        "--template",
        t.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "-o",
        unsigned_out.to_str().unwrap(),
    ]));
    let m2 = d.0.join("m2.yaml");
    std::fs::write(
        &m2,
        ok(cairn(&[
            "bundle",
            "manifest",
            unsigned_out.to_str().unwrap(),
        ])),
    )
    .unwrap();
    let st = Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(&s)
        .arg("-m")
        .arg(&m2)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let signed = d.0.join("signed-by-minisign.cairn");
    let sig = format!("{}.minisig", m2.display());
    ok(cairn(&[
        "bundle",
        "sign",
        unsigned_out.to_str().unwrap(),
        "--signature",
        &sig,
        "-o",
        signed.to_str().unwrap(),
    ]));
    check(&signed, &acceptance(&p)).expect("a bundle signed by minisign verifies");
}

fn expect(r: Result<(), BundleError>, want: fn(&BundleError) -> bool, what: &str) {
    match r {
        Ok(()) => panic!("{what}: accepted"),
        Err(e) => {
            assert!(want(&e), "{what}: wrong error {e:?}");
            assert!(!e.to_string().is_empty());
        }
    }
}

/// Writes a bundle by hand (for inputs `cairn bundle build` would never make).
fn raw_bundle(path: &Path, manifest: &str, sig_key: Option<&Path>, payloads: &[(&str, &[u8])]) {
    let sig = sig_key.map(|k| {
        cairn_bundle::sign(
            manifest.as_bytes(),
            &std::fs::read_to_string(k).unwrap(),
            None,
        )
        .unwrap()
    });
    let mut files = Vec::new();
    for (name, bytes) in payloads {
        let p = path.with_extension(format!("payload-{name}"));
        std::fs::write(&p, bytes).unwrap();
        files.push((name.to_string(), p));
    }
    let mut out = std::fs::File::create(path).unwrap();
    cairn_bundle::write_bundle(&mut out, manifest.as_bytes(), sig.as_deref(), &files).unwrap();
}

fn manifest_for(payload: &[u8], kind: &str, allow_devices: bool) -> String {
    use sha2::Digest;
    format!(
        "format: 1\nproduct: demo-appliance\nversion: '2.0'\nhardware: [demo-x86]\nallow_devices: {allow_devices}\npayloads:\n  - name: root\n    kind: {kind}\n    size: {}\n    sha256: {:x}\n",
        payload.len(),
        sha2::Sha256::digest(payload)
    )
}

/// A tar with one entry whose raw name (and type, link) we choose.
fn evil_tar(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    if kind.is_character_special() || kind.is_block_special() {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_size(if kind == tar::EntryType::Regular {
        4
    } else {
        0
    });
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    if kind == tar::EntryType::Regular {
        let mut block = [0u8; 512];
        block[..4].copy_from_slice(b"evil");
        v.extend_from_slice(&block);
    }
    v.extend_from_slice(&[0u8; 1024]);
    let mut z = zstd::Encoder::new(Vec::new(), 3).unwrap();
    z.write_all(&v).unwrap();
    z.finish().unwrap()
}

/// Verifies and unpacks a rootfs bundle into a fresh directory, as staging would.
fn install_tar(path: &Path, acc: &Acceptance, dir: &Path) -> Result<(), BundleError> {
    let mut r = reader(path)?;
    r.verify(acc)?;
    let allow = r.manifest.allow_devices;
    let (_, pr) = r.next_payload()?.expect("one payload");
    let dest = dir.join("unpack");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest).unwrap();
    tarsafe::extract_tar_zst(pr, &dest, allow).map(drop)
}

#[test]
fn each_bad_input_has_its_own_named_error() {
    let d = tmp("bad");
    let (p, s) = keypair(&d.0, "vendor");
    let (_p2, s2) = keypair(&d.0, "stranger");
    let acc = acceptance(&p);
    let root = rootfs(&d.0);
    let good = build(&d.0, &s, &["--root", root.to_str().unwrap()]);
    check(&good, &acc).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let at = |name: &str| d.0.join(name);

    // Corrupt payload: flip the last payload byte before "end\n".
    let mut corrupt = bytes.clone();
    let i = corrupt.len() - 5;
    corrupt[i] ^= 0xff;
    std::fs::write(at("corrupt"), &corrupt).unwrap();
    expect(
        check(&at("corrupt"), &acc),
        |e| matches!(e, BundleError::DigestMismatch { .. }),
        "corrupt payload",
    );
    // Truncated file.
    std::fs::write(at("truncated"), &bytes[..bytes.len() / 2]).unwrap();
    expect(
        check(&at("truncated"), &acc),
        |e| matches!(e, BundleError::Truncated(_)),
        "truncated",
    );
    // Unsigned.
    let m = String::from_utf8(reader(&good).unwrap().manifest_bytes).unwrap();
    let payload = {
        let mut r = reader(&good).unwrap();
        let (_, mut pr) = r.next_payload().unwrap().unwrap();
        let mut v = Vec::new();
        pr.read_to_end(&mut v).unwrap();
        v
    };
    raw_bundle(&at("unsigned"), &m, None, &[("root", &payload)]);
    expect(
        check(&at("unsigned"), &acc),
        |e| matches!(e, BundleError::Unsigned),
        "unsigned",
    );
    // Signed by a key this appliance does not know.
    raw_bundle(&at("stranger"), &m, Some(&s2), &[("root", &payload)]);
    expect(
        check(&at("stranger"), &acc),
        |e| matches!(e, BundleError::UnknownKey(_)),
        "unknown key",
    );
    // Manifest altered after signing.
    let mut tampered = bytes.clone();
    let pos = tampered.windows(3).position(|w| w == b"2.0").unwrap();
    tampered[pos] = b'9';
    std::fs::write(at("tampered"), &tampered).unwrap();
    expect(
        check(&at("tampered"), &acc),
        |e| matches!(e, BundleError::BadSignature),
        "tampered manifest",
    );
    // Wrong product, wrong hardware, downgrade, too old to upgrade from.
    expect(
        check(
            &good,
            &Acceptance {
                product: "other".into(),
                ..acc.clone()
            },
        ),
        |e| matches!(e, BundleError::WrongProduct { .. }),
        "wrong product",
    );
    expect(
        check(
            &good,
            &Acceptance {
                hardware: "arm-box".into(),
                ..acc.clone()
            },
        ),
        |e| matches!(e, BundleError::WrongHardware { .. }),
        "wrong hardware",
    );
    expect(
        check(
            &good,
            &Acceptance {
                running: Some("3.0".into()),
                ..acc.clone()
            },
        ),
        |e| matches!(e, BundleError::Downgrade { .. }),
        "downgrade",
    );
    check(
        &good,
        &Acceptance {
            running: Some("3.0".into()),
            allow_downgrade: true,
            ..acc.clone()
        },
    )
    .expect("forced downgrade");
    expect(
        check(
            &good,
            &Acceptance {
                running: Some("0.9".into()),
                ..acc.clone()
            },
        ),
        |e| matches!(e, BundleError::TooOld { .. }),
        "below min_from",
    );
    expect(
        check(
            &good,
            &Acceptance {
                max_payload: 10,
                ..acc.clone()
            },
        ),
        |e| matches!(e, BundleError::TooLarge { .. }),
        "size limit",
    );
    // Tar payloads that try to escape or plant devices.
    for (name, tar, want, what) in [
        (
            "traversal",
            evil_tar("../../etc/passwd", tar::EntryType::Regular, None),
            (|e: &BundleError| matches!(e, BundleError::PathTraversal(_)))
                as fn(&BundleError) -> bool,
            "traversal",
        ),
        (
            "absolute",
            evil_tar("/etc/passwd", tar::EntryType::Regular, None),
            |e| matches!(e, BundleError::AbsolutePath(_)),
            "absolute path",
        ),
        (
            "device",
            evil_tar("dev/sda", tar::EntryType::Block, None),
            |e| matches!(e, BundleError::DeviceNode(_)),
            "device node",
        ),
        (
            "link",
            evil_tar(
                "etc/x",
                tar::EntryType::Symlink,
                Some("../../../etc/shadow"),
            ),
            |e| matches!(e, BundleError::LinkOutside { .. }),
            "link outside",
        ),
    ] {
        raw_bundle(
            &at(name),
            &manifest_for(&tar, "rootfs-tar-zst", false),
            Some(&s),
            &[("root", &tar)],
        );
        expect(install_tar(&at(name), &acc, &d.0), want, what);
        assert!(
            !d.0.join("unpack/etc/passwd").exists() && !d.0.join("etc/passwd").exists(),
            "{what}: nothing written outside"
        );
    }
    // A device node is fine when the manifest allows it (and we are root).
    let dev = evil_tar("dev/null2", tar::EntryType::Char, None);
    raw_bundle(
        &at("devok"),
        &manifest_for(&dev, "rootfs-tar-zst", true),
        Some(&s),
        &[("root", &dev)],
    );
    install_tar(&at("devok"), &acc, &d.0).expect("allowed device node");
    // Oversized manifest, malformed YAML, duplicate keys.
    let big = format!("{}# {}\n", m, "x".repeat(70 * 1024));
    raw_bundle(&at("big"), &big, Some(&s), &[]);
    expect(
        check(&at("big"), &acc),
        |e| matches!(e, BundleError::ManifestTooLarge(_)),
        "oversized manifest",
    );
    raw_bundle(
        &at("yaml"),
        "format: 1\nproduct: [unclosed\n",
        Some(&s),
        &[],
    );
    expect(
        check(&at("yaml"), &acc),
        |e| matches!(e, BundleError::BadManifest(_)),
        "malformed YAML",
    );
    let dup = m.replacen(
        "product: demo-appliance",
        "product: demo-appliance\nproduct: other",
        1,
    );
    raw_bundle(&at("dup"), &dup, Some(&s), &[("root", &payload)]);
    expect(
        check(&at("dup"), &acc),
        |e| matches!(e, BundleError::DuplicateKey(_)),
        "duplicate keys",
    );
    // Not a bundle at all.
    std::fs::write(at("junk"), b"GIF89a....").unwrap();
    expect(
        check(&at("junk"), &acc),
        |e| matches!(e, BundleError::NotABundle),
        "not a bundle",
    );
}

mod install {
    use super::*;
    use cairn_bundle::install::{Appliance, InstallError, install};
    use cairn_engine::BootKind;
    use cairn_engine::suite::{ModelWorld, World};
    use cairn_zfs::{CreateOptions, SendRequest};

    /// A model appliance running 1.0.
    fn appliance() -> ModelWorld {
        let w = ModelWorld::new();
        w.engine().init("t").unwrap();
        let z = w.h().zfs();
        let vendor = w.h().pool().root().child("vendor").unwrap();
        z.create(&vendor, &CreateOptions::default()).unwrap();
        let snap = vendor.snapshot("r1").unwrap();
        z.snapshot(std::slice::from_ref(&snap), &[]).unwrap();
        let mut full = Vec::new();
        z.send(&SendRequest::full(snap), &mut full).unwrap();
        let v1 = w
            .engine()
            .install_first("1.0", &mut full.as_slice(), "t")
            .unwrap();
        w.boot_into(&v1, BootKind::Normal);
        w
    }

    fn names(w: &ModelWorld) -> Vec<String> {
        w.engine()
            .versions()
            .unwrap()
            .iter()
            .map(|v| v.id.to_string())
            .collect()
    }

    #[test]
    fn a_signed_bundle_installs_with_its_defaults() {
        let d = tmp("install");
        let (p, s) = keypair(&d.0, "vendor");
        let root = rootfs(&d.0);
        let cfg = d.0.join("cfg");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join("app.conf"), "schema=2\n").unwrap();
        let b = build(
            &d.0,
            &s,
            &[
                "--root",
                root.to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
            ],
        );
        let w = appliance();
        let app = Appliance {
            keys: acceptance(&p).keys,
            product: "demo-appliance".into(),
            hardware: "demo-x86".into(),
        };
        let id = install(
            w.engine(),
            std::fs::File::open(&b).unwrap(),
            &app,
            false,
            "t",
        )
        .unwrap();
        assert_eq!(id.as_str(), "2.0");
        let v = w.engine().version(&id).unwrap();
        assert!(v.bundle.unwrap().starts_with("sha256:"));
        let root_ds = w.engine().layout().root(&id);
        assert_eq!(
            w.h()
                .read_file(&root_ds.into(), "/usr/lib/app/version")
                .as_deref(),
            Some(&b"2.0\n"[..])
        );
        let def = w.engine().layout().defaults(&id);
        assert_eq!(
            w.h().read_file(&def.into(), "/app.conf").as_deref(),
            Some(&b"schema=2\n"[..])
        );
    }

    #[test]
    fn a_bad_bundle_changes_nothing() {
        let d = tmp("install-bad");
        let (p, s) = keypair(&d.0, "vendor");
        let root = rootfs(&d.0);
        let b = build(&d.0, &s, &["--root", root.to_str().unwrap()]);
        let w = appliance();
        let app = Appliance {
            keys: acceptance(&p).keys,
            product: "demo-appliance".into(),
            hardware: "demo-x86".into(),
        };
        let before = names(&w);
        // Corrupt payload in a file: refused by the first pass.
        let mut bytes = std::fs::read(&b).unwrap();
        let i = bytes.len() - 5;
        bytes[i] ^= 0xff;
        std::fs::write(d.0.join("corrupt"), &bytes).unwrap();
        let r = install(
            w.engine(),
            std::fs::File::open(d.0.join("corrupt")).unwrap(),
            &app,
            false,
            "t",
        );
        assert!(
            matches!(
                r,
                Err(InstallError::Bundle(BundleError::DigestMismatch { .. }))
            ),
            "{r:?}"
        );
        assert_eq!(names(&w), before);
        // The same through a pipe: caught while streaming, and the staging is undone.
        let (rd, mut wr) = std::io::pipe().unwrap();
        let t = std::thread::spawn(move || {
            let _ = wr.write_all(&bytes);
        });
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(rd));
        let r = install(w.engine(), file, &app, false, "t");
        t.join().unwrap();
        assert!(r.is_err(), "corrupt stream accepted");
        assert_eq!(names(&w), before, "nothing left behind");
        // Wrong product.
        let other = Appliance {
            product: "other".into(),
            ..app.clone()
        };
        let r = install(
            w.engine(),
            std::fs::File::open(&b).unwrap(),
            &other,
            false,
            "t",
        );
        assert!(
            matches!(
                r,
                Err(InstallError::Bundle(BundleError::WrongProduct { .. }))
            ),
            "{r:?}"
        );
        assert_eq!(names(&w), before);
    }

    #[test]
    fn vendor_inspects_a_support_archive() {
        let d = tmp("support");
        let (p, s) = keypair(&d.0, "appliance");
        let w = appliance();
        let mut out = Vec::new();
        let req = cairn_support::ExportRequest {
            versions: vec![cairn_engine::VersionId::new("1.0").unwrap()],
            config: true,
            data: false,
        };
        cairn_support::export(
            w.engine(),
            &req,
            "box-7",
            &std::fs::read_to_string(&s).unwrap(),
            &mut out,
            "t",
        )
        .unwrap();
        let a = d.0.join("box.support");
        std::fs::write(&a, &out).unwrap();
        let text = ok(cairn(&[
            "support",
            "inspect",
            a.to_str().unwrap(),
            "--pubkey",
            p.to_str().unwrap(),
        ]));
        assert!(
            text.contains("appliance: box-7") && text.contains("verified"),
            "{text}"
        );
        let last = out.len() - 10;
        out[last] ^= 1;
        std::fs::write(&a, &out).unwrap();
        let bad = cairn(&[
            "support",
            "inspect",
            a.to_str().unwrap(),
            "--pubkey",
            p.to_str().unwrap(),
        ]);
        assert!(!bad.status.success(), "a tampered archive is refused");
    }

    #[test]
    fn provisioning_builds_the_factory_baseline_from_a_bundle() {
        let d = tmp("provision");
        let (p, s) = keypair(&d.0, "vendor");
        let root = rootfs(&d.0);
        let cfg = d.0.join("cfg");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join("app.conf"), "schema=1\n").unwrap();
        let b = build(
            &d.0,
            &s,
            &[
                "--root",
                root.to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
            ],
        );
        let w = ModelWorld::new();
        w.engine().init("t").unwrap();
        let app = Appliance {
            keys: acceptance(&p).keys,
            product: "demo-appliance".into(),
            hardware: "demo-x86".into(),
        };
        let id = cairn_bundle::install::provision(
            w.engine(),
            std::fs::File::open(&b).unwrap(),
            &app,
            "t",
        )
        .unwrap();
        assert_eq!(id.as_str(), "2.0");
        let states: Vec<_> = w
            .engine()
            .versions()
            .unwrap()
            .iter()
            .map(|v| (v.id.to_string(), v.state))
            .collect();
        assert!(
            states.contains(&("factory".into(), "factory")),
            "{states:?}"
        );
        let l = w.engine().layout().clone();
        assert_eq!(
            w.h()
                .read_file(&l.config(&id).into(), "/app.conf")
                .as_deref(),
            Some(&b"schema=1\n"[..]),
            "factory config from the bundle"
        );
        assert!(
            w.engine().factory_snapshots().unwrap().is_some(),
            "held @factory snapshots"
        );
    }
}
