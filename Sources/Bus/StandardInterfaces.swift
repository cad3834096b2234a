/// The D-Bus specification's standard interfaces, which sd-bus answers on every object itself:
/// their names and members, defined once for the clients that call them.
public enum StandardInterface {
    /// `org.freedesktop.DBus.Properties`.
    public enum Properties {
        /// The interface name.
        public static let name = "org.freedesktop.DBus.Properties"
        /// Its methods, each raw value the D-Bus member name.
        public enum Method: String, Sendable {
            case get = "Get", getAll = "GetAll", set = "Set"
        }
    }

    /// `org.freedesktop.DBus.Peer`.
    public enum Peer {
        /// The interface name.
        public static let name = "org.freedesktop.DBus.Peer"
        /// Its methods, each raw value the D-Bus member name.
        public enum Method: String, Sendable {
            case ping = "Ping", getMachineId = "GetMachineId"
        }
    }

    /// `org.freedesktop.DBus.Introspectable`.
    public enum Introspectable {
        /// The interface name.
        public static let name = "org.freedesktop.DBus.Introspectable"
        /// Its methods, each raw value the D-Bus member name.
        public enum Method: String, Sendable {
            case introspect = "Introspect"
        }
    }
}
