import Bus
import Linux
import PoolAPI
import Portable

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
        case .attach, .attachWithExtensions, .detach, .detachWithExtensions, .reattach, .reattacheWithExtensions,
             .reattachWithExtensions:
            PolkitAction.attachPortableImages
        case .remove, .markReadOnly, .setLimit: PolkitAction.managePortableImages
        }
    }
}

/// systemd-portabled 252's error replies for portable images (measured on a private bus).
enum Portable1Errors {
    /// `org.freedesktop.portable1.NoSuchImage "No image 'x' found."`
    static func noSuchImage(_ name: String) -> BusError {
        BusError(name: "org.freedesktop.portable1.NoSuchImage", message: "No image '\(name)' found.")
    }

    /// An image name, or an absolute path (the methods that take either); `InvalidArgs` otherwise,
    /// with 252's message.
    static func validateNameOrPath(_ nameOrPath: String) throws(BusError) {
        if nameOrPath.hasPrefix("/"), !nameOrPath.utf8.contains(0), isNormalized(nameOrPath) { return }
        do { try ImagePool.validateName(nameOrPath) } catch {
            throw BusError.invalidArgs("Image name '\(nameOrPath)' is not valid or not a valid path.")
        }
    }

    /// An absolute path without `.` or `..` components (systemd's path_is_normalized).
    static func isNormalized(_ path: String) -> Bool {
        !path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().contains { $0 == "." || $0 == ".." }
            && path.utf8.count <= 4096
    }

    /// What an image member throws, as portabled replies it.
    static func translate(_ error: any Error, name: String) -> BusError {
        if let e = error as? PortableError { return translate(e, name: name) }
        // A refusal from inside an image (an extension's release file) reaches us wrapped by the pool.
        if let e = error as? PoolError, let inner = e.cause as? PortableError { return translate(inner, name: name) }
        guard let e = error as? PoolError else { return ErrorMapping.busError(error) }
        switch e.code {
        case .noSuchImage where name.hasPrefix("/"): return Machine1Errors.errno(.ENOENT)
        case .noSuchImage: return noSuchImage(name)
        case .invalidName: return BusError.invalidArgs("Image name '\(name)' is not valid or not a valid path.")
        case .notSupported: return Machine1Errors.errno(.EOPNOTSUPP)
        default: return Machine1Errors.translate(error, name: name)
        }
    }

    /// What attach and detach refuse, with systemd's error names.
    static func translate(_ e: PortableError, name: String) -> BusError {
        switch e.code {
        case .unitExists: return BusError(name: "org.freedesktop.systemd1.UnitExists", message: e.message)
        case .noSuchUnit: return BusError(name: "org.freedesktop.systemd1.NoSuchUnit", message: e.message)
        case .invalidArgument: return BusError.invalidArgs(e.message)
        case .system:
            guard let cause = e.cause else { return BusError(name: BusError.Name.failed, message: e.message) }
            return Machine1Errors.errno(cause.errno, prefix: e.message)
        }
    }
}

