//! The support export cases, run on the model and on real ZFS.

use cairn_engine::suite::World;
use cairn_engine::{Activation, BootKind, Payload, StageRequest, VersionId};
use cairn_support::{ExportRequest, SupportError, export, import, inspect};
use cairn_zfs::{CreateOptions, DatasetName, ObjectName, SendRequest};

pub type Case = fn(&mut dyn World);

pub const CASES: &[(&str, Case)] = &[
    ("round_trip_with_origin_chain", round_trip_with_origin_chain),
    ("tampered_archive_refused", tampered_archive_refused),
    ("data_only_when_asked", data_only_when_asked),
];

fn keys() -> (String, minisign_verify::PublicKey) {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let sk = kp.sk.to_box(None).unwrap().to_string();
    let pk = minisign_verify::PublicKey::from_base64(&kp.pk.to_base64()).unwrap();
    (sk, pk)
}

/// Factory 1.0 (running), then 2.0 from a full stream; config and data written.
fn appliance(w: &mut dyn World) {
    let e = w.engine();
    e.init("t").unwrap();
    let z = w.h().zfs();
    let vendor = w.h().pool().root().child("vendor").unwrap();
    z.create(&vendor, &CreateOptions::default()).unwrap();
    w.h().write_file(&vendor, "etc/version", b"1.0\n");
    let r1 = vendor.snapshot("r1").unwrap();
    z.snapshot(std::slice::from_ref(&r1), &[]).unwrap();
    w.h().write_file(&vendor, "etc/version", b"2.0\n");
    let r2 = vendor.snapshot("r2").unwrap();
    z.snapshot(std::slice::from_ref(&r2), &[]).unwrap();
    let (mut f1, mut f2) = (Vec::new(), Vec::new());
    z.send(&SendRequest::full(r1), &mut f1).unwrap();
    z.send(&SendRequest::full(r2), &mut f2).unwrap();
    let mut defaults = |d: &std::path::Path| std::fs::write(d.join("app.conf"), "schema=1\n");
    let v1 = e
        .provision_factory(
            "1.0",
            Payload::FullStream(&mut f1.as_slice()),
            Some(&mut defaults),
            "t",
        )
        .unwrap();
    w.boot_into(&v1, BootKind::Normal);
    let data = w.engine().layout().data[0].0.clone();
    w.h().write_file(&data, "customer.db", b"customer records");
    let mut s = f2.as_slice();
    let v2 = w
        .engine()
        .stage(
            StageRequest {
                version: "2.0".into(),
                payload: Payload::FullStream(&mut s),
                size_hint: 1,
                migrations: vec![],
                migration_timeout: std::time::Duration::from_secs(5),
                bundle: None,
                allow_downgrade: false,
                defaults: None,
            },
            "t",
        )
        .unwrap();
    w.engine()
        .activate(&v2, Activation::Trial(2), false, "t")
        .unwrap();
}

fn ids(v: &[&str]) -> Vec<VersionId> {
    v.iter().map(|s| VersionId::new(s).unwrap()).collect()
}

fn lab(w: &dyn World) -> DatasetName {
    let l = w.h().pool().root().child("lab").unwrap();
    w.h().zfs().create(&l, &CreateOptions::default()).unwrap();
    l
}

fn file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("cairn-support-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn round_trip_with_origin_chain(w: &mut dyn World) {
    appliance(w);
    let (sk, pk) = keys();
    let mut out = Vec::new();
    let req = ExportRequest {
        versions: ids(&["1.0", "2.0"]),
        config: true,
        data: false,
    };
    let m = export(w.engine(), &req, "box-42", &sk, &mut out, "t").unwrap();
    let kinds: Vec<_> = m
        .parts
        .iter()
        .map(|p| (p.name.clone(), p.kind.clone()))
        .collect();
    // The baseline goes in full; 1.0, a clone of it, as a small increment.
    assert!(
        kinds
            .iter()
            .any(|(n, k)| n.contains("ROOT_factory_factory") && k == "zfs-full"),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|(n, k)| n.contains("ROOT_1.0") && k == "zfs-incremental"),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|(n, k)| n.contains("ROOT_2.0") && k == "zfs-full"),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|(n, _)| n == "journal") && kinds.iter().any(|(n, _)| n == "status"));
    assert!(
        m.parts
            .iter()
            .filter(|p| p.kind.starts_with("zfs"))
            .all(|p| p.guid.is_some()),
        "GUIDs recorded"
    );
    let again = inspect(std::io::BufReader::new(out.as_slice()), &pk).unwrap();
    assert_eq!(again, m);
    let path = file("rt", &out);
    let lab = lab(w);
    let got = import(w.h().zfs(), &lab, &path, &pk).unwrap();
    assert!(got.len() >= 5, "{got:?}");
    let pool = w.h().pool().to_string();
    let imported = |src: &str| {
        lab.child(&format!("{pool}/{src}").replace('/', "_"))
            .unwrap()
    };
    let v1 = imported("ROOT/1.0");
    let origin = {
        let p = cairn_zfs::PropName::native("origin");
        w.h()
            .zfs()
            .get(&(&v1).into(), std::slice::from_ref(&p))
            .unwrap()[&p]
            .value
            .clone()
    };
    assert!(
        origin.unwrap().contains("ROOT_factory"),
        "the origin chain is preserved in the lab"
    );
    let read = |ds: &DatasetName, f: &str| {
        let s = got.iter().find(|s| &s.dataset() == ds).unwrap().clone();
        w.h().read_file(&ObjectName::Snapshot(s), f)
    };
    assert_eq!(read(&v1, "etc/version").as_deref(), Some(&b"1.0\n"[..]));
    assert_eq!(
        read(&imported("ROOT/2.0"), "etc/version").as_deref(),
        Some(&b"2.0\n"[..])
    );
    assert_eq!(
        read(&imported("CONFIG/1.0"), "app.conf").as_deref(),
        Some(&b"schema=1\n"[..])
    );
    let journal = w.engine().journal_entries().unwrap();
    assert!(journal.iter().any(|e| e.op == "support-export"));
    let _ = std::fs::remove_file(path);
}

