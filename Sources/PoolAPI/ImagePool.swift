import FileTree
import Glibc
import Linux
import Synchronization

/// The machine image pool behind org.freedesktop.machine1's image methods (ListImages,
/// GetImage, CloneImage, RenameImage, RemoveImage, MarkImageReadOnly, SetImageLimit,
/// SetPoolLimit, CleanPool, GetImageOSRelease…) and import1's installs, with systemd 252's
/// observable behaviour: search paths, name rules, `.host`, vendor images, temp names, locks.
///
/// The per-type work lives in the backends; this actor holds the preamble systemd repeats per
/// type (names, read-only host and vendor images, locks) once. Blocking work runs on dedicated
/// threads (`Blocking`), so while a multi-GiB clone runs, `images()` answers at once: the actor
/// is re-entrant and only waits on its own per-image locks.
public actor ImagePool {
    /// Where the pool lives: every path under `root`, "/" in production.
    public struct Configuration: Sendable {
        /// Every path is resolved under this folder (berthd's `--root`).
        public var root: String
        /// The pool folder, relative to `root`: where clones, renames and imports go.
        public var poolFolder: String
        /// The folders searched for images, relative to `root`, first occurrence of a name wins.
        public var searchFolders: [String]
        /// Whether the pool lists `.host`, the host's own root (machine images do, portables not).
        public var hasHostImage: Bool

        /// machine1's pool under `root` (berthd's `--root`): systemd 252's machine image search
        /// paths, `.host` included.
        public init(root: String) {
            self.root = root
            poolFolder = "var/lib/machines"
            searchFolders = ["etc/machines", "run/machines", "var/lib/machines", "var/lib/container",
                             "usr/local/lib/machines", "usr/lib/machines"]
            hasHostImage = true
        }

        /// portable1's pool under `root`: systemd 252's portable image search paths, no `.host`.
        public static func portables(root: String) -> Configuration {
            var c = Configuration(root: root)
            c.poolFolder = "var/lib/portables"
            c.searchFolders = ["etc/portables", "run/portables", "var/lib/portables", "usr/local/lib/portables",
                               "usr/lib/portables"]
            c.hasHostImage = false
            return c
        }

        /// `ROOT/<poolFolder>`: where clones, renames (of pool images) and imports go.
        public var poolPath: String { joinPath(root, poolFolder) }
        /// `ROOT/run/berth`: berthd's runtime state.
        public var runtimeDirectory: String { joinPath(root, "run/berth") }
        /// `ROOT/run/systemd/nspawn/locks`: systemd-nspawn's and machined's image locks.
        public var lockDirectory: String { joinPath(root, "run/systemd/nspawn/locks") }
        /// The search folders under `root`.
        public var searchPaths: [String] { searchFolders.map { joinPath(root, $0) } }
    }

    /// How `CleanPool` chooses: hidden images only, or every image.
    public enum CleanMode: String, Sendable { case hidden, all }

    /// Where the pool lives.
    public let configuration: Configuration
    /// The backends that claim and make images, in priority order.
    public let registry: BackendRegistry
    private let realRoot: String
    private let realPoolPath: String
    private let locks: ImageLocks
    private var nameLocks = NameLocks()
    /// Images held for reading by transfers (`holdForReading`), by name, with their holder count.
    private var readHolds: [String: Int] = [:]
    private let searchPaths: [String]
    private let realPaths = RealPathCache()

    /// A pool over `configuration.root`'s search paths. Nothing is touched until first use;
    /// call `removeStaleTemporaryEntries()` at daemon start.
    public init(configuration: Configuration, registry: BackendRegistry) {
        self.configuration = configuration
        self.registry = registry
        let root = Self.realPath(configuration.root) ?? configuration.root
        realRoot = root
        realPoolPath = joinPath(root, configuration.poolFolder)
        searchPaths = configuration.searchPaths
        locks = ImageLocks(directory: joinPath(root, "run/systemd/nspawn/locks"), root: root)
    }

    /// The real path of the pool folder (`PoolPath`: `ROOT/var/lib/machines` for machine1).
    public nonisolated var poolPath: String { realPoolPath }

    // MARK: discovery

    /// One image found in the search paths.
    struct Found: Sendable {
        var name: String
        /// What the pool saw of the image's entry; nil for `.host`.
        var entry: PoolEntry?
        /// nil for `.host`.
        var backend: (any ImageBackend)?
        var isVendor: Bool
        /// The host's root, the path of `.host`.
        var root: String
        /// The image's path (worked out when asked: listings never need it).
        var path: String { entry?.path ?? root }
        var isHost: Bool { backend == nil }
        /// The entry is a symlink (an image linked into a search path from elsewhere).
        var isSymlink: Bool { entry?.status?.isSymlink == true }
        var type: ImageType { backend?.imageType ?? .directory }
    }

    /// Every image (ListImages): hidden ones and `.host` included, temp entries (`.#…`) never.
    /// Runs on a worker thread: a pool of thousands of images takes a few milliseconds to list.
    public nonisolated(nonsending) func images() async throws -> [Image] {
        let context = discoveryContext
        return try await Blocking.run(.interactive) {
            // An entry that vanished or cannot be read between listing and stat is left out
            // rather than failing the whole listing.
            Self.discoverAll(context).compactMap { try? Self.describe($0, context) }
        }
    }

    /// The image `name` (GetImage); `PoolError(.noSuchImage)` if there is none.
    public nonisolated(nonsending) func image(named name: String) async throws -> Image {
        try Self.validateName(name)
        return try await Blocking.run(.interactive) { [self] in try imageNow(named: name) }
    }

    /// The image `name`, looked up on the calling thread: for sd-bus's synchronous callbacks
    /// (GetImage, an object's find callback, property getters), which systemd answers the same
    /// way, with a few stat calls. Never slow: backends report what is expensive (directory
    /// usage) from caches.
    public nonisolated func imageNow(named name: String) throws -> Image {
        try Self.validateName(name)
        let context = discoveryContext
        guard let found = Self.find(name, context) else { throw PoolError(.noSuchImage, "no image '\(name)'") }
        return try Self.describe(found, context)
    }

    /// The names of every image (as `images()` lists them), found on the calling thread without
    /// describing each: for sd-bus's synchronous node enumerator (the image objects' children).
    public nonisolated func imageNamesNow() -> [String] {
        Self.discoverAll(discoveryContext).map(\.name)
    }

    private struct DiscoveryContext: Sendable {
        var root: String
        var searchPaths: [String]
        var hasHostImage: Bool
        var registry: BackendRegistry
        var realPaths: RealPathCache
    }

    private nonisolated var discoveryContext: DiscoveryContext {
        DiscoveryContext(root: realRoot, searchPaths: searchPaths, hasHostImage: configuration.hasHostImage,
                         registry: registry, realPaths: realPaths)
    }

    /// Lists the search paths: per folder one open, one readdir, one statfs; per entry one
    /// statx relative to the folder (two for a symlink), and a statfs only for an entry on
    /// another filesystem or mount. The backends claim and describe from that.
    private static func discoverAll(_ c: DiscoveryContext) -> [Found] {
        // `.host` is never the name of an entry, even where the pool does not list the host.
        var seen: Set<String> = [".host"]
        var result = c.hasHostImage ? [Found(name: ".host", entry: nil, backend: nil, isVendor: false, root: c.root)] : []
        for dir in c.searchPaths {
            guard let real = c.realPaths.resolve(dir), let folder = try? FileDescriptor.openDirectory(real) else { continue }
            defer { folder.close() }
            guard let names = try? directoryEntries(of: folder) else { continue }
            let folderStatus = try? entryStatus(".", relativeTo: folder)
            let folderFilesystem = try? folder.filesystemStatus()
            let vendor = isVendor(real, root: c.root)
            for file in names.sorted() where !file.hasPrefix(".#") {
                let status = try? entryStatus(file, relativeTo: folder)
                guard let status else { continue }
                let entry = poolEntry(file, in: real, folder, status: status,
                                      folderDevice: folderStatus?.device, folderFilesystem: folderFilesystem)
                guard let (backend, name) = c.registry.claim(entry),
                      (try? validateName(name)) != nil, !seen.contains(name) else { continue }
                seen.insert(name)
                result.append(Found(name: name, entry: entry, backend: backend, isVendor: vendor, root: c.root))
            }
        }
        return result
    }

    /// The entry `file` of the folder `real` (open as `folder`) whose own statx is `status`:
    /// a symlink's target is looked at too, and the folder's statfs is reused unless the entry
    /// leads to another filesystem or is a mount point of its own.
    private static func poolEntry(_ file: String, in real: String, _ folder: FileDescriptor, status: EntryStatus,
                                  folderDevice: UInt64?, folderFilesystem: FilesystemStatus?) -> PoolEntry {
        let target = status.isSymlink ? try? entryStatus(file, relativeTo: folder, followSymlinks: true) : status
        var filesystem: FilesystemStatus? = nil
        if let target {
            if !status.isSymlink, target.device == folderDevice, target.isMountRoot == false, let folderFilesystem {
                filesystem = folderFilesystem
            } else {
                filesystem = try? filesystemStatus(joinPath(real, file))
            }
        }
        return PoolEntry(directory: real, fileName: file, status: status, target: target, filesystem: filesystem)
    }

    /// The first image called `name` in search-path order, backends in priority order: per
    /// folder one statx of the folder (its real path is remembered), then one for each file
    /// name an image of that name can have (`name`, `name.raw`) where the folder exists.
    private static func find(_ name: String, _ c: DiscoveryContext) -> Found? {
        if name == ".host" {
            return c.hasHostImage ? Found(name: name, entry: nil, backend: nil, isVendor: false, root: c.root) : nil
        }
        var fileNames: [String] = []
        for backend in c.registry.backends {
            let file = backend.entryName(forImage: name)
            if !fileNames.contains(file) { fileNames.append(file) }
        }
        for dir in c.searchPaths {
            // A folder that is not there costs one statx, whatever the number of file names.
            guard let real = c.realPaths.resolve(dir) else { continue }
            for file in fileNames {
                let path = joinPath(real, file)
                guard let status = try? entryStatus(path) else { continue }
                let target = status.isSymlink ? try? entryStatus(path, followSymlinks: true) : status
                let entry = PoolEntry(directory: real, fileName: file, status: status, target: target,
                                      filesystem: target == nil ? nil : try? filesystemStatus(path))
                if let (owner, claimed) = c.registry.claim(entry), claimed == name {
                    return Found(name: name, entry: entry, backend: owner, isVendor: isVendor(real, root: c.root), root: c.root)
                }
            }
        }
        return nil
    }

    private static func describe(_ f: Found, _ c: DiscoveryContext) throws -> Image {
        guard let backend = f.backend, let entry = f.entry else {
            // As systemd-machined 252 reports `.host`: a writable directory with no times or
            // usage. Berth still refuses to change it (EROFS), as machined does.
            return Image(name: f.name, path: f.path, type: .directory, readOnly: false)
        }
        var image = try backend.image(named: f.name, entry: entry)
        image.name = f.name
        if f.isVendor { image.readOnly = true }
        return image
    }

    /// Images under ROOT/usr are the vendor's: read-only whatever their flags say.
    private static func isVendor(_ realDirectory: String, root: String) -> Bool {
        let usr = joinPath(root, "usr")
        return realDirectory == usr || realDirectory.hasPrefix(usr + "/")
    }

    // MARK: names

    /// The longest image name, in bytes: 233, so that every file name derived from a name fits
    /// NAME_MAX (255). The longest is the temp entry of a raw image, `.#NAME.raw` + 16 hex
    /// digits (NAME + 22); the lock files `.#NAME.raw.lck` (NAME + 10) and `name-NAME` in the
    /// locks folder (NAME + 5) are shorter. systemd 252 accepts up to 255 bytes and then fails
    /// with ENAMETOOLONG midway (a clone or rename to a 250-byte name leaves an image that can
    /// no longer be locked, so not renamed, removed or made read-only); Berth refuses such a
    /// name at the call, before anything starts.
    public static let maximumNameBytes = 255 - ".#".utf8.count - ".raw".utf8.count - temporarySuffixDigits

    /// machine1's image name rule (a valid file name): not empty, not `.` or `..`, no `/`, no
    /// control characters, at most `maximumNameBytes` (233) bytes, not starting with `.#` (temp
    /// entries). `a b`, `..x` and long names are fine; a leading dot makes a hidden image. The
    /// one check for every name Berth is given or finds: machine1's and import1's arguments
    /// and the entries of the search paths (a longer entry is not an image).
    public static func validateName(_ name: String) throws {
        let bytes = name.utf8
        // Control characters and '/' are single bytes in UTF-8 (no multi-byte sequence holds a
        // byte below 0x80), so one pass over the bytes checks them all.
        guard !bytes.isEmpty, bytes.count <= maximumNameBytes, name != ".", name != "..", !name.hasPrefix(".#"),
              !bytes.contains(where: { $0 < 0x20 || $0 == 0x7f || $0 == UInt8(ascii: "/") }) else {
            throw PoolError(.invalidName, "invalid image name '\(name)'")
        }
    }

    // MARK: per-image serialisation

    private func acquire(_ requests: [(String, NameLocks.Mode)]) async {
        while !nameLocks.isFree(requests) {
            await withCheckedContinuation { nameLocks.wait($0) }
        }
        nameLocks.grant(requests)
    }

    private func release(_ requests: [(String, NameLocks.Mode)]) {
        nameLocks.release(requests)
    }

    /// Runs `body` holding the in-process locks of `requests`.
    private func serialised<T: Sendable>(_ requests: [(String, NameLocks.Mode)],
                                         _ body: () async throws -> T) async throws -> T {
        await acquire(requests)
        defer { release(requests) }
        return try await body()
    }

    // Lookups by name run right here: a few statx calls, cheaper than a trip to a worker
    // thread and back (sd-bus's callbacks make the same calls on the bus thread).

    private func existing(_ name: String) throws -> Found {
        guard let f = Self.find(name, discoveryContext) else { throw PoolError(.noSuchImage, "no image '\(name)'") }
        return f
    }

    /// The image at the absolute path `path`, wherever it is, claimed by the first backend that
    /// knows its kind; its name is what that backend makes of the file name.
    private func existing(path: String) throws -> Found {
        guard let found = Self.find(path: path, discoveryContext) else { throw PoolError(.noSuchImage, "no image at \(path)") }
        return found
    }

    /// The image `nameOrPath`: by path when it starts with `/` (`imageNow(atPath:)`), else by
    /// name (`imageNow(named:)`), as portable1's members take either.
    public nonisolated func imageNow(nameOrPath: String) throws -> Image {
        try nameOrPath.hasPrefix("/") ? imageNow(atPath: nameOrPath) : imageNow(named: nameOrPath)
    }

    /// The image at `path`: `.noSuchImage` if nothing is there or no backend claims it.
    public nonisolated func imageNow(atPath path: String) throws -> Image {
        guard let found = Self.find(path: path, discoveryContext) else { throw PoolError(.noSuchImage, "no image at \(path)") }
        return try Self.describe(found, discoveryContext)
    }

    private static func find(path: String, _ c: DiscoveryContext) -> Found? {
        guard path.hasPrefix("/"), let real = realPath(path), real != "/" else { return nil }
        let slash = real.lastIndex(of: "/") ?? real.startIndex
        let directory = slash == real.startIndex ? "/" : String(real[..<slash])
        let file = String(real[real.index(after: slash)...])
        guard let status = try? entryStatus(real) else { return nil }
        let entry = PoolEntry(directory: directory, fileName: file, status: status, target: status,
                              filesystem: try? filesystemStatus(real))
        guard let (owner, name) = c.registry.claim(entry) else { return nil }
        return Found(name: name, entry: entry, backend: owner, isVendor: isVendor(directory, root: c.root), root: c.root)
    }

    private func isTaken(_ name: String) -> Bool {
        Self.find(name, discoveryContext) != nil
    }

    /// A symlinked image is listed, read, cloned from and inspected through its link, as systemd
    /// does; but a mutation never follows the link out of the pool: rename and remove act on
    /// the link itself, and the read-only flag and limits, which belong to what the link points
    /// to, are refused with ELOOP, as systemd's O_NOFOLLOW opens refuse them.
    private static func refuseSymlink(_ f: Found, _ what: String) throws {
        guard f.isSymlink else { return }
        throw PoolError(.system, "cannot \(what) image '\(f.name)': \(f.path) is a symlink",
                        cause: SystemCallError("open", .ELOOP, subject: f.path))
    }

    private func refuseReadOnlyImage(_ f: Found, _ what: String) throws {
        if f.isHost { throw PoolError(.readOnly, "cannot \(what) the host image") }
        if f.isVendor { throw PoolError(.readOnly, "cannot \(what) vendor image '\(f.name)' in \(f.path)") }
    }

    private func lockPath(_ path: String, _ mode: LockFile.Mode, _ name: String) throws -> ImageLocks.Held {
        do { return try locks.lockPath(path, mode) } catch {
            if error.errno == .EBUSY { throw PoolError(.busy, "image '\(name)' is in use", cause: error) }
            throw PoolError.from(error, "cannot lock image '\(name)'")
        }
    }

    /// RemoveImage, RenameImage and a forced import's replacement refuse an image a transfer reads.
    private func refuseHeldImage(_ name: String) throws {
        if readHolds[name, default: 0] > 0 {
            throw PoolError(.busy, "image '\(name)' is in use: a transfer is reading it")
        }
    }

    private func lockName(_ name: String) throws -> ImageLocks.Held {
        do { return try locks.lockName(name, .exclusive) } catch {
            if error.errno == .EBUSY { throw PoolError(.busy, "image name '\(name)' is in use", cause: error) }
            throw PoolError.from(error, "cannot lock image name '\(name)'")
        }
    }

    // MARK: holding an image for a transfer

    /// Holds the image `name` for reading until `ImageReadHold.release()` (ExportTar/ExportRaw
    /// for the whole life of their worker): RemoveImage and RenameImage of it fail `.busy`
    /// (EBUSY, as machined answers for an image in use), and so does a forced import over it.
    /// Like `systemd-nspawn --read-only`, it also takes the image's path locks shared, so nspawn
    /// and machined see it in use and cannot start it writable meanwhile. A running container
    /// holds those locks exclusively: its image is still exported (systemd exports it too), held
    /// against our own RemoveImage/RenameImage only. `PoolError(.noSuchImage)` if there is none.
    public func holdForReading(_ name: String) async throws -> ImageReadHold {
        try Self.validateName(name)
        return try await serialised([(name, .shared)]) {
            let found = try existing(name)
            let image = try Self.describe(found, discoveryContext)
            let fileLocks = found.isHost ? nil : try? locks.lockPath(found.path, .shared)
            readHolds[name, default: 0] += 1
            return ImageReadHold(image: image, fileLocks: fileLocks, pool: self)
        }
    }

    /// One holder of `name` is done.
    fileprivate func endHold(_ name: String) {
        readHolds[name, default: 1] -= 1
        if readHolds[name] == 0 { readHolds[name] = nil }
    }

    // MARK: mutations

    /// CloneImage: a new image `newName` in the pool folder with `name`'s contents, installed
    /// atomically (no-replace rename of a temp entry), read-only if asked. On failure (ENOSPC
    /// midway, cancellation) the temp entry is removed: no partial image is left.
    public func clone(_ name: String, to newName: String, readOnly: Bool) async throws -> Image {
        try Self.validateName(name)
        try Self.validateName(newName)
        return try await serialised([(name, .shared), (newName, .exclusive)]) {
            let source = try existing(name)
            if isTaken(newName) { throw PoolError(.imageExists, "image '\(newName)' already exists") }
            let nameLock = try lockName(newName)
            defer { nameLock.release() }
            try await ensurePoolFolder()

            let pool = realPoolPath
            let treeBackend = registry.treeBackend(for: pool)
            let sourceIsTree = source.type == .directory || source.type == .subvolume
            let creator: any ImageBackend
            let copyIntoEmpty: Bool
            if sourceIsTree, let tree = treeBackend,
               source.isHost || tree.identifier != source.backend?.identifier {
                // e.g. a plain directory image into a btrfs pool: a new subvolume, filled by copy.
                creator = tree
                copyIntoEmpty = true
            } else if let b = source.backend, b.canCreate(in: pool) {
                creator = b
                copyIntoEmpty = false
            } else {
                throw PoolError(.notSupported, "cannot clone \(source.type.rawValue) image '\(name)' into \(pool)")
            }
            let finalPath = joinPath(pool, creator.entryName(forImage: newName))
            let sourcePath = source.path, isHost = source.isHost
            if !copyIntoEmpty && creator.clonesInOneStep(from: sourcePath) {
                // Atomic (a snapshot): straight to the final name, nothing half-made to hide.
                do {
                    try await Blocking.run { try creator.cloneInOneStep(from: sourcePath, to: finalPath, readOnly: readOnly) }
                } catch {
                    throw Self.poolError(error, "cannot clone image '\(name)' to '\(newName)'")
                }
                return try creator.image(named: newName, at: finalPath)
            }
            // Shared: keeps nspawn from starting on the source while we read it. A running
            // nspawn holds it exclusively; systemd clones running containers, so we go on.
            let sourceLock = try? locks.lockPath(sourcePath, .shared)
            defer { sourceLock?.release() }
            let temp = joinPath(pool, Self.temporaryName(for: creator.entryName(forImage: newName)))
            do {
                try await Blocking.run(cancellable: { flag in
                    if copyIntoEmpty {
                        try creator.createEmpty(at: temp)
                        let from = try TreeCopy.openSource(sourcePath)
                        let into = try FileDescriptor.openDirectory(temp, followSymlinks: false)
                        // A clone of the host leaves the pool folder empty, as a mount point: it
                        // would otherwise hold every image, and each later clone all earlier ones.
                        let pool = isHost ? (try? fileStatus(pool)).map(TreeCopy.DirectoryIdentity.init) : nil
                        try TreeCopy.copyContents(of: from, into: into,
                                                  options: TreeCopy.Options(leftEmpty: pool.map { [$0] } ?? [],
                                                                            isCancelled: { flag.isCancelled }))
                    } else {
                        try creator.clone(from: sourcePath, to: temp)
                    }
                    if flag.isCancelled { throw PoolError(.cancelled, "clone of '\(name)' cancelled") }
                    if readOnly { try creator.setReadOnly(true, at: temp) }
                    try creator.rename(from: temp, to: finalPath)
                })
            } catch {
                await Self.discard(temp, creator)
                throw Self.poolError(error, "cannot clone image '\(name)' to '\(newName)'")
            }
            return try creator.image(named: newName, at: finalPath)
        }
    }

    /// RenameImage: within the image's own folder (as systemd does), no-replace.
    public func rename(_ name: String, to newName: String) async throws {
        try Self.validateName(name)
        try Self.validateName(newName)
        try await serialised([(name, .exclusive), (newName, .exclusive)]) {
            let source = try existing(name)
            try refuseReadOnlyImage(source, "rename")
            try refuseHeldImage(name)
            guard let backend = source.backend else { throw PoolError(.readOnly, "cannot rename the host image") }
            if isTaken(newName) { throw PoolError(.imageExists, "image '\(newName)' already exists") }
            let pathLock = try lockPath(source.path, .exclusive, name)
            defer { pathLock.release() }
            let oldNameLock = try lockName(name)
            defer { oldNameLock.release() }
            let newNameLock = try lockName(newName)
            defer { newNameLock.release() }
            let folder = Self.folder(of: source.path)
            let destination = joinPath(folder, backend.entryName(forImage: newName))
            let from = source.path, isSymlink = source.isSymlink
            try await Blocking.run {
                do {
                    // A symlinked image: the link is renamed, what it points to is not touched.
                    if isSymlink { try renameNoReplace(from, destination) } else { try backend.rename(from: from, to: destination) }
                } catch {
                    throw Self.poolError(error, "cannot rename image '\(name)' to '\(newName)'")
                }
                // Its nspawn settings beside it follow it, as systemd's image rename does (best effort:
                // the image is renamed already, and an existing NEW.nspawn is not replaced).
                try? renameNoReplace(Self.settingsPath(folder, name), Self.settingsPath(folder, newName))
            }
        }
    }

    /// RemoveImage. A running container's image (nspawn holds its lock) is `.busy`.
    public func remove(_ name: String) async throws {
        try Self.validateName(name)
        try await serialised([(name, .exclusive)]) {
            let found = try existing(name)
            try await removeLocked(found)
        }
    }

    private func removeLocked(_ found: Found) async throws {
        try refuseReadOnlyImage(found, "remove")
        try refuseHeldImage(found.name)
        guard let backend = found.backend else { throw PoolError(.readOnly, "cannot remove the host image") }
        let pathLock = try lockPath(found.path, .exclusive, found.name)
        defer { pathLock.release() }
        let nameLock = try lockName(found.name)
        defer { nameLock.release() }
        let path = found.path, name = found.name, isSymlink = found.isSymlink
        let folder = Self.folder(of: path)
        try await Blocking.run {
            do {
                // A symlinked image: the link goes, what it points to stays.
                if isSymlink { try removeFile(path) } else { try backend.remove(at: path) }
            } catch {
                throw Self.poolError(error, "cannot remove image '\(name)'")
            }
            // Its nspawn settings beside it go with it, as systemd's image remove does: left behind,
            // they would apply to the next image of that name.
            try? removeFile(Self.settingsPath(folder, name))
        }
    }

    /// `FOLDER/NAME.nspawn`: where systemd-nspawn looks for the settings of image NAME kept in
    /// FOLDER (an OCI pull writes one there).
    static func settingsPath(_ folder: String, _ name: String) -> String { joinPath(folder, name + ".nspawn") }

    /// The folder part of an absolute `path`: everything before its last `/` (the whole path if it has none).
    static func folder(of path: String) -> String { String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]) }

    /// MarkImageReadOnly.
    public func setReadOnly(_ name: String, _ readOnly: Bool) async throws {
        try Self.validateName(name)
        try await serialised([(name, .exclusive)]) {
            let found = try existing(name)
            try refuseReadOnlyImage(found, "change read-only state of")
            guard let backend = found.backend else { return }
            try Self.refuseSymlink(found, "change the read-only state of")
            let pathLock = try lockPath(found.path, .exclusive, name)
            defer { pathLock.release() }
            let path = found.path
            try await Blocking.run {
                do { try backend.setReadOnly(readOnly, at: path) }
                catch { throw Self.poolError(error, "cannot mark image '\(name)' read-\(readOnly ? "only" : "write")") }
            }
        }
    }

    /// SetImageLimit; `.notSupported` where the backend has no quota.
    public func setLimit(_ name: String, _ bytes: UInt64) async throws {
        try Self.validateName(name)
        try await serialised([(name, .exclusive)]) {
            let found = try existing(name)
            try refuseReadOnlyImage(found, "set a limit on")
            guard let backend = found.backend else { return }
            // As systemd: no quota is NotSupported before anything else; else a link is ELOOP.
            if backend.capabilities.contains(.quota) { try Self.refuseSymlink(found, "set a limit on") }
            let path = found.path
            try await Blocking.run {
                do { try backend.setLimit(bytes, at: path) }
                catch { throw Self.poolError(error, "cannot set the limit of image '\(name)'") }
            }
        }
    }

    /// PoolUsage and PoolLimit: from the first backend that knows them for the pool folder,
    /// else `Image.unknown` each.
    public func poolUsage() async -> (usage: UInt64, limit: UInt64) {
        let result = try? await Blocking.run(.interactive) { [self] () -> [UInt64] in
            let now = poolUsageNow()
            return [now.usage, now.limit]
        }
        guard let result, result.count == 2 else { return (Image.unknown, Image.unknown) }
        return (result[0], result[1])
    }

    /// PoolUsage and PoolLimit on the calling thread, for synchronous property getters.
    public nonisolated func poolUsageNow() -> (usage: UInt64, limit: UInt64) {
        for b in registry.backends {
            if let r = try? b.poolUsage(of: realPoolPath) { return r }
        }
        return (Image.unknown, Image.unknown)
    }

    /// SetPoolLimit, by the first quota-capable backend that creates in the pool folder.
    public func setPoolLimit(_ bytes: UInt64) async throws {
        try await ensurePoolFolder()
        let pool = realPoolPath
        guard let backend = registry.backends.first(where: { $0.capabilities.contains(.quota) && $0.canCreate(in: pool) }) else {
            throw PoolError(.notSupported, "the pool at \(pool) has no quota support")
        }
        try await Blocking.run {
            do { try backend.setPoolLimit(bytes, of: pool) }
            catch { throw Self.poolError(error, "cannot set the pool limit") }
        }
    }

    /// GetImageHostname/MachineID/MachineInfo/OSRelease, read through the backend's inspection
    /// root (closed on every path), every file resolved inside the image (openat2 RESOLVE_IN_ROOT).
    public func metadata(of name: String) async throws -> ImageMetadata {
        try await inspect(name, what: "metadata") { try ImageMetadata.read(imageRoot: $0) }
    }

    /// Runs `read` on a worker thread with the path of image `nameOrPath`'s root as its backend
    /// opens it for inspection (a raw image's file system mounted read-only; closed on every
    /// path), holding the image's lock shared. `nameOrPath` is an image name, or an absolute path
    /// to an image anywhere (portable1 takes both). What `read` throws is reported as "cannot
    /// read `what` of image `nameOrPath`". For readers of image contents: machine1's metadata,
    /// portable1's units.
    public func inspect<T: Sendable>(_ nameOrPath: String, what: String,
                                     _ read: @escaping @Sendable (String) throws -> T) async throws -> T {
        let name = nameOrPath
        if !name.hasPrefix("/") { try Self.validateName(name) }
        return try await serialised([(name, .shared)]) {
            let found = try name.hasPrefix("/") ? existing(path: name) : existing(name)
            // Shared, best effort: a running container holds its image exclusively, and its
            // os-release is still worth reading.
            let lock = found.isHost ? nil : try? locks.lockPath(found.path, .shared)
            defer { lock?.release() }
            let path = found.path, backend = found.backend
            return try await Blocking.run {
                guard let backend else { return try read(path) }
                let root: any InspectionRoot
                do { root = try backend.openForInspection(at: path) }
                catch { throw Self.poolError(error, "cannot open image '\(name)' for inspection") }
                defer { root.close() }
                do { return try read(root.root) }
                catch { throw Self.poolError(error, "cannot read \(what) of image '\(name)'") }
            }
        }
    }

    /// The pool's OCI layer cache (PullOci's verified blobs by digest): a `.#` entry, so never
    /// listed as an image, and kept by the start-up clean-up of temp entries. CleanPool removes
    /// it unless a pull holds it (a shared flock on the folder).
    public static let layerCacheEntry = ".#berth-oci-cache"

    /// Removes the layer cache if no pull uses it (an exclusive flock taken without waiting).
    private func removeLayerCache() async {
        let path = joinPath(realPoolPath, Self.layerCacheEntry)
        _ = try? await Blocking.run {
            let folder = try FileDescriptor.openDirectory(path, followSymlinks: false)
            defer { folder.close() }
            guard flock(folder.rawValue, LOCK_EX | LOCK_NB) == 0 else { return }
            try TreeRemoval.remove(at: path)
        }
    }

    /// CleanPool: removes hidden images (or all), never `.host` or vendor images; images in use
    /// are kept, and so is the OCI layer cache, which goes too unless a pull is using it.
    /// Returns what went with the usage each had (the cache is not an image and not listed).
    public func clean(_ mode: CleanMode) async throws -> [(name: String, usage: UInt64)] {
        await removeLayerCache()
        var removed: [(name: String, usage: UInt64)] = []
        for image in try await images() {
            if image.name == ".host" || (mode == .hidden && !image.isHidden) { continue }
            let found = try? existing(image.name)
            guard let found, !found.isVendor, !found.isHost else { continue }
            do {
                try await serialised([(image.name, .exclusive)]) { try await removeLocked(found) }
                removed.append((image.name, image.usage))
            } catch let e as PoolError where e.code == .busy || e.code == .noSuchImage {
                continue
            }
        }
        return removed
    }

    /// At daemon start: a warning when the pool folder exists and its group or other users
    /// have any access to it (mode bits 0077), nil otherwise. Such a folder lets local users
    /// reach the images' device nodes and setuid files; berthd makes it 0700 and leaves an
    /// existing one as the admin set it, but says so.
    public nonisolated func poolAccessWarning() -> String? {
        guard let st = try? fileStatus(realPoolPath), st.isDirectory, st.mode & 0o077 != 0 else { return nil }
        let mode = String(st.mode & 0o7777, radix: 8)
        return "the image pool \(realPoolPath) is mode \(mode): other users can reach the images' device nodes "
            + "and setuid files; make it 0700 (chmod 0700 \(realPoolPath)) as systemd does"
    }


    /// What `removeStaleTemporaryEntries` did, for the daemon to log.
    public struct CleanupReport: Sendable {
        /// One entry that could not be removed, and why.
        public struct Failure: Sendable {
            public var path: String
            public var reason: String
        }
        /// The paths removed.
        public var removed: [String] = []
        /// The paths that should have gone and did not.
        public var failed: [Failure] = []
    }

    /// Removes what a previous run left behind: in the pool folder, temp entries `.#…` (with
    /// their immutable flags, subvolumes through the backend that claims them) and lock files
    /// `.#….lck`; in the locks folder, `name-…`, `inode-…` and `block-…` lock files (a hard
    /// kill skips the releases that remove them). A lock file someone holds (a running nspawn,
    /// another process) is kept: it is removed only while taken exclusively. Called at daemon
    /// start; returns what went and what could not go.
    @discardableResult
    public func removeStaleTemporaryEntries() async -> CleanupReport {
        let pool = realPoolPath, registry = self.registry, lockDirectory = locks.directory
        let report = try? await Blocking.run { () -> CleanupReport in
            var report = CleanupReport()
            func removeLockFile(_ path: String) {
                do {
                    if try LockFile.removeIfUnheld(path) == .removed { report.removed.append(path) }
                } catch {
                    report.failed.append(.init(path: path, reason: "\(error)"))
                }
            }
            for file in (try? directoryEntries(pool)) ?? [] where file.hasPrefix(".#") && file != ImagePool.layerCacheEntry {
                let path = joinPath(pool, file)
                guard let st = try? fileStatus(path, followSymlinks: false) else { continue }
                if st.isRegular && file.hasSuffix(".lck") {
                    removeLockFile(path)
                    continue
                }
                if st.isDirectory || st.isRegular, let (backend, _) = registry.claim(PoolEntry(directory: pool, fileName: file)),
                   (try? backend.remove(at: path)) != nil {
                    report.removed.append(path)
                    continue
                }
                do {
                    try TreeRemoval.remove(at: path)
                    report.removed.append(path)
                } catch {
                    report.failed.append(.init(path: path, reason: "\(error)"))
                }
            }
            for file in (try? directoryEntries(lockDirectory)) ?? []
            where ["name-", "inode-", "block-"].contains(where: { file.hasPrefix($0) }) {
                removeLockFile(joinPath(lockDirectory, file))
            }
            return report
        }
        return report ?? CleanupReport()
    }

    /// For imports: makes a temp entry `.#<name><random>` of `type` in the pool folder (tree
    /// types: the pool's tree backend, a subvolume on btrfs; raw: the raw backend's empty
    /// `NAME.raw`; `.notSupported` where no registered backend makes `type` there), calls
    /// `fill` with its path, then installs it atomically as `name`: a no-replace rename, or with
    /// `force` an exchange with the existing image, which is then removed. Without `force` an
    /// existing name fails before any work. Read-only if asked. On any error or cancellation
    /// the temp entry is removed. `fill` runs on Swift's cooperative pool: blocking work in it
    /// belongs in `Blocking.run`. If the replaced image cannot be removed after the swap (the
    /// new one is installed all the same), `warn` is told where it was left.
    public func install(_ name: String, type: ImageType, force: Bool, readOnly: Bool,
                        warn: @escaping @Sendable (String) -> Void = { _ in },
                        fill: @Sendable (String) async throws -> Void) async throws -> Image {
        try Self.validateName(name)
        return try await serialised([(name, .exclusive)]) {
            let current = Self.find(name, discoveryContext)
            if let current {
                if !force { throw PoolError(.imageExists, "image '\(name)' already exists") }
                try refuseReadOnlyImage(current, "replace")
                try refuseHeldImage(name)
            }
            let nameLock = try lockName(name)
            defer { nameLock.release() }
            try await ensurePoolFolder()
            let pool = realPoolPath
            let chosen: (any ImageBackend)? = switch type {
            case .directory, .subvolume: registry.treeBackend(for: pool)
            default: registry.backend(for: type, in: pool)
            }
            guard let backend = chosen else {
                throw PoolError(.notSupported, "no backend makes \(type.rawValue) images in \(pool)")
            }
            let entry = backend.entryName(forImage: name)
            let temp = joinPath(pool, Self.temporaryName(for: entry))
            let finalPath = joinPath(pool, entry)
            do {
                try await Blocking.run { try backend.createEmpty(at: temp) }
                try await fill(temp)
                try Task.checkCancellation()
                // The replaced image must not be in use; it keeps its lock until it is gone.
                // The replaced image (if in the pool folder) must not be in use; it keeps its
                // lock until it is gone.
                let replaced = current.flatMap { joinPath(pool, Self.fileName(of: $0.path)) == $0.path ? $0 : nil }
                let replacedLock = try replaced.map { try lockPath($0.path, .exclusive, name) }
                defer { replacedLock?.release() }
                try await Blocking.run {
                    if readOnly { try backend.setReadOnly(true, at: temp) }
                    guard let replaced, let oldBackend = replaced.backend else {
                        try backend.rename(from: temp, to: finalPath)
                        return
                    }
                    if replaced.path == finalPath {
                        // Atomic swap, then the old image (now at the temp name) goes. An
                        // immutable directory cannot move: both are made writable for the swap.
                        // A symlinked image is the link only: what it points to is not touched.
                        let oldWasReadOnly = !replaced.isSymlink && ((try? oldBackend.image(named: name, at: replaced.path))?.readOnly ?? false)
                        if oldWasReadOnly { try oldBackend.setReadOnly(false, at: replaced.path) }
                        do {
                            try Self.exchange(temp, finalPath, newIsReadOnly: readOnly, backend)
                        } catch {
                            if oldWasReadOnly { try? oldBackend.setReadOnly(true, at: replaced.path) }
                            throw error
                        }
                    } else {
                        // Another type under another entry name (`x` replaced by `x.raw`): the
                        // new one goes in first, then the old one is removed.
                        try backend.rename(from: temp, to: finalPath)
                    }
                    let leftover = replaced.path == finalPath ? temp : replaced.path
                    var failure: (any Error)?
                    // A symlinked image is the link only: what it points to is not touched.
                    do {
                        if replaced.isSymlink { try removeFile(leftover) } else { try oldBackend.remove(at: leftover) }
                    } catch { failure = error }
                    if !replaced.isSymlink, (try? fileStatus(leftover, followSymlinks: false)) != nil {
                        do { try TreeRemoval.remove(at: leftover) } catch { failure = error }
                    }
                    if (try? fileStatus(leftover, followSymlinks: false)) != nil {
                        // The new image is in place: a success, but the old data still takes
                        // space, and the user must hear where.
                        let later = leftover == temp ? "; berthd removes it at its next start" : ""
                        warn("image '\(name)' was replaced, but its previous version could not be removed and is left at \(leftover)\(later): \(failure.map { "\($0)" } ?? "still there")")
                    }
                }
            } catch {
                await Self.discard(temp, backend)
                if error is CancellationError { throw PoolError(.cancelled, "install of '\(name)' cancelled") }
                throw Self.poolError(error, "cannot install image '\(name)'")
            }
            guard let f = Self.find(name, discoveryContext) else { throw PoolError(.noSuchImage, "image '\(name)' vanished") }
            return try Self.describe(f, discoveryContext)
        }
    }

    // MARK: helpers

    /// renameat2(RENAME_EXCHANGE) of the new entry with the old; an immutable new directory
    /// cannot move either, so its flag is lifted around the swap.
    private static func exchange(_ new: String, _ old: String, newIsReadOnly: Bool, _ backend: any ImageBackend) throws {
        if newIsReadOnly { try backend.setReadOnly(false, at: new) }
        try renameExchange(new, old)
        if newIsReadOnly { try backend.setReadOnly(true, at: old) }
    }

    /// Makes `ROOT/var/lib/machines` on first use, of the parent's kind: the tree backend of
    /// the parent folder creates it (a subvolume on btrfs, like systemd), else mkdir. Mode 0700
    /// whichever made it, as systemd-machined makes it: images hold device nodes and setuid
    /// files that no other user may reach (a subvolume is born 0755, a mkdir under the umask).
    private func ensurePoolFolder() async throws {
        let pool = realPoolPath, registry = self.registry
        if (try? entryStatus(pool, followSymlinks: true))?.isDirectory == true { return }
        try await Blocking.run {
            if (try? fileStatus(pool))?.isDirectory == true { return }
            let parent = Self.folder(of: pool)
            do { try makeDirectories(parent) } catch { throw Self.poolError(error, "cannot create \(parent)") }
            do {
                if let tree = registry.treeBackend(for: parent) {
                    try tree.createEmpty(at: pool)
                } else {
                    try makeDirectory(pool, mode: 0o700)
                }
                try FileDescriptor.openDirectory(pool, followSymlinks: false).setMode(0o700)
            } catch {
                if (try? fileStatus(pool))?.isDirectory == true { return }  // made meanwhile
                throw Self.poolError(error, "cannot create the pool folder \(pool)")
            }
        }
    }

    /// Removes a temp entry after a failure: through its backend (a subvolume needs btrfs),
    /// then fd-relative with flags lifted for whatever is still there.
    private static func discard(_ temp: String, _ backend: (any ImageBackend)?) async {
        _ = try? await Blocking.run {
            guard (try? fileStatus(temp, followSymlinks: false)) != nil else { return }
            try? backend?.remove(at: temp)
            if (try? fileStatus(temp, followSymlinks: false)) != nil { try? TreeRemoval.remove(at: temp) }
        }
    }

    static func fileName(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    /// The hex digits after the entry name in a temp name.
    static let temporarySuffixDigits = 16

    /// `.#<entry><16 hex digits>`, systemd's temp-name shape: hidden from listings by `.#`.
    static func temporaryName(for entry: String) -> String {
        var rng = SystemRandomNumberGenerator()
        let r = rng.next() as UInt64
        let hex = String(r, radix: 16)
        return ".#" + entry + String(repeating: "0", count: temporarySuffixDigits - hex.count) + hex
    }

    static func poolError(_ error: any Error, _ message: String) -> PoolError {
        if let e = error as? PoolError { return e }
        if let e = error as? SystemCallError {
            if e.errno == .ECANCELED { return PoolError(.cancelled, message, cause: e) }
            return PoolError.from(e, message)
        }
        if error is CancellationError { return PoolError(.cancelled, message, cause: error) }
        return PoolError(.system, message, cause: error)
    }

    /// realpath(3), nil if it does not exist.
    public static func realPath(_ path: String) -> String? {
        guard let r = realpath(path, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }
}

/// An image held for reading (`ImagePool.holdForReading`): the image as it was when the hold
/// began, held until `release()`. A hold that is dropped unreleased releases itself.
public final class ImageReadHold: Sendable {
    /// The held image (its path is what a transfer reads).
    public let image: Image
    private let fileLocks: ImageLocks.Held?
    private let pool: ImagePool
    private let released = Mutex(false)

    fileprivate init(image: Image, fileLocks: ImageLocks.Held?, pool: ImagePool) {
        self.image = image
        self.fileLocks = fileLocks
        self.pool = pool
    }

    /// Ends the hold: the image may be removed or renamed again once this returns. Idempotent.
    public func release() async {
        guard takeRelease() else { return }
        fileLocks?.release()
        await pool.endHold(image.name)
    }

    private func takeRelease() -> Bool {
        released.withLock { done in
            defer { done = true }
            return !done
        }
    }

    deinit {
        guard takeRelease() else { return }
        fileLocks?.release()
        let pool = self.pool, name = image.name
        Task { await pool.endHold(name) }
    }
}

/// realpath(3) of the search folders, remembered with the identity (device, inode) of the folder
/// it led to: a lookup costs one statx instead of a readlink per path component, and a folder
/// replaced or re-pointed (another inode) is resolved afresh.
final class RealPathCache: Sendable {
    private struct Resolved {
        var real: String
        var device: UInt64
        var inode: UInt64
    }
    private let resolved = Mutex<[String: Resolved]>([:])

    /// The real path of `path`, nil if it does not exist.
    func resolve(_ path: String) -> String? {
        guard let status = try? entryStatus(path, followSymlinks: true) else { return nil }
        if let known = resolved.withLock({ $0[path] }), known.device == status.device, known.inode == status.inode {
            return known.real
        }
        guard let real = ImagePool.realPath(path) else { return nil }
        resolved.withLock { $0[path] = Resolved(real: real, device: status.device, inode: status.inode) }
        return real
    }
}
