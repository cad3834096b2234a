#!/bin/sh
# Makes a Debian 12 root with systemd 252 for the tests that boot a real systemd
# (Tests/TestSupport/BootedSystemd.swift), or finds it made already, and prints its path.
#
# debootstrap takes about a minute and the root does not change, so it is kept outside the clone
# in $BERTH_TEST_CACHE (default /var/cache/berth-tests), named by a hash of this script: a change
# to the package list or the set-up below makes a new root. A root is complete only once its
# .complete marker exists, so a run killed midway leaves nothing that a later run would trust.
# Run as root. Needs debootstrap (scripts/packages.txt).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${BERTH_TEST_CACHE:-/var/cache/berth-tests}
key=$(sha256sum "$here/systemd-root.sh" | cut -c1-16)
root="$cache/debian12-systemd-$key"
if [ -e "$root/.complete" ]; then echo "$root"; exit 0; fi

# systemd and its container tools; the libraries berthd and berth-transfer link (the Swift
# runtime is bind-mounted from the build machine's toolchain).
packages=systemd,systemd-sysv,dbus,systemd-container,libbtrfsutil1,libarchive13,libcurl4,libgpgme11,libssl3,zlib1g,procps
# The mirror apt already uses here, else Debian's own.
mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$cache"
rm -rf "$root.tmp"
debootstrap --variant=minbase --include="$packages" bookworm "$root.tmp" "$mirror" >&2
chroot "$root.tmp" passwd -d root >/dev/null
rm -f "$root.tmp/etc/machine-id"
systemd-machine-id-setup --root "$root.tmp" >/dev/null 2>&1
# A quiet boot: no apt timers, no getty waiting on a console.
rm -f "$root.tmp"/etc/systemd/system/timers.target.wants/apt-*
rm -rf "$root.tmp/var/cache/apt/archives"/*.deb
touch "$root.tmp/.complete"
# Older roots of other keys are stale: remove them.
for old in "$cache"/debian12-systemd-*; do
    [ "$old" = "$root.tmp" ] || [ ! -d "$old" ] || rm -rf "$old"
done
mv "$root.tmp" "$root"
echo "$root"
