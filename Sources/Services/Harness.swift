import Bus
import Linux

/// The three APIs berthd serves, with their bus names and manager objects.
public enum ServiceKind: String, CaseIterable, Sendable, Codable {
    case machine1, import1, portable1

    /// The well-known bus name, e.g. `org.freedesktop.machine1`.
    public var busName: String { "org.freedesktop.\(rawValue)" }
    /// The manager object, e.g. `/org/freedesktop/machine1`.
    public var managerPath: ObjectPath { ObjectPath("/org/freedesktop/\(rawValue)") }
}

/// Every path a service touches, resolved under `--root` (DESIGN.md, "State and paths").
public struct ServicePaths: Sendable {
    /// The folder all paths are resolved under (`/` in production).
    public let root: String

    /// The paths under `root`.
    public init(root: String) { self.root = root }

    /// `<root>/var/lib/machines`: machine1's image pool.
    public var machinePool: String { joinPath(root, "var/lib/machines") }
    /// `<root>/var/lib/portables`: portable1's image pool.
    public var portablePool: String { joinPath(root, "var/lib/portables") }
    /// Where portable profiles live, highest priority first.
    public var portableProfileDirectories: [String] {
        ["etc/systemd/portable/profile", "run/systemd/portable/profile", "usr/local/lib/systemd/portable/profile",
         "usr/lib/systemd/portable/profile"].map { joinPath(root, $0) }
    }
    /// `<root>/run/berth`: berthd's runtime state and locks.
    public var runtimeDirectory: String { joinPath(root, "run/berth") }
}

/// polkit action ids, as systemd's daemons use them.
public enum PolkitAction {
    // Each constant's value is the polkit action id it stands for.
    public static let manageImages = "org.freedesktop.machine1.manage-images"
    public static let manageMachines = "org.freedesktop.machine1.manage-machines"
    public static let machineLogin = "org.freedesktop.machine1.login"
    public static let machineShell = "org.freedesktop.machine1.shell"
    public static let importImages = "org.freedesktop.import1.import"
    public static let exportImages = "org.freedesktop.import1.export"
    public static let pullImages = "org.freedesktop.import1.pull"
    public static let attachPortableImages = "org.freedesktop.portable1.attach-images"
    public static let managePortableImages = "org.freedesktop.portable1.manage-images"
    public static let inspectPortableImages = "org.freedesktop.portable1.inspect-images"
}

/// What every service harness does around its logic: authorize the caller for the member's
/// polkit action (none: open to all), decode the arguments, run the handler, and map what it
/// throws to a D-Bus error through `ErrorMapping`.
///
/// The arguments are decoded only once the caller is authorized, so a refused caller costs no
/// more than its message: a million-element array sent by `nobody` to a polkit-guarded method
/// is answered AccessDenied without being looked at. Decoding is capped per message
/// (`DecodeBudget.methodCall`), which bounds what a method open to everyone can be made to
/// build: beyond it, `org.freedesktop.DBus.Error.LimitsExceeded`.
public struct Harness: Sendable {
    private let authorizer = Authorizer()

    public init() {}

    /// Authorizes `call` for `action` (when not nil), then runs `body`, mapping its errors.
    /// It throws only `BusError`s, but is declared untyped: with `throws(BusError)` here, Swift
    /// 6.3's optimizer crashed (signal 11 while splitting the calling coroutine) in release builds.
    public nonisolated(nonsending) func serve(_ call: MethodCall, action: String?,
                                              _ body: nonisolated(nonsending) () async throws -> [BusValue]) async throws -> [BusValue] {
        do {
            if let action { try await authorizer.authorize(call, action: action) }
            // Decoded here, within the cap, before any logic: the body's accessors reuse them.
            _ = try call.arguments
            return try await body()
        } catch {
            throw ErrorMapping.busError(error)
        }
    }

    /// `org.freedesktop.DBus.Error.NotSupported` for a member whose logic is not written yet:
    /// an honest answer rather than a made-up result.
    public static func notImplemented(_ call: MethodCall) -> BusError {
        BusError.notSupported("\(call.interface).\(call.member) is not implemented yet in berthd")
    }

    /// `org.freedesktop.DBus.Error.UnknownMethod` for a member the tables do not declare (sd-bus
    /// normally answers these itself).
    public static func unknownMethod(_ call: MethodCall) -> BusError {
        BusError(name: BusError.Name.unknownMethod, message: "Unknown method \(call.interface).\(call.member)")
    }

    /// `org.freedesktop.DBus.Error.UnknownObject` for a child object that is gone.
    public static func unknownObject(_ path: ObjectPath) -> BusError {
        BusError(name: BusError.Name.unknownObject, message: "Unknown object '\(path)'.")
    }

    /// `org.freedesktop.DBus.Error.UnknownProperty`.
    public static func unknownProperty(_ name: String, _ interface: String) -> BusError {
        BusError(name: BusError.Name.unknownProperty, message: "Unknown property \(interface).\(name)")
    }
}

/// Properties of `io.berth.Daemon`, shared by the three manager objects.
public struct DaemonInfo: Sendable {
    public var root: String
    public var services: [ServiceKind]

    public init(root: String, services: [ServiceKind]) {
        self.root = root
        self.services = services
    }

    /// The value of `io.berth.Daemon` property `name`.
    public func property(_ name: String) throws(BusError) -> BusValue {
        switch BerthDaemon.Property(rawValue: name) {
        case .version: .string(BerthDaemon.version)
        case .root: .string(root)
        case .services: .strings(services.map(\.busName))
        case nil: throw Harness.unknownProperty(name, BerthDaemon.name)
        }
    }
}
