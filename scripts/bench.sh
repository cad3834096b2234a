#!/bin/bash
# Benchmarks berthd against systemd 252's systemd-machined + systemd-importd, in one run: the same
# work against both, back-to-back, each daemon on its own private dbus-daemon and its own fresh
# loopback pool (btrfs; ext4 for the directory clone). Prints each figure for both with the ratio
# Berth/systemd, and the physical reference (tar -x, cp -a) where there is one. Run as root.
#
# Fixtures are built here with fast tools (mkdir, btrfs subvolume create, tar, gzip): they are the
# input, not the product. Timing is done by berth-bench with CLOCK_MONOTONIC.
#
# Environment (defaults are the documented run; BENCH_TINY=1 is the smoke test's small run):
#   BENCH_BIN      folder holding berthd, berth-transfer, berth-inspect and berth-bench (default: build them -c release)
#   BENCH_DIR      scratch folder (default: a fresh one in /var/tmp, removed at the end)
#   BENCH_OUT      also write the Markdown results here
#   BENCH_PORT     loopback HTTP port for PullTar (default 18734)
#   BENCH_REPEAT   runs of each item per daemon (default 3 for transfers, 5 for the others; 1 with
#                  BENCH_TINY): the table shows the median and the spread, the daemons' order
#                  alternating between runs
#   BENCH_ONLY     run only these items, e.g. "import pull" (of: list get clone machines import
#                  export pull oci ext4; default all). For profiling one area; the documented run is all of them.
#   BENCH_OCI_PORT loopback port of the OCI registry for PullOci (default BENCH_PORT + 1; PullOci is driven
#                  by /usr/bin/python3 with python3-dbus)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (loop devices, mounts, private mount namespaces)" >&2; exit 1; }
for tool in dbus-daemon busctl unshare mkfs.btrfs mkfs.ext4 btrfs tar gzip sha256sum python3 curl; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool is missing (scripts/install-packages.sh)" >&2; exit 1; }
done
[ -x /lib/systemd/systemd-machined ] && [ -x /lib/systemd/systemd-importd ] ||
    { echo "bench.sh: systemd-container is not installed" >&2; exit 1; }

if [ "${BENCH_TINY:-0}" = 1 ]; then
    dir_images=20 subvolumes=5 list_calls=3 get_count=10 machine_count=10 tree_files=200 file_kib=4 big_files=2 big_file_mib=2
    btrfs_mib=1024 ext4_mib=256 transfer_repeat=${BENCH_REPEAT:-1} quick_repeat=${BENCH_REPEAT:-1} ext4_repeat=${BENCH_REPEAT:-1}
else
    # 1,000 directory images + 100 subvolumes; a ~400 MB tree of 40,000 small files; a 1 GiB image.
    dir_images=1000 subvolumes=100 list_calls=50 get_count=500 machine_count=100 tree_files=40000 file_kib=10 big_files=32 big_file_mib=32
    # 5 runs, not 3, where a run's figure moves most: the bus items (a fraction of a second of
    # wake-ups between four processes on two cores) and the ext4 clone (1 GiB read from a disk
    # whose speed varies from run to run).
    btrfs_mib=4096 ext4_mib=3072 transfer_repeat=${BENCH_REPEAT:-3} quick_repeat=${BENCH_REPEAT:-5} ext4_repeat=${BENCH_REPEAT:-5}
fi
port=${BENCH_PORT:-18734}
only=" ${BENCH_ONLY:-list get clone machines import export pull oci ext4} "
want() { [[ "$only" == *" $1 "* ]]; }

if [ -n "${BENCH_BIN:-}" ]; then
    bin=$BENCH_BIN
    build="prebuilt, from $bin"
