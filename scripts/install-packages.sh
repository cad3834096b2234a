#!/bin/sh
# Installs the Debian packages of scripts/packages.txt (apt-get update + install) when any is missing.
set -eu
here=$(dirname "$0")
packages=$(grep -v '^#' "$here/packages.txt" | grep -v '^$')
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "All Debian packages present."
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "Installing:$missing"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update
# shellcheck disable=SC2086
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
