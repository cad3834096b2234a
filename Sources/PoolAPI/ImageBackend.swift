import Linux
import struct SystemPackage.FilePath

/// What a backend can do beyond the basics every backend has.
public struct BackendCapabilities: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Clone takes constant time whatever the image size (btrfs snapshots).
    public static let constantTimeClone = BackendCapabilities(rawValue: 1 << 0)
    /// Limits can be set and are enforced (`SetImageLimit`, `SetPoolLimit`).
    public static let quota = BackendCapabilities(rawValue: 1 << 1)
    /// Clone shares extents with the source where the filesystem allows (FICLONE).
    public static let reflink = BackendCapabilities(rawValue: 1 << 2)
    /// Images of this backend are trees that can be filled file by file (import-tar, import-fs).
    public static let tree = BackendCapabilities(rawValue: 1 << 3)
}

/// One entry of a pool folder that a backend may claim, with what one look at it found: the pool
/// lists a folder and takes one `statx` per entry (relative to the folder) and one `statfs` per
/// filesystem, and hands them to every backend, so `claim` and `image(named:entry:)` can answer
/// from memory instead of walking the path again for each question.
public struct PoolEntry: Sendable, Hashable {
    /// The folder the entry is in (absolute, real path).
    public var directory: FilePath
    /// The entry's file name in that folder.
    public var fileName: String
    /// statx of the entry itself (a symlink is not followed); nil if there is no such entry.
    public var status: EntryStatus?
    /// statx of what the entry leads to: the same as `status`, or a symlink's target (nil if
    /// it dangles).
    public var target: EntryStatus?
    /// The filesystem holding `target`; nil if unknown.
    public var filesystem: FilesystemStatus?

    /// `directory/fileName`.
    public var path: FilePath { directory.appending(fileName) }

    /// The entry `fileName` of `directory`, looked at now (statx, statfs); `status` is nil if
    /// it does not exist.
    public init(directory: FilePath, fileName: String) {
        self.directory = directory
        self.fileName = fileName
        let path = directory.appending(fileName).string
        status = try? entryStatus(path)
        target = status?.isSymlink == true ? try? entryStatus(path, followSymlinks: true) : status
        filesystem = target == nil ? nil : try? filesystemStatus(path)
    }

    /// The entry at the absolute `path`, looked at now.
    public init(path: FilePath) {
        self.init(directory: path.removingLastComponent(), fileName: path.lastComponent?.string ?? "")
    }

    /// An entry whose status the caller already took (the pool's listing).
    public init(directory: FilePath, fileName: String, status: EntryStatus?, target: EntryStatus?,
                filesystem: FilesystemStatus?) {
        self.directory = directory
        self.fileName = fileName
        self.status = status
        self.target = target
        self.filesystem = filesystem
    }
}

/// A mounted, read-only view of an image's root filesystem for reading os-release and friends.
/// `close()` releases whatever was needed to get there (mounts, loop devices); it runs on every path.
public protocol InspectionRoot: AnyObject, Sendable {
    /// The folder holding the image's root filesystem.
    var root: FilePath { get }
    func close()
}

/// A storage kind for images. A vendor adds one by writing a module that implements this and one
/// registration line in berthd's composition; `BackendConformance` tells whether it is right.
///
/// Methods are synchronous and may block: the pool runs them off the bus thread, serialises
/// conflicting operations on one image, checks names and read-only state, and installs results
/// atomically. A backend works on paths the pool hands it and answers what it cannot do with
/// `PoolError(.notSupported, …)`, never a crash.
public protocol ImageBackend: Sendable {
    /// A short identifier for logs and the registry ("btrfs", "raw", "directory").
    var identifier: String { get }
    /// The systemd image type string of every image this backend claims.
    var imageType: ImageType { get }
    var capabilities: BackendCapabilities { get }

    /// The image name if this backend owns `entry`, else nil. Called for every entry of every
    /// pool folder on ListImages: answer from `entry.status`, `.target` and `.filesystem`
    /// (nil status: no such entry), with no system call if at all possible.
    func claim(_ entry: PoolEntry) -> String?

    /// The file name an image called `name` has in a pool folder (`name`, or `name.raw`).
    func entryName(forImage name: String) -> String

    /// Whether new images of this backend can be made in `directory` (btrfs only on btrfs).
    func canCreate(in directory: FilePath) -> Bool

    /// Metadata of the image at `entry` (one this backend claimed). Called for every image on
    /// ListImages, so it must be quick: use what `entry` already holds rather than asking
    /// again, and compute anything slow (directory usage) in the background, reporting
    /// `Image.unknown` until known. No such entry (nil status) is `.noSuchImage`.
    func image(named name: String, entry: PoolEntry) throws -> Image

