//! Support export and import on real OpenZFS (in the VM; ignored without `/dev/zfs`).

mod common;

use std::path::PathBuf;

use cairn_engine::suite::{RealWorld, catch};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let have_zfs = std::path::Path::new("/dev/zfs").exists();
    let scratch = PathBuf::from(std::env::var("CAIRN_SCRATCH").unwrap_or_else(|_| "/tmp".into()));
    let trials = common::CASES
        .iter()
        .enumerate()
        .map(|(i, (name, case))| {
            let case = *case;
            let scratch = scratch.clone();
            Trial::test(*name, move || {
                catch(|| {
                    let mut w = RealWorld::new(&scratch, &format!("st{i}"))
                        .map_err(|e| format!("test pool: {e}"))?;
                    case(&mut w);
                    Ok(())
                })
                .map_err(Failed::from)
            })
            .with_ignored_flag(!have_zfs)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
