import Bus
import Glibc
import Linux
import Machines
import PoolAPI

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
/// It decodes the call, authorizes it (`polkitAction`), and answers with systemd-machined 252's
/// replies and errors (`Machine1Errors`); the logic lives in the pool (`ImagePool`). Image objects
/// follow the pool with no cache: the find callback is a synchronous lookup (`imageNow`), so
/// images added or removed behind berthd's back appear and vanish at once. Long work (clone,
/// remove) runs off the bus thread in the pool, so other calls are answered meanwhile. The
/// machine members answer NotSupported until the machine registry exists.
///
/// File-system work on the bus thread: only the lookups of one image by name (GetImage, the
/// find callback, an image's property getters, the precheck of by-name methods), a few statx
/// calls, as systemd-machined makes them on its one thread. Making them asynchronous would put
/// a thread hop on GetImage + GetAll, the hottest path, and an image whose own mount hangs
/// hangs machined the same way. What walks the search paths or asks the kernel for quota —
/// the node enumerator (`ImageNameListing`) and PoolUsage/PoolLimit (`PoolUsageCache`) — runs
/// on worker threads, the bus thread waiting for it at most briefly, so a hung search path or
/// pool mount cannot stall all three services.
public actor Machine1Service: BusObjectHandler {
    public nonisolated let bus: Bus
    public nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }
    let paths: ServicePaths
    private let info: DaemonInfo
    private let pool: ImagePool
    private let harness = Harness()
    /// PoolUsage and PoolLimit, measured off the bus thread.
    private let poolUsage: PoolUsageCache
    /// The image names for the node enumerator, listed off the bus thread.
    private let imageNames: ImageNameListing
    /// The last image lookup and the message it was made for (`imageForCurrentMessage`).
    private var lookupMemo: (request: RequestID, name: String, image: Image?)?
    /// The registered machines by name, each with the pidfd of its leader and the loop's watch on it.
    var machines: [String: RegisteredMachine] = [:]
    /// The registry's files under ROOT/run/berth/machines.
    let machineStore: MachineStore
    let controlGroups = ControlGroups()
    /// Whether systemd answers on the bus, and the scope starts in flight (Machine1Lifecycle).
    var lifecycle = MachineLifecycle()

    /// Parent of the image objects: `/org/freedesktop/machine1/image/<escaped name>`.
    public static let imagePrefix: ObjectPath = "/org/freedesktop/machine1/image"
    /// Parent of the machine objects: `/org/freedesktop/machine1/machine/<escaped name>`.
    public static let machinePrefix: ObjectPath = "/org/freedesktop/machine1/machine"

    /// The object path of image `name` (sd_bus_path_encode, so `.host` is `…/_2ehost`).
    public static func imagePath(_ name: String) -> ObjectPath { imagePrefix.appending(escaped: name) }
    /// The object path of machine `name`.
    public static func machinePath(_ name: String) -> ObjectPath { machinePrefix.appending(escaped: name) }

    /// A harness serving `pool`'s images (its pool folder is `paths.machinePool`).
    public init(bus: Bus, paths: ServicePaths, info: DaemonInfo, pool: ImagePool) {
        self.bus = bus
        self.paths = paths
        self.info = info
        self.pool = pool
        poolUsage = PoolUsageCache(pool: pool)
        imageNames = ImageNameListing(pool: pool)
        machineStore = MachineStore(root: paths.root)
    }

    /// Exports the manager object (with `io.berth.Daemon`) and the image and machine subtrees.
    public func export() async throws(BusError) {
        try await bus.export([Machine1Manager.interface, BerthDaemon.interface], at: ServiceKind.machine1.managerPath, handler: self)
        try await bus.exportSubtree([Machine1Image.interface], under: Machine1Service.imagePrefix, handler: self)
        try await bus.exportSubtree([Machine1Machine.interface], under: Machine1Service.machinePrefix, handler: self)
        // The first measurement, so the first read of PoolUsage has a value to answer with.
        _ = poolUsage.current()
        restoreMachines()
        // Not awaited: start-up (and READY=1) does not wait on systemd; until the answer is in,
        // the first CreateMachine asks the bus itself (systemdAnswers).
        Task { await self.watchSystemd() }
    }

    /// GetImage, answered on the bus thread as machined does: a lookup is a few statx calls,
    /// cheaper than any trip through a task; everything else goes to `handle`.
    public func handleNow(_ call: MethodCall) throws -> [BusValue]? {
        guard call.interface == Machine1Manager.name, call.member == Machine1Manager.Method.getImage.rawValue else { return nil }
        do {
            return try getImage(try call.string(0))
        } catch {
            throw ErrorMapping.busError(error)
        }
    }

    public func handle(_ call: MethodCall) async throws -> [BusValue] {
        switch call.interface {
        case Machine1Manager.name:
            guard let method = Machine1Manager.Method(rawValue: call.member) else { throw Harness.unknownMethod(call) }
            try precheck(method, call)
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

    /// machined checks the names and finds the image before it asks polkit, so an unprivileged
    /// caller naming a missing image learns NoSuchImage, not AccessDenied: the same order here.
    private func precheck(_ method: Machine1Manager.Method, _ call: MethodCall) throws(BusError) {
        switch method {
        case .removeImage, .renameImage, .cloneImage, .markImageReadOnly, .setImageLimit:
            let name = try call.string(0)
            try Machine1Errors.validate(name)
            // A few stat calls on the bus thread, as sd-bus's find callback makes anyway.
            guard (try? pool.imageNow(named: name)) != nil else { throw Machine1Errors.noSuchImage(name) }
            if method == .renameImage || method == .cloneImage { try Machine1Errors.validate(try call.string(1)) }
        default:
            break
        }
    }

    private func manager(_ method: Machine1Manager.Method, _ call: MethodCall) async throws -> [BusValue] {
        switch method {
        case .listImages:
            let images = try await pool.images()
            return [.array(element: "(ssbttto)", images.map(Self.listEntry))]
        case .getImage:
            return try getImage(try call.string(0))
        case .removeImage: return try await remove(try call.string(0))
        case .renameImage: return try await rename(try call.string(0), to: try call.string(1))
        case .cloneImage: return try await clone(try call.string(0), to: try call.string(1), readOnly: try call.bool(2))
        case .markImageReadOnly: return try await markReadOnly(try call.string(0), try call.bool(1))
        case .setImageLimit: return try await setLimit(try call.string(0), try call.uint64(1))
        case .getImageHostname: return try await metadata(try call.string(0)) { [.string($0.hostname)] }
        case .getImageMachineID: return try await metadata(try call.string(0)) { [.bytes($0.machineID)] }
        case .getImageMachineInfo: return try await metadata(try call.string(0)) { [.stringDictionary($0.machineInfo)] }
        case .getImageOSRelease: return try await metadata(try call.string(0)) { [.stringDictionary($0.osRelease)] }
        case .setPoolLimit:
            let bytes = try call.uint64(0)
            do { try await pool.setPoolLimit(bytes) } catch { throw Machine1Errors.translate(error, name: "") }
            await poolUsage.refresh()
            return []
        case .getMachine, .getMachineByPID, .listMachines, .createMachine, .createMachineWithNetwork, .registerMachine,
             .registerMachineWithNetwork, .unregisterMachine, .terminateMachine, .killMachine, .getMachineOSRelease,
             .getMachineUIDShift, .registerMachineEx, .createMachineEx, .getMachineSSHInfo,
             .openMachinePTY, .openMachineLogin, .openMachineShell, .openMachineRootDirectory, .bindMountMachine:
            return try await machineManager(method, call)
        case .getMachineAddresses, .copyFromMachine, .copyToMachine, .copyFromMachineWithFlags, .copyToMachineWithFlags,
             .mapFromMachineUser, .mapToMachineUser, .mapFromMachineGroup, .mapToMachineGroup:
            return try await machineManager(method, call)
        case .cleanPool:
            let mode = try call.string(0)
            guard let cleanMode = ImagePool.CleanMode(rawValue: mode) else {
                throw BusError.invalidArgs("Unknown mode '\(mode)'.")
            }
            let removed: [(name: String, usage: UInt64)]
            do { removed = try await pool.clean(cleanMode) } catch { throw Machine1Errors.translate(error, name: "") }
            for image in removed { imageNames.forget(image.name) }
            poolUsage.invalidate()
            return [.array(element: "(st)", removed.map { .structure([.string($0.name), .uint64($0.usage)]) })]
        default:
            // The machine members come with the machine registry.
            throw Harness.notImplemented(call)
        }
    }

    private func image(_ method: Machine1Image.Method, _ call: MethodCall) async throws -> [BusValue] {
        guard let name = call.path.unescapedName(under: Self.imagePrefix) else { throw Harness.unknownObject(call.path) }
        switch method {
        case .remove: return try await remove(name)
        case .rename: return try await rename(name, to: try call.string(0))
        case .clone: return try await clone(name, to: try call.string(0), readOnly: try call.bool(1))
        case .markReadOnly: return try await markReadOnly(name, try call.bool(0))
        case .setLimit: return try await setLimit(name, try call.uint64(0))
        case .getHostname: return try await metadata(name) { [.string($0.hostname)] }
        case .getMachineID: return try await metadata(name) { [.bytes($0.machineID)] }
        case .getMachineInfo: return try await metadata(name) { [.stringDictionary($0.machineInfo)] }
        case .getOSRelease: return try await metadata(name) { [.stringDictionary($0.osRelease)] }
        }
    }

    /// GetImage: the object path of image `name`. machined looks an invalid name up like any
    /// other and finds nothing: NoSuchImage.
    private func getImage(_ name: String) throws -> [BusValue] {
        do {
            let image = try pool.imageNow(named: name)
            return [.objectPath(Self.imagePath(image.name))]
        } catch let e as PoolError where e.code == .invalidName {
            throw Machine1Errors.noSuchImage(name)
        } catch {
            throw Machine1Errors.translate(error, name: name)
        }
    }

    // MARK: image members, shared by the manager's by-name methods and the image objects

    /// Runs `body` for image `name` after checking the name, translating the pool's errors to
    /// machined's replies.
    private func onImage(_ name: String, metadata: Bool = false,
                         _ body: () async throws -> [BusValue]) async throws -> [BusValue] {
        try Machine1Errors.validate(name)
        do { return try await body() } catch { throw Machine1Errors.translate(error, name: name, metadata: metadata) }
    }

    /// RemoveImage / Image.Remove.
    private func remove(_ name: String) async throws -> [BusValue] {
        try await onImage(name) {
            try await pool.remove(name)
            imageNames.forget(name)
            poolUsage.invalidate()
            return []
        }
    }

    /// RenameImage / Image.Rename.
    private func rename(_ name: String, to newName: String) async throws -> [BusValue] {
        try Machine1Errors.validate(name)
        try Machine1Errors.validate(newName)
        return try await onImage(name) {
            try await pool.rename(name, to: newName)
            imageNames.forget(name)
            return []
        }
    }

    /// CloneImage / Image.Clone: the copy runs in the pool, off the bus thread.
    private func clone(_ name: String, to newName: String, readOnly: Bool) async throws -> [BusValue] {
        try Machine1Errors.validate(name)
        try Machine1Errors.validate(newName)
        return try await onImage(name) {
            _ = try await pool.clone(name, to: newName, readOnly: readOnly)
            poolUsage.invalidate()
            return []
        }
    }

    /// MarkImageReadOnly / Image.MarkReadOnly.
    private func markReadOnly(_ name: String, _ readOnly: Bool) async throws -> [BusValue] {
        try await onImage(name) {
            try await pool.setReadOnly(name, readOnly)
            return []
        }
    }

    /// SetImageLimit / Image.SetLimit.
    private func setLimit(_ name: String, _ bytes: UInt64) async throws -> [BusValue] {
        try await onImage(name) {
            try await pool.setLimit(name, bytes)
            poolUsage.invalidate()
            return []
        }
    }

    /// GetImageHostname/MachineID/MachineInfo/OSRelease and their Image object twins.
    private func metadata(_ name: String, _ reply: @Sendable (ImageMetadata) -> [BusValue]) async throws -> [BusValue] {
        try await onImage(name, metadata: true) { reply(try await pool.metadata(of: name)) }
    }

    /// One ListImages entry: name, type, read-only, crtime, mtime, usage, object path.
    private static func listEntry(_ image: Image) -> BusValue {
        .structure([
            .string(image.name), .string(image.type.rawValue), .boolean(image.readOnly),
            .uint64(image.creationTimestamp), .uint64(image.modificationTimestamp), .uint64(image.usage),
            .objectPath(imagePath(image.name)),
        ])
    }

    private func machine(_ method: Machine1Machine.Method, _ call: MethodCall) async throws -> [BusValue] {
        guard let name = call.path.unescapedName(under: Self.machinePrefix) else { throw Harness.unknownObject(call.path) }
        return try await machineObject(name, method, call)
    }

    public func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue {
        switch interface {
        case Machine1Manager.name:
            switch Machine1Manager.Property(rawValue: name) {
            case .poolPath: return .string(paths.machinePool)
            // UINT64_MAX (Image.unknown) where usage and limit are unknown, as machined reports.
            case .poolUsage: return .uint64(poolUsage.current().usage)
            case .poolLimit: return .uint64(poolUsage.current().limit)
            case nil: throw Harness.unknownProperty(name, interface)
            }
        case BerthDaemon.name:
            return try info.property(name)
        case Machine1Image.name:
            guard let imageName = path.unescapedName(under: Self.imagePrefix),
                  let image = imageForCurrentMessage(imageName) else { throw Harness.unknownObject(path) }
            return try Self.imageProperty(name, of: image)
        case Machine1Machine.name:
            guard let machineName = path.unescapedName(under: Self.machinePrefix) else { throw Harness.unknownObject(path) }
            return try machineProperty(name, of: machineName)
        default:
            throw Harness.unknownObject(path)
        }
    }

    /// The value of `org.freedesktop.machine1.Image` property `name`.
    private static func imageProperty(_ name: String, of image: Image) throws(BusError) -> BusValue {
        switch Machine1Image.Property(rawValue: name) {
        case .name: .string(image.name)
        case .path: .string(image.path)
        case .type: .string(image.type.rawValue)
        case .readOnly: .boolean(image.readOnly)
        case .creationTimestamp: .uint64(image.creationTimestamp)
        case .modificationTimestamp: .uint64(image.modificationTimestamp)
        case .usage: .uint64(image.usage)
        case .usageExclusive: .uint64(image.usageExclusive)
        case .limit: .uint64(image.limit)
        case .limitExclusive: .uint64(image.limitExclusive)
        case nil: throw Harness.unknownProperty(name, Machine1Image.name)
        }
    }

    /// sd-bus's find callback: an image object exists while the pool has the image (a few stat
    /// calls, as machined does); machine objects come with the machine registry.
    public func objectExists(_ path: ObjectPath) -> Bool {
        if let name = path.unescapedName(under: Self.machinePrefix) { return machineExists(name) }
        guard let name = path.unescapedName(under: Self.imagePrefix) else { return false }
        return imageForCurrentMessage(name) != nil
    }

    /// The pool's answer for image `name`, looked up once per incoming message: sd-bus asks the
    /// find callback and then each property getter of a GetAll separately, all for the same
    /// message; a new message always looks again, so nothing can go stale.
    private func imageForCurrentMessage(_ name: String) -> Image? {
        let request = bus.assumeIsolated { $0.currentRequestID }
        if let request, let memo = lookupMemo, memo.request == request, memo.name == name { return memo.image }
        let image = try? pool.imageNow(named: name)
        lookupMemo = request.map { (request: $0, name: name, image: image) }
        return image
    }

    /// sd-bus's node enumerator: one object per image, listed off the bus thread and waited for
    /// briefly (`ImageNameListing`).
    public func childObjects(under prefix: ObjectPath) -> [ObjectPath] {
        if prefix == Self.machinePrefix { return machineNames().map(Self.machinePath) }
        guard prefix == Self.imagePrefix else { return [] }
        return imageNames.names().map(Self.imagePath)
    }
}
