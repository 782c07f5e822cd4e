//! Retention over many generated histories on the model: versions staged from full
//! streams and by package staging (clones of clones), activations with reboots, pins and
//! cleanups under random policies; every plan is checked (nothing protected planned, the
//! dry run equals what runs, every step executable in order, space comes back, every
//! remaining version intact) and executed.

use cairn_engine::retention::Policy;
use cairn_engine::suite::{ModelWorld, check_cleanup, generate_history};

#[test]
fn plans_over_generated_histories() {
    let (mut promotes, mut destroys) = (0, 0);
    for seed in 1..=40 {
        let mut w = ModelWorld::new();
        generate_history(&mut w, seed, 20);
        for keep_max in [1, 2, 4] {
            let p = Policy {
                keep_min: 1,
                keep_max,
                expire_after_days: 0,
                expire_never_booted_days: 0,
                free_space_percent: 0,
                grace_days: 0,
                data_snapshots_keep: 1,
            };
            let done = check_cleanup(&mut w, &p);
            for s in &done.plan.steps {
                match s {
                    cairn_engine::retention::Step::Promote { .. } => promotes += 1,
                    cairn_engine::retention::Step::Destroy { .. } => destroys += 1,
                }
            }
        }
    }
    // The histories exercise the dependency handling, not just plain destroys.
    assert!(
        promotes > 0 && destroys > promotes,
        "promotes {promotes}, destroys {destroys}"
    );
    eprintln!("checked plans: {promotes} promotes, {destroys} destroys");
}
