#!/usr/bin/env bash
#! Installs the Debian packages the host side of cairn's tests needs (idempotent); extra
#! packages named as arguments too (`cargo xtask deb` asks for lintian).
# Adds the contrib component and bookworm-backports itself: QEMU on these hosts comes from
# backports (qemu-utils is already the backports build), and ZFS lives in contrib.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

codename=$(. /etc/os-release && echo "${VERSION_CODENAME}")
mirror=$("$(dirname "$0")/debian-mirror.sh")
list=/etc/apt/sources.list.d/cairn-host.sources
if [ ! -f "$list" ]; then
  cat >"$list" <<SRC
Types: deb
URIs: ${mirror}
Suites: ${codename}-backports
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -q
elif [ ! -d /var/lib/apt/lists ] || [ -z "$(ls /var/lib/apt/lists/*backports* 2>/dev/null)" ]; then
  apt-get update -q
fi

pkgs=(qemu-system-x86 mmdebstrap fdisk e2fsprogs grub-common minisign dbus-daemon polkitd systemd util-linux mount zstd cpio curl python3-venv "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -q --no-install-recommends -t "${codename}-backports" "${missing[@]}"
fi

# goosebit, the DDI server the fleet client's tests run against (PyPI, pinned; a venv in
# the cache, rebuilt when the pins change).
req="$(dirname "$0")/../../tests/fleet/goosebit-requirements.txt"
key=$(sha256sum "$req" | cut -c1-16)
gb="${XDG_CACHE_HOME:-$HOME/.cache}/cairn/goosebit-$key"
if [ ! -f "$gb/.complete" ]; then
  rm -rf "$gb"
  /usr/bin/python3 -m venv "$gb"
  "$gb/bin/pip" install -q --disable-pip-version-check -r "$req"
  touch "$gb/.complete"
fi
ln -sfn "$gb" "${XDG_CACHE_HOME:-$HOME/.cache}/cairn/goosebit"
