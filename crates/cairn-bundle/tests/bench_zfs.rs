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

/// Adds a row and shows it at once (the whole table is printed at the end).
fn push(rows: &mut Vec<Row>, row: Row) {
    eprintln!("bench: {} | {} | {}", row.0, row.1, row.2);
    rows.push(row);
}

/// What `cairn_zfs` logged as it ran each command (`ran`, with `elapsed_us`).
static RAN: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

struct Collect;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Collect {
    fn on_event(&self, ev: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct V(String, String, u64, bool);
        impl tracing::field::Visit for V {
            fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
                if f.name() == "elapsed_us" {
                    self.2 = v;
                }
            }
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                match f.name() {
                    "program" => self.0 = format!("{v:?}"),
                    "verb" => self.1 = format!("{v:?}"),
                    "message" => self.3 = format!("{v:?}") == "ran",
                    _ => {}
                }
            }
        }
        let mut v = V::default();
        ev.record(&mut v);
        if v.3 {
            RAN.lock().unwrap().push((format!("{} {}", v.0, v.1), v.2));
        }
    }
}

/// Runs `f` and says where its time went: each kind of command, how many, how long.
fn profiled<T>(f: impl FnOnce() -> T) -> (T, Duration, String) {
    RAN.lock().unwrap().clear();
    let (r, t) = time(f);
    let ran = std::mem::take(&mut *RAN.lock().unwrap());
    let mut by: Vec<(String, usize, u64)> = Vec::new();
    for (k, us) in &ran {
        match by.iter_mut().find(|(n, _, _)| n == k) {
            Some(e) => {
                e.1 += 1;
                e.2 += us;
            }
            None => by.push((k.clone(), 1, *us)),
        }
    }
    by.sort_by_key(|e| std::cmp::Reverse(e.2));
    let in_cmds: u64 = ran.iter().map(|(_, us)| us).sum();
    let mut text: Vec<String> = by
        .iter()
        .map(|(k, n, us)| format!("{k} x{n} {}ms", us / 1000))
        .collect();
    text.push(format!(
        "own code {}ms",
        (t.as_micros() as u64).saturating_sub(in_cmds) / 1000
    ));
    (r, t, format!("{} commands: {}", ran.len(), text.join(", ")))
}

