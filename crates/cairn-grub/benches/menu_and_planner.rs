//! Host-side benchmarks of the two pure cores at 500 and 5,000 versions: the GRUB menu
//! generator and the retention planner. Prints a table (`cargo xtask bench` collects it);
//! never asserts a time.

use std::time::{Duration, Instant};

use cairn_engine::VersionId;
use cairn_engine::retention::{DsFacts, Inventory, Policy, VersionFacts, plan};
use cairn_grub::menu::{render_main, render_recovery};
use cairn_grub::{MenuModel, MenuVersion};

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (T, Duration) {
    let mut out = None;
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (out.expect("runs > 0"), best)
}

fn model(n: usize) -> MenuModel {
    MenuModel {
        product: "Demo Appliance".into(),
        pool: "rpool".into(),
        root_container: "ROOT".into(),
        env_label: "CAIRNBOOT".into(),
        env_path: "/grubenv".into(),
        baked_default: "v0".into(),
        versions: (0..n)
            .map(|i| MenuVersion {
                id: format!("v{i}"),
                version: format!("{i}.0"),
                created: 1_700_000_000 + i as u64 * 3600,
                state: "staged".into(),
                kernel: "/vmlinuz".into(),
                initrd: "/initrd.img".into(),
            })
            .collect(),
        factory: None,
        cmdline: String::new(),
    }
}

fn inventory(n: usize) -> Inventory {
    let versions = (0..n)
        .map(|i| {
            let id = VersionId::new(&format!("v{i}")).unwrap();
            let origin = (i > 0).then(|| format!("p/ROOT/v{}@cairn-pre-v{i}", i - 1));
            VersionFacts {
                id,
                created: i as u64 * 3600,
                last_booted: (i % 3 == 0).then_some(i as u64 * 3600),
                expires: None,
                pinned: i % 97 == 0,
                managed: true,
                booted: i == n - 1,
                default: i == n - 1,
                trial: false,
                last_known_good: i == n - 2,
                factory: false,
                datasets: vec![
                    DsFacts {
                        name: format!("p/ROOT/v{i}"),
                        used: 1 << 20,
                        origin,
                        createtxg: i as u64 * 10,
                    },
                    DsFacts {
                        name: format!("p/CONFIG/v{i}"),
                        used: 4096,
                        origin: None,
                        createtxg: i as u64 * 10 + 1,
                    },
                ],
            }
        })
        .collect();
    Inventory {
        versions,
        snapshots: vec![],
        data: vec![],
        pool_size: 1 << 40,
        pool_free: 1 << 38,
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    println!("| measurement | time | size |");
    println!("|---|---|---|");
    for n in [50usize, 500, 5000] {
        let m = model(n);
        let ((a, b), t) = best(5, || (render_main(&m), render_recovery(&m)));
        println!(
            "| menu generation, {n} versions (target < 200 ms at 500) | {t:.2?} | {} + {} bytes |",
            a.len(),
            b.len()
        );
    }
    let policy = Policy {
        keep_min: 3,
        keep_max: 20,
        expire_after_days: 0,
        expire_never_booted_days: 0,
        grace_days: 0,
        free_space_percent: 0,
        data_snapshots_keep: 5,
    };
    for n in [500usize, 5000] {
        let inv = inventory(n);
        let (p, t) = best(3, || plan(&inv, &policy, 1 << 40));
        println!(
            "| retention plan, {n} versions | {t:.2?} | {} steps |",
            p.steps.len()
        );
    }
}
