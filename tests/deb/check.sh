#!/bin/sh
# Runs in the tier-1 guest (Debian trixie, OpenZFS, systemd installed, not running):
# installs cairn's .deb, checks what it put where, then removes and purges it and checks
# that no dataset changed. Prints `CHECK ok|FAIL <what>` lines; `cargo xtask deb` judges.
deb=$1
ok() { echo "CHECK ok $*"; }
bad() { echo "CHECK FAIL $*"; }
check() { what=$1; shift; if "$@" >/tmp/check.out 2>&1; then ok "$what"; else bad "$what: $(tail -3 /tmp/check.out | tr '\n' ' ')"; fi; }

# A pool laid out as the OpenZFS root-on-ZFS guide does (not booted from here), with
# one of cairn's versions on it, so removal has something to leave alone.
truncate -s 256M /scratch/rpool.img
zpool create -f -o cachefile=none -O mountpoint=none -R /mnt rpool /scratch/rpool.img
zfs create -o canmount=off -o mountpoint=none rpool/ROOT
zfs create -o canmount=noauto -o mountpoint=/ rpool/ROOT/debian
zfs set cairn:managed=cairn rpool/ROOT/debian
zfs snapshot rpool/ROOT/debian@install
before=$(zfs list -Hp -t all -o name,guid,createtxg,cairn:managed -r rpool)

check "dpkg -i installs" dpkg -i "$deb"
check "dpkg reports it installed" sh -c "dpkg-query -W -f='\${Status}' cairn | grep -q 'install ok installed'"
for f in /usr/bin/cairnctl /usr/libexec/cairnd /usr/libexec/cairn-fleet /etc/grub.d/09_cairn; do
  check "$f is executable" test -x "$f"
done
for f in /usr/lib/systemd/system/cairnd.service /usr/lib/systemd/system/cairn-health.service \
         /usr/lib/systemd/system/cairn-trial-timeout.timer /usr/lib/systemd/system/cairn-cleanup.timer \
         /usr/lib/systemd/system/cairn-fleet.service /usr/share/doc/cairn/examples/fleet.yaml \
         /usr/share/dbus-1/system.d/org.cairn.Updater1.conf \
         /usr/share/dbus-1/system-services/org.cairn.Updater1.service \
         /usr/share/polkit-1/actions/org.cairn.updater1.policy \
         /etc/cairn/layout.yaml /etc/cairn/retention.yaml \
         /usr/share/man/man1/cairnctl.1.gz /usr/share/bash-completion/completions/cairnctl \
         /usr/share/zsh/vendor-completions/_cairnctl /usr/share/fish/vendor_completions.d/cairnctl.fish; do
  check "$f is installed" test -s "$f"
done
for u in cairn-health.service cairn-config.service cairn-reset.service cairn-trial-timeout.timer cairn-cleanup.timer cairn-fleet.service; do
  check "$u is enabled" sh -c "systemctl is-enabled $u | grep -qx enabled"
done
check "cairnctl runs" /usr/bin/cairnctl --help
check "cairn-fleet runs" /usr/libexec/cairn-fleet --help
check "the example fleet config names a server" sh -c "grep -q '^server:' /usr/share/doc/cairn/examples/fleet.yaml"
check "cairn-fleet waits for its config" sh -c "grep -qx 'ConditionPathExists=/etc/cairn/fleet.yaml' /usr/lib/systemd/system/cairn-fleet.service"
check "man cairnctl renders" sh -c "zcat /usr/share/man/man1/cairnctl.1.gz | grep -q cairnctl"
check "the bus policy names org.cairn.Updater1" sh -c "grep -q org.cairn.Updater1 /usr/share/dbus-1/system.d/org.cairn.Updater1.conf"
check "write-menu leaves an unmanaged pool alone" sh -c "/usr/libexec/cairnd write-menu | grep -q 'not managed'"
check "the grub.d hook emits a valid fragment" sh -c "/etc/grub.d/09_cairn > /tmp/frag.cfg && grub-script-check /tmp/frag.cfg"
echo "# operator's change" >> /etc/cairn/retention.yaml
check "dpkg -r removes" dpkg -r cairn
check "binaries gone after remove" sh -c "! test -e /usr/bin/cairnctl && ! test -e /usr/libexec/cairnd && ! test -e /usr/libexec/cairn-fleet"
check "conffiles kept after remove" sh -c "grep -q \"operator's change\" /etc/cairn/retention.yaml"
check "dpkg -P purges" dpkg -P cairn
check "conffiles gone after purge" sh -c "! test -e /etc/cairn/retention.yaml"
after=$(zfs list -Hp -t all -o name,guid,createtxg,cairn:managed -r rpool)
check "datasets untouched by install, remove and purge" test "$before" = "$after"
zpool export rpool
echo "CHECK-END"