/// The `org.freedesktop.portable1` harness: the manager object and the image objects below
/// `/org/freedesktop/portable1/image`. Same shape as `Machine1Service`: the images are a pool
/// (`ImagePool` over portable1's search folders, `/var/lib/portables` its pool folder), what is
/// inside an image is read by `PortableUnits` in the backend's inspection root, and the attached
/// state comes from the attached units' drop-ins (`PortableState`).
///
/// Attach, detach and reattach work on the files (`PortableAttach`), with extensions overlaid
/// (`PortableExtensions`).
public actor Portable1Service: BusObjectHandler {
    public nonisolated let bus: Bus
    public nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }
    private let paths: ServicePaths
    private let info: DaemonInfo
    private let pool: ImagePool
    private let harness = Harness()
    /// PoolUsage and PoolLimit, measured off the bus thread (quota ioctls can hang on a bad mount).
    private let poolUsage: PoolUsageCache
    /// The node enumerator's listing, made off the bus thread.
    private let imageNames: ImageNameListing

    /// Parent of the image objects.
    public static let imagePrefix: ObjectPath = "/org/freedesktop/portable1/image"

    /// The object path of image `name`.
    public static func imagePath(_ name: String) -> ObjectPath { imagePrefix.appending(escaped: name) }

    /// A harness serving the portable images of `pool` (made with `ImagePool.Configuration.portables`).
    public init(bus: Bus, paths: ServicePaths, info: DaemonInfo, pool: ImagePool) {
        self.bus = bus
        self.paths = paths
        self.info = info
        self.pool = pool
        poolUsage = PoolUsageCache(pool: pool)
        imageNames = ImageNameListing(pool: pool)
    }

    /// Exports the manager object (with `io.berth.Daemon`) and the image subtree.
    public func export() async throws(BusError) {
        try await bus.export([Portable1Manager.interface, BerthDaemon.interface], at: ServiceKind.portable1.managerPath, handler: self)
        try await bus.exportSubtree([Portable1Image.interface], under: Portable1Service.imagePrefix, handler: self)
        _ = poolUsage.current()  // the first measurement starts now, off the bus thread
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
        case .getImage: return [.objectPath(try getImage(try call.string(0)))]
        case .listImages:
            var entries: [BusValue] = []
            // The attached drop-ins and systemd's presence, read once for the whole listing.
            let attached = PortableState.attached(root: paths.root)
            let systemdPresent = await Systemd1(bus: bus).isPresent()
            for image in try await pool.images() {
                entries.append(.structure([
                    .string(image.name), .string(image.type.rawValue), .boolean(image.readOnly),
                    .uint64(image.creationTimestamp), .uint64(image.modificationTimestamp), .uint64(image.usage),
                    .string(await state(of: image.name, among: attached, systemdPresent: systemdPresent)),
                    .objectPath(Self.imagePath(image.name)),
                ]))
            }
            return [.array(element: "(ssbtttso)", entries)]
        case .getImageOSRelease: return try await osRelease(try call.string(0))
        case .getImageMetadata: return try await metadata(try call.string(0), extensions: [], matches: try call.strings(1))
        case .getImageMetadataWithExtensions:
            return try await metadata(try call.string(0), extensions: try call.strings(1), matches: try call.strings(2),
                                      flags: try call.uint64(3))
        case .getImageState: return try await getState(try call.string(0), extensions: [])
        case .getImageStateWithExtensions:
            return try await getState(try call.string(0), extensions: try call.strings(1), flags: try call.uint64(2))
        case .removeImage: return try await remove(try call.string(0))
        case .markImageReadOnly: return try await markReadOnly(try call.string(0), try call.bool(1))
        case .setImageLimit: return try await setLimit(try call.string(0), try call.uint64(1))
        case .setPoolLimit:
            do { try await pool.setPoolLimit(try call.uint64(0)) } catch { throw Portable1Errors.translate(error, name: "") }
            await poolUsage.refresh()
            return []
        case .attachImage:
            return try await attach(try call.string(0), extensions: [], matches: try call.strings(1), profile: try call.string(2),
                                    copyMode: try call.string(4), flags: try call.bool(3) ? Flags.runtime : 0)
        case .attachImageWithExtensions:
            return try await attach(try call.string(0), extensions: try call.strings(1), matches: try call.strings(2), profile: try call.string(3),
                                    copyMode: try call.string(4), flags: try call.uint64(5))
        case .detachImage: return try await detach(try call.string(0), flags: try call.bool(1) ? Flags.runtime : 0)
        case .detachImageWithExtensions:
            try Self.validate(extensions: try call.strings(1))
            return try await detach(try call.string(0), flags: try call.uint64(2))
        case .reattachImage:
            return try await reattach(try call.string(0), extensions: [], matches: try call.strings(1), profile: try call.string(2),
                                      copyMode: try call.string(4), flags: try call.bool(3) ? Flags.runtime : 0)
        case .reattachImageWithExtensions:
            return try await reattach(try call.string(0), extensions: try call.strings(1), matches: try call.strings(2), profile: try call.string(3),
                                      copyMode: try call.string(4), flags: try call.uint64(5))
        }
    }

    private func image(_ method: Portable1Image.Method, _ call: MethodCall) async throws -> [BusValue] {
        guard let name = call.path.unescapedName(under: Self.imagePrefix) else { throw Harness.unknownObject(call.path) }
        switch method {
        case .getOSRelease: return try await osRelease(name)
        case .getMetadata: return try await metadata(name, extensions: [], matches: try call.strings(0))
        case .getMetadataWithExtensions:
            return try await metadata(name, extensions: try call.strings(0), matches: try call.strings(1), flags: try call.uint64(2))
        case .getState: return try await getState(name, extensions: [])
        case .getStateWithExtensions: return try await getState(name, extensions: try call.strings(0), flags: try call.uint64(1))
        case .remove: return try await remove(name)
        case .markReadOnly: return try await markReadOnly(name, try call.bool(0))
        case .setLimit: return try await setLimit(name, try call.uint64(0))
        case .attach:
            return try await attach(name, extensions: [], matches: try call.strings(0), profile: try call.string(1), copyMode: try call.string(3),
                                    flags: try call.bool(2) ? Flags.runtime : 0)
        case .attachWithExtensions:
            return try await attach(name, extensions: try call.strings(0), matches: try call.strings(1), profile: try call.string(2), copyMode: try call.string(3),
                                    flags: try call.uint64(4))
        case .detach: return try await detach(name, flags: try call.bool(0) ? Flags.runtime : 0)
        case .detachWithExtensions:
            try Self.validate(extensions: try call.strings(0))
            return try await detach(name, flags: try call.uint64(1))
        case .reattach:
            return try await reattach(name, extensions: [], matches: try call.strings(0), profile: try call.string(1), copyMode: try call.string(3),
                                      flags: try call.bool(2) ? Flags.runtime : 0)
        case .reattacheWithExtensions, .reattachWithExtensions:
            return try await reattach(name, extensions: try call.strings(0), matches: try call.strings(1), profile: try call.string(2), copyMode: try call.string(3),
                                      flags: try call.uint64(4))
        }
    }

    // MARK: attach, detach, reattach

    /// The flags of the …WithExtensions members.
    typealias Flags = Portable1Flags

    /// One attach, detach or reattach at a time: two attaches of images that share a unit name
    /// cannot both win, and a detach never races the attach of the same image.
    private var attachBusy = false
    private var attachWaiters: [CheckedContinuation<Void, Never>] = []

    private func serialisedAttach<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        while attachBusy { await withCheckedContinuation { attachWaiters.append($0) } }
        attachBusy = true
        defer {
            attachBusy = false
            if !attachWaiters.isEmpty { attachWaiters.removeFirst().resume() }
        }
        return try await body()
    }

    private static func changes(_ list: [PortableChange]) -> BusValue {
        .array(element: "(sss)", list.map { .structure([.string($0.kind.rawValue), .string($0.path), .string($0.source)]) })
    }

    private static func checkFlags(_ flags: UInt64) throws(BusError) {
        if flags & ~Flags.all != 0 { throw BusError.invalidArgs("Invalid 'flags' parameter '\(flags)'") }
    }

    /// AttachImage(+WithExtensions) / Image.Attach(+WithExtensions).
    private func attach(_ nameOrPath: String, extensions: [String], matches: [String], profile: String, copyMode: String,
                        flags: UInt64) async throws -> [BusValue] {
        try serialisedCheck(nameOrPath, flags: flags)
        let changes = try await serialisedAttach {
            try await attachNow(nameOrPath, extensions: extensions, matches: matches, profile: profile, copyMode: copyMode, flags: flags)
        }
        return [Self.changes(changes)]
    }

    private func serialisedCheck(_ nameOrPath: String, flags: UInt64) throws(BusError) {
        try Portable1Errors.validateNameOrPath(nameOrPath)
        try Self.checkFlags(flags)
    }

    /// What an image and its extensions offer: read inside each (the base first, then each
    /// extension, whose units override the base's, as its /usr is overlaid on the base's).
    private struct Contents: Sendable {
        var image: PortableImage
        var osRelease: [UInt8]
        var osReleaseFields: [String: String]
        var units: [PortableUnits.UnitFile]
        var extensions: [(image: PortableImage, release: PortableExtensions.Release)]
    }

    private func gather(_ nameOrPath: String, extensions: [String], matches: [String], flags: UInt64) async throws -> Contents {
        let forceExtension = flags & Flags.forceExtension != 0
        let image: Image
        let base: (metadata: PortableMetadata, osRelease: [String: String])
        do {
            image = try pool.imageNow(nameOrPath: nameOrPath)
            base = try await pool.inspect(nameOrPath, what: "unit files") { root in
                (try PortableMetadata.read(imageRoot: root, matches: matches), try ImageMetadata.read(imageRoot: root).osRelease)
            }
        } catch {
            throw Portable1Errors.translate(error, name: nameOrPath)
        }
        let portable = PortableImage(image)
        var units = Dictionary(uniqueKeysWithValues: base.metadata.units.map { ($0.name, $0) })
        var found: [(image: PortableImage, release: PortableExtensions.Release)] = []
        for name in extensions {
            try Portable1Errors.validateNameOrPath(name)
            do {
                let extensionImage = PortableImage(try pool.imageNow(nameOrPath: name))
                let (release, extensionUnits) = try await pool.inspect(name, what: "extension") { root in
                    (try PortableExtensions.release(imageRoot: root, name: extensionImage.name, force: forceExtension),
                     try PortableUnits.read(imageRoot: root, matches: matches))
                }
                if !forceExtension {
                    try PortableExtensions.check(release, extension: extensionImage.name, imageOSRelease: base.osRelease,
                                                 imagePath: portable.path)
                }
                for var unit in extensionUnits {
                    unit.origin = extensionImage.path
                    units[unit.name] = unit
                }
                found.append((extensionImage, release))
            } catch {
                throw Portable1Errors.translate(error, name: name)
            }
        }
        let sorted = units.values.sorted { $0.name < $1.name }
        if sorted.isEmpty {
            throw BusError.invalidArgs("Couldn't find any matching unit files in image '\(portable.path)', refusing.")
        }
        return Contents(image: portable, osRelease: base.metadata.osRelease, osReleaseFields: base.osRelease, units: sorted,
                        extensions: found)
    }

    private func attachNow(_ nameOrPath: String, extensions: [String], matches: [String], profile: String, copyMode: String,
                           flags: UInt64) async throws -> [PortableChange] {
        guard let mode = PortableCopyMode(rawValue: copyMode) else { throw BusError.invalidArgs("Unknown copy mode '\(copyMode)'") }
        let root = paths.root
        let profileFolder: String
        do { profileFolder = try PortableAttach.profileFolder(profile, in: paths.portableProfileDirectories) }
        catch { throw Portable1Errors.translate(error, name: nameOrPath) }
        let contents = try await gather(nameOrPath, extensions: extensions, matches: matches, flags: flags)
        if !matches.isEmpty {
            // Attach only: GetImageMetadata takes any prefix, as in 252.
            let prefixes = PortableAttach.acceptablePrefixes(osRelease: contents.osReleaseFields, imageName: contents.image.name)
            do { try PortableAttach.checkMatches(matches, prefixes: prefixes, imagePath: contents.image.path) }
            catch { throw Portable1Errors.translate(error, name: nameOrPath) }
        }
        try await refuseRunning(contents.units.map(\.name), flags: flags, doing: "attach")
        let runtime = flags & Flags.runtime != 0
        let image = contents.image, units = contents.units, overlays = contents.extensions.map(\.image)
        do {
            return try await Blocking.run {
                try PortableAttach.attach(image, extensions: overlays, units: units, profile: profileFolder, runtime: runtime,
                                          copyMode: mode, root: root)
            }
        } catch {
            throw Portable1Errors.translate(error, name: nameOrPath)
        }
    }

    /// DetachImage(+WithExtensions) / Image.Detach(+WithExtensions).
    private func detach(_ nameOrPath: String, flags: UInt64) async throws -> [BusValue] {
        try serialisedCheck(nameOrPath, flags: flags)
        let root = paths.root, runtime = flags & Flags.runtime != 0
        let changes = try await serialisedAttach {
            let units = PortableState.attachedUnits(of: nameOrPath, root: root)
            try await refuseRunning(runtime ? units.runtime : units.persistent, flags: flags)
            do { return try await Blocking.run { try PortableAttach.detach(nameOrPath, runtime: runtime, root: root) } }
            catch { throw Portable1Errors.translate(error, name: nameOrPath) }
        }
        return [Self.changes(changes)]
    }

    /// ReattachImage(+WithExtensions) / Image.Reattach(+WithExtensions): the units of the image,
    /// of any version of it (`foo_1.0` when reattaching `foo_2.0`: an upgrade), are detached and
    /// attached again from the image given, in one step no other attach can come between. Returns the units' changes gone and made. Works by name (252 loses the image
    /// then: it resolves the name to the /etc/portables link, deletes it, and cannot find it).
    private func reattach(_ nameOrPath: String, extensions: [String], matches: [String], profile: String, copyMode: String,
                          flags: UInt64) async throws -> [BusValue] {
        try serialisedCheck(nameOrPath, flags: flags)
        let root = paths.root, runtime = flags & Flags.runtime != 0
        let (removed, made) = try await serialisedAttach { () async throws -> ([PortableChange], [PortableChange]) in
            // The image is found before anything is detached, so a vanished image detaches nothing.
            do { _ = try pool.imageNow(nameOrPath: nameOrPath) }
            catch { throw Portable1Errors.translate(error, name: nameOrPath) }
            let removed: [PortableChange]
            do {
                removed = try await Blocking.run {
                    try PortableAttach.detach(nameOrPath, runtime: runtime, root: root, anyVersion: true)
                }
            }
            catch { throw Portable1Errors.translate(error, name: nameOrPath) }
            let made = try await attachNow(nameOrPath, extensions: extensions, matches: matches, profile: profile,
                                           copyMode: copyMode, flags: flags | Flags.forceAttach)
            // What went and did not come back: a path made again is an update, not a removal.
            let remade = Set(made.map(\.path))
            return (removed.filter { !remade.contains($0.path) }, made)
        }
        return [Self.changes(removed), Self.changes(made)]
    }

    // MARK: members

    /// GetImage: names only; portabled refuses a path here.
    private func getImage(_ name: String) throws(BusError) -> ObjectPath {
        if name.contains("/") { throw BusError.invalidArgs("Expected image name, not path in place of '\(name)'.") }
        try Portable1Errors.validateNameOrPath(name)
        do { return Self.imagePath(try pool.imageNow(named: name).name) } catch { throw Portable1Errors.translate(error, name: name) }
    }

    /// GetImageOSRelease / Image.GetOSRelease.
    private func osRelease(_ nameOrPath: String) async throws -> [BusValue] {
        try Portable1Errors.validateNameOrPath(nameOrPath)
        do {
            let metadata = try await pool.inspect(nameOrPath, what: "os-release") { try ImageMetadata.read(imageRoot: $0) }
            return [.stringDictionary(metadata.osRelease)]
        } catch {
            throw Portable1Errors.translate(error, name: nameOrPath)
        }
    }

    /// GetImageMetadata(+WithExtensions) and their Image object twins: the image's path, its
    /// os-release as it is, and the matching unit files. No matching unit is an error, as in 252.
    private func metadata(_ nameOrPath: String, extensions: [String], matches: [String], flags: UInt64? = nil) async throws -> [BusValue] {
        try Portable1Errors.validateNameOrPath(nameOrPath)
        if let flags { try Self.checkFlags(flags) }
        let contents = try await gather(nameOrPath, extensions: extensions, matches: matches, flags: flags ?? 0)
        let units = BusValue.dictionary(key: "s", value: "ay", contents.units.map {
            BusValue.DictEntry(.string($0.name), .bytes($0.contents))
        })
        var reply: [BusValue] = [.string(contents.image.path), .bytes(contents.osRelease)]
        if flags != nil {
            reply.append(.dictionary(key: "s", value: "ay", contents.extensions.map {
                BusValue.DictEntry(.string($0.image.path), .bytes($0.release.contents))
            }))
        }
        reply.append(units)
        return reply
    }

    /// GetImageState(+WithExtensions) / Image.GetState(+WithExtensions), from the attached files.
    private func getState(_ nameOrPath: String, extensions: [String], flags: UInt64? = nil) async throws -> [BusValue] {
        try Portable1Errors.validateNameOrPath(nameOrPath)
        try Self.validate(extensions: extensions)
        if let flags { try Self.checkFlags(flags) }
        return [.string(await state(of: nameOrPath))]
    }

    /// The image's state: attached or attached-runtime from the files, and when systemd is on the
    /// bus, running or enabled from its units (running before enabled before attached, the
    /// `-runtime` forms where the units are attached for this boot only), as 252 ranks them.
    /// `attached` and `systemdPresent` are read here when the caller has not read them for a listing.
    private func state(of nameOrPath: String, among attached: [PortableState.AttachedUnit]? = nil,
                       systemdPresent: Bool? = nil) async -> String {
        let units = PortableState.attachedUnits(of: nameOrPath, root: paths.root, among: attached)
        let runtime = units.persistent.isEmpty
        let attached = runtime ? units.runtime : units.persistent
        guard !attached.isEmpty else { return PortableState.FileState.detached.rawValue }
        let suffix = runtime ? "-runtime" : ""
        let systemd = Systemd1(bus: bus)
        let present: Bool
        if let systemdPresent { present = systemdPresent } else { present = await systemd.isPresent() }
        if present {
            var enabled = false
            for unit in attached {
                if await systemd.isRunning(unit) { return "running" + suffix }
                if let state = await systemd.unitFileState(unit), state.hasPrefix("enabled") { enabled = true }
            }
            if enabled { return "enabled" + suffix }
        }
        return "attached" + suffix
    }

    /// With systemd on the bus, refuses while one of `units` runs (unless forced): a running
    /// unit's files are not pulled from under it, nor is a running unit of the same name
    /// shadowed by an attach.
    private func refuseRunning(_ units: [String], flags: UInt64, doing what: String = "detach") async throws {
        guard flags & Flags.forceAttach == 0 else { return }
        let systemd = Systemd1(bus: bus)
        guard await systemd.isPresent() else { return }
        for unit in units where await systemd.isRunning(unit) {
            // 252's name and words (measured under a booted 252).
            throw BusError(name: "org.freedesktop.systemd1.UnitExists", message: "Unit file '\(unit)' is active, can't \(what).")
        }
    }

    /// RemoveImage / Image.Remove: never an image whose units are attached.
    private func remove(_ name: String) async throws -> [BusValue] {
        try refuseAttached(name)
        do { try await pool.remove(name) } catch { throw Portable1Errors.translate(error, name: name) }
        imageNames.forget(name)
        poolUsage.invalidate()
        return []
    }

    /// MarkImageReadOnly / Image.MarkReadOnly: never an image whose units are attached (252
    /// allows it, and the running service then finds its image changed under it).
    private func markReadOnly(_ name: String, _ readOnly: Bool) async throws -> [BusValue] {
        try refuseAttached(name)
        do { try await pool.setReadOnly(name, readOnly) } catch { throw Portable1Errors.translate(error, name: name) }
        return []
    }

    /// SetImageLimit / Image.SetLimit.
    private func setLimit(_ name: String, _ bytes: UInt64) async throws -> [BusValue] {
        do { try await pool.setLimit(name, bytes) } catch { throw Portable1Errors.translate(error, name: name) }
        poolUsage.invalidate()
        return []
    }

    /// Refuses to change an image whose units are attached, with 252's error (System.Error.EBUSY,
    /// "Image '<path>' is not detached, refusing.", measured under a booted 252).
    private func refuseAttached(_ name: String) throws(BusError) {
        try Portable1Errors.validateNameOrPath(name)
        if PortableState.fileState(of: name, root: paths.root) != .detached {
            let path = (try? pool.imageNow(nameOrPath: name))?.path ?? name
            throw BusError(errno: .EBUSY, "Image '\(path)' is not detached, refusing.")
        }
    }

    /// The extensions of a call that only names them (state, detach: the units are found by the
    /// image's marker), checked as names or paths.
    private static func validate(extensions: [String]) throws(BusError) {
        for name in extensions { try Portable1Errors.validateNameOrPath(name) }
    }

    // MARK: properties and objects

    public func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue {
        switch interface {
        case Portable1Manager.name:
            switch Portable1Manager.Property(rawValue: name) {
            case .poolPath: return .string(pool.poolPath)
            case .poolUsage: return .uint64(poolUsage.current().usage)
            case .poolLimit: return .uint64(poolUsage.current().limit)
            case .profiles: return .strings(profiles())
            case nil: throw Harness.unknownProperty(name, interface)
            }
        case BerthDaemon.name:
            return try info.property(name)
        case Portable1Image.name:
            guard let imageName = path.unescapedName(under: Self.imagePrefix),
                  let image = try? pool.imageNow(named: imageName) else { throw Harness.unknownObject(path) }
            switch Portable1Image.Property(rawValue: name) {
            case .name: return .string(image.name)
            case .path: return .string(image.path)
            case .type: return .string(image.type.rawValue)
            case .readOnly: return .boolean(image.readOnly)
            case .creationTimestamp: return .uint64(image.creationTimestamp)
            case .modificationTimestamp: return .uint64(image.modificationTimestamp)
            case .usage: return .uint64(image.usage)
            case .usageExclusive: return .uint64(image.usageExclusive)
            case .limit: return .uint64(image.limit)
            case .limitExclusive: return .uint64(image.limitExclusive)
            case nil: throw Harness.unknownProperty(name, interface)
            }
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

    /// An image object exists while the pool has the image.
    public func objectExists(_ path: ObjectPath) -> Bool {
        guard let name = path.unescapedName(under: Self.imagePrefix) else { return false }
        return (try? pool.imageNow(named: name)) != nil
    }

    /// One object per image the pool lists, listed off the bus thread (`ImageNameListing`).
    public func childObjects(under prefix: ObjectPath) -> [ObjectPath] {
        guard prefix == Self.imagePrefix else { return [] }
        return imageNames.names().map(Self.imagePath)
    }
}
