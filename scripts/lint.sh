#!/bin/sh
# Lints the Swift sources with swift-format and the repository's .swift-format; fails on any finding.
# Run by scripts/test.sh (CI) before the build.
#
# What is checked: swift-format's rules as .swift-format enables them (no force unwrap, no try!, no
# implicitly unwrapped optionals, `///` doc comments, shorthand types, …). What is not: layout. The
# tree is laid out by hand (4-space indent, lines up to about 140 characters, aligned
# continuations), which swift-format's pretty printer would re-flow everywhere, so its whitespace
# findings are switched off (--debug-disable-pretty-print) rather than the tree reformatted.
set -eu
cd "$(dirname "$0")/.."
swift_format=$(command -v swift-format || true)
[ -n "$swift_format" ] || swift_format=$(dirname "$(readlink -f "$(command -v swift)")")/swift-format
if [ ! -x "$swift_format" ]; then
    echo "lint.sh: swift-format not found (it ships with the Swift toolchain)" >&2
    exit 1
fi
findings=$("$swift_format" lint --strict --debug-disable-pretty-print --parallel --configuration .swift-format \
    --recursive Sources Tests Plugins Package.swift 2>&1) || true
if [ -n "$findings" ]; then
    echo "$findings" >&2
    echo "lint.sh: $(echo "$findings" | grep -c ': error: \|: warning: ') finding(s); see .swift-format" >&2
    exit 1
fi
# Privileged tests are gated only by `.requires(…)` (Tests/TestSupport/Privileges.swift), which
# fails under CI where a bare `.enabled(if:)` would skip silently.
gates=$(grep -rn --include='*.swift' '\.enabled(if' Tests | grep -v '^Tests/TestSupport/Privileges.swift:' || true)
if [ -n "$gates" ]; then
    echo "$gates" >&2
    echo "lint.sh: gate privileged tests with .requires(…), not .enabled(if:) (see Tests/TestSupport/Privileges.swift)" >&2
    exit 1
fi
echo "lint.sh: no findings"
