#!/bin/sh
#! Runs inside the builder guest (the tier-1 guest, real OpenZFS) and installs a stock
#! Debian root-on-ZFS system on /dev/vde as the OpenZFS root-on-ZFS guide does, in its
#! variant without a boot pool: rpool with compatibility=grub2, rpool/ROOT/debian at /,
#! rpool/home and rpool/srv beside it, GRUB from grub-install and update-grub in a chroot,
#! an @install snapshot. No cairn on it. The guide's second partition (its ESP slot) is
#! left empty: the test makes it cairn's boot partition, as an operator would.
#! Also builds the vendor's next release of that system (cairn's .deb installed in it, a
#! marker file) as a signed full bundle, and puts bundle, key and .deb on /dev/vdf.
#! Payload (/payload): cairn.deb, bin/cairn, vendor.key, vendor.pub, stock-2.yaml,
#! autologin.conf.
set -eu
P=/payload
R=${R:?the results file}
step=start
say() {
  step=$*
  echo "CAIRN-INFO build-stock: $*" | tee -a "$R"
}
trap 'echo "CAIRN-FATAL build-stock failed while $step" | tee -a "$R"' EXIT

# --- the Debian tree (what debootstrap would have made: the builder's own root) ---------
truncate -s 6G /scratch/build.img
zpool create -f -O compression=lz4 -O mountpoint=none -O atime=off \
  -O acltype=posixacl -O xattr=sa build /scratch/build.img
zfs create -o mountpoint=/build/os build/os
T=/build/os
say "copying the OS tree"
cp -ax / "$T/"
rm -rf "$T"/usr/src/* "$T"/usr/lib/gcc "$T"/usr/libexec/gcc "$T"/var/lib/dkms \
  "$T"/var/cache/apt/* "$T"/var/lib/apt/lists/* "$T"/usr/share/doc "$T"/usr/share/man \
  "$T"/usr/share/locale "$T"/sbin/cairn-guest-init "$T"/payload "$T"/scratch \
  "$T"/etc/zfs/zpool.cache
for d in proc sys dev run tmp home srv; do mkdir -p "$T/$d"; done
kver=$(ls "$T/lib/modules" | sort -V | tail -n1)
rm -rf "$T/lib/modules/$kver/build" "$T/lib/modules/$kver/source"
echo stock >"$T/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 stock\n' >"$T/etc/hosts"
# The guide: datasets are mounted by ZFS, not fstab.
echo "# <file system> <mount point> <type> <options> <dump> <pass>" >"$T/etc/fstab"
: >"$T/etc/machine-id"
# The test drives the system on its serial console.
mkdir -p "$T/etc/systemd/system/serial-getty@ttyS0.service.d"
cp $P/autologin.conf "$T/etc/systemd/system/serial-getty@ttyS0.service.d/"
systemctl --root="$T" mask systemd-timesyncd.service e2scrub_reap.service \
  e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
zfs snapshot build/os@stock

# --- the disk, as the guide partitions and pools it -------------------------------------
say "installing Debian on ZFS as the OpenZFS guide does"
D=/dev/vde
sfdisk -q $D <<PART
label: gpt
size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios
size=64MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=spare
type=6A898CC3-1DD2-11B2-99A6-080020736631, name=rpool
PART
sleep 1
zpool create -f -o ashift=12 -o compatibility=grub2 -O compression=lz4 -O atime=off \
  -O acltype=posixacl -O xattr=sa -O relatime=on -O canmount=off -O mountpoint=/ \
  -R /target rpool ${D}3
zfs create -o canmount=off -o mountpoint=none rpool/ROOT
zfs create -o canmount=noauto -o mountpoint=/ rpool/ROOT/debian
zfs mount rpool/ROOT/debian
zfs create rpool/home
zfs create rpool/srv
cp -a "$T/." /target/
echo "customer records" >/target/srv/records.txt
mkdir -p /target/home/operator && echo "operator notes" >/target/home/operator/notes.txt
cat >/target/etc/default/grub <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
for m in dev proc sys; do mount --rbind /$m /target/$m; done
chroot /target grub-install --target=i386-pc $D 2>&1 | tee -a "$R"
chroot /target update-grub 2>&1 | tee -a "$R"
grub-script-check /target/boot/grub/grub.cfg
grep -q 'root=ZFS=rpool/ROOT/debian' /target/boot/grub/grub.cfg
for m in dev proc sys; do umount -R /target/$m; done
zfs snapshot rpool/ROOT/debian@install
zfs list -r -o name,mountpoint,canmount rpool | tee -a "$R"

# --- the vendor's next release of this system, with cairn in it -------------------------
say "building the vendor's release 2 and its bundle"
zfs clone -o mountpoint=/build/v2 build/os@stock build/v2
cp $P/cairn.deb /build/v2/tmp/
chroot /build/v2 dpkg -i /tmp/cairn.deb 2>&1 | tail -n 3 | tee -a "$R"
rm /build/v2/tmp/cairn.deb
install -D -m644 $P/vendor.pub /build/v2/etc/cairn/keys/vendor.pub
cat >/build/v2/etc/default/cairnd <<'ENV'
CAIRN_PRODUCT="Debian on ZFS"
CAIRN_PRODUCT_ID=stock-debian
CAIRN_HARDWARE_ID=qemu-x86
CAIRN_CMDLINE="ro console=ttyS0,115200"
ENV
# The vendor's image mounts cairn's boot partition, as every cairn appliance image does.
echo 'LABEL=CAIRNBOOT /boot/cairn ext4 defaults,nofail 0 2' >>/build/v2/etc/fstab
mkdir -p /build/v2/boot/cairn
echo 2 >/build/v2/etc/stock-release
zfs snapshot build/v2@2
mkdir -p /scratch/config
$P/bin/cairn bundle build --template $P/stock-2.yaml --zfs-snapshot build/v2@2 \
  --config /scratch/config --key $P/vendor.key -o /scratch/stock-2.cairn
ls -l /scratch/stock-2.cairn | tee -a "$R"
mkfs.ext4 -q -L BUNDLES /dev/vdf
mkdir -p /stick && mount /dev/vdf /stick
cp /scratch/stock-2.cairn $P/vendor.pub $P/cairn.deb /stick/
umount /stick

zfs umount -a
zpool export rpool
zpool export build
say "stock system ready"
trap - EXIT
