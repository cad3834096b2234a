#!/bin/bash
# Fuzzes Berth's parsers of outside input with libFuzzer and AddressSanitizer (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   run each target (default: all) for SECONDS (default 60)
#   scripts/fuzz.sh --merge [TARGET...]     add what the last runs found that adds coverage to the
#                                           kept corpus (Tests/Fixtures/fuzz/<target>), minimised
#
# Each target starts from its kept corpus (read only) and writes what it finds to
# .build/fuzz/run/<target>; a crash leaves its input in .build/fuzz/crashes/<target>/ and makes
# the script exit non-zero after every target has run. One target runs at a time, in one
# process: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."

merge=0
if [ "${1:-}" = "--merge" ]; then merge=1; shift; fi
seconds=60
if [ $merge = 0 ] && [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi

corpus=Tests/Fixtures/fuzz
targets=("$@")
if [ ${#targets[@]} = 0 ]; then
    for d in "$corpus"/*/; do targets+=("$(basename "$d")"); done
fi

echo "== building berth-fuzz (libFuzzer + AddressSanitizer) in .build/fuzz"
mkdir -p .build/fuzz
if ! BERTH_FUZZ=1 swift build --scratch-path .build/fuzz --product berth-fuzz -Xswiftc -sanitize=fuzzer,address \
        >.build/fuzz/build.log 2>&1; then
    grep -v "Cannot export local symbol" .build/fuzz/build.log | tail -40 >&2
    echo "fuzz.sh: the build failed (.build/fuzz/build.log)" >&2
    exit 1
fi
bin=.build/fuzz/debug/berth-fuzz
[ -x "$bin" ] || { echo "fuzz.sh: no $bin after the build" >&2; exit 1; }

if [ $merge = 1 ]; then
    for t in "${targets[@]}"; do
        [ -d ".build/fuzz/run/$t" ] || continue
        before=$(ls "$corpus/$t" | wc -l)
        BERTH_FUZZ_TARGET=$t "$bin" -merge=1 "$corpus/$t" ".build/fuzz/run/$t" >/dev/null 2>&1
        echo "$t: $before -> $(ls "$corpus/$t" | wc -l) corpus files"
    done
    exit 0
fi

failed=()
printf '%-18s %12s %8s  %s\n' TARGET EXECS COVERAGE RESULT
for t in "${targets[@]}"; do
    [ -d "$corpus/$t" ] || { echo "fuzz.sh: no corpus folder $corpus/$t (unknown target?)" >&2; exit 2; }
    work=.build/fuzz/run/$t crashes=.build/fuzz/crashes/$t log=.build/fuzz/run/$t.log
    mkdir -p "$work" "$crashes"
    status=0
    # qcow2 seeds are real images of up to ~100 KiB; the text formats stay within 4 KiB.
    maxlen=4096
    [ "$t" = qcow2 ] && maxlen=131072
    BERTH_FUZZ_TARGET=$t "$bin" "$work" "$corpus/$t" -max_total_time="$seconds" -max_len=$maxlen -timeout=30 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    if [ $status = 0 ]; then
        result=ok
    else
        result="CRASH (exit $status): $(ls -t "$crashes" | head -1), log $log"
        failed+=("$t")
    fi
    printf '%-18s %12s %8s  %s\n' "$t" "${execs:-?}" "${cov:-?}" "$result"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: ${#failed[@]} target(s) crashed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${seconds}s each without a crash"
