//! Runs the conformance suite against the in-memory model (plain `cargo test`).

use cairn_zfs::conformance::{CASES, ModelHarness};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let trials = CASES
        .iter()
        .map(|(name, case)| {
            let case = *case;
            Trial::test(*name, move || {
                std::panic::catch_unwind(|| case(&ModelHarness::new()))
                    .map_err(|e| Failed::from(panic_text(&e)))
            })
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
