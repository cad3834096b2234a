import Linux
import Synchronization
import struct SystemPackage.FilePath

/// Discovery: which images the search paths hold, found by listing (ListImages) or by name
/// or path (GetImage, every mutation), claimed by the backends and described by them.
extension ImagePool {
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
        var root: FilePath
        /// The image's path (worked out when asked: listings never need it).
        var path: FilePath { entry?.path ?? root }
        var isHost: Bool { backend == nil }
        /// The entry is a symlink (an image linked into a search path from elsewhere).
        var isSymlink: Bool { entry?.status?.isSymlink == true }
        var type: ImageType { backend?.imageType ?? .directory }
        /// The image is a tree, as its backend declares (`.host` is one).
        var isTree: Bool { backend?.capabilities.contains(.tree) ?? true }
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

    struct DiscoveryContext: Sendable {
        var root: FilePath
        var searchPaths: [FilePath]
        var hasHostImage: Bool
        var registry: BackendRegistry
        var realPaths: RealPathCache
    }

    nonisolated var discoveryContext: DiscoveryContext {
        DiscoveryContext(root: realRoot, searchPaths: searchPaths, hasHostImage: configuration.hasHostImage,
                         registry: registry, realPaths: realPaths)
    }

    /// Lists the search paths: per folder one open, one readdir, one statfs; per entry one
    /// statx relative to the folder (two for a symlink), and a statfs only for an entry on
    /// another filesystem or mount. The backends claim and describe from that.
    static func discoverAll(_ c: DiscoveryContext) -> [Found] {
        // `.host` is never the name of an entry, even where the pool does not list the host.
        var seen: Set<String> = [".host"]
        var result = c.hasHostImage ? [Found(name: ".host", entry: nil, backend: nil, isVendor: false, root: c.root)] : []
        for dir in c.searchPaths {
            guard let real = c.realPaths.resolve(dir), let folder = try? FileDescriptor.openDirectory(real.string) else { continue }
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
        appendExternalImages(to: &result, seen: &seen, c)
        return result
    }

    /// The entry `file` of the folder `real` (open as `folder`) whose own statx is `status`:
    /// a symlink's target is looked at too, and the folder's statfs is reused unless the entry
    /// leads to another filesystem or is a mount point of its own.
    static func poolEntry(_ file: String, in real: FilePath, _ folder: FileDescriptor, status: EntryStatus,
                                  folderDevice: UInt64?, folderFilesystem: FilesystemStatus?) -> PoolEntry {
        let target = status.isSymlink ? try? entryStatus(file, relativeTo: folder, followSymlinks: true) : status
        var filesystem: FilesystemStatus? = nil
        if let target {
            if !status.isSymlink, target.device == folderDevice, target.isMountRoot == false, let folderFilesystem {
                filesystem = folderFilesystem
            } else {
                filesystem = try? filesystemStatus(real.appending(file).string)
            }
        }
        return PoolEntry(directory: real, fileName: file, status: status, target: target, filesystem: filesystem)
    }

    /// The first image called `name` in search-path order, backends in priority order: per
    /// folder one statx of the folder (its real path is remembered), then one for each file
    /// name an image of that name can have (`name`, `name.raw`) where the folder exists.
    static func find(_ name: String, _ c: DiscoveryContext) -> Found? {
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
                let path = real.appending(file).string
                guard let status = try? entryStatus(path) else { continue }
                let target = status.isSymlink ? try? entryStatus(path, followSymlinks: true) : status
                let entry = PoolEntry(directory: real, fileName: file, status: status, target: target,
                                      filesystem: target == nil ? nil : try? filesystemStatus(path))
                if let (owner, claimed) = c.registry.claim(entry), claimed == name {
                    return Found(name: name, entry: entry, backend: owner, isVendor: isVendor(real, root: c.root), root: c.root)
                }
            }
        }
        return findExternal(name, c)
    }

    static func describe(_ f: Found, _ c: DiscoveryContext) throws -> Image {
        guard let backend = f.backend, let entry = f.entry else {
            // As systemd-machined 252 reports `.host`: a writable directory with no times or
            // usage. Berth still refuses to change it (EROFS), as machined does.
            return Image(name: f.name, path: f.path.string, type: .directory, readOnly: false)
        }
        var image = try backend.image(named: f.name, entry: entry)
        image.name = f.name
        if f.isVendor { image.readOnly = true }
        return image
    }

    /// Images under ROOT/usr are the vendor's: read-only whatever their flags say.
    static func isVendor(_ realDirectory: FilePath, root: FilePath) -> Bool {
        realDirectory.starts(with: root.appending("usr"))
    }

    // MARK: lookups

    // Lookups by name run right here: a few statx calls, cheaper than a trip to a worker
    // thread and back (sd-bus's callbacks make the same calls on the bus thread).

    func existing(_ name: String) throws -> Found {
        guard let f = Self.find(name, discoveryContext) else { throw PoolError(.noSuchImage, "no image '\(name)'") }
        return f
    }

    /// The image at the absolute path `path`, wherever it is, claimed by the first backend that
    /// knows its kind; its name is what that backend makes of the file name.
    func existing(path: FilePath) throws -> Found {
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
        guard let found = Self.find(path: FilePath(path), discoveryContext) else { throw PoolError(.noSuchImage, "no image at \(path)") }
        return try Self.describe(found, discoveryContext)
    }

    static func find(path: FilePath, _ c: DiscoveryContext) -> Found? {
        if isImageLocator(path) { return findExternal(locator: path, c) }
        guard path.isAbsolute, let real = realPath(path), let file = real.lastComponent else { return nil }
        let directory = real.removingLastComponent()
        guard let status = try? entryStatus(real.string) else { return nil }
        let entry = PoolEntry(directory: directory, fileName: file.string, status: status, target: status,
                              filesystem: try? filesystemStatus(real.string))
        guard let (owner, name) = c.registry.claim(entry) else { return nil }
        return Found(name: name, entry: entry, backend: owner, isVendor: isVendor(directory, root: c.root), root: c.root)
    }

    func isTaken(_ name: String) -> Bool {
        Self.find(name, discoveryContext) != nil
    }
}

/// realpath(3) of the search folders, remembered with the identity (device, inode) of the folder
/// it led to: a lookup costs one statx instead of a readlink per path component, and a folder
/// replaced or re-pointed (another inode) is resolved afresh.
final class RealPathCache: Sendable {
    private struct Resolved {
        var real: FilePath
        var device: UInt64
        var inode: UInt64
    }
    private let resolved = Mutex<[FilePath: Resolved]>([:])

    /// The real path of `path`, nil if it does not exist.
    func resolve(_ path: FilePath) -> FilePath? {
        guard let status = try? entryStatus(path.string, followSymlinks: true) else { return nil }
        if let known = resolved.withLock({ $0[path] }), known.device == status.device, known.inode == status.inode {
            return known.real
        }
        guard let real = ImagePool.realPath(path) else { return nil }
        resolved.withLock { $0[path] = Resolved(real: real, device: status.device, inode: status.inode) }
        return real
    }
}
