#!/bin/sh
# Installs a release build of berthd (with its transfer worker berth-transfer and its image
# inspector berth-inspect beside it) and
# berthctl, the systemd unit and the D-Bus policies.
# Run as root from the repository: dist/install.sh [--bin DIR] [PREFIX]   (PREFIX defaults to /usr/local)
#   --bin DIR   install the binaries already built in DIR instead of building them (a machine
#               without a Swift toolchain, such as the booted test container)
set -eu
cd "$(dirname "$0")/.."
bin=""
if [ "${1:-}" = "--bin" ]; then
    bin=${2:?--bin needs a folder}
    shift 2
fi
prefix=${1:-/usr/local}
echo "Installing Berth $(cat VERSION) under $prefix"
if [ -z "$bin" ]; then
    for product in berthd berth-transfer berth-inspect berthctl; do
        swift build -c release --product "$product"
    done
    bin=$(swift build -c release --show-bin-path)
fi
install -D -m 0755 "$bin/berthd" "$prefix/sbin/berthd"
install -D -m 0755 "$bin/berth-transfer" "$prefix/sbin/berth-transfer"  # berthd runs the one beside it
install -D -m 0755 "$bin/berth-inspect" "$prefix/sbin/berth-inspect"    # likewise, to read raw images
install -D -m 0755 "$bin/berthctl" "$prefix/bin/berthctl"
install -D -m 0644 README.md "$prefix/share/doc/berth/README.md"
install -D -m 0644 VERSION "$prefix/share/doc/berth/VERSION"  # the version berthd reports (built in from this file)
# Berth's own portable profiles, so a host without systemd's copies can attach (systemd's, in
# /usr/lib, and an admin's, in /etc, come first where both exist).
for f in dist/portable-profiles/*/service.conf; do
    name=$(basename "$(dirname "$f")")
    install -D -m 0644 "$f" "$prefix/lib/systemd/portable/profile/$name/service.conf"
done
for f in dist/dbus-1/system.d/*.conf; do
    install -D -m 0644 "$f" "/etc/dbus-1/system.d/$(basename "$f")"
done
sed "s|/usr/local/sbin/berthd|$prefix/sbin/berthd|; s|/usr/local/share/doc|$prefix/share/doc|" dist/berthd.service \
    > /etc/systemd/system/berthd.service
chmod 0644 /etc/systemd/system/berthd.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    # The new bus policies take effect when the bus reloads its configuration.
    systemctl reload dbus.service || busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig
    echo "Installed. Start with: systemctl enable --now berthd.service (stops machined, importd, portabled)"
else
    echo "Installed. No systemd here: start $prefix/sbin/berthd as root after reloading the system bus configuration."
fi
