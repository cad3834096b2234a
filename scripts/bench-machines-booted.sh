#!/bin/bash
# The reference for bench.sh's machine registry row, which bench.sh itself cannot give: machined
# 252 registers nothing where PID 1 is not systemd. Here both daemons run under a booted systemd
# 252 (a Debian 12 container booted with systemd-nspawn from the cached root of
# scripts/systemd-root.sh), one after the other on its system bus: first berthd.service (installed
# by dist/install.sh), then systemd-machined in its place. Each does RegisterMachine +
# TerminateMachine of N machines whose leaders are sleeping processes, each a service of its own
# (machined keeps one machine per unit); TerminateMachine is then a StopUnit for both.
#
# Run as root. Environment:
#   BENCH_BIN     folder holding berthd, berth-transfer, berth-inspect and berth-bench (required; the repository
#                 and it are bind-mounted read-only into the container)
#   BENCH_COUNT   machines per run (default 100)
#   BENCH_REPEAT  runs per daemon (default 5)
#   BENCH_OUT     also write the Markdown results here
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
[ "$(id -u)" = 0 ] || { echo "bench-machines-booted.sh: run as root" >&2; exit 1; }
bin=$(cd "${BENCH_BIN:?set BENCH_BIN to the folder holding berthd, berth-transfer, berth-inspect and berth-bench}" && pwd)
count=${BENCH_COUNT:-100}
repeat=${BENCH_REPEAT:-5}
root=$(scripts/systemd-root.sh)
name=berth-bench-machines
work=$(mktemp -d /var/tmp/berth-bench-machines.XXXXXX)
t0=$(date +%s)

# nspawn's payload goes below the cgroup of the process that runs it: one of its own in each
# hierarchy (as Tests/TestSupport/BootedSystemd.swift does; notes/booting-systemd.md says why).
cgroups=()
for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    [ -e "$h/cgroup.procs" ] || continue
    mkdir -p "$h/berth-test-$name"
    cgroups+=("$h/berth-test-$name")
done
[ -e /sys/fs/cgroup/cgroup.controllers ] && { mkdir -p "/sys/fs/cgroup/berth-test-$name"; cgroups+=("/sys/fs/cgroup/berth-test-$name"); }
enter=""
for c in "${cgroups[@]}"; do enter+="echo \$\$ > $c/cgroup.procs; "; done
sh -c "$enter exec systemd-nspawn -D '$root' --volatile=overlay -b --keep-unit --register=no -M $name --console=read-only \
       --bind-ro=/opt/swift --bind-ro='$repo' --bind-ro='$bin' --bind='$work'" > "$work/boot.log" 2>&1 &
nspawn=$!

remove_cgroup() { # DIR: the empty groups below it, depth first, then it
    local d
    for d in "$1"/*/; do [ -d "$d" ] && remove_cgroup "${d%/}"; done
    rmdir "$1" 2>/dev/null || true
}
cleanup() {
    set +e
    kill "$nspawn" 2>/dev/null
    wait "$nspawn" 2>/dev/null
    for c in "${cgroups[@]}"; do remove_cgroup "$c"; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

init=""
for ((i = 0; i < 1800; i++)); do
    init=$(cut -d' ' -f1 "/proc/$nspawn/task/$nspawn/children" 2>/dev/null || true)
    [ -z "$init" ] || break
    sleep 0.1
done
[ -n "$init" ] || { echo "bench-machines-booted.sh: nspawn started no container: $(cat "$work/boot.log")" >&2; exit 1; }
inside() { # COMMAND: run with /bin/sh in all of the container's namespaces
    nsenter -t "$init" -a -- /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        SYSTEMD_PAGER= SYSTEMD_COLORS=0 /bin/sh -c "$1"
}
for ((i = 0; ; i++)); do
    state=$(inside "systemctl is-system-running" 2>/dev/null || true)
    [ "$state" = running ] || [ "$state" = degraded ] && break
    [ "$i" -lt 900 ] || { echo "bench-machines-booted.sh: systemd did not boot ($state)" >&2; exit 1; }
    sleep 0.2
done

bus=unix:path=/run/dbus/system_bus_socket
results=$work/results.tsv
echo "== berthd.service"
inside "cd '$repo' && dist/install.sh --bin '$bin' >/dev/null && systemctl enable --now berthd.service 2>/dev/null"
pid=$(inside "systemctl show -p MainPID --value berthd.service")
inside "'$bin/berth-bench' machines --count $count --leaders-in-units yes --repeat $repeat --berth $bus --berth-pid $pid --results $results"
echo "== systemd-machined 252 in its place"
inside "systemctl disable --now berthd.service 2>/dev/null && rm /etc/systemd/system/berthd.service && systemctl daemon-reload \
        && systemctl start systemd-machined.service"
pid=$(inside "systemctl show -p MainPID --value systemd-machined.service")
inside "'$bin/berth-bench' machines --count $count --leaders-in-units yes --repeat $repeat --systemd $bus --systemd-pid $pid --results $results"

echo
report=$(
    echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores, kernel $(uname -r)"
    echo "inside: $(inside ". /etc/os-release; echo \$PRETTY_NAME"), $(inside "systemctl --version | head -1")"
    echo "berthd: from $bin, commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo "?")"
    echo "run took $(( $(date +%s) - t0 )) s"
    echo
    "$bin/berth-bench" table "$results"
)
echo "$report"
[ -z "${BENCH_OUT:-}" ] || echo "$report" > "$BENCH_OUT"