fn tampered_archive_refused(w: &mut dyn World) {
    appliance(w);
    let (sk, pk) = keys();
    let mut out = Vec::new();
    export(
        w.engine(),
        &ExportRequest {
            versions: ids(&["2.0"]),
            config: false,
            data: false,
        },
        "box",
        &sk,
        &mut out,
        "t",
    )
    .unwrap();
    // A byte of a stream changed.
    let mut bad = out.clone();
    let i = bad.windows(6).position(|x| x == b"chunk ").unwrap() + 20;
    bad[i] ^= 0x55;
    assert!(matches!(
        inspect(std::io::BufReader::new(bad.as_slice()), &pk),
        Err(SupportError::DigestMismatch(_))
    ));
    // The manifest changed (the appliance name in the signed trailer).
    let mut bad2 = out.clone();
    let at = bad2.windows(9).rposition(|x| x == b"appliance").unwrap();
    let q = at + bad2[at..].iter().position(|c| *c == b'b').unwrap();
    bad2[q] = b'x';
    assert!(matches!(
        inspect(std::io::BufReader::new(bad2.as_slice()), &pk),
        Err(SupportError::BadSignature)
    ));
    // Another appliance's key.
    let (_, other) = keys();
    assert!(matches!(
        inspect(std::io::BufReader::new(out.as_slice()), &other),
        Err(SupportError::BadSignature)
    ));
    // Import of a tampered archive receives nothing.
    let path = file("bad", &bad);
    let lab = lab(w);
    assert!(import(w.h().zfs(), &lab, &path, &pk).is_err());
    let children = w
        .h()
        .zfs()
        .list(&cairn_zfs::ListRequest {
            roots: vec![lab.clone()],
            recursive: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(children.len(), 1, "nothing received: {children:?}");
    let _ = std::fs::remove_file(path);
}

fn data_only_when_asked(w: &mut dyn World) {
    appliance(w);
    let (sk, pk) = keys();
    let mut out = Vec::new();
    let m = export(
        w.engine(),
        &ExportRequest {
            versions: ids(&["2.0"]),
            config: false,
            data: false,
        },
        "box",
        &sk,
        &mut out,
        "t",
    )
    .unwrap();
    assert!(
        !m.parts.iter().any(|p| p
            .dataset
            .as_deref()
            .is_some_and(|d| d.contains("/DATA/") || d.contains("/CONFIG/"))),
        "no config or data unless asked"
    );
    let mut out = Vec::new();
    let m = export(
        w.engine(),
        &ExportRequest {
            versions: ids(&["2.0"]),
            config: false,
            data: true,
        },
        "box",
        &sk,
        &mut out,
        "t",
    )
    .unwrap();
    let data = m
        .parts
        .iter()
        .find(|p| p.dataset.as_deref().is_some_and(|d| d.contains("/DATA/")))
        .expect("data part");
    assert!(data.size > 0);
    let path = file("data", &out);
    let lab = lab(w);
    let got = import(w.h().zfs(), &lab, &path, &pk).unwrap();
    let s = got
        .iter()
        .find(|s| s.as_str().contains("DATA_app"))
        .unwrap()
        .clone();
    assert_eq!(
        w.h()
            .read_file(&ObjectName::Snapshot(s), "customer.db")
            .as_deref(),
        Some(&b"customer records"[..])
    );
    let _ = std::fs::remove_file(path);
}
