#!/usr/bin/env bash
#! Builds cairn's test guest from nothing: Debian trixie with the cloud kernel, OpenZFS
#! (zfs-dkms built inside the chroot for that kernel), systemd, GRUB. Output in $1:
#!   rootfs/      the guest's root tree
#!   vmlinuz, initrd.img, versions.txt
# Called by `cargo xtask vm-image`, which caches $1 keyed by this file's contents.
set -euo pipefail
out=${1:?usage: build-guest.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mirror=$("$here/debian-mirror.sh")
suite=trixie
rm -rf "$out"
mkdir -p "$out"

packages=(
  # kernel and OpenZFS, built for that kernel by DKMS inside the chroot
  linux-image-cloud-amd64 linux-headers-cloud-amd64 pahole
  zfs-dkms zfsutils-linux zfs-initramfs
  # a bootable appliance base (tier 2 reuses this tree)
  systemd systemd-sysv dbus udev kmod initramfs-tools busybox
  grub-pc-bin grub2-common e2fsprogs fdisk util-linux procps
)
include=$(IFS=,; echo "${packages[*]}")

# The guest's tiny test init: mounts the payload disk and hands over to its `run` script.
# Kept here (not on the payload) so that the image stays the same when tests change.
init_script='#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /tmp
mkdir -p /payload && mount -o ro /dev/vdb /payload
exec /payload/run
'

mmdebstrap --variant=minbase --components=main,contrib \
  --aptopt='APT::Install-Recommends "false"' \
  --include="$include" \
  --customize-hook='chroot "$1" dkms status' \
  --customize-hook="printf '%s' '$init_script' > \"\$1/sbin/cairn-guest-init\"; chmod 755 \"\$1/sbin/cairn-guest-init\"" \
  --customize-hook='chroot "$1" dpkg-query -W -f="\${Package} \${Version}\n" > "$1/cairn-versions.txt"' \
  --customize-hook='rm -rf "$1"/var/lib/dkms/zfs/*/build "$1"/var/cache/apt/archives/*.deb "$1"/usr/share/doc "$1"/usr/share/man' \
  "$suite" "$out/rootfs" "deb $mirror $suite main contrib"

kver=$(ls "$out/rootfs/lib/modules" | sort -V | tail -n1)
ls "$out/rootfs/lib/modules/$kver/updates/dkms/" | grep -q '^zfs\.ko' \
  || { echo "zfs.ko was not built for $kver" >&2; exit 1; }
cp "$out/rootfs/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$out/rootfs/boot/initrd.img-$kver" "$out/initrd.img"
mv "$out/rootfs/cairn-versions.txt" "$out/versions.txt"
echo "kernel $kver" >>"$out/versions.txt"
echo "guest built: kernel $kver, $(grep '^zfsutils-linux ' "$out/versions.txt")"
