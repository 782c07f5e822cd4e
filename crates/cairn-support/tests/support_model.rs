//! Support export and import on the model.

mod common;

use cairn_engine::suite::{ModelWorld, catch};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let trials = common::CASES
        .iter()
        .map(|(name, case)| {
            let case = *case;
            Trial::test(*name, move || {
                catch(|| {
                    case(&mut ModelWorld::new());
                    Ok(())
                })
                .map_err(Failed::from)
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
