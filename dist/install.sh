#!/bin/sh
# Installs a release build of berthd (with its transfer worker berth-transfer beside it) and
# berthctl, the systemd unit and the D-Bus policies.
# Run as root from the repository: dist/install.sh [PREFIX]   (PREFIX defaults to /usr/local)
set -eu
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
swift build -c release --product berthd
swift build -c release --product berth-transfer
swift build -c release --product berthctl
bin=$(swift build -c release --show-bin-path)
install -D -m 0755 "$bin/berthd" "$prefix/sbin/berthd"
install -D -m 0755 "$bin/berth-transfer" "$prefix/sbin/berth-transfer"  # berthd runs the one beside it
install -D -m 0755 "$bin/berthctl" "$prefix/bin/berthctl"
install -D -m 0644 README.md "$prefix/share/doc/berth/README.md"
for f in dist/dbus-1/system.d/*.conf; do
    install -D -m 0644 "$f" "/etc/dbus-1/system.d/$(basename "$f")"
done
sed "s|/usr/local/sbin/berthd|$prefix/sbin/berthd|; s|/usr/local/share/doc|$prefix/share/doc|" dist/berthd.service \
    > /etc/systemd/system/berthd.service
chmod 0644 /etc/systemd/system/berthd.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl reload dbus.service || true
    echo "Installed. Start with: systemctl enable --now berthd.service (stops machined, importd, portabled)"
else
    echo "Installed. No systemd here: start $prefix/sbin/berthd as root after reloading the system bus configuration."
fi