    /// Makes a new, empty image at `path` (which does not exist): an empty tree for tree
    /// backends, an empty file for file backends. Used to fill an image by import or by copy.
    func createEmpty(at path: FilePath) throws

    /// Clones the image at `source` to `destination` (which does not exist), faithfully and as
    /// cheaply as the storage allows. On failure nothing may be left at `destination`.
    func clone(from source: FilePath, to destination: FilePath) throws

    /// Whether `cloneInOneStep` can clone `source` now: the storage makes the whole clone in one
    /// atomic step (a btrfs snapshot of a subvolume with none nested in it). The pool then clones
    /// straight to the final name, with no temp entry, no rename and no lock on the source,
    /// whose reading takes no time. Default: false, and `clone(from:to:)` is used.
    func clonesInOneStep(from source: FilePath) -> Bool

    /// Clones `source` to `destination` in one atomic step: afterwards the whole image, read-only
    /// if `readOnly`, is at `destination`, or nothing is. An existing `destination` is refused
    /// (EEXIST, `.imageExists`), never replaced. Called only where `clonesInOneStep(from:)` said yes.
    func cloneInOneStep(from source: FilePath, to destination: FilePath, readOnly: Bool) throws

    /// Renames within one folder, refusing to replace (renameat2 RENAME_NOREPLACE).
    func rename(from source: FilePath, to destination: FilePath) throws

    /// Removes the image at `path` entirely (nested subvolumes, qgroups, immutable flags).
    func remove(at path: FilePath) throws

    /// Makes the image read-only (or writable again), enforced for root too.
    func setReadOnly(_ readOnly: Bool, at path: FilePath) throws

    /// Sets the image's size limit in bytes; `Image.unknown` (UINT64_MAX) removes it.
    func setLimit(_ bytes: UInt64, at path: FilePath) throws

    /// Opens the image's root filesystem read-only for inspection.
    func openForInspection(at path: FilePath) throws -> any InspectionRoot

    /// Pool-wide usage and limit of `directory` where this backend can know them, else nil.
    func poolUsage(of directory: FilePath) throws -> (usage: UInt64, limit: UInt64)?

    /// Sets the limit of the whole pool folder `directory` (btrfs: the pool subvolume's qgroup).
    func setPoolLimit(_ bytes: UInt64, of directory: FilePath) throws
}

extension ImageBackend {
    public func entryName(forImage name: String) -> String { name }

    /// Metadata of the image at `path`, looked at now (`image(named:entry:)`).
    public func image(named name: String, at path: FilePath) throws -> Image {
        try image(named: name, entry: PoolEntry(path: path))
    }

    public func clonesInOneStep(from source: FilePath) -> Bool { false }

    public func cloneInOneStep(from source: FilePath, to destination: FilePath, readOnly: Bool) throws {
        throw PoolError(.notSupported, "\(identifier) images are not cloned in one step")
    }

    public func setLimit(_ bytes: UInt64, at path: FilePath) throws {
        throw PoolError(.notSupported, "\(identifier) images have no size limits")
    }

    public func poolUsage(of directory: FilePath) throws -> (usage: UInt64, limit: UInt64)? { nil }

    public func setPoolLimit(_ bytes: UInt64, of directory: FilePath) throws {
        throw PoolError(.notSupported, "pool limits need quota support, which \(identifier) does not have")
    }
}

/// The backends of one daemon, in priority order: the first that claims an entry owns it
/// (btrfs before directory, as a directory that is a subvolume is a subvolume).
public struct BackendRegistry: Sendable {
    public let backends: [any ImageBackend]

    public init(_ backends: [any ImageBackend]) {
        self.backends = backends
    }

    /// The backend owning `entry` and the image name it gives it.
    public func claim(_ entry: PoolEntry) -> (backend: any ImageBackend, name: String)? {
        for backend in backends {
            if let name = backend.claim(entry) { return (backend, name) }
        }
        return nil
    }

    /// The backend that makes new tree images in `directory` (btrfs on btrfs, else directory).
    public func treeBackend(for directory: FilePath) -> (any ImageBackend)? {
        backends.first { $0.capabilities.contains(.tree) && $0.canCreate(in: directory) }
    }

    /// Whether images of `type` are trees, as the registered backends declare it: a backend of
    /// that type has the `.tree` capability. A tree image is made by the tree backend of the
    /// pool folder, whatever its own type (a directory imported into a btrfs pool becomes a
    /// subvolume), and a tree is cloned into it by copy when the backends differ.
    public func isTree(_ type: ImageType) -> Bool {
        backends.contains { $0.imageType == type && $0.capabilities.contains(.tree) }
    }

    /// The backend that makes new images of `type` in `directory`.
    public func backend(for type: ImageType, in directory: FilePath) -> (any ImageBackend)? {
        backends.first { $0.imageType == type && $0.canCreate(in: directory) }
    }
}
