//! Runs the conformance suite against real OpenZFS. Needs root and the zfs module: the
//! cases are marked ignored elsewhere, and `cargo xtask vm-test` runs them in a guest
//! with `--include-ignored`. Pools are file vdevs under `$CAIRN_SCRATCH` (default /tmp).

use std::path::PathBuf;

use cairn_zfs::conformance::{CASES, RealHarness};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let have_zfs = std::path::Path::new("/dev/zfs").exists();
    let scratch = PathBuf::from(std::env::var("CAIRN_SCRATCH").unwrap_or_else(|_| "/tmp".into()));
    let trials = CASES
        .iter()
        .enumerate()
        .map(|(i, (name, case))| {
            let case = *case;
            let scratch = scratch.clone();
            Trial::test(*name, move || {
                let h = RealHarness::new(&scratch, &format!("ct{i}"))
                    .map_err(|e| Failed::from(format!("could not create the test pool: {e}")))?;
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&h)))
                    .map_err(|e| Failed::from(panic_text(&e)))
            })
            .with_ignored_flag(!have_zfs)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}
