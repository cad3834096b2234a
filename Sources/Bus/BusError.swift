import CSystemd
import Linux

/// A D-Bus error reply: a name such as `org.freedesktop.DBus.Error.AccessDenied` and a message.
///
/// Handlers throw it to answer a call with that error; other thrown errors become
/// `org.freedesktop.DBus.Error.Failed`. Services map their own typed errors to it in one table.
public struct BusError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The D-Bus error name.
    public var name: String
    /// The human-readable message.
    public var message: String

    /// An error named `name`.
    public init(name: String, message: String) {
        self.name = name
        self.message = message
    }

    /// `System.Error.<errno name>`, the name sd-bus gives a failed system call (as systemd does).
    public init(errno: Errno, _ message: String) {
        self.init(name: BusError.systemErrorPrefix + errno.name, message: message)
    }

    public var description: String { "\(name): \(message)" }

    /// Prefix of the errno-derived error names.
    public static let systemErrorPrefix = "System.Error."

    /// Well-known error names of the D-Bus specification, defined once here.
    public enum Name {
        // Each constant's value is the error name it stands for.
        public static let failed = "org.freedesktop.DBus.Error.Failed"
        public static let accessDenied = "org.freedesktop.DBus.Error.AccessDenied"
        public static let invalidArgs = "org.freedesktop.DBus.Error.InvalidArgs"
        public static let notSupported = "org.freedesktop.DBus.Error.NotSupported"
        public static let fileExists = "org.freedesktop.DBus.Error.FileExists"
        public static let fileNotFound = "org.freedesktop.DBus.Error.FileNotFound"
        public static let unknownObject = "org.freedesktop.DBus.Error.UnknownObject"
        public static let unknownMethod = "org.freedesktop.DBus.Error.UnknownMethod"
        public static let unknownProperty = "org.freedesktop.DBus.Error.UnknownProperty"
        public static let serviceUnknown = "org.freedesktop.DBus.Error.ServiceUnknown"
        public static let noReply = "org.freedesktop.DBus.Error.NoReply"
        public static let interactiveAuthorizationRequired = "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
        public static let limitsExceeded = "org.freedesktop.DBus.Error.LimitsExceeded"
    }

    /// `org.freedesktop.DBus.Error.InvalidArgs`.
    public static func invalidArgs(_ message: String) -> BusError { BusError(name: Name.invalidArgs, message: message) }
    /// `org.freedesktop.DBus.Error.AccessDenied`.
    public static func accessDenied(_ message: String) -> BusError { BusError(name: Name.accessDenied, message: message) }
    /// `org.freedesktop.DBus.Error.NotSupported`.
    public static func notSupported(_ message: String) -> BusError { BusError(name: Name.notSupported, message: message) }
    /// `org.freedesktop.DBus.Error.LimitsExceeded`.
    public static func limitsExceeded(_ message: String) -> BusError { BusError(name: Name.limitsExceeded, message: message) }
    /// `org.freedesktop.DBus.Error.Failed`.
    public static func failed(_ message: String) -> BusError { BusError(name: Name.failed, message: message) }

    /// The errno of a `System.Error.E…` name, if it is one this process knows.
    public var errno: Errno? {
        guard name.hasPrefix(BusError.systemErrorPrefix) else { return nil }
        let n = String(name.dropFirst(BusError.systemErrorPrefix.count))
        return (1..<134).lazy.map { Errno(Int32($0)) }.first { $0.name == n }
    }

    /// Reads the error of a method-error reply.
    init(reply m: OpaquePointer) {
        if let e = sd_bus_message_get_error(m) {
            self.init(name: e.pointee.name.map { String(cString: $0) } ?? Name.failed,
                      message: e.pointee.message.map { String(cString: $0) } ?? "")
        } else {
            self.init(name: Name.failed, message: "unknown error")
        }
    }
}
