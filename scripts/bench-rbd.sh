#!/bin/bash
# RBD rows of the benchmarks (docs/benchmarks.md, docs/rbd.md): on a one-node Ceph cluster started
# here (as Tests/TestSupport/CephCluster.swift does it), berthd with an RBD pool in backends.d:
#   - CloneImage of a 1 GiB image: RBD (snapshot + protect + rbd_clone3, constant time) against
#     the same 1 GiB as a raw file in berthd's pool folder (a copy here: ext4 has no reflink);
#   - ListImages with 200 RBD images (one rbd_list2 + cached metadata), first and second call.
# Run as root. Kept out of bench.sh's own items so the two merge and run independently.
#   BENCH_BIN   folder holding berthd and berth-transfer (default: .build/debug)
#   BENCH_OUT   also append the Markdown rows here
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${BENCH_BIN:-$here/.build/debug}
images=${BENCH_RBD_IMAGES:-200}
big_mib=1024
# The smoke test's small run: the same steps on a 16 MiB image and 10 images.
if [ -n "${BENCH_TINY:-}" ]; then images=10 big_mib=16; fi
D=$(mktemp -d /tmp/bb.XXXXXX)
root=$D/root
pids=()

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }

cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for n in osd.0 mgr.x mon.a; do
        p=$(cat "$D/run/$n.pid" 2>/dev/null) && kill "$p" 2>/dev/null
    done
    sleep 3
    # Started from a test runner, the daemons inherit its blocked signals and never see SIGTERM.
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    for n in osd.0 mgr.x mon.a; do
        p=$(cat "$D/run/$n.pid" 2>/dev/null) && kill -9 "$p" 2>/dev/null
    done
    sleep 1
    # Never a recursive delete through a mount: only when nothing is mounted below.
    findmnt -rno TARGET | grep -q "^$D/" || rm -rf "$D"
}
trap cleanup EXIT

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
fsid=$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$D"/{mon,mgr,osd,run,log} "$root/etc/ceph" "$root/etc/berth/backends.d" "$root/var/lib/machines"
cat > "$D/ceph.conf" <<C
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg autoscale mode = off
mon data avail warn = 2
mon data avail crit = 1
mgr initial modules = iostat
run dir = $D/run
pid file = $D/run/\$name.pid
log file = $D/log/\$name.log
admin socket = $D/run/\$name.asok
keyring = $D/\$name.keyring
[mon]
mon data = $D/mon
mon memory autotune = false
mon memory target = 134217728
[mgr]
mgr data = $D/mgr
[osd]
osd data = $D/osd
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 8589934592
bluestore cache autotune = false
bluestore cache size = 67108864
C
key() { ceph-authtool --create-keyring "$D/$1.keyring" --gen-key -n "$1" "${@:2}" >/dev/null; }
ceph-authtool --create-keyring "$D/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
key client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *'
key mgr.x --cap mon 'allow profile mgr' --cap osd 'allow *'
key osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *'
key client.berth --cap mon 'profile rbd' --cap osd 'profile rbd' --cap mgr 'profile rbd'
cp "$D/mon.keyring" "$D/mkfs.keyring"
for k in client.admin mgr.x osd.0 client.berth; do ceph-authtool "$D/mkfs.keyring" --import-keyring "$D/$k.keyring" >/dev/null; done
monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$D/monmap" >/dev/null
ceph-mon -c "$D/ceph.conf" --mkfs -i a --monmap "$D/monmap" --keyring "$D/mkfs.keyring"
ceph-mon -c "$D/ceph.conf" -i a </dev/null >/dev/null 2>&1
ceph-mgr -c "$D/ceph.conf" -i x </dev/null >/dev/null 2>&1
uuid=$(cat /proc/sys/kernel/random/uuid)
ceph -c "$D/ceph.conf" osd new "$uuid" 0 >/dev/null
ceph-osd -c "$D/ceph.conf" -i 0 --mkfs --osd-uuid "$uuid" >/dev/null 2>&1
ceph-osd -c "$D/ceph.conf" -i 0 </dev/null >/dev/null 2>&1
ceph -c "$D/ceph.conf" osd pool create berth 32 32 >/dev/null 2>&1
timeout 180 rbd -c "$D/ceph.conf" pool init berth
rbd() { command rbd -c "$D/ceph.conf" -p berth "$@"; }

cat > "$root/etc/ceph/ceph.conf" <<C
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port]
ms bind msgr1 = false
keyring = $D/client.berth.keyring
log file = /dev/null
C
printf '[rbd]\npool=berth\nid=berth\nrequired=yes\n' > "$root/etc/berth/backends.d/rbd.conf"

# 1 GiB of data, the same bytes as a raw file in the pool folder and as an RBD image.
head -c $((big_mib << 20)) /dev/urandom > "$root/var/lib/machines/local.raw"
rbd import --no-progress "$root/var/lib/machines/local.raw" big

cat > "$D/bus.conf" <<C
<busconfig><type>system</type><listen>unix:path=$D/bus.sock</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_type="*"/>
<allow send_type="method_call"/><allow send_type="method_return"/><allow send_type="error"/><allow send_type="signal"/></policy></busconfig>
C
dbus-daemon --config-file="$D/bus.conf" --nofork </dev/null >/dev/null 2>&1 & pids+=($!)
sleep 0.5
bus="unix:path=$D/bus.sock"
"$bin/berthd" --root "$root" --bus-address "$bus" --services machine1 </dev/null >/dev/null 2>"$D/log/berthd.log" & pids+=($!)
for _ in $(seq 100); do busctl --address="$bus" status org.freedesktop.machine1 >/dev/null 2>&1 && break; sleep 0.1; done
call() { busctl --address="$bus" --timeout=600 call org.freedesktop.machine1 /org/freedesktop/machine1 org.freedesktop.machine1.Manager "$@"; }

t0=$(now); call CloneImage ssb big bigclone false >/dev/null; t1=$(now)
rbd_clone=$(elapsed "$t0" "$t1")
t0=$(now); call CloneImage ssb local localclone false >/dev/null; t1=$(now)
dir_clone=$(elapsed "$t0" "$t1")

for i in $(seq 1 $((images - 2))); do rbd create --size 4M "img$i"; done
call ListImages >/dev/null  # the cache meets the new images
t0=$(now); n=$(call ListImages | awk '{print $2}'); t1=$(now)
list1=$(elapsed "$t0" "$t1")
t0=$(now); call ListImages >/dev/null; t1=$(now)
list2=$(elapsed "$t0" "$t1")

rows=$(cat <<R
| CloneImage of a ${big_mib} MiB image, RBD (snapshot + rbd_clone3) | ${rbd_clone} s | – | – | raw file clone in the pool folder (ext4: a copy) ${dir_clone} s | – | constant time |
| ListImages with ${images} RBD images (${n} listed) | ${list1} s (again: ${list2} s) | – | – | – | – | fast |
R
)
echo "$rows"
[ -n "${BENCH_OUT:-}" ] && echo "$rows" >> "$BENCH_OUT"
exit 0
