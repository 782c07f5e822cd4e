#!/bin/sh
#! Runs inside the builder guest (the tier-1 guest, real OpenZFS) and assembles the demo
#! appliance: the OS tree (the guest's own Debian root plus cairn and the demo app), the
#! vendor's releases 1-5 as ZFS snapshots, their signed bundles, and the appliance disk
#! (/dev/vde): BIOS boot partition, CAIRNBOOT (GRUB, its menu and the boot state), and the
#! pool provisioned by `cairnd provision` from bundle 1.
#! Payload (/payload): bin/{cairnd,cairnctl,cairn}, demo/ (this repo's demo/), systemd/,
#! vendor.key, vendor.pub. The update bundles 2-5 go on /dev/vdf, an ext4 "USB stick"
#! labelled BUNDLES that the demo attaches to the appliance.
set -eu
P=/payload
R=${R:?the results file}
step=start
say() {
  step=$*
  echo "CAIRN-INFO build-demo: $*" | tee -a "$R"
}
trap 'echo "CAIRN-FATAL build-demo failed while $step" | tee -a "$R"' EXIT

# --- the vendor's build pool ------------------------------------------------------------
truncate -s 6G /scratch/build.img
zpool create -f -O compression=lz4 -O mountpoint=none -O atime=off \
  -O acltype=posixacl -O xattr=sa build /scratch/build.img
zfs create -o mountpoint=/build/os build/os
T=/build/os
say "copying the OS tree"
cp -ax / "$T/"
# What an appliance does not need: compilers, headers, DKMS sources, caches, docs.
rm -rf "$T"/usr/src/* "$T"/usr/lib/gcc "$T"/usr/libexec/gcc "$T"/var/lib/dkms \
  "$T"/var/cache/apt/* "$T"/var/lib/apt/lists/* "$T"/usr/share/doc "$T"/usr/share/man \
  "$T"/usr/share/locale "$T"/sbin/cairn-guest-init "$T"/payload "$T"/scratch \
  "$T"/etc/zfs/zpool.cache
for d in proc sys dev run tmp; do mkdir -p "$T/$d"; done
kver=$(ls "$T/lib/modules" | sort -V | tail -n1)
rm -rf "$T/lib/modules/$kver/build" "$T/lib/modules/$kver/source"
# GRUB reads the kernel from each version's root: regular files, not symlinks.
rm -f "$T/vmlinuz" "$T/initrd.img" "$T/vmlinuz.old" "$T/initrd.img.old"
ln "$T/boot/vmlinuz-$kver" "$T/vmlinuz"
ln "$T/boot/initrd.img-$kver" "$T/initrd.img"

say "installing cairn and the demo app"
install -D -m755 $P/bin/cairnd "$T/usr/libexec/cairnd"
install -D -m755 $P/bin/cairnctl "$T/usr/bin/cairnctl"
for u in $P/systemd/*.service $P/systemd/*.timer; do
  case $u in */org.cairn.Updater1.service) continue ;; esac
  install -m644 "$u" "$T/etc/systemd/system/"
done
install -D -m644 $P/systemd/org.cairn.Updater1.conf "$T/usr/share/dbus-1/system.d/org.cairn.Updater1.conf"
install -D -m644 $P/systemd/org.cairn.Updater1.service "$T/usr/share/dbus-1/system-services/org.cairn.Updater1.service"
install -D -m644 $P/vendor.pub "$T/etc/cairn/keys/vendor.pub"
cp -a $P/demo/rootfs/. "$T/"
echo demo >"$T/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 demo\n' >"$T/etc/hosts"
cat >"$T/etc/fstab" <<'FSTAB'
LABEL=CAIRNBOOT /boot/cairn ext4 defaults,nofail 0 2
# The demo's "USB stick" with update bundles.
LABEL=BUNDLES /media/stick ext4 ro,nofail,x-systemd.device-timeout=90s 0 0
FSTAB
mkdir -p "$T/media/stick" "$T/boot/cairn" "$T/etc/appliance" "$T/var/lib/app"
: >"$T/etc/machine-id"
systemctl --root="$T" enable cairnd.service cairn-health.service cairn-reset.service \
  cairn-config.service cairn-trial-timeout.timer demo-app.service >/dev/null 2>&1