/// `zfs` with arguments, as the raw side of a comparison; must succeed.
fn zfs_raw(args: &[&str]) -> String {
    let out = std::process::Command::new("zfs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Adds versions until there are `target`, fast: clones of `template`'s root and config
/// with its properties (the version named anew), as stage would leave them. Returns the
/// new count.
fn fan_out(
    e: &cairn_engine::Engine,
    template: &cairn_engine::VersionId,
    mut n: usize,
    target: usize,
) -> usize {
    let layout = e.layout();
    let parts = [
        layout.root(template).to_string(),
        layout.config(template).to_string(),
    ];
    let props: Vec<Vec<(String, String)>> = parts
        .iter()
        .map(|ds| {
            zfs_raw(&[
                "get",
                "-H",
                "-p",
                "-o",
                "property,value",
                "-s",
                "local",
                "all",
                ds,
            ])
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
        })
        .collect();
    for ds in &parts {
        let snap = format!("{ds}@fan");
        if zfs_raw(&["list", "-H", "-o", "name", "-t", "snapshot", ds])
            .lines()
            .all(|l| l != snap)
        {
            zfs_raw(&["snapshot", &snap]);
        }
    }
    while n < target {
        let version = format!("4.{n}");
        let id = cairn_engine::VersionId::from_version(&version).unwrap();
        let new = [layout.root(&id).to_string(), layout.config(&id).to_string()];
        for ((ds, to), props) in parts.iter().zip(&new).zip(&props) {
            let mut args = vec!["clone".to_owned()];
            for (k, v) in props {
                let v = match k.as_str() {
                    "cairn:version" => version.clone(),
                    "org.zfsbootmenu:commandline" => v.replace(template.as_str(), id.as_str()),
                    _ => v.clone(),
                };
                args.push("-o".into());
                args.push(format!("{k}={v}"));
            }
            args.push(format!("{ds}@fan"));
            args.push(to.clone());
            zfs_raw(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        n += 1;
    }
    n
}

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

/// Status against a raw `zfs list` of the same columns, activation and rollback until
/// durable, with the versions now on the pool; leaves `home` the default again.
fn measure_at(w: &RealWorld, home: &cairn_engine::VersionId, rows: &mut Vec<Row>) {
    let e = w.engine();
    let z = w.h().zfs();
    let n = e.versions().unwrap().len();
    let cols = "name,type,used,origin,createtxg,cairn:version,cairn:state,cairn:created,cairn:last-booted,cairn:pinned";
    let container = e.layout().root_container().to_string();
    let (_, t_status) = time(|| e.versions().unwrap());
    let (_, t_list) = time(|| zfs_raw(&["list", "-Hp", "-t", "all", "-o", cols, "-r", &container]));
    push(
        rows,
        Row(
            format!("status (versions) at {n} versions vs raw zfs list -Hp -t all"),
            format!("{t_status:.0?} vs {t_list:.0?}"),
            format!(
                "{:.2}x (target <= 1.5x)",
                t_status.as_secs_f64() / t_list.as_secs_f64()
            ),
        ),
    );
    let newest = e
        .versions()
        .unwrap()
        .into_iter()
        .find(|v| !v.is_default && v.stored != cairn_engine::Stored::Failed)
        .unwrap()
        .id;
    let (_, t_act, p_act) = profiled(|| {
        e.activate(&newest, Activation::Permanent, false, "bench")
            .unwrap();
        z.sync(w.h().pool()).unwrap();
    });
    push(
        rows,
        Row(
            format!("activate until durable at {n} versions"),
            format!("{t_act:.0?}"),
            format!("target <= 1 s, flat; {p_act}"),
        ),
    );
    let (to, t_back, p_back) = profiled(|| {
        let to = e.rollback(1, "bench").unwrap();
        z.sync(w.h().pool()).unwrap();
        to
    });
    assert_ne!(to, newest);
    push(
        rows,
        Row(
            format!("rollback until durable at {n} versions"),
            format!("{t_back:.0?}"),
            format!("target <= 1 s, flat; {p_back}"),
        ),
    );
    // What rollback cannot avoid without an index: the versions in creation order.
    let (_, t_order) = time(|| {
        zfs_raw(&[
            "list",
            "-Hp",
            "-d",
            "1",
            "-t",
            "filesystem",
            "-o",
            "name,createtxg",
            &container,
        ])
    });
    push(
        rows,
        Row(
            format!("raw zfs list -d 1 -o name,createtxg at {n} versions (rollback's one list)"),
            format!("{t_order:.0?}"),
            "grows with versions; rollback = this + a constant".into(),
        ),
    );
    e.activate(home, Activation::Permanent, false, "bench")
        .unwrap();
}

fn main() {
    if !Path::new("/dev/zfs").exists() {
        println!("bench_zfs: needs real ZFS; `cargo xtask bench` runs it in the guest");
        return;
    }
    {
        use tracing_subscriber::layer::SubscriberExt;
        let sub = tracing_subscriber::registry().with(Collect);
        tracing::subscriber::set_global_default(sub).unwrap();
    }
    let scratch = PathBuf::from(std::env::var("CAIRN_SCRATCH").unwrap_or_else(|_| "/tmp".into()));
    let rows: &mut Vec<Row> = &mut Vec::new();
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
    let mut early = Vec::new();
    {
        let r = w.engine().layout().root(&v1);
        let up = cairn_engine::suite::HookAction::WriteRoot {
            file: "/usr/lib/app/pkg",
            text: "x",
        };
        w.hook(&r, "/usr/bin/upgrade", up);
        w.engine()
            .stage_packages(
                "1.1",
                &["/usr/bin/upgrade".into()],
                Duration::from_secs(60),
                &[],
                "bench",
            )
            .unwrap();
        measure_at(&w, &v1, &mut early);
    }

    // A. Staging vs raw `zfs receive` of the same stream (each run on a fresh target).
    let mut raw = Vec::new();
    let mut staged = Vec::new();
    let mut stage_profile = String::new();
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
        let (_, t, p) = profiled(|| stage_file(w.engine(), &v, &stream_path));
        staged.push(t);
        stage_profile = p;
    }
    let best = |v: &[Duration]| *v.iter().min().unwrap();
    push(
        rows,
        Row(
            format!(
                "stage a full stream ({} MiB) vs raw zfs receive",
                size >> 20
            ),
            format!("{:.0?} vs {:.0?}", best(&staged), best(&raw)),
            format!(
                "{:.2}x (target <= 1.10x)",
                best(&staged).as_secs_f64() / best(&raw).as_secs_f64()
            ),
        ),
    );

    push(
        rows,
        Row(
            "where staging's time goes (last run)".into(),
            stage_profile,
            "zfs commands by kind; the rest is cairn's own".into(),
        ),
    );

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
    let export_profile = std::cell::RefCell::new(String::new());
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
        let (m, t_exp, profile) = profiled(|| {
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
        *export_profile.borrow_mut() = profile;
        ((n_exp, t_exp), (n_raw, t_raw))
    };
    let mbps = |n: u64, t: Duration| n as f64 / t.as_secs_f64() / (1 << 20) as f64;
    let (small_exp, small_raw) = export_vs_send(&v1, "benchsend");
    // A second, larger version: 64 MiB more in the vendor tree, staged from a full stream.
    for i in 4..12 {
        noise_file(&vdir.join("usr/lib/app"), &format!("blob{i}"), 8, i);
    }
    // A vendor release: the app file rewritten (256 KiB, from `seed`), then snapshotted.
    let app_release = |name: &str, seed: u64| {
        std::fs::write(
            vdir.join("usr/lib/app/app.bin"),
            cairn_zfs::conformance::noise(256 << 10, seed),
        )
        .unwrap();
        z.sync(w.h().pool()).unwrap();
        let r = vendor.snapshot(name).unwrap();
        z.snapshot(std::slice::from_ref(&r), &[]).unwrap();
        r
    };
    let r2 = app_release("r2", 98);
    let big = write_stream(z, &r2, &stream_path);
    let rawbig = w.h().pool().root().child("rawbig").unwrap();
    let mut rr = ReceiveRequest::new(rawbig.clone());
    rr.no_mount = true;
    let (_, t_rawbig) = time(|| {
        z.receive(&rr, &mut std::fs::File::open(&stream_path).unwrap())
            .unwrap()
    });
    z.destroy(
        &(&rawbig).into(),
        cairn_zfs::DestroyOptions {
            recursive: true,
            dry_run: false,
        },
    )
    .unwrap();
    // (After the raw copy is gone: the pool has room for one of them.)
    z.sync(w.h().pool()).unwrap();
    let (v4, t_stagebig) = time(|| stage_file(w.engine(), "2.9", &stream_path));
    let _ = std::fs::remove_file(&stream_path);
    push(
        rows,
        Row(
            format!("stage a full stream ({} MiB) vs raw zfs receive", big >> 20),
            format!("{t_stagebig:.0?} vs {t_rawbig:.0?}"),
            format!(
                "{:.2}x (target <= 1.10x)",
                t_stagebig.as_secs_f64() / t_rawbig.as_secs_f64()
            ),
        ),
    );
    let extra = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64();
    push(
        rows,
        Row(
            "stage vs raw receive, marginal (the extra MiB of the larger one)".into(),
            format!(
                "{:.1} vs {:.1} MiB/s",
                (big - size) as f64 / (1 << 20) as f64 / extra(t_stagebig, best(&staged)),
                (big - size) as f64 / (1 << 20) as f64 / extra(t_rawbig, best(&raw)),
            ),
            format!(
                "{:.2}x time (target <= 1.10x)",
                extra(t_stagebig, best(&staged)) / extra(t_rawbig, best(&raw))
            ),
        ),
    );

    // A'. A delta bundle for a small app change against the full root bundle: the same
    // signed format `cairn bundle build` writes, payloads from `zfs send` (-i for the delta).
    let r3 = app_release("r3", 99);
    let bundle_size = |req: SendRequest, kind: cairn_bundle::PayloadKind| -> u64 {
        let path = scratch.join("bench-payload.zstream");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        z.send(&req, &mut f).unwrap();
        f.flush().unwrap();
        drop(f);
        let (sha256, size) = cairn_bundle::digest_file(&path).unwrap();
        let manifest = cairn_bundle::Manifest {
            format: 1,
            product: "bench".into(),
            version: "3.0".into(),
            hardware: vec!["bench".into()],
            min_from: None,
            payloads: vec![cairn_bundle::PayloadEntry {
                name: "root.zstream".into(),
                kind,
                size,
                sha256,
                base: req.from.as_ref().map(|_| "r2".into()),
            }],
            migrations: vec![],
            health_checks: Default::default(),
            allow_devices: false,
        }
        .to_yaml();
        let sig = cairn_bundle::sign(manifest.as_bytes(), &sk, None).unwrap();
        let mut out = Vec::new();
        cairn_bundle::write_bundle(
            &mut out,
            manifest.as_bytes(),
            Some(&sig),
            &[("root.zstream".into(), path.clone())],
        )
        .unwrap();
        let _ = std::fs::remove_file(&path);
        out.len() as u64
    };
    let full_bundle = bundle_size(
        SendRequest::full(r3.clone()),
        cairn_bundle::PayloadKind::ZfsFull,
    );
    let delta_bundle = bundle_size(
        SendRequest::incremental(r2.clone(), r3.clone()),
        cairn_bundle::PayloadKind::ZfsIncremental,
    );
    push(
        rows,
        Row(
            "delta bundle (one 256 KiB app file changed) vs full root bundle".into(),
            format!("{delta_bundle} vs {full_bundle} bytes"),
            format!(
                "{:.2} % (target <= 2 %)",
                delta_bundle as f64 * 100.0 / full_bundle as f64
            ),
        ),
    );
    let (big_exp, big_raw) = export_vs_send(&v4, "benchsend");
    for ((n_exp, t_exp), (n_raw, t_raw)) in [(small_exp, small_raw), (big_exp, big_raw)] {
        push(
            rows,
            Row(
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
            ),
        );
    }
    let marginal = |(n1, t1): (u64, Duration), (n2, t2): (u64, Duration)| {
        mbps(n2.saturating_sub(n1), t2.saturating_sub(t1))
    };
    let (m_exp, m_raw) = (marginal(small_exp, big_exp), marginal(small_raw, big_raw));
    push(
        rows,
        Row(
            "support export vs raw send, marginal (the extra MiB of the larger one)".into(),
            format!("{m_exp:.1} vs {m_raw:.1} MiB/s"),
            format!("{:.2}x throughput (target >= 0.95x)", m_exp / m_raw),
        ),
    );
    // Where export's streaming time goes: every byte is hashed (SHA-256) for the signed
    // manifest; the raw side above already pays the same pipe and copy.
    let data = cairn_zfs::conformance::noise(64 << 20, 7);
    let (_, t_hash) = time(|| {
        use sha2::Digest;
        sha2::Sha256::digest(&data)
    });
    drop(data);
    let hash_rate = mbps(64 << 20, t_hash);
    push(
        rows,
        Row(
            "SHA-256 of 64 MiB in memory, alone (what export adds per byte)".into(),
            format!("{hash_rate:.1} MiB/s"),
            format!(
                "send then hash in series would give {:.1} MiB/s, {:.2}x",
                1.0 / (1.0 / m_raw + 1.0 / hash_rate),
                1.0 / (1.0 / m_raw + 1.0 / hash_rate) / m_raw
            ),
        ),
    );
    push(
        rows,
        Row(
            "where the larger export's time goes".into(),
            export_profile.borrow().clone(),
            "zfs commands by kind; the rest is cairn's own (hashing, archive)".into(),
        ),
    );
    push(
        rows,
        Row(
            "support export fixed cost (whole minus bytes at the marginal rate)".into(),
            format!(
                "{:.0?}",
                small_exp.1.saturating_sub(Duration::from_secs_f64(
                    small_exp.0 as f64 / (m_exp * (1 << 20) as f64)
                ))
            ),
            "a dozen zfs calls under TCG".into(),
        ),
    );

    // C, D. Status, activation and rollback at 50 and 500 versions: the first ones staged
    // from packages (cheap clones), the rest fanned out from one of them.
    let r = w.engine().layout().root(&v1);
    let up = cairn_engine::suite::HookAction::WriteRoot {
        file: "/usr/lib/app/pkg",
        text: "x",
    };
    w.hook(&r, "/usr/bin/upgrade", up);
    let mut n = w.engine().versions().unwrap().len();
    let template = w
        .engine()
        .stage_packages(
            &format!("3.{n}"),
            &["/usr/bin/upgrade".into()],
            Duration::from_secs(60),
            &[],
            "bench",
        )
        .unwrap();
    n += 1;
    for target in [50usize, 500] {
        n = fan_out(w.engine(), &template, n, target);
        measure_at(&w, &v1, rows);
    }
    rows.splice(0..0, early);
    println!("CAIRN-BENCH-BEGIN");
    println!("| measurement | cairn vs raw | ratio |");
    println!("|---|---|---|");
    for Row(a, b, c) in rows.iter() {
        println!("| {a} | {b} | {c} |");
    }
    println!("CAIRN-BENCH-END");
}
