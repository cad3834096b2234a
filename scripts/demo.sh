#!/bin/sh
# Installs what is needed, builds, and shows berthd serving machine1/import1/portable1 on a
# private D-Bus system bus over a pool in ./demo-root (nothing outside this folder is touched).
set -eu
cd "$(dirname "$0")/.."
scripts/install-packages.sh
swift build
bin=$(swift build --show-bin-path)
demo=$(pwd)/demo-root
# A fresh pool each time (an interrupted run may have left an immutable read-only image).
if [ -d "$demo" ]; then chattr -R -i "$demo" 2>/dev/null || true; rm -rf "$demo"; fi
mkdir -p "$demo/var/lib"
mkdir -m 0700 "$demo/var/lib/machines"  # private, as systemd makes it (berthd warns otherwise)
. scripts/private-bus.sh
address=$(start_private_bus "$demo/run/dbus")
bus_pid=$(cat "$demo/run/dbus/pid")
export DBUS_SYSTEM_BUS_ADDRESS="$address"
"$bin/berthd" --root "$demo" --bus-address "$address" &
berthd_pid=$!
cleanup() { kill "$berthd_pid" 2>/dev/null || true; wait "$berthd_pid" 2>/dev/null || true; kill "$bus_pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
i=0
until busctl --address="$address" list --acquired --no-legend 2>/dev/null | grep -q org.freedesktop.portable1; do
    i=$((i + 1)); [ "$i" -lt 200 ] || { echo "berthd did not start" >&2; exit 1; }
    sleep 0.05
done
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" || true; }
step "$bin/berthctl" status --bus-address "$address"
step busctl --address="$address" tree org.freedesktop.machine1 org.freedesktop.import1 org.freedesktop.portable1
step busctl --address="$address" get-property org.freedesktop.machine1 /org/freedesktop/machine1 org.freedesktop.machine1.Manager PoolPath

# A small OS tree dropped into the pool behind berthd's back: it is an image at once.
mkdir -p "$demo/var/lib/machines/demo/etc"
printf 'ID=debian\nPRETTY_NAME="Demo OS 1"\n' > "$demo/var/lib/machines/demo/etc/os-release"
echo demo-host > "$demo/var/lib/machines/demo/etc/hostname"
b() { "$bin/berthctl" "$@" --bus-address "$address"; }
step b list-images
step b clone demo demo-copy
step b read-only demo-copy
step b image-status demo-copy
printf '\n# read-only means read-only, for root too:\n'
step touch "$demo/var/lib/machines/demo-copy/new-file"
step b list-images --json
# The real machinectl speaks to berthd unchanged; it refuses to run unless /run/systemd/system exists.
if [ -d /run/systemd/system ]; then
    step machinectl list-images --all
    step machinectl show-image demo
    step machinectl remove demo-copy
else
    printf '\n(machinectl refuses to run without /run/systemd/system; mkdir it to try machinectl too)\n'
    step b remove demo-copy
fi
# import1: each transfer runs in a berth-transfer worker process; the image appears whole or not at all.
printf '\n# import1: export an image as a tar.gz, import it back under another name\n'
step b export-tar demo "$demo/demo.tar.gz"
step b import-tar "$demo/demo.tar.gz" demo-imported
step cat "$demo/var/lib/machines/demo-imported/etc/os-release"
printf '\n# a truncated archive is refused and leaves nothing behind:\n'
head -c 100 "$demo/demo.tar.gz" > "$demo/broken.tar.gz"
step b import-tar "$demo/broken.tar.gz" broken
step b list-images
# portable1: a portable service image, inspected, attached (unit files and drop-ins written under
# demo-root/etc; nothing is started: there is no systemd here) and detached again.
printf '\n# portable1: attach a portable service image with one of Berth'"'"'s profiles\n'
mkdir -p "$demo/usr/lib/systemd/portable" "$demo/var/lib/portables/hello_1.0/usr/lib/systemd/system"
cp -a dist/portable-profiles "$demo/usr/lib/systemd/portable/profile"
printf 'ID=debian\nVERSION_ID=12\nPORTABLE_PREFIXES=hello\n' > "$demo/var/lib/portables/hello_1.0/usr/lib/os-release"
printf '[Service]\nExecStart=/usr/bin/hello\n' > "$demo/var/lib/portables/hello_1.0/usr/lib/systemd/system/hello.service"
step b portable inspect --cat hello_1.0
step b portable attach --profile strict hello_1.0
step cat "$demo/etc/systemd/system.attached/hello.service.d/20-portable.conf"
step b portable list
step b portable detach hello_1.0

# machine1: the real systemd-nspawn registers a container with berthd (no systemd as PID 1 is
# needed), berthctl and machinectl see it, a shell runs inside it, and terminate ends it.
if [ "$(id -u)" = 0 ] && command -v systemd-nspawn >/dev/null && [ -x /bin/busybox ]; then
    printf '\n# machine1: a busybox container started by the real systemd-nspawn registers with berthd\n'
    bb="$demo/var/lib/machines/bb"
    mkdir -p "$bb/bin" "$bb/etc" "$bb/usr/lib" "$bb/proc" "$bb/sys" "$bb/dev" "$bb/run" "$bb/tmp"
    cp /bin/busybox "$bb/bin/busybox"
    for applet in sh sleep cat hostname ps; do ln -sf busybox "$bb/bin/$applet"; done
    printf 'ID=busybox\nPRETTY_NAME="Busybox demo"\n' > "$bb/usr/lib/os-release"
    # nspawn makes its control groups below its own: give it one of its own in each hierarchy.
    groups=""
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
        [ -e "$h/cgroup.procs" ] && mkdir -p "$h/berth-demo" && groups="$groups $h/berth-demo"
    done
    sh -c 'for g in $0; do echo $$ > "$g/cgroup.procs"; done; exec systemd-nspawn -q -D "$1" -M bb --register=yes /bin/sleep 600' \
        "$groups" "$bb" > "$demo/nspawn.log" 2>&1 &
    nspawn_pid=$!
    i=0
    until "$bin/berthctl" list --no-legend 2>/dev/null | grep -q '^bb '; do
        i=$((i + 1)); [ "$i" -lt 200 ] || { echo "the container did not register:" >&2; cat "$demo/nspawn.log" >&2; break; }
        sleep 0.05
    done
    sleep 1  # nspawn registers before it has finished setting the container up
    step b list
    step b status bb
    inside() { "$bin/berthctl" shell bb /bin/sh -c 'echo "in $(hostname): pid $$, $(cat /usr/lib/os-release | tail -1)"; ps' < /dev/null; }
    step inside
    step machinectl list
    step b terminate bb
    wait "$nspawn_pid" 2>/dev/null || true
    for g in $groups; do rmdir "$g" 2>/dev/null || true; done
fi
printf '\nStopping berthd (SIGTERM)...\n'
kill "$berthd_pid"; wait "$berthd_pid" && echo "berthd exited 0"