else
    echo "== building berthd, berth-transfer, berth-inspect and berth-bench (release)"
    # The products with `swift build ARGS...`, output to the build log.
    build_products() {
        local p
        for p in berthd berth-transfer berth-inspect berth-bench; do
            swift build "$@" --product "$p" >> /tmp/berth-bench-build.log 2>&1 || return 1
        done
    }
    : > /tmp/berth-bench-build.log
    # Its own scratch path, so the two configurations do not rebuild each other's modules.
    nowmo=(--scratch-path .build-bench-nowmo -Xswiftc -no-whole-module-optimization)
    if build_products -c release; then
        bin=$(swift build -c release --show-bin-path)
        build="release build"
    elif echo "== release build failed (/tmp/berth-bench-build.log); again without whole-module optimization" &&
       build_products -c release "${nowmo[@]}"; then
        # swiftc 6.3 crashed in whole-module -O at main 1c77f84 (docs/benchmarks.md); per-file -O is close.
        bin=$(swift build -c release "${nowmo[@]}" --show-bin-path)
        build="release build with -no-whole-module-optimization (whole-module -O crashed the compiler)"
    else
        # Said loudly in the results: debug figures are not the ones the targets are about.
        echo "bench.sh: the release build FAILED (/tmp/berth-bench-build.log); falling back to a DEBUG build" >&2
        grep -m3 -E 'error:|While ' /tmp/berth-bench-build.log | cut -c1-200 >&2 || true
        build_products
        bin=$(swift build --show-bin-path)
        build="DEBUG build (the release build failed)"
    fi
fi
bench=$bin/berth-bench

work=${BENCH_DIR:-$(mktemp -d /var/tmp/berth-bench.XXXXXX)}
mkdir -p "$work"
results=$work/results.tsv
: > "$results"
pids=()
mounts=()
# SIGTERM, then SIGKILL after 2 s: a process started from a test runner inherits its blocked signal
# mask, and a daemon that never sees SIGTERM must not hang the run.
stop_pids() {
    local p i
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for p in "$@"; do
        for ((i = 0; i < 40; i++)); do
            [ -e "/proc/$p" ] && [ "$(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null)" != Z ] || break
            sleep 0.05
        done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
cleanup() {
    set +e
    stop_pids "${pids[@]}"
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" 2>/dev/null; done
    [ -n "${BENCH_DIR:-}" ] || rm -rf "$work"
}
trap cleanup EXIT INT TERM

# A fresh loopback filesystem of TYPE and SIZE MiB mounted at DIR (fixtures only).
loopfs() { # TYPE MIB DIR
    mkdir -p "$(dirname "$3")"; rm -f "$3.img"
    truncate -s "${2}M" "$3.img"
    if [ "$1" = btrfs ]; then mkfs.btrfs -q -f "$3.img" >/dev/null; else mkfs.ext4 -q -F "$3.img" >/dev/null; fi
    mkdir -p "$3"
    mount -o loop "$3.img" "$3"
    mounts+=("$3")
}

# A private dbus-daemon (system-bus type, everything allowed); prints its address.
. scripts/private-bus.sh  # bench.sh runs from the repository root (cd above)
start_bus() { start_private_bus "$1"; }

wait_name() { # ADDRESS NAME
    local i=0
    until busctl --address="$1" status "$2" >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -lt 400 ] || { echo "bench.sh: nobody took $2 on $1" >&2; exit 1; }
        sleep 0.05
    done
}

# berthd with --root ROOT (its pool is ROOT/var/lib/machines); sets berthd_pid.
start_berthd() { # ROOT ADDRESS
    "$bin/berthd" --root "$1" --bus-address "$2" --services machine1,import1 2>>"$work/berthd.log" &
    berthd_pid=$!
    pids+=("$berthd_pid")
    wait_name "$2" org.freedesktop.machine1
    wait_name "$2" org.freedesktop.import1
}

# systemd-machined and systemd-importd, each in a private mount namespace where POOL is bind-mounted
# over /var/lib/machines (as Tests/TestSupport/ReferenceDaemon.swift does); sets machined_pid, importd_pid.
start_systemd() { # POOL ADDRESS
    mkdir -p /run/systemd/system /var/lib/machines
    local d
    for d in machined importd; do
        DBUS_SYSTEM_BUS_ADDRESS=$2 unshare -m --propagation private \
            sh -c "mount --bind '$1' /var/lib/machines && exec /lib/systemd/systemd-$d" 2>>"$work/systemd.log" &
        pids+=("$!")
        eval "${d}_pid=$!"
        wait_name "$2" "org.freedesktop.$([ $d = machined ] && echo machine1 || echo import1)"
    done
}

