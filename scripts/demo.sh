#!/bin/sh
# Installs what is needed, builds, and shows berthd serving machine1/import1/portable1 on a
# private D-Bus system bus over a pool in ./demo-root (nothing outside this folder is touched).
set -eu
cd "$(dirname "$0")/.."
scripts/install-packages.sh
swift build
bin=$(swift build --show-bin-path)
demo=$(pwd)/demo-root
mkdir -p "$demo/var/lib/machines" "$demo/run/dbus"
cat > "$demo/run/dbus/bus.conf" <<CONF
<busconfig>
  <type>system</type>
  <listen>unix:path=$demo/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/>
    <allow send_type="method_call"/><allow send_type="signal"/><allow send_type="method_return"/><allow send_type="error"/>
    <allow receive_type="method_call"/><allow receive_type="signal"/><allow receive_type="method_return"/><allow receive_type="error"/>
  </policy>
</busconfig>
CONF
# The forked daemon keeps its stdout open: print the pid to a file, not into $(...).
dbus-daemon --config-file="$demo/run/dbus/bus.conf" --fork --print-pid=1 > "$demo/run/dbus/pid"
bus_pid=$(cat "$demo/run/dbus/pid")
address="unix:path=$demo/run/dbus/system_bus_socket"
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
step busctl --address="$address" introspect org.freedesktop.machine1 /org/freedesktop/machine1 org.freedesktop.machine1.Manager
step busctl --address="$address" get-property org.freedesktop.machine1 /org/freedesktop/machine1 org.freedesktop.machine1.Manager PoolPath
# Image methods arrive with the pool; until then berthd answers NotSupported rather than make up a list.
if [ -d /run/systemd/system ]; then
    step machinectl list-images
else
    printf '\n(machinectl refuses to run without /run/systemd/system; not creating it here)\n'
fi
printf '\nStopping berthd (SIGTERM)...\n'
kill "$berthd_pid"; wait "$berthd_pid" && echo "berthd exited 0"
