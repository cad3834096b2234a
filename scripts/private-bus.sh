# Sourced by demo.sh and bench.sh (POSIX sh): a private D-Bus bus of the system type.

# start_private_bus DIR: writes DIR/bus.conf (listen on DIR/socket, everything allowed), forks a
# dbus-daemon on it with its pid in DIR/pid, and prints the bus address.
start_private_bus() {
    mkdir -p "$1"
    cat > "$1/bus.conf" <<CONF
<busconfig>
  <type>system</type>
  <listen>unix:path=$1/socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/>
    <allow send_type="method_call"/><allow send_type="signal"/><allow send_type="method_return"/><allow send_type="error"/>
    <allow receive_type="method_call"/><allow receive_type="signal"/><allow receive_type="method_return"/><allow receive_type="error"/>
  </policy>
</busconfig>
CONF
    # The forked daemon keeps its stdout open: the pid goes to a file, never into $(...).
    dbus-daemon --config-file="$1/bus.conf" --fork --print-pid=1 > "$1/pid"
    echo "unix:path=$1/socket"
}
