#!/bin/sh
# Installs what the tests and the QEMU lab need, only when it is missing:
# the npm packages (npm ci) and the Debian packages (apt-get).
set -eu
cd "$(dirname "$0")/.."

if [ ! -x node_modules/.bin/tap ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

packages="qemu-system-x86 qemu-system-arm binutils busybox-static squashfs-tools mtd-utils f2fs-tools e2fsprogs attr cpio kmod git time rsync"
missing=""
for package in $packages; do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup-host: missing Debian packages:$missing (run as root to install them)" >&2
    exit 4
  fi
  echo "setup-host: installing$missing" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
