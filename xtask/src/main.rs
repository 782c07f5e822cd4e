//! cairn's developer tasks: `cargo xtask <task>`. Builds VM guests, runs the real-ZFS test
//! suites in them, and captures fixtures from real OpenZFS.
#![allow(clippy::disallowed_methods)] // xtask drives host tools (qemu, mke2fs) directly

mod appliance;
mod deb;
mod e2e;
mod stock;
mod vm;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  test                  everything CI runs: host packages, `cargo test`, the
                        real-ZFS suites in the guest (vm-test), the Debian package
                        (deb), cairn adopting a stock Debian root-on-ZFS system
                        (stock), then the demo appliance end to end (vm-test --e2e)
  demo                  the demo appliance in a VM: install, trial, confirm, rollback,
                        an older version from the GRUB menu, factory reset
  demo-image            build (or reuse from cache) the demo appliance disk, its
                        update bundles and its first boot
  vm-image              build (or reuse from cache) the test guest: Debian kernel,
                        OpenZFS built by DKMS, userspace; cached in $CAIRN_CACHE
                        (default ~/.cache/cairn), keyed by the build script
  vm-test               build the *_real test binaries, boot the guest under QEMU
                        (TCG) and run them against real OpenZFS
      --filter <text>   only tests whose name contains <text>
      --timeout <secs>  kill the guest after this long (default 2400)
      --e2e             instead: the demo appliance end to end (scenarios and
                        power loss at every named step; with --filter)
  bench                 benchmarks: cairn vs raw zfs in the guest, the pure cores
                        on the host, cairnd's idle memory; writes docs/bench.md
  deb                   build target/deb/cairn_<version>_amd64.deb with dpkg-deb
                        (packaging/deb, systemd/, grub/) and run lintian on it
  stock                 install Debian on ZFS as the OpenZFS guide does (cached), then
                        in a VM: install the .deb, adopt the system after a dry run,
                        reboot through cairn's menu, upgrade with a bundle, remove
  capture-fixtures      run zfs/zpool in the guest and store their scripted
                        output under crates/cairn-zfs/fixtures/
  host-deps             install the host packages the VM tasks need (root)
";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        print!("{USAGE}");
        return Ok(());
    };
    let opt = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    match task.as_str() {
        "test" => {
            vm::host_deps()?;
            vm::cargo_test()?;
            vm::test(None, 2400)?;
            vm::host_deps_with(&["lintian", "binutils"])?;
            let deb = deb::run()?;
            stock::run(&deb)?;
            e2e::run(None)
        }
        "demo" => {
            vm::host_deps()?;
            e2e::demo()
        }
        "demo-image" => {
            appliance::image().map(|d| println!("demo appliance ready: {}", d.dir.display()))
        }
        "vm-image" => vm::image().map(|g| println!("guest image ready: {}", g.dir.display())),
        "vm-test" if args.iter().any(|a| a == "--e2e") => e2e::run(opt("--filter").as_deref()),
        "vm-test" => {
            let timeout = opt("--timeout")
                .map(|t| t.parse())
                .transpose()?
                .unwrap_or(2400);
            vm::test(opt("--filter"), timeout)
        }
        "capture-fixtures" => vm::capture_fixtures(),
        "bench" => vm::bench(),
        "deb" => {
            vm::host_deps_with(&["lintian", "binutils"])?;
            deb::run().map(drop)
        }
        "stock" => {
            vm::host_deps_with(&["lintian", "binutils"])?;
            stock::run(&deb::build()?)
        }
        "host-deps" => vm::host_deps(),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task '{other}'\n\n{USAGE}"),
    }
}
