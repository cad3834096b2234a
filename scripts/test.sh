#!/bin/sh
# Installs what is needed and runs the whole test suite (unit, privileged, end-to-end).
# Privileged tests (loop devices, btrfs, ext4) run as root and skip, saying why, otherwise; under
# CI=true a privileged test that cannot run fails instead (Tests/TestSupport/Privileges.swift).
set -eu
cd "$(dirname "$0")/.."
scripts/install-packages.sh
scripts/lint.sh
swift build --build-tests
swift test --skip-build
