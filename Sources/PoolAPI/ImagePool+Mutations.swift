import FileTree
import Glibc
import Linux
import struct SystemPackage.FilePath

/// Mutations of existing images: CloneImage, RenameImage, RemoveImage, MarkImageReadOnly,
/// SetImageLimit and CleanPool.
extension ImagePool {
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
            let creator: any ImageBackend
            let copyIntoEmpty: Bool
            if let external = source.backend as? any ExternalImageBackend {
                // An external image is cloned by its own storage (an RBD copy-on-write clone),
                // next to its source: never into the pool folder.
                creator = external
                copyIntoEmpty = false
            } else if source.isTree, let tree = treeBackend,
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
            let finalPath = (creator as? any ExternalImageBackend)?.locator(of: newName)
                ?? pool.appending(creator.entryName(forImage: newName))
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
            let temp = pool.appending(Self.temporaryName(for: creator.entryName(forImage: newName)))
            do {
                try await Blocking.run(cancellable: { flag in
                    if copyIntoEmpty {
                        try creator.createEmpty(at: temp)
                        let from = try TreeCopy.openSource(sourcePath)
                        let into = try FileDescriptor.openDirectory(temp.string, followSymlinks: false)
                        // A clone of the host leaves the pool folder empty, as a mount point: it
                        // would otherwise hold every image, and each later clone all earlier ones.
                        let pool = isHost ? (try? fileStatus(pool.string)).map(TreeCopy.DirectoryIdentity.init) : nil
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
            let folder = source.path.removingLastComponent()
            let destination = folder.appending(backend.entryName(forImage: newName))
            let from = source.path, isSymlink = source.isSymlink
            try await Blocking.run {
                do {
                    // A symlinked image: the link is renamed, what it points to is not touched.
                    if isSymlink { try renameNoReplace(from.string, destination.string) } else { try backend.rename(from: from, to: destination) }
                } catch {
                    throw Self.poolError(error, "cannot rename image '\(name)' to '\(newName)'")
                }
                // Its nspawn settings beside it follow it, as systemd's image rename does (best effort:
                // the image is renamed already, and an existing NEW.nspawn is not replaced).
                if !isImageLocator(folder) {
                    try? renameNoReplace(Self.settingsPath(folder, name).string, Self.settingsPath(folder, newName).string)
                }
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

    func removeLocked(_ found: Found) async throws {
        try refuseReadOnlyImage(found, "remove")
        try refuseHeldImage(found.name)
        guard let backend = found.backend else { throw PoolError(.readOnly, "cannot remove the host image") }
        let pathLock = try lockPath(found.path, .exclusive, found.name)
        defer { pathLock.release() }
        let nameLock = try lockName(found.name)
        defer { nameLock.release() }
        let path = found.path, name = found.name, isSymlink = found.isSymlink
        let folder = path.removingLastComponent()
        try await Blocking.run {
            do {
                // A symlinked image: the link goes, what it points to stays.
                if isSymlink { try removeFile(path.string) } else { try backend.remove(at: path) }
            } catch {
                throw Self.poolError(error, "cannot remove image '\(name)'")
            }
            // Its nspawn settings beside it go with it, as systemd's image remove does: left behind,
            // they would apply to the next image of that name.
            if !isImageLocator(folder) { try? removeFile(Self.settingsPath(folder, name).string) }
        }
    }

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

    // MARK: CleanPool

    /// The pool's OCI layer cache (PullOci's verified blobs by digest): a `.#` entry, so never
    /// listed as an image, and kept by the start-up clean-up of temp entries. CleanPool removes
    /// it unless a pull holds it (a shared flock on the folder).
    public static let layerCacheEntry = ".#berth-oci-cache"

    /// Removes the layer cache if no pull uses it (an exclusive flock taken without waiting).
    func removeLayerCache() async {
        let path = realPoolPath.appending(Self.layerCacheEntry)
        _ = try? await Blocking.run {
            let folder = try FileDescriptor.openDirectory(path.string, followSymlinks: false)
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
}
