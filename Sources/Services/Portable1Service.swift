import Bus
import Linux

extension Portable1Manager.Method {
    /// The polkit action a non-root caller needs; nil for methods open to everyone.
    public var polkitAction: String? {
        switch self {
        case .getImage, .listImages, .getImageState, .getImageStateWithExtensions: nil
        case .getImageOSRelease, .getImageMetadata, .getImageMetadataWithExtensions: PolkitAction.inspectPortableImages
        case .attachImage, .attachImageWithExtensions, .detachImage, .detachImageWithExtensions, .reattachImage,
             .reattachImageWithExtensions:
            PolkitAction.attachPortableImages
        case .removeImage, .markImageReadOnly, .setImageLimit, .setPoolLimit: PolkitAction.managePortableImages
        }
    }
}

extension Portable1Image.Method {
    /// The polkit action a non-root caller needs; nil for methods open to everyone.
    public var polkitAction: String? {
        switch self {
        case .getState, .getStateWithExtensions: nil
        case .getOSRelease, .getMetadata, .getMetadataWithExtensions: PolkitAction.inspectPortableImages
        case .attach, .attachWithExtensions, .detach, .detachWithExtensions, .reattach, .reattacheWithExtensions:
            PolkitAction.attachPortableImages
        case .remove, .markReadOnly, .setLimit: PolkitAction.managePortableImages
        }
    }
}

/// The `org.freedesktop.portable1` harness: the manager object and the image objects below
/// `/org/freedesktop/portable1/image`. Same shape as `Machine1Service`.
public actor Portable1Service: BusObjectHandler {
    public nonisolated let bus: Bus
    public nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }
    private let paths: ServicePaths
    private let info: DaemonInfo
    private let harness = Harness()

    /// Parent of the image objects.
    public static let imagePrefix: ObjectPath = "/org/freedesktop/portable1/image"

    public init(bus: Bus, paths: ServicePaths, info: DaemonInfo) {
        self.bus = bus
        self.paths = paths
        self.info = info
    }

    /// Exports the manager object (with `io.berth.Daemon`) and the image subtree.
    public func export() async throws(BusError) {
        try await bus.export([Portable1Manager.interface, BerthDaemon.interface], at: ServiceKind.portable1.managerPath, handler: self)
        try await bus.exportSubtree([Portable1Image.interface], under: Portable1Service.imagePrefix, handler: self)
    }

    public func handle(_ call: MethodCall) async throws -> [BusValue] {
        switch call.interface {
        case Portable1Manager.name:
            guard let method = Portable1Manager.Method(rawValue: call.member) else { throw Harness.unknownMethod(call) }
            return try await harness.serve(call, action: method.polkitAction) { try await self.manager(method, call) }
        case Portable1Image.name:
            guard let method = Portable1Image.Method(rawValue: call.member) else { throw Harness.unknownMethod(call) }
            return try await harness.serve(call, action: method.polkitAction) { try await self.image(method, call) }
        default:
            throw Harness.unknownMethod(call)
        }
    }

    private func manager(_ method: Portable1Manager.Method, _ call: MethodCall) async throws -> [BusValue] {
        switch method {
        default: throw Harness.notImplemented(call)
        }
    }

    private func image(_ method: Portable1Image.Method, _ call: MethodCall) async throws -> [BusValue] {
        switch method {
        default: throw Harness.notImplemented(call)
        }
    }

    public func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue {
        switch interface {
        case Portable1Manager.name:
            switch Portable1Manager.Property(rawValue: name) {
            case .poolPath: return .string(paths.portablePool)
            // UINT64_MAX is what portabled reports when usage and limit are unknown.
            case .poolUsage, .poolLimit: return .uint64(.max)
            case .profiles: return .strings(profiles())
            case nil: throw Harness.unknownProperty(name, interface)
            }
        case BerthDaemon.name:
            return try info.property(name)
        default:
            throw Harness.unknownObject(path)
        }
    }

    /// The names of the profile folders found in the profile directories under the root.
    private func profiles() -> [String] {
        var names = Set<String>()
        for dir in paths.portableProfileDirectories {
            for entry in (try? directoryEntries(dir)) ?? [] where !entry.hasPrefix(".") {
                if let status = try? fileStatus(joinPath(dir, entry)), status.isDirectory { names.insert(entry) }
            }
        }
        return names.sorted()
    }

    public func objectExists(_ path: ObjectPath) -> Bool { false }
    public func childObjects(under prefix: ObjectPath) -> [ObjectPath] { [] }
}
