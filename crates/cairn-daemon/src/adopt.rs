//! `cairnd adopt`: takes an installed Debian root-on-ZFS system (the OpenZFS guide's
//! `<pool>/ROOT/<be>`) under management in place. The engine adopts the datasets; this
//! module checks and sets up what GRUB needs outside the boot environments: cairn's boot
//! partition (writable by GRUB, for the boot state), the menu on it, and GRUB installed
//! with its prefix there, so no boot environment holds the boot loader's files.

use anyhow::{Context, bail};
use cairn_engine::{Adoption, Engine};
use cairn_zfs::cmd::{Cmd, Runner};
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`: where, what, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub at: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The mounts in a mountinfo text (octal escapes in paths undone); the last mount on a
/// path is the one in effect.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            if c == '\\' {
                let code: String = it.by_ref().take(3).collect();
                match u8::from_str_radix(&code, 8) {
                    Ok(b) => out.push(b as char),
                    Err(_) => {
                        out.push('\\');
                        out.push_str(&code);
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let at = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_owned();
            let source = unescape(r.next()?);
            Some(Mount {
                at: PathBuf::from(unescape(at)),
                fstype,
                source,
            })
        })
        .collect()
}

/// The mount in effect at `path`, if something is mounted exactly there.
pub fn mounted_at<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.at == path)
}

/// The kernel arguments an adopted system keeps booting with: the running command line
/// without what cairn's menu sets itself (`BOOT_IMAGE`, `root`, `cairn.*`).
pub fn kept_cmdline(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter(|w| {
            !(w.starts_with("BOOT_IMAGE=") || w.starts_with("root=") || w.starts_with("cairn."))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The serial console the kernel writes to (`console=ttyS<n>[,<speed>]`), for GRUB.
pub fn serial_console(cmdline: &str) -> Option<(u32, u32)> {
    cmdline.split_whitespace().find_map(|w| {
        let rest = w.strip_prefix("console=ttyS")?;
        let (unit, speed) = rest.split_once(',').unwrap_or((rest, "115200"));
        let speed: String = speed.chars().take_while(char::is_ascii_digit).collect();
        Some((unit.parse().ok()?, speed.parse().unwrap_or(115_200)))
    })
}

/// The root's boot environment name, when `/` is `<container>/<be>` on ZFS.
pub fn root_be(mounts: &[Mount], container: &str) -> anyhow::Result<String> {
    let root = mounted_at(mounts, Path::new("/")).context("nothing is mounted at /")?;
    if root.fstype != "zfs" {
        bail!(
            "cannot adopt this system: / is {} ({}), not a ZFS boot environment; nothing was changed",
            root.fstype,
            root.source
        );
    }
    match root.source.strip_prefix(&format!("{container}/")) {
        Some(be) if !be.contains('/') => Ok(be.to_owned()),
        _ => bail!(
            "cannot adopt this system: / is {}, not a boot environment under {container}; \
             nothing was changed",
            root.source
        ),
    }
}

/// GRUB boots each version's kernel from its own root (`/vmlinuz`, `/initrd.img`): a
/// `/boot` on another file system (the guide's boot pool) would leave the adopted
/// version without a kernel GRUB can find, so it is refused, as are missing links.
pub fn check_kernel_in_root(
    mounts: &[Mount],
    exists: &dyn Fn(&Path) -> bool,
) -> anyhow::Result<()> {
    if let Some(boot) = mounted_at(mounts, Path::new("/boot")) {
        bail!(
            "cannot adopt this system: /boot is a separate file system ({} {}), and cairn \
             boots each version's kernel from the version's own root; boot pools are not \
             supported yet (the guide's no-bpool layout is); nothing was changed",
            boot.fstype,
            boot.source
        );
    }
    for link in ["/vmlinuz", "/initrd.img"] {
        if !exists(Path::new(link)) {
            bail!(
                "cannot adopt this system: {link} is missing, and GRUB boots each version \
                 through it; set do_symlinks = yes in /etc/kernel-img.conf and run \
                 `dpkg-reconfigure linux-image-$(uname -r)`; nothing was changed"
            );
        }
    }
    Ok(())
}

/// Whether `tune2fs -l` output lists the `has_journal` feature.
pub fn has_journal(tune2fs: &str) -> bool {
    tune2fs
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .is_some_and(|f| f.split_whitespace().any(|w| w == "has_journal"))
}

/// What `cairnd adopt` needs to know.
#[derive(Debug)]
pub struct Request {
    pub be: Option<String>,
    pub version: Option<String>,
    pub dry_run: bool,
    pub grub_disk: Option<PathBuf>,
    pub grubenv: PathBuf,
    pub grub_dir: PathBuf,
    pub env_label: String,
    pub cmdline: String,
    /// Where `CAIRN_CMDLINE` is kept for the units (`/etc/default/cairnd`).
    pub defaults_file: PathBuf,
}

/// The whole plan, the engine's and the boot loader's, in words.
#[derive(Debug)]
pub struct Plan {
    pub adoption: Adoption,
    pub boot: Vec<String>,
    pub disk: PathBuf,
    pub cmdline: String,
}

/// Checks everything and returns the plan; with `dry_run` that is all. Otherwise the
/// engine adopts the datasets, then the menu, GRUB's config and GRUB itself are written.
pub fn adopt(
    engine: &Engine,
    req: &Request,
    write_menu: &dyn Fn(&Engine, &str),
) -> anyhow::Result<Plan> {
    let mounts = parse_mountinfo(
        &std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?,
    );
    let container = engine.layout().root_container().to_string();
    let be = match &req.be {
        Some(be) => be.clone(),
        None => root_be(&mounts, &container)?,
    };
    check_kernel_in_root(&mounts, &|p: &Path| p.exists())?;
    let boot_dir = req
        .grubenv
        .parent()
        .context("the grubenv path has a directory")?;
    let area = mounted_at(&mounts, boot_dir);
    let Some(area) =
        area.filter(|m| matches!(m.fstype.as_str(), "ext2" | "ext3" | "ext4" | "vfat"))
    else {
        bail!(
            "cannot adopt this system: cairn keeps the boot state where GRUB can write it, on a \
             small ext4 or vfat partition labelled {label} mounted at {dir}, and none is \
             mounted there; nothing was changed.\n  Make one (64 MiB is plenty), e.g.: \
             mkfs.ext4 -O ^has_journal -L {label} /dev/sdX2 && mkdir -p {dir} && \
             echo 'LABEL={label} {dir} ext4 defaults 0 2' >> /etc/fstab && mount {dir}",
            label = req.env_label,
            dir = boot_dir.display()
        );
    };
    let label = Runner::new()
        .run(&Cmd::new("blkid").args(["-s", "LABEL", "-o", "value", &area.source]))
        .unwrap_or_default();
    if label.trim() != req.env_label {
        bail!(
            "cannot adopt this system: {} at {} is labelled '{}', GRUB looks for '{}'; \
             label it (e2label {} {}) and run this again; nothing was changed",
            area.source,
            boot_dir.display(),
            label.trim(),
            req.env_label,
            area.source,
            req.env_label
        );
    }
    if area.fstype != "vfat" {
        let features = Runner::new()
            .run(&Cmd::new("tune2fs").arg("-l").arg(&area.source))
            .unwrap_or_default();
        if has_journal(&features) {
            bail!(
                "cannot adopt this system: {} at {} has a journal; GRUB reads the partition \
                 without replaying it, so after a power cut it can read a half-updated menu. \
                 Remove it (umount {dir}; tune2fs -O ^has_journal {}; mount {dir}) and run \
                 this again; nothing was changed",
                area.source,
                boot_dir.display(),
                area.source,
                dir = boot_dir.display()
            );
        }
    }
    if Path::new("/sys/firmware/efi").exists() {
        bail!(
            "cannot adopt this system: it boots through UEFI, and `cairnd adopt` installs GRUB \
             for BIOS (i386-pc) only so far; nothing was changed"
        );
    }
    let disk = match &req.grub_disk {
        Some(d) => d.clone(),
        None => PathBuf::from(
            Runner::new()
                .run(&Cmd::new("grub-probe").arg("--target=disk").arg(boot_dir))
                .context("finding the disk of the boot partition (grub-probe)")?
                .trim(),
        ),
    };
    let version = match &req.version {
        Some(v) => v.clone(),
        None => format!(
            "debian-{}",
            std::fs::read_to_string("/etc/debian_version")
                .unwrap_or_else(|_| "unknown".into())
                .trim()
        ),
    };
    let cmdline = if req.cmdline.is_empty() {
        kept_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    } else {
        req.cmdline.clone()
    };
    let adoption = engine.adopt_system(&be, &version, true, "cairnctl")?;
    let boot = vec![
        format!(
            "write the boot state ({}) and cairn's GRUB menu ({}/cairn.cfg), kernel arguments \
             '{cmdline}' (kept in {})",
            req.grubenv.display(),
            req.grub_dir.display(),
            req.defaults_file.display()
        ),
        format!(
            "install GRUB (i386-pc) to {} with its files in {}: the old /boot/grub stays \
             in {} but is no longer read",
            disk.display(),
            req.grub_dir.display(),
            adoption.root
        ),
        "then reboot: the system starts through cairn's menu as the same system".into(),
    ];
    let plan = Plan {
        adoption,
        boot,
        disk,
        cmdline,
    };
    if req.dry_run {
        return Ok(plan);
    }
    let done = engine.adopt_system(&be, &version, false, "cairnctl")?;
    tracing::info!(be = %be, version = %version, "adopted the system's root");
    keep_cmdline(&req.defaults_file, &plan.cmdline)?;
    std::fs::create_dir_all(&req.grub_dir)?;
    write_menu(engine, &plan.cmdline);
    std::fs::write(
        req.grub_dir.join("grub.cfg"),
        cairn_grub::menu::render_loader(serial_console(&plan.cmdline)),
    )?;
    let install = Cmd::new("grub-install")
        .arg("--target=i386-pc")
        .arg(format!("--boot-directory={}", boot_dir.display()))
        .arg(&plan.disk);
    if let Err(e) = Runner::new().run(&install) {
        bail!(
            "the datasets are adopted and the menu is written, but grub-install failed ({e}); \
             the old boot loader still boots the system: run `{}` once the problem is fixed",
            install.display()
        );
    }
    // A daemon already running was started with the old settings (kernel arguments).
    if Path::new("/run/systemd/system").exists() {
        let _ = Runner::new().run(&Cmd::new("systemctl").args(["try-restart", "cairnd.service"]));
    }
    Ok(Plan {
        adoption: done,
        ..plan
    })
}

/// Records the kernel arguments in the units' environment file, unless one is set there.
fn keep_cmdline(file: &Path, cmdline: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    if text
        .lines()
        .any(|l| l.trim_start().starts_with("CAIRN_CMDLINE="))
    {
        return Ok(());
    }
    let mut text = text;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "# Kernel arguments for cairn's menu entries (from the system adopted).\nCAIRN_CMDLINE=\"{}\"\n",
        cmdline.replace('"', "")
    ));
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - zfs rpool/ROOT/debian rw,xattr,posixacl
40 22 0:35 / /home rw,relatime shared:20 - zfs rpool/home rw,xattr,posixacl
41 22 254:2 / /boot/cairn rw,relatime shared:21 - ext4 /dev/vda2 rw
42 22 0:36 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo_names_the_root_boot_environment_and_the_boot_partition() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(root_be(&m, "rpool/ROOT").unwrap(), "debian");
        let boot = mounted_at(&m, Path::new("/boot/cairn")).unwrap();
        assert_eq!(
            (boot.fstype.as_str(), boot.source.as_str()),
            ("ext4", "/dev/vda2")
        );
        assert!(mounted_at(&m, Path::new("/mnt/with space")).is_some());
    }

    #[test]
    fn a_root_outside_the_container_or_not_on_zfs_is_refused() {
        let m = parse_mountinfo(MOUNTINFO);
        let e = root_be(&m, "tank/ROOT").unwrap_err().to_string();
        assert!(e.contains("not a boot environment under tank/ROOT"), "{e}");
        let ext4 = parse_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n");
        let e = root_be(&ext4, "rpool/ROOT").unwrap_err().to_string();
        assert!(e.contains("/ is ext4"), "{e}");
    }

    #[test]
    fn a_boot_pool_or_missing_kernel_links_are_refused() {
        let all = |_: &Path| true;
        let m = parse_mountinfo(MOUNTINFO);
        check_kernel_in_root(&m, &all).unwrap();
        let bpool = parse_mountinfo(&format!(
            "{MOUNTINFO}43 22 0:40 / /boot rw - zfs bpool/BOOT/debian rw\n"
        ));
        let e = check_kernel_in_root(&bpool, &all).unwrap_err().to_string();
        assert!(
            e.contains("bpool/BOOT/debian") && e.contains("boot pools"),
            "{e}"
        );
        let no_initrd = |p: &Path| p != Path::new("/initrd.img");
        let e = check_kernel_in_root(&m, &no_initrd)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/initrd.img is missing"), "{e}");
    }

    #[test]
    fn a_journal_on_the_boot_partition_is_seen() {
        let with = "Filesystem volume name:   CAIRNBOOT\nFilesystem features:      has_journal ext_attr resize_inode extent\n";
        let without = "Filesystem features:      ext_attr resize_inode dir_index extent 64bit\n";
        assert!(has_journal(with));
        assert!(!has_journal(without));
        assert!(!has_journal(""));
    }

    #[test]
    fn kernel_arguments_keep_the_console_and_drop_what_the_menu_sets() {
        let line = "BOOT_IMAGE=/ROOT/debian@/boot/vmlinuz-6.12 root=ZFS=rpool/ROOT/debian ro console=ttyS0,115200n8 cairn.version=x";
        assert_eq!(kept_cmdline(line), "ro console=ttyS0,115200n8");
        assert_eq!(serial_console(line), Some((0, 115_200)));
        assert_eq!(serial_console("quiet"), None);
    }
}
