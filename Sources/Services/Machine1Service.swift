import Bus
import Linux

extension Machine1Manager.Method {
    /// The polkit action a non-root caller needs; nil for the reading methods open to everyone.
    /// The root-only methods (`privileged` in the table) never get here as non-root: sd-bus refuses them.
    public var polkitAction: String? {
        switch self {
        case .removeImage, .renameImage, .cloneImage, .markImageReadOnly, .setPoolLimit, .setImageLimit, .cleanPool:
            PolkitAction.manageImages
        case .unregisterMachine, .terminateMachine, .killMachine, .bindMountMachine, .copyFromMachine, .copyToMachine,
             .copyFromMachineWithFlags, .copyToMachineWithFlags, .openMachineRootDirectory:
            PolkitAction.manageMachines
        case .openMachineLogin: PolkitAction.machineLogin
        case .openMachineShell: PolkitAction.machineShell
        default: nil
        }
    }
}

extension Machine1Image.Method {
    /// The polkit action a non-root caller needs; nil for reading methods.
    public var polkitAction: String? {
        switch self {
        case .remove, .rename, .clone, .markReadOnly, .setLimit: PolkitAction.manageImages
        default: nil
        }
    }
}

extension Machine1Machine.Method {
    /// The polkit action a non-root caller needs; nil for reading methods.
    public var polkitAction: String? {
        switch self {
        case .terminate, .kill, .bindMount, .copyFrom, .copyTo, .copyFromWithFlags, .copyToWithFlags, .openRootDirectory:
            PolkitAction.manageMachines
        case .openLogin: PolkitAction.machineLogin
        case .openShell: PolkitAction.machineShell
        default: nil
        }
    }
}

/// The `org.freedesktop.machine1` harness: the manager object, the image objects below
/// `/org/freedesktop/machine1/image` and the machine objects below `/org/freedesktop/machine1/machine`.
///
/// It decodes the call, authorizes it (`polkitAction`), and maps errors (`ErrorMapping`) through
/// `Harness.serve`; the logic belongs in the pool (`ImagePool`) and a machine registry behind it.
/// To implement a member, add its `case` to `manager(_:_:)`, `image(_:_:)` or `machine(_:_:)`:
///
/// ```swift
/// case .getImage:
///     let image = try await pool.image(named: try call.string(0))      // throws PoolError.noSuchImage
///     return [.objectPath(Machine1Service.imagePath(image.name))]
/// ```
///
/// sd-bus asks `objectExists`, `childObjects` and `property` synchronously, on the bus thread:
/// answer them from `ImagePool`'s synchronous `imageNow(named:)` / `poolUsageNow()` or from a cache
/// this actor refreshes after each pool change, never by awaiting the pool. The pool itself is made
/// in berthd's composition (`Daemon.start`, marked there) and passed to `init` once it takes one.
public actor Machine1Service: BusObjectHandler {
    public nonisolated let bus: Bus
    public nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }
    private let paths: ServicePaths
    private let info: DaemonInfo
    private let harness = Harness()

    /// Parent of the image objects: `/org/freedesktop/machine1/image/<escaped name>`.
    public static let imagePrefix: ObjectPath = "/org/freedesktop/machine1/image"
    /// Parent of the machine objects: `/org/freedesktop/machine1/machine/<escaped name>`.
    public static let machinePrefix: ObjectPath = "/org/freedesktop/machine1/machine"

    /// The object path of image `name` (sd_bus_path_encode, so `.host` is `…/_2ehost`).
    public static func imagePath(_ name: String) -> ObjectPath { imagePrefix.appending(escaped: name) }
    /// The object path of machine `name`.
    public static func machinePath(_ name: String) -> ObjectPath { machinePrefix.appending(escaped: name) }

    public init(bus: Bus, paths: ServicePaths, info: DaemonInfo) {
        self.bus = bus
        self.paths = paths
        self.info = info
    }

    /// Exports the manager object (with `io.berth.Daemon`) and the image and machine subtrees.
    public func export() async throws(BusError) {
        try await bus.export([Machine1Manager.interface, BerthDaemon.interface], at: ServiceKind.machine1.managerPath, handler: self)
        try await bus.exportSubtree([Machine1Image.interface], under: Machine1Service.imagePrefix, handler: self)
        try await bus.exportSubtree([Machine1Machine.interface], under: Machine1Service.machinePrefix, handler: self)
    }

    public func handle(_ call: MethodCall) async throws -> [BusValue] {
        switch call.interface {
        case Machine1Manager.name:
            guard let method = Machine1Manager.Method(rawValue: call.member) else { throw Harness.unknownMethod(call) }
            return try await harness.serve(call, action: method.polkitAction) { try await self.manager(method, call) }
        case Machine1Image.name:
            guard let method = Machine1Image.Method(rawValue: call.member) else { throw Harness.unknownMethod(call) }
            return try await harness.serve(call, action: method.polkitAction) { try await self.image(method, call) }
        case Machine1Machine.name:
            guard let method = Machine1Machine.Method(rawValue: call.member) else { throw Harness.unknownMethod(call) }
            return try await harness.serve(call, action: method.polkitAction) { try await self.machine(method, call) }
        default:
            throw Harness.unknownMethod(call)
        }
    }

    private func manager(_ method: Machine1Manager.Method, _ call: MethodCall) async throws -> [BusValue] {
        switch method {
        default: throw Harness.notImplemented(call)
        }
    }

    private func image(_ method: Machine1Image.Method, _ call: MethodCall) async throws -> [BusValue] {
        switch method {
        default: throw Harness.notImplemented(call)
        }
    }

    private func machine(_ method: Machine1Machine.Method, _ call: MethodCall) async throws -> [BusValue] {
        switch method {
        default: throw Harness.notImplemented(call)
        }
    }

    public func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue {
        switch interface {
        case Machine1Manager.name:
            switch Machine1Manager.Property(rawValue: name) {
            case .poolPath: return .string(paths.machinePool)
            // UINT64_MAX is what machined reports when usage and limit are unknown.
            case .poolUsage, .poolLimit: return .uint64(.max)
            case nil: throw Harness.unknownProperty(name, interface)
            }
        case BerthDaemon.name:
            return try info.property(name)
        default:
            // No image or machine objects exist yet (objectExists says so), so sd-bus never asks.
            throw Harness.unknownObject(path)
        }
    }

    public func objectExists(_ path: ObjectPath) -> Bool { false }

    public func childObjects(under prefix: ObjectPath) -> [ObjectPath] { [] }
}
