//! `cargo xtask stock`: cairn on a stock Debian root-on-ZFS system (issue: Debian package
//! and integration). The builder guest installs Debian on ZFS as the OpenZFS guide does
//! (`xtask/scripts/build-stock.sh`), without cairn; the test boots it through its own
//! GRUB, installs the .deb, adopts the system after a dry run, reboots through cairn's
//! menu, upgrades it with a signed bundle, and removes the package. Customer data and
//! every dataset cairn does not own must come through unchanged.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

use crate::appliance::{DemoImage, assemble_disk, hash_tree, overlay, vendor_key};
use crate::e2e::Device;
use crate::vm;

/// Bumped when the way the stock image is assembled (outside the hashed inputs) changes.
const STOCK_FORMAT: &str = "stock-1";

/// The stock system's disk and the stick with the .deb, the bundle and the vendor key;
/// cached under `~/.cache/cairn/stock-<key>`.
fn image(deb: &Path) -> Result<DemoImage> {
    let guest = vm::image()?;
    let bins = crate::appliance::release_bins()?;
    let mut h = Sha256::new();
    h.update(STOCK_FORMAT);
    h.update(vm::image_key()?);
    h.update(std::fs::read(vm::scripts().join("build-stock.sh"))?);
    // The package's inputs (the .deb itself carries build times).
    for dir in [
        "packaging",
        "systemd",
        "grub",
        "tests/stock",
        "demo/rootfs/etc/systemd",
    ] {
        hash_tree(&mut h, &vm::root().join(dir))?;
    }
    for (_, b) in &bins {
        h.update(std::fs::read(b)?);
    }
    let key = format!("{:x}", h.finalize())[..16].to_owned();
    let dir = vm::cache_dir().join(format!("stock-{key}"));
    if dir.join("ready").exists() {
        eprintln!("stock-image: using cached system {}", dir.display());
        return Ok(DemoImage { dir });
    }
    let start = Instant::now();
    let tmp = vm::cache_dir().join(format!("stock-{key}.building"));
    let _ = std::fs::remove_dir_all(&tmp);
    let payload = tmp.join("payload");
    std::fs::create_dir_all(payload.join("bin"))?;
    eprintln!("stock-image: installing Debian on ZFS in the builder guest");
    std::fs::copy(deb, payload.join("cairn.deb"))?;
    let cairn = bins
        .iter()
        .find(|(n, _)| n == "cairn")
        .context("the vendor tool is built")?;
    std::fs::copy(&cairn.1, payload.join("bin/cairn"))?;
    std::fs::copy(
        vm::root().join("tests/stock/stock-2.yaml"),
        payload.join("stock-2.yaml"),
    )?;
    std::fs::copy(
        vm::root()
            .join("demo/rootfs/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"),
        payload.join("autologin.conf"),
    )?;
    vendor_key(&payload)?;
    assemble_disk(
        &guest,
        &tmp,
        "build-stock.sh",
        "stock system ready",
        2 << 30,
    )?;
    vm::publish(&tmp, &dir, "stock-", start)?;
    eprintln!("stock-image: ready in {:.0?}", start.elapsed());
    Ok(DemoImage { dir })
}

/// Every dataset and snapshot with its GUID and cairn's properties: what must not change.
const POOL_STATE: &str =
    "zfs list -H -p -t all -o name,guid,cairn:managed,cairn:state,cairn:version -s name -r rpool";

/// `cargo xtask stock`: the whole story on one VM.
pub fn run(deb: &Path) -> Result<()> {
    let total = Instant::now();
    let img = image(deb)?;
    let work = vm::work_dir("stock")?;
    let disk = work.join("stock.qcow2");
    overlay(&img.dir.join("disk.qcow2"), &disk)?;
    let echo = std::env::var_os("CAIRN_ECHO").is_some();
    let mut b = Device::cold(&img, &disk, &work, "stock", echo)
        .context("the stock system booted through its own GRUB")?;
    let mut passed = Vec::<String>::new();
    let mut ok = |what: &str| {
        println!("stock: ok  {what}");
        passed.push(what.to_owned());
    };
    let result = story(&mut b, &mut ok);
    let _ = b.vm.kill();
    match result {
        Ok(()) => {
            println!(
                "stock: {} checks passed in {:.0?}",
                passed.len(),
                total.elapsed()
            );
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "on the stock Debian system (after {} checks passed); console: {}",
            passed.len(),
            work.join("stock.log").display()
        ))),
    }
}