# systemd-machined and systemd-importd exit after 30 s without a message (they are bus-activated
# in real life), and an item can run longer than that before the next one needs them: a Peer.Ping
# every 5 s keeps both sides' daemons alive for the whole run, at one message per 5 s.
keep_alive() { # ADDRESS...
    ( while sleep 5; do
        for a in "$@"; do
            for n in machine1 import1; do
                busctl --address="$a" call "org.freedesktop.$n" "/org/freedesktop/$n" org.freedesktop.DBus.Peer Ping >/dev/null 2>&1 || true
            done
        done
    done ) &
    pids+=("$!")
}

# Stops daemons and forgets their pids, so cleanup never signals a reused pid.
stop_daemons() {
    stop_pids "$@"
    local p q keep=()
    for q in "${pids[@]}"; do
        for p in "$@"; do [ "$p" = "$q" ] && continue 2; done
        keep+=("$q")
    done
    pids=("${keep[@]}")
}

# 1,000 directory images and 100 subvolumes, made the same way in each pool.
populate_btrfs() { # POOL
    local i
    for ((i = 0; i < dir_images; i++)); do
        mkdir -p "$(printf '%s/img%04d/etc' "$1" "$i")"
        printf 'img%04d\n' "$i" > "$(printf '%s/img%04d/etc/hostname' "$1" "$i")"
    done
    for ((i = 0; i < subvolumes; i++)); do
        btrfs subvolume create "$(printf '%s/sub%03d' "$1" "$i")" >/dev/null
        mkdir "$(printf '%s/sub%03d/etc' "$1" "$i")"
        printf 'sub%03d\n' "$i" > "$(printf '%s/sub%03d/etc/hostname' "$1" "$i")"
    done
}

# A directory image of big_files × big_file_mib MiB of incompressible data (1 GiB by default).
populate_big() { # POOL
    mkdir -p "$1/big/data"
    local i
    for ((i = 0; i < big_files; i++)); do
        head -c "$((big_file_mib << 20))" /dev/urandom > "$1/big/data/f$i"
    done
}

# PullOci: a 3-layer image (gzip, hex of random bytes: ~2:1) from Debian's docker-registry on
# loopback into berthd's btrfs pool, against `skopeo copy` of it to an OCI layout plus
# `umoci unpack` of that (the reference tools' pull), in the same run. systemd 252 has no PullOci.
# Each berthd run starts with an empty layer cache (it is removed with the image after a run).
bench_oci() {
    local oci=$work/oci oci_port=${BENCH_OCI_PORT:-$((port + 1))} layer_mib=100 r item registry_pid
    [ "${BENCH_TINY:-0}" = 1 ] && layer_mib=1
    item="PullOci 3 layers × $layer_mib MiB (gzip)"
    mkdir -p "$oci/storage"
    python3 - "$oci/layout" "$layer_mib" <<'PY'
import hashlib, io, json, os, subprocess, sys, tarfile
root, mib = sys.argv[1], int(sys.argv[2])
os.makedirs(root + '/blobs/sha256')
open(root + '/oci-layout', 'w').write('{"imageLayoutVersion":"1.0.0"}')
def blob(data, media):
    d = hashlib.sha256(data).hexdigest()
    open(root + '/blobs/sha256/' + d, 'wb').write(data)
    return {'mediaType': media, 'digest': 'sha256:' + d, 'size': len(data)}
layers, diffs = [], []
for n in range(3):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as t:
        for i in range(mib * 4):
            data = os.urandom(128 << 10).hex().encode()
            info = tarfile.TarInfo('usr/share/layer%d/f%05d' % (n, i)); info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    diffs.append('sha256:' + hashlib.sha256(raw).hexdigest())
    gz = subprocess.run(['gzip', '-1', '-nc'], input=raw, capture_output=True, check=True).stdout
    layers.append(blob(gz, 'application/vnd.oci.image.layer.v1.tar+gzip'))
config = blob(json.dumps({'architecture': 'amd64', 'os': 'linux', 'config': {'Cmd': ['/bin/sh']},
                          'rootfs': {'type': 'layers', 'diff_ids': diffs}}).encode(), 'application/vnd.oci.image.config.v1+json')
m = blob(json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
                     'config': config, 'layers': layers}).encode(), 'application/vnd.oci.image.manifest.v1+json')
