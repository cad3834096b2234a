import Bus

extension Import1Manager.Method {
    /// The polkit action a non-root caller needs; nil for reading methods.
    public var polkitAction: String? {
        switch self {
        case .importTar, .importRaw, .importFileSystem: PolkitAction.importImages
        case .exportTar, .exportRaw: PolkitAction.exportImages
        // importd checks the pull action for cancelling too.
        case .pullTar, .pullRaw, .cancelTransfer: PolkitAction.pullImages
        case .listTransfers: nil
        }
    }
}

extension Import1Transfer.Method {
    /// The polkit action a non-root caller needs.
    public var polkitAction: String? {
        switch self {
        case .cancel: PolkitAction.pullImages
        }
    }
}

/// The `org.freedesktop.import1` harness: the manager object and the transfer objects below
/// `/org/freedesktop/import1/transfer` (`_<id>`). Same shape as `Machine1Service`: add a member's
/// logic as a `case` in `manager(_:_:)` / `transfer(_:_:)`; announce transfers with
/// `Import1Manager.Signal.transferNew` / `.transferRemoved` through `bus.emitSignal`.
public actor Import1Service: BusObjectHandler {
    public nonisolated let bus: Bus
    public nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }
    private let paths: ServicePaths
    private let info: DaemonInfo
    private let harness = Harness()

    /// Parent of the transfer objects.
    public static let transferPrefix: ObjectPath = "/org/freedesktop/import1/transfer"

    /// The object path of transfer `id`: `/org/freedesktop/import1/transfer/_<id>`, as importd names them.
    public static func transferPath(_ id: UInt32) -> ObjectPath { ObjectPath("\(transferPrefix.rawValue)/_\(id)") }

    public init(bus: Bus, paths: ServicePaths, info: DaemonInfo) {
        self.bus = bus
        self.paths = paths
        self.info = info
    }

    /// Exports the manager object (with `io.berth.Daemon`) and the transfer subtree.
    public func export() async throws(BusError) {
        try await bus.export([Import1Manager.interface, BerthDaemon.interface], at: ServiceKind.import1.managerPath, handler: self)
        try await bus.exportSubtree([Import1Transfer.interface], under: Import1Service.transferPrefix, handler: self)
    }

    public func handle(_ call: MethodCall) async throws -> [BusValue] {
        switch call.interface {
        case Import1Manager.name:
            guard let method = Import1Manager.Method(rawValue: call.member) else { throw Harness.unknownMethod(call) }
            return try await harness.serve(call, action: method.polkitAction) { try await self.manager(method, call) }
        case Import1Transfer.name:
            guard let method = Import1Transfer.Method(rawValue: call.member) else { throw Harness.unknownMethod(call) }
            return try await harness.serve(call, action: method.polkitAction) { try await self.transfer(method, call) }
        default:
            throw Harness.unknownMethod(call)
        }
    }

    private func manager(_ method: Import1Manager.Method, _ call: MethodCall) async throws -> [BusValue] {
        switch method {
        default: throw Harness.notImplemented(call)
        }
    }

    private func transfer(_ method: Import1Transfer.Method, _ call: MethodCall) async throws -> [BusValue] {
        switch method {
        default: throw Harness.notImplemented(call)
        }
    }

    public func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue {
        switch interface {
        case BerthDaemon.name: return try info.property(name)
        default: throw Harness.unknownObject(path)
        }
    }

    public func objectExists(_ path: ObjectPath) -> Bool { false }
    public func childObjects(under prefix: ObjectPath) -> [ObjectPath] { [] }
}