systemctl --root="$T" mask systemd-timesyncd.service e2scrub_reap.service \
  e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
zfs snapshot build/os@1

# --- releases 2-5: each a clone of the one before, as a vendor builds them --------------
release() { # version base-snapshot
  zfs clone -o mountpoint=/build/v$1 "$2" build/v$1
  cp -a $P/demo/versions/$1/. /build/v$1/
  zfs snapshot build/v$1@$1
}
release 2 build/os@1
release 3 build/v2@2
release 4 build/v3@3
release 5 build/v3@3

say "building and signing bundles"
B=/scratch/bundles
mkdir -p $B
cairn() { $P/bin/cairn "$@"; }
cairn bundle build --template $P/demo/manifest-1.yaml --zfs-snapshot build/os@1 \
  --config $P/demo/config-1 --key $P/vendor.key -o $B/demo-1.cairn
cairn bundle build --template $P/demo/manifest-2.yaml --zfs-snapshot build/v2@2 \
  --zfs-from 1=build/os@1 --config $P/demo/config-2 --key $P/vendor.key -o $B/demo-2.cairn
cairn bundle build --template $P/demo/manifest-3.yaml --zfs-snapshot build/v3@3 \
  --zfs-from 2=build/v2@2 --config $P/demo/config-2 --key $P/vendor.key -o $B/demo-3.cairn
cairn bundle build --template $P/demo/manifest-4.yaml --zfs-snapshot build/v4@4 \
  --zfs-from 3=build/v3@3 --config $P/demo/config-2 --key $P/vendor.key -o $B/demo-4.cairn
cairn bundle build --template $P/demo/manifest-5.yaml --zfs-snapshot build/v5@5 \
  --zfs-from 3=build/v3@3 --config $P/demo/config-2 --key $P/vendor.key -o $B/demo-5.cairn
ls -l $B | tee -a "$R"
mkfs.ext4 -q -L BUNDLES /dev/vdf
mkdir -p /stick && mount /dev/vdf /stick
cp $B/demo-2.cairn $B/demo-3.cairn $B/demo-4.cairn $B/demo-5.cairn $P/vendor.pub /stick/
umount /stick

# --- the appliance disk -----------------------------------------------------------------
say "partitioning and provisioning the appliance disk"
D=/dev/vde
sfdisk -q $D <<PART
label: gpt
size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios
size=64MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=cairnboot
type=6A898CC3-1DD2-11B2-99A6-080020736631, name=rpool
PART
sleep 1
# No journal: GRUB reads this partition without replaying one, so after a power cut
# it would see metadata older than the data blocks it points to.
mkfs.ext4 -q -O ^has_journal -L CAIRNBOOT ${D}2
zpool create -f -o compatibility=grub2 -o ashift=12 -O compression=lz4 -O atime=off \
  -O acltype=posixacl -O xattr=sa -O mountpoint=none -O canmount=off -R /target rpool ${D}3
mkdir -p /target-boot && mount ${D}2 /target-boot
mkdir -p /target-boot/grub
# The same settings the appliance's units read, so the first menu matches later ones.
(
  set -a
  . "$T/etc/default/cairnd"
  $P/bin/cairnd --altroot /target --layout "$T/etc/cairn/layout.yaml" \
    --keys-dir "$T/etc/cairn/keys" --grubenv /target-boot/grubenv \
    --grub-dir /target-boot/grub provision $B/demo-1.cairn
) | tee -a "$R"
# GRUB for BIOS: core.img in the BIOS boot partition, prefix on CAIRNBOOT.
grub-install --target=i386-pc --boot-directory=/target-boot \
  --modules="part_gpt ext2" $D
cat >/target-boot/grub/grub.cfg <<'CFG'
# The demo appliance's GRUB: serial console, then cairn's generated menu.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
if [ -f "$prefix/cairn.cfg" ]; then
  source "$prefix/cairn.cfg"
fi
CFG
grub-script-check /target-boot/grub/grub.cfg
grub-script-check /target-boot/grub/cairn.cfg
zfs list -r -o name,origin,cairn:state,mountpoint rpool | tee -a "$R"
umount /target-boot
zpool export rpool
zpool export build
say "appliance disk ready"
trap - EXIT