m['annotations'] = {'org.opencontainers.image.ref.name': 'v1'}
json.dump({'schemaVersion': 2, 'manifests': [m]}, open(root + '/index.json', 'w'))
PY
    printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
        "$oci/storage" "$oci_port" > "$oci/registry.yml"
    docker-registry serve "$oci/registry.yml" >/dev/null 2>&1 &
    registry_pid=$!
    pids+=("$registry_pid")
    for i in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$oci_port/v2/" && break; sleep 0.05; done
    # Another server on the port would answer instead: ours must be the one (it exits if it cannot bind).
    if ! kill -0 "$registry_pid" 2>/dev/null || ! curl -sf -o /dev/null "http://127.0.0.1:$oci_port/v2/"; then
        echo "bench.sh: the OCI registry cannot use port $oci_port; set BENCH_OCI_PORT" >&2
        exit 1
    fi
    skopeo copy --quiet --dest-tls-verify=false "oci:$oci/layout:v1" "docker://127.0.0.1:$oci_port/bench/app:v1"
    echo "   OCI image: 3 layers, $(du -cm "$oci"/layout/blobs/sha256/* | tail -1 | cut -f1) MB compressed"
    local pool=$work/berth/var/lib/machines
    for ((r = 0; r < repeat; r++)); do
        "$bench" time --item "$item" --who berth --results "$results" "${settle[@]}" -- \
            /usr/bin/python3 - "$berth_bus" "127.0.0.1:$oci_port/bench/app:v1" ocipull <<'PY'
import dbus, sys, time
bus = dbus.bus.BusConnection(sys.argv[1])
m = dbus.Interface(bus.get_object('org.freedesktop.import1', '/org/freedesktop/import1'), 'org.freedesktop.import1.Manager')
tid, _ = m.PullOci(sys.argv[2], sys.argv[3], 'machine', dbus.UInt64(0))
while any(t[0] == tid for t in m.ListTransfers()):
    time.sleep(0.02)
machines = dbus.Interface(bus.get_object('org.freedesktop.machine1', '/org/freedesktop/machine1'), 'org.freedesktop.machine1.Manager')
sys.exit(0 if any(i[0] == sys.argv[3] for i in machines.ListImages()) else 1)
PY
        busctl --address="$berth_bus" call org.freedesktop.machine1 /org/freedesktop/machine1 \
            org.freedesktop.machine1.Manager RemoveImage s ocipull >/dev/null || true
        rm -rf "$pool/.#berth-oci-cache"
        btrfs filesystem sync "$pool" >/dev/null
    done
    for ((r = 0; r < repeat; r++)); do
        btrfs subvolume create "$work/ref/oci" >/dev/null
        "$bench" time --item "$item" --who "ref:skopeo+umoci" --results "$results" "${settle[@]}" -- \
            sh -c 'skopeo copy --quiet --src-tls-verify=false "docker://$1" "oci:$2/layout:v1" && umoci unpack --image "$2/layout:v1" "$2/bundle" >/dev/null' \
            sh "127.0.0.1:$oci_port/bench/app:v1" "$work/ref/oci"
        btrfs subvolume delete "$work/ref/oci" >/dev/null && btrfs filesystem sync "$work/ref" >/dev/null
    done
}

