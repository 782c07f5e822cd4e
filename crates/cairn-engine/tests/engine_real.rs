//! The engine suite on real OpenZFS: ignored without `/dev/zfs`, run in the guest by
//! `cargo xtask vm-test`. Pools are file vdevs under `$CAIRN_SCRATCH` (default /tmp).

use std::path::PathBuf;

use cairn_engine::suite::{CASES, catch, run_real};
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
                catch(|| run_real(case, &scratch, &format!("et{i}"))).map_err(Failed::from)
            })
            .with_ignored_flag(!have_zfs)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
