//! `cargo xtask bench`: cairn against raw OpenZFS, side by side in one run, on real ZFS in
//! the guest. Prints ratios, never asserts a time. Without `/dev/zfs` it says so and
//! does nothing (its name ends in `_zfs`, not `_real`: `vm-test` does not run it).

#![allow(clippy::disallowed_methods)] // times the raw `zfs` commands it compares against

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_engine::suite::{RealWorld, World};
use cairn_engine::{Activation, BootKind, Payload, StageRequest};
use cairn_zfs::{CreateOptions, ReceiveRequest, SendRequest};

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn noise_file(dir: &Path, name: &str, mib: usize, seed: u64) {
    let data = cairn_zfs::conformance::noise(mib << 20, seed);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

struct Row(String, String, String);

/// Writes a full send stream of `snap` to `path`; returns its size.
fn write_stream(z: &dyn cairn_zfs::Zfs, snap: &cairn_zfs::SnapshotName, path: &Path) -> u64 {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    z.send(&SendRequest::full(snap.clone()), &mut f).unwrap();
    f.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// Stages version `version` from the full stream in `path`.
fn stage_file(e: &cairn_engine::Engine, version: &str, path: &Path) -> cairn_engine::VersionId {
    e.stage(
        StageRequest {
            version: version.into(),
            payload: Payload::FullStream(&mut std::fs::File::open(path).unwrap()),
            size_hint: std::fs::metadata(path).unwrap().len(),
            migrations: vec![],
            migration_timeout: Duration::from_secs(60),
            bundle: None,
            allow_downgrade: false,
            defaults: None,
        },
        "bench",
    )
    .unwrap()
}

fn main() {
    if !Path::new("/dev/zfs").exists() {
        println!("bench_zfs: needs real ZFS; `cargo xtask bench` runs it in the guest");
        return;
    }
    let scratch = PathBuf::from(std::env::var("CAIRN_SCRATCH").unwrap_or_else(|_| "/tmp".into()));
    let mut rows: Vec<Row> = Vec::new();
    let w = RealWorld::new(&scratch, "bench").expect("bench pool");
    let e = w.engine();
    e.init("bench").unwrap();
    let z = w.h().zfs();
    let vendor = w.h().pool().root().child("vendor").unwrap();
    z.create(&vendor, &CreateOptions::default()).unwrap();
    let vdir = {
        let p = cairn_zfs::PropName::native("mountpoint");
        PathBuf::from(
            z.get(&(&vendor).into(), std::slice::from_ref(&p)).unwrap()[&p]
                .value
                .clone()
                .unwrap(),
        )
    };
    for i in 0..4 {
        noise_file(&vdir.join("usr/lib/app"), &format!("blob{i}"), 8, i);
    }
    z.sync(w.h().pool()).unwrap();
    let r1 = vendor.snapshot("r1").unwrap();
    z.snapshot(std::slice::from_ref(&r1), &[]).unwrap();
    let stream_path = scratch.join("bench-full.zstream");
    let size = write_stream(z, &r1, &stream_path);
    // 1.0 from the stream, booted.
    let v1 = e
        .install_first(
            "1.0",
            &mut std::fs::File::open(&stream_path).unwrap(),
            "bench",
        )
        .unwrap();
    w.boot_into(&v1, BootKind::Normal);

    // A. Staging vs raw `zfs receive` of the same stream (each run on a fresh target).
    let mut raw = Vec::new();
    let mut staged = Vec::new();
    for i in 0..3 {
        let target = w.h().pool().root().child(&format!("raw{i}")).unwrap();
        let mut rr = ReceiveRequest::new(target);
        rr.no_mount = true;
        let (_, t) = time(|| {
            z.receive(&rr, &mut std::fs::File::open(&stream_path).unwrap())
                .unwrap()
        });
        raw.push(t);
        let v = format!("2.{i}");
        let (_, t) = time(|| stage_file(w.engine(), &v, &stream_path));
        staged.push(t);
    }
    let best = |v: &[Duration]| *v.iter().min().unwrap();
    rows.push(Row(
        format!(
            "stage a full stream ({} MiB) vs raw zfs receive",
            size >> 20
        ),
        format!("{:.0?} vs {:.0?}", best(&staged), best(&raw)),
        format!(
            "{:.2}x (target <= 1.10x)",
            best(&staged).as_secs_f64() / best(&raw).as_secs_f64()
        ),
    ));

    // B. Support export vs raw `zfs send > /dev/null` of the same data, at two sizes: the
    // whole-run ratio includes export's fixed cost (snapshot, properties, status, journal,
    // signature: a dozen zfs calls), the marginal one is the streaming throughput.
    for i in 0..3 {
        let raw = w.h().pool().root().child(&format!("raw{i}")).unwrap();
        let opts = cairn_zfs::DestroyOptions {
            recursive: true,
            dry_run: false,
        };
        z.destroy(&(&raw).into(), opts).unwrap();
    }
    let (sk, _pk) = {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        (kp.sk.to_box(None).unwrap().to_string(), kp.pk)
    };
    let export_vs_send = |v: &cairn_engine::VersionId, tag: &str| {
        let snap = w.engine().layout().root(v).snapshot(tag).unwrap();
        z.snapshot(std::slice::from_ref(&snap), &[]).unwrap();
        let mut send_req = SendRequest::full(snap);
        send_req.raw = true;
        let (n_raw, t_raw) = time(|| z.send(&send_req, &mut std::io::sink()).unwrap());
        let req = cairn_support::ExportRequest {
            versions: vec![v.clone()],
            config: false,
            data: false,
        };
        let (m, t_exp) = time(|| {
            cairn_support::export(
                w.engine(),
                &req,
                "bench",
                &sk,
                &mut std::io::sink(),
                "bench",
            )
            .unwrap()
        });
        let n_exp: u64 = m.parts.iter().map(|p| p.size).sum();
        ((n_exp, t_exp), (n_raw, t_raw))
    };
    let mbps = |n: u64, t: Duration| n as f64 / t.as_secs_f64() / (1 << 20) as f64;
    let (small_exp, small_raw) = export_vs_send(&v1, "benchsend");
    // A second, larger version: 64 MiB more in the vendor tree, staged from a full stream.
    for i in 4..12 {
        noise_file(&vdir.join("usr/lib/app"), &format!("blob{i}"), 8, i);
    }
    z.sync(w.h().pool()).unwrap();
    let r2 = vendor.snapshot("r2").unwrap();
    z.snapshot(std::slice::from_ref(&r2), &[]).unwrap();
    write_stream(z, &r2, &stream_path);
    let v4 = stage_file(w.engine(), "2.9", &stream_path);
    let _ = std::fs::remove_file(&stream_path);
    let (big_exp, big_raw) = export_vs_send(&v4, "benchsend");
    for ((n_exp, t_exp), (n_raw, t_raw)) in [(small_exp, small_raw), (big_exp, big_raw)] {
        rows.push(Row(
            format!(
                "support export of {} MiB vs raw zfs send > /dev/null",
                n_raw >> 20
            ),
            format!(
                "{:.1} vs {:.1} MiB/s",
                mbps(n_exp, t_exp),
                mbps(n_raw, t_raw)
            ),
            format!(
                "{:.2}x throughput, whole run (target >= 0.95x)",
                mbps(n_exp, t_exp) / mbps(n_raw, t_raw)
            ),
        ));
    }
    let marginal = |(n1, t1): (u64, Duration), (n2, t2): (u64, Duration)| {
        mbps(n2.saturating_sub(n1), t2.saturating_sub(t1))
    };
    let (m_exp, m_raw) = (marginal(small_exp, big_exp), marginal(small_raw, big_raw));
    rows.push(Row(
        "support export vs raw send, marginal (the extra MiB of the larger one)".into(),
        format!("{m_exp:.1} vs {m_raw:.1} MiB/s"),
        format!("{:.2}x throughput (target >= 0.95x)", m_exp / m_raw),
    ));
    rows.push(Row(
        "support export fixed cost (whole minus bytes at the marginal rate)".into(),
        format!(
            "{:.0?}",
            small_exp.1.saturating_sub(Duration::from_secs_f64(
                small_exp.0 as f64 / (m_exp * (1 << 20) as f64)
            ))
        ),
        "a dozen zfs calls under TCG".into(),
    ));

    // C, D. Status and activation as versions accumulate (package staging: cheap clones).
    let r = w.engine().layout().root(&v1);
    let up = cairn_engine::suite::HookAction::WriteRoot {
        file: "/usr/lib/app/pkg",
        text: "x",
    };
    w.hook(&r, "/usr/bin/upgrade", up);
    let cols = "name,type,used,origin,createtxg,cairn:version,cairn:state,cairn:created,cairn:last-booted,cairn:pinned";
    let mut n = w.engine().versions().unwrap().len();
    for target in [5usize, 50] {
        while n < target {
            let v = format!("3.{n}");
            w.engine()
                .stage_packages(
                    &v,
                    &["/usr/bin/upgrade".into()],
                    Duration::from_secs(60),
                    &[],
                    "bench",
                )
                .unwrap();
            n += 1;
        }
        let (_, t_status) = time(|| w.engine().versions().unwrap());
        let (_, t_list) = time(|| {
            let out = std::process::Command::new("zfs")
                .args(["list", "-Hp", "-t", "all", "-o", cols, "-r"])
                .arg(w.engine().layout().root_container().as_str())
                .output()
                .unwrap();
            assert!(out.status.success());
        });
        rows.push(Row(
            format!("status (versions) at {n} versions vs raw zfs list -Hp -t all"),
            format!("{:.0?} vs {:.0?}", t_status, t_list),
            format!(
                "{:.2}x (target <= 1.5x)",
                t_status.as_secs_f64() / t_list.as_secs_f64()
            ),
        ));
        let some = w
            .engine()
            .versions()
            .unwrap()
            .into_iter()
            .find(|v| !v.is_default && v.stored != cairn_engine::Stored::Failed)
            .unwrap()
            .id;
        let (_, t_act) = time(|| {
            w.engine()
                .activate(&some, Activation::Permanent, false, "bench")
                .unwrap();
            z.sync(w.h().pool()).unwrap();
        });
        rows.push(Row(
            format!("activate until durable at {n} versions"),
            format!("{t_act:.0?}"),
            "target <= 1 s, flat".into(),
        ));
        w.engine()
            .activate(&v1, Activation::Permanent, false, "bench")
            .unwrap();
    }
    println!("CAIRN-BENCH-BEGIN");
    println!("| measurement | cairn vs raw | ratio |");
    println!("|---|---|---|");
    for Row(a, b, c) in &rows {
        println!("| {a} | {b} | {c} |");
    }
    println!("CAIRN-BENCH-END");
}