machine() {
    echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores," \
         "$(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")"
    echo "systemd: $(/lib/systemd/systemd-machined --version 2>/dev/null | head -1 || dpkg-query -W -f '${Version}' systemd-container)"
    echo "berthd: $build, commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
}

t0=$(date +%s)
echo "== fixtures in $work"
if want import || want export || want pull; then
# The source tree and its archives live on tmpfs: reading them costs the same for every importer.
mkdir -p "$work/src"
mount -t tmpfs -o size=$(( (tree_files * file_kib * 3) / 1024 + 256 ))M tmpfs "$work/src"
mounts+=("$work/src")
python3 - "$work/src/tree" "$tree_files" "$file_kib" <<'PY'
import os, sys
root, count, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per_dir = 200
for i in range(count):
    d = os.path.join(root, "usr", "share", "d%03d" % (i // per_dir))
    if i % per_dir == 0:
        os.makedirs(d, exist_ok=True)
    # Hex of random bytes: compresses about 2:1, like a mix of text and binaries.
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(kib * 512).hex().encode())
    if i % 1000 == 0:
        os.symlink("f%05d" % i, os.path.join(d, "link%05d" % i))
os.makedirs(os.path.join(root, "etc"), exist_ok=True)
with open(os.path.join(root, "etc", "os-release"), "w") as f:
    f.write("ID=bench\nNAME=Bench\n")
PY
tar --numeric-owner -C "$work/src/tree" -cf "$work/src/tree.tar" .
gzip -1 -c "$work/src/tree.tar" > "$work/src/tree.tar.gz"
rm -rf "$work/src/tree"
(cd "$work/src" && sha256sum tree.tar.gz > SHA256SUMS)
echo "   tree.tar $(du -m "$work/src/tree.tar" | cut -f1) MB ($tree_files files), tree.tar.gz $(du -m "$work/src/tree.tar.gz" | cut -f1) MB"
fi

loopfs btrfs "$btrfs_mib" "$work/berth/var/lib/machines"
loopfs btrfs "$btrfs_mib" "$work/systemd/var/lib/machines"
loopfs btrfs "$btrfs_mib" "$work/ref"
if want list || want get || want clone; then
    populate_btrfs "$work/berth/var/lib/machines"
    populate_btrfs "$work/systemd/var/lib/machines"
fi
sync

if want pull; then
    python3 -m http.server --bind 127.0.0.1 --directory "$work/src" "$port" >/dev/null 2>&1 &
    http_pid=$!
    pids+=("$http_pid")
    for i in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/SHA256SUMS" && break; sleep 0.05; done
    # Another server on the port (another run) would serve its own files: ours must be the one.
    if ! kill -0 "$http_pid" 2>/dev/null || ! curl -sf "http://127.0.0.1:$port/SHA256SUMS" | cmp -s - "$work/src/SHA256SUMS"; then
        echo "bench.sh: port $port is taken by another server; set BENCH_PORT" >&2
        exit 1
    fi
fi

echo "== btrfs pools: $dir_images directory images + $subvolumes subvolumes each (fixtures took $(( $(date +%s) - t0 )) s)"
berth_bus=$(start_bus "$work/bus-berth")
systemd_bus=$(start_bus "$work/bus-systemd")
# start_bus ran in a subshell: record the forked dbus-daemons here.
pids+=("$(cat "$work/bus-berth/pid")" "$(cat "$work/bus-systemd/pid")")
start_berthd "$work/berth" "$berth_bus"
start_systemd "$work/systemd/var/lib/machines" "$systemd_bus"
keep_alive "$berth_bus" "$systemd_bus"
sleep 1
settle=(--settle "$work/berth/var/lib/machines" --settle "$work/systemd/var/lib/machines" --settle "$work/ref")
run() {
    "$bench" "$@" --berth "$berth_bus" --systemd "$systemd_bus" --berth-pid "$berthd_pid" --systemd-pid "$machined_pid" \
        --results "$results" --repeat "$repeat" "${settle[@]}"
}
# berthd's memory against machined's and importd's together: all resident pages (VmRSS, mostly
# shared libraries' clean pages), and the anonymous part of them (RssAnon: heap and stacks).
memory() { # WHEN
    "$bench" rss --item "resident memory, $1 (systemd: machined+importd)" \
        --pid "berth=$berthd_pid" --pid "systemd=$machined_pid,$importd_pid" --results "$results"
    "$bench" rss --item "anonymous memory (RssAnon), $1" --field RssAnon \
        --pid "berth=$berthd_pid" --pid "systemd=$machined_pid,$importd_pid" --results "$results"
}
# The physical reference, $repeat times, each into a fresh subvolume of the reference filesystem.
reference() { # ITEM LABEL COMMAND... (the command's last argument is the destination; made and removed here)
    local item=$1 label=$2 r dest
    shift 2
    dest=${*: -1}
    for ((r = 0; r < repeat; r++)); do
        btrfs subvolume create "$dest" >/dev/null
        "$bench" time --item "$item" --who "ref:$label" --results "$results" "${settle[@]}" -- "$@"
        btrfs subvolume delete "$dest" >/dev/null && btrfs filesystem sync "$(dirname "$dest")" >/dev/null
    done
}
memory "idle"

total=$((dir_images + subvolumes))
repeat=$quick_repeat  # runs per daemon of what `run` and `reference` do next
! want list || run list --calls "$list_calls" --expect "$total"
! want get || run get --pattern 'img%04d' --count "$get_count"
if want clone; then
    run clone --pattern 'sub%03d' --count "$subvolumes" --label subvolumes
    # Their floor: the same snapshot and delete ioctls without a daemon, in berthd's pool.
    "$bench" snapshot-ref --pool "$work/berth/var/lib/machines" --pattern 'sub%03d' --count "$subvolumes" \
        --label subvolumes --results "$results" --repeat "$repeat" "${settle[@]}"
fi
# The machine registry: RegisterMachine + TerminateMachine of sleeping leaders. machined 252
# answers it with an error here (PID 1 is not systemd), which the table shows as such.
! want machines || run machines --count "$machine_count"

repeat=$transfer_repeat
if want import || want export; then
run import --archive "$work/src/tree.tar" --name tree --label "plain ($tree_files files)"
reference "ImportTar plain ($tree_files files)" "tar -x" tar --numeric-owner -xpf "$work/src/tree.tar" -C "$work/ref/x"
fi
if want import; then
run import --archive "$work/src/tree.tar.gz" --name treegz --label "gzip ($tree_files files)"
reference "ImportTar gzip ($tree_files files)" "tar -xz" tar --numeric-owner -xzpf "$work/src/tree.tar.gz" -C "$work/ref/y"
fi
! want export || run export --name tree --out-dir "$work/src"
! want pull || run pull --url "http://127.0.0.1:$port/tree.tar.gz" --name treepull
if want oci; then
    if command -v docker-registry >/dev/null && command -v skopeo >/dev/null && command -v umoci >/dev/null; then
        bench_oci
    else
        echo "== PullOci skipped: docker-registry, skopeo and umoci are needed (scripts/install-packages.sh)"
    fi
fi
memory "at the end"
stop_daemons "$berthd_pid" "$machined_pid" "$importd_pid"

if want ext4; then
echo "== ext4 pools: one $((big_files * big_file_mib)) MiB directory image each"
loopfs ext4 "$ext4_mib" "$work/berth4/var/lib/machines"
loopfs ext4 "$ext4_mib" "$work/systemd4/var/lib/machines"
populate_big "$work/berth4/var/lib/machines"
populate_big "$work/systemd4/var/lib/machines"
start_berthd "$work/berth4" "$berth_bus"
start_systemd "$work/systemd4/var/lib/machines" "$systemd_bus"
repeat=$ext4_repeat
run clone-one --name big --label "directory $((big_files * big_file_mib)) MiB on ext4"
for ((r = 0; r < repeat; r++)); do
    "$bench" time --item "CloneImage directory $((big_files * big_file_mib)) MiB on ext4" --who "ref:cp -a" --results "$results" -- \
        cp -a "$work/berth4/var/lib/machines/big" "$work/berth4/var/lib/machines/.cp-reference"
    rm -rf "$work/berth4/var/lib/machines/.cp-reference"
done
stop_daemons "$berthd_pid" "$machined_pid" "$importd_pid"
fi

echo
echo "== results (wall-clock, CLOCK_MONOTONIC; caches dropped before each clone/import/export/pull and reference)"
report=$( machine; echo "run took $(( $(date +%s) - t0 )) s"; echo; "$bench" table "$results" )
echo "$report"
[ -z "${BENCH_OUT:-}" ] || echo "$report" > "$BENCH_OUT"