fn story(b: &mut Device, ok: &mut dyn FnMut(&str)) -> Result<()> {
    let cmdline = b.sh("cat /proc/cmdline")?;
    ensure!(
        cmdline.contains("root=ZFS=rpool/ROOT/debian") && !cmdline.contains("cairn."),
        "booted by Debian's own GRUB menu: {cmdline}"
    );
    ok("the stock system boots rpool/ROOT/debian through update-grub's menu");
    let data = "sha256sum /srv/records.txt /home/operator/notes.txt";
    let data_before = b.sh(data)?;
    b.sh("mkdir -p /media/stick && mount -o ro LABEL=BUNDLES /media/stick")?;
    b.sh("dpkg -i /media/stick/cairn.deb")?;
    ok("the .deb installs");
    let pristine = b.sh(POOL_STATE)?;
    let (rc, out) = b.sh_rc("cairnctl status")?;
    ensure!(
        rc != 0 && out.contains("cairnctl init --adopt"),
        "status before adoption says how to adopt (rc {rc}): {out}"
    );
    ok("`cairnctl status` before adoption says to run `cairnctl init --adopt`");

    // No boot partition yet: refused by name, nothing changed.
    let (rc, out) = b.sh_rc("cairnctl init --adopt --dry-run")?;
    ensure!(
        rc != 0 && out.contains("labelled CAIRNBOOT mounted at /boot/cairn"),
        "adoption without a boot partition is refused (rc {rc}): {out}"
    );
    ensure!(b.sh(POOL_STATE)? == pristine, "the refusal changed nothing");
    ok("adoption without cairn's boot partition is refused and changes nothing");

    // The operator's part: cairn's boot partition in the guide's spare slot, the vendor's
    // key and product ids.
    b.sh(
        "mkfs.ext4 -q -L CAIRNBOOT /dev/vda2 && mkdir -p /boot/cairn \
         && echo 'LABEL=CAIRNBOOT /boot/cairn ext4 defaults 0 2' >> /etc/fstab \
         && mount /boot/cairn",
    )?;
    // mkfs.ext4 makes a journal, which GRUB would not replay after a power cut.
    let (rc, out) = b.sh_rc("cairnctl init --adopt --dry-run")?;
    ensure!(
        rc != 0 && out.contains("has a journal"),
        "a journaled boot partition is refused (rc {rc}): {out}"
    );
    ensure!(b.sh(POOL_STATE)? == pristine, "the refusal changed nothing");
    ok("a boot partition with a journal is refused and changes nothing");
    b.sh("umount /boot/cairn && tune2fs -O ^has_journal /dev/vda2 && mount /boot/cairn")?;
    b.sh("install -D -m644 /media/stick/vendor.pub /etc/cairn/keys/vendor.pub")?;
    b.sh(
        "printf 'CAIRN_PRODUCT=\"Debian on ZFS\"\\nCAIRN_PRODUCT_ID=stock-debian\\nCAIRN_HARDWARE_ID=qemu-x86\\n' > /etc/default/cairnd",
    )?;
    let plan = b.sh("cairnctl init --adopt --dry-run --version 1")?;
    for want in [
        "Would adopt rpool/ROOT/debian as version 1 (id 'debian')",
        "create rpool/CONFIG/debian",
        "install GRUB (i386-pc) to /dev/vda",
        "Dry run: nothing was changed",
    ] {
        ensure!(plan.contains(want), "the dry run says '{want}':\n{plan}");
    }
    ensure!(b.sh(POOL_STATE)? == pristine, "the dry run changed nothing");
    ok("the dry run says what adoption will do and changes nothing");
    let done = b.sh("cairnctl init --adopt --yes --version 1")?;
    ensure!(done.contains("Adopted rpool/ROOT/debian"), "{done}");
    let s = b.status()?;
    ensure!(
        s["boot"]["default"] == "debian",
        "the adopted system is the default: {}",
        s["boot"]
    );
    let zbm = b.sh("zfs get -H -o value org.zfsbootmenu:commandline rpool/ROOT/debian")?;
    ensure!(
        zbm.trim() == "cairn.version=debian cairn.boot=normal",
        "ZFSBootMenu's property is set on the adopted BE: {zbm}"
    );
    b.sh("grub-script-check /boot/cairn/grub/grub.cfg && grub-script-check /boot/cairn/grub/cairn.cfg")?;
    ok("adopted in place: `cairnctl status` works, the menu passes grub-script-check");

    b.reboot()?;
    let cmdline = b.sh("cat /proc/cmdline")?;
    ensure!(
        cmdline.contains("cairn.version=debian") && cmdline.contains("console=ttyS0"),
        "the next boot goes through cairn's menu into the same system: {cmdline}"
    );
    ensure!(b.running()? == "debian", "cairnctl sees debian running");
    ok("reboots through cairn's GRUB into the adopted system");

    b.sh("mountpoint -q /media/stick || mount -o ro LABEL=BUNDLES /media/stick")?;
    b.sh("cairnctl install /media/stick/stock-2.cairn")?;
    b.sh("cairnctl activate --try 2")?;
    b.reboot()?;
    ensure!(b.running()? == "2", "the trial boots 2");
    let release = b.sh("cat /etc/stock-release")?;
    ensure!(release.trim() == "2", "2's root is running: {release}");
    let st = b.state_of("2")?;
    ensure!(
        st == "active",
        "2 confirmed by its health check, state {st}"
    );
    ensure!(
        b.sh(data)? == data_before,
        "customer data (rpool/srv, rpool/home) unchanged by adoption and upgrade"
    );
    ok("a signed bundle upgrade is staged, tried, confirmed and boots; data unchanged");

    let before = b.sh(POOL_STATE)?;
    b.sh("dpkg -r cairn && dpkg -P cairn")?;
    ensure!(
        b.sh(POOL_STATE)? == before,
        "removing and purging the package changed no dataset"
    );
    ensure!(
        b.sh("test -s /boot/cairn/grub/cairn.cfg && echo kept")?
            .contains("kept"),
        "the boot menu stays (the box must still boot)"
    );
    ok("remove and purge leave every dataset and the boot menu untouched");
    Ok(())
}
