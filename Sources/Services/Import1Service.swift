import Bus
import Logging
import PoolAPI
import Transfer

extension Import1Manager.Method {
    /// The polkit action a non-root caller needs; nil for reading methods.
    public var polkitAction: String? {
        switch self {
        case .importTar, .importRaw, .importFileSystem: PolkitAction.importImages
        case .exportTar, .exportRaw: PolkitAction.exportImages
        // importd checks the pull action for cancelling too.
        case .pullTar, .pullRaw, .cancelTransfer, .pullOci: PolkitAction.pullImages
        case .listTransfers: nil
        case .importTarEx, .importRawEx, .importFileSystemEx: PolkitAction.importImages
        case .exportTarEx, .exportRawEx: PolkitAction.exportImages
        case .pullTarEx, .pullRawEx: PolkitAction.pullImages
        case .listTransfersEx, .listImages: nil
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
/// `/org/freedesktop/import1/transfer` (`_<id>`). It decodes the wire, authorizes the caller,
/// and hands the work to `TransferEngine`; it announces each transfer with TransferNew, forwards
/// its log lines as the transfer object's LogMessage signal, and ends it with TransferRemoved.
public actor Import1Service: BusObjectHandler {
    public nonisolated let bus: Bus
    public nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }
    private let paths: ServicePaths
    private let info: DaemonInfo
    private let harness = Harness()
    private let engine: TransferEngine?
    let logger: Logger
    /// The running transfers, mirrored here so the synchronous property and find callbacks of
    /// sd-bus can answer without awaiting the engine.
    var transfers: [UInt32: TransferHandle] = [:]

    /// Parent of the transfer objects.
    public static let transferPrefix: ObjectPath = "/org/freedesktop/import1/transfer"

    /// The object path of transfer `id`: `/org/freedesktop/import1/transfer/_<id>`, as importd names them.
    public static func transferPath(_ id: UInt32) -> ObjectPath { ObjectPath("\(transferPrefix.rawValue)/_\(id)") }

    /// The id of the transfer object at `path`, if `path` names one. Only the path
    /// `transferPath` makes: `_07` is not another path of transfer 7 (importd parses the id with
    /// strtoul, taking `_07`, `_0x7` and `_7` for one transfer; one object has one path here).
    static func transferID(_ path: ObjectPath) -> UInt32? {
        let prefix = transferPrefix.rawValue + "/_"
        guard path.rawValue.hasPrefix(prefix) else { return nil }
        let digits = path.rawValue.dropFirst(prefix.count)
        guard let id = UInt32(digits), String(id) == digits else { return nil }
        return id
    }

    /// A harness over `engine` (nil: every transfer method answers NotSupported, as before the
    /// engine is composed in).
    public init(bus: Bus, paths: ServicePaths, info: DaemonInfo, engine: TransferEngine? = nil,
                logger: Logger = Logger(label: "berthd.import1")) {
        self.bus = bus
        self.paths = paths
        self.info = info
        self.engine = engine
        self.logger = logger
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
        guard let engine else { throw Harness.notImplemented(call) }
        switch method {
        case .importTar, .importRaw, .importFileSystem:
            // (h fd, s local_name, b force, b read_only)
            let fd = try call.fileDescriptor(0)
            let local = try Self.checkedLocalName(try call.string(1))
            let force = try call.bool(2), readOnly = try call.bool(3)
            let type: TransferType = switch method {
            case .importTar: .importTar
            case .importRaw: .importRaw
            default: .importFileSystem
            }
            // Remote is "" for fd imports, as systemd-importd 252 reports it (measured).
            let request = TransferRequest(type: type, local: local, operation: .importing(fd: fd.rawValue),
                                          flags: TransferRequest.flags(force: force, readOnly: readOnly), remote: "")
            return try await start(request, engine: engine)
        case .exportTar, .exportRaw:
            // (s local_name, h fd, s format)
            let local = try Self.checkedLocalName(try call.string(0))
            let fd = try call.fileDescriptor(1)
            let formatName = try call.string(2)
            guard let format = ExportFormat(argument: formatName) else {
                throw BusError.invalidArgs("Unknown format specified: \(formatName)")
            }
            let type: TransferType = method == .exportTar ? .exportTar : .exportRaw
            let request = TransferRequest(type: type, local: local, operation: .exporting(fd: fd.rawValue, format: format), remote: "")
            return try await start(request, engine: engine)
        case .pullTar, .pullRaw:
            // (s url, s local_name, s verify_mode, b force)
            let url = try call.string(0)
            guard Pull.isValidURL(url) else { throw BusError.invalidArgs("URL \(url) is invalid") }
            let local = try Self.checkedLocalName(try call.string(1))
            let verifyName = try call.string(2)
            // importd treats "" as the default, signature.
            guard let verify = verifyName.isEmpty ? .signature : VerifyMode(rawValue: verifyName) else {
                throw BusError.invalidArgs("Unknown verification mode \(verifyName)")
            }
            let force = try call.bool(3)
            let type: TransferType = method == .pullTar ? .pullTar : .pullRaw
            let request = TransferRequest(type: type, local: local, operation: .pulling(url: url, verify: verify),
                                          flags: TransferRequest.flags(force: force, readOnly: false))
            return try await start(request, engine: engine)
        case .listTransfers:
            let rows: [BusValue] = transfers.values.sorted { $0.id < $1.id }.map { t in
                .structure([.uint32(t.id), .string(t.type.rawValue), .string(t.remote), .string(t.local),
                            .double(t.systemdProgress), .objectPath(Self.transferPath(t.id))])
            }
            return [.array(element: "(usssdo)", rows)]
        case .pullOci:
            return try await pullOci(call, engine: engine)
        case .cancelTransfer:
            let id = UInt32(truncatingIfNeeded: try call.uint64(0))
            guard transfers[id] != nil, await engine.cancel(id: id) else { throw Self.noSuchTransfer(id) }
            return []
        case .importTarEx, .importRawEx, .importFileSystemEx, .exportTarEx, .exportRawEx, .pullTarEx, .pullRawEx,
             .listTransfersEx, .listImages:
            return try await managerEx(method, call, engine: engine)
        }
    }

    private func transfer(_ method: Import1Transfer.Method, _ call: MethodCall) async throws -> [BusValue] {
        guard let id = Self.transferID(call.path), let handle = transfers[id] else { throw Harness.unknownObject(call.path) }
        switch method {
        case .cancel:
            handle.cancel()
            return []
        }
    }

    /// importd's check of `local_name`: a valid image name, else InvalidArgs.
    static func checkedLocalName(_ name: String) throws(BusError) -> String {
        do { try ImagePool.validateName(name) } catch {
            throw BusError.invalidArgs("Local name \(name) is invalid")
        }
        return name
    }

    /// `org.freedesktop.import1.NoSuchTransfer`, as importd words it.
    private static func noSuchTransfer(_ id: UInt32) -> BusError {
        BusError(name: ErrorMapping.Name.noSuchTransfer, message: "No transfer by id \(id)")
    }

    /// Starts `request`, publishes its object, announces it (TransferNew) and follows its events
    /// until TransferRemoved. A busy name is importd's TransferInProgress.
    func start(_ request: TransferRequest, engine: TransferEngine) async throws -> [BusValue] {
        // Unlike importd 252, which starts a second import into a name already being written
        // (one of them then fails late), Berth refuses it up front.
        let handle: TransferHandle
        do {
            handle = try await engine.start(request)
        } catch let e as PoolError where e.code == .busy {
            throw BusError(name: ErrorMapping.Name.transferInProgress, message: "Transfer for \(request.local) already in progress.")
        } catch let e as TransferError {
            throw BusError.invalidArgs(e.message)
        }
        let id = handle.id, path = Self.transferPath(id)
        transfers[id] = handle
        // remote: the URL of a pull, empty for imports and exports (they read or write an fd).
        let from = handle.remote.isEmpty ? "" : "\(handle.remote) → "
        logger.info("transfer \(id) started: \(handle.type.rawValue) \(from)\(handle.local)")
        do {
            try await bus.emitSignal(path: ServiceKind.import1.managerPath, interface: Import1Manager.name,
                                     member: Import1Manager.Signal.transferNew.rawValue, [.uint32(id), .objectPath(path)])
        } catch {
            logger.warning("transfer \(id): cannot emit TransferNew: \(error)")
        }
        Task { await self.follow(handle) }
        return [.uint32(id), .objectPath(path)]
    }

    /// Forwards the log lines of `handle` as LogMessage and ends with TransferRemoved once the
    /// transfer is over (its object disappears first, as importd does).
    private func follow(_ handle: TransferHandle) async {
        let id = handle.id, path = Self.transferPath(id)
        var result = TransferResult.failed("the transfer ended without a result")
        var logSignalFailed = false
        var progressSignals = ProgressThrottle()
        for await event in handle.events {
            switch event {
            case .log(let priority, let message):
                // Warnings and errors go to berthd's log too, as importd's workers' go to the
                // journal (the worker's lines are rate-limited before they get here).
                if priority <= LogPriority.warning && priority != LogPriority.error {
                    logger.warning("transfer \(id): \(message)")
                }
                do {
                    try await bus.emitSignal(path: path, interface: Import1Transfer.name, member: Import1Transfer.Signal.logMessage.rawValue,
                                             [.uint32(UInt32(bitPattern: priority)), .string(message)])
                } catch where !logSignalFailed {
                    logSignalFailed = true
                    logger.warning("transfer \(id): cannot emit LogMessage (further failures not logged): \(error)")
                } catch {}
            case .progress(let fraction):
                // Progress does not emit PropertiesChanged (EmitsChangedSignal=false, as importd);
                // ProgressUpdate (newer than 252) carries it, rate-limited.
                if let value = progressSignals.offer(fraction) { await emitProgressUpdate(id, value) }
            case .finished(let r):
                result = r
            }
        }
        if let value = progressSignals.flush() { await emitProgressUpdate(id, value) }
        transfers[id] = nil
        switch result {
        case .failed(let why): logger.warning("transfer \(id) failed: \(why)")
        default: logger.info("transfer \(id) \(result.rawValue)")
        }
        do {
            try await bus.emitSignal(path: ServiceKind.import1.managerPath, interface: Import1Manager.name,
                                     member: Import1Manager.Signal.transferRemoved.rawValue,
                                     [.uint32(id), .objectPath(path), .string(result.rawValue)])
        } catch {
            // Clients waiting for the end (machinectl) would wait for ever: say why.
            logger.warning("transfer \(id): cannot emit TransferRemoved(\(result.rawValue)): \(error)")
        }
    }

    public func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue {
        switch interface {
        case BerthDaemon.name: return try info.property(name)
        case Import1Transfer.name:
            guard let id = Self.transferID(path), let t = transfers[id] else { throw Harness.unknownObject(path) }
            switch Import1Transfer.Property(rawValue: name) {
            case .id: return .uint32(t.id)
            case .local: return .string(t.local)
            case .remote: return .string(t.remote)
            case .type: return .string(t.type.rawValue)
            case .verify: return .string(t.verify)
            case .progress: return .double(t.systemdProgress)
            case nil: throw Harness.unknownProperty(name, interface)
            }
        default: throw Harness.unknownObject(path)
        }
    }

    public func objectExists(_ path: ObjectPath) -> Bool {
        guard let id = Self.transferID(path) else { return false }
        return transfers[id] != nil
    }

    public func childObjects(under prefix: ObjectPath) -> [ObjectPath] {
        transfers.keys.sorted().map(Self.transferPath)
    }
}
