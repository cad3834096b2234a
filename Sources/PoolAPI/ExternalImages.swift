import Linux

import struct SystemPackage.FilePath

// The contract for backends whose images live outside pool folders (Ceph RBD): they list their
// images themselves, and the pool merges them with the folder images under the same name rules.

extension BackendCapabilities {
    /// Images live on storage other hosts share (Ceph RBD): another berthd on the same storage
    /// sees the same images, and an image in use there is refused here.
    public static let shared = BackendCapabilities(rawValue: 1 << 4)
    /// Images are disk images (raw bytes holding partitions or a filesystem), not trees:
    /// inspection reads them through a block device or file view.
    public static let blockBacked = BackendCapabilities(rawValue: 1 << 5)
    /// `setReadOnly` is enforced below berthd for every writer (chattr +i, btrfs ro property),
    /// not only a mark berthd and Berth's writers honour.
    public static let enforcedReadOnly = BackendCapabilities(rawValue: 1 << 6)
    /// Images live outside pool folders: the backend conforms to `ExternalImageBackend`.
    public static let external = BackendCapabilities(rawValue: 1 << 7)
}

/// A backend whose images are not entries of pool folders: it lists them itself, and an image's
/// `path` is a locator (`rbd://CLUSTER/POOL/NAME`), never an absolute path, so no path-based
/// code of the pool (file locks, `.nspawn` settings beside it, stat) ever touches it.
///
/// As a `FilePath` a locator is relative and its first component ends in `:`; FilePath folds
/// the scheme's `//` to one `/`, so a backend receives `rbd:/CLUSTER/POOL/NAME` and must read
/// both spellings (`RbdLocator` does). `Image.path`, on the bus, keeps the `rbd://` spelling.
///
/// The pool merges these images with the folder images: a name is unique across backends (a
/// folder image of a name hides an external one of that name, and creating or renaming to a
/// name any backend holds is refused). Every `ImageBackend` method taking a path gets the
/// locator `locatorFolder/NAME`.
public protocol ExternalImageBackend: ImageBackend {
    /// The locator of this backend's "folder" (`rbd://ceph/berth`); an image is `folder/NAME`.
    var locatorFolder: FilePath { get }

    /// Every image name, cheaply: called on every ListImages, so one listing call (rbd_list2),
    /// never an open per image. Temp images (`.#…`) included; the pool leaves them out.
    func externalImageNames() throws -> [String]

    /// Whether the image `name` exists now (one lookup, for GetImage and every mutation).
    func hasExternalImage(named name: String) -> Bool

    /// Whether imports and clones of local images of `imageType` are made here rather than in
    /// the pool folder (configured per pool).
    var receivesNewImages: Bool { get }

    /// `Image.path` of image `name`: its locator as the bus shows it (`rbd://CLUSTER/POOL/NAME`).
    func imagePath(of name: String) -> String

    /// Removes the temp images (`.#…`) this instance made and a crash left behind (berthd killed
    /// while an import wrote one), at start: its writers died with it, so what they still hold
    /// (an RBD exclusive lock, a watch) is theirs no longer and may be broken. Never another
    /// host's temp images: the storage is shared and that host may be importing into one now.
    /// Returns the `Image.path` of each image removed and of each that could not be, with why.
    func removeStaleTemporaryImages() -> (removed: [String], failed: [(path: String, reason: String)])
}

extension ExternalImageBackend {
    /// External images are never entries of pool folders.
    public func claim(_ entry: PoolEntry) -> String? { nil }

    /// New images are made only under the backend's own locator folder.
    public func canCreate(in directory: FilePath) -> Bool { directory == locatorFolder }

    /// `locatorFolder/NAME`.
    public func locator(of name: String) -> FilePath { locatorFolder.appending(name) }

    /// The image name a locator of this backend names, or nil if it is not one of ours.
    public func imageName(ofLocator locator: FilePath) -> String? {
        guard let name = locator.lastComponent, locator.removingLastComponent() == locatorFolder else { return nil }
        return name.string
    }

    /// The image name a locator as a string names (`Image.path`, what `install` hands its
    /// filler), or nil if it is not one of ours.
    public func imageName(ofLocator locator: String) -> String? { imageName(ofLocator: FilePath(locator)) }

    /// The pool's view of image `name`: an entry without file status in the locator folder.
    public func poolEntry(forImage name: String) -> PoolEntry {
        PoolEntry(directory: locatorFolder, fileName: name, status: nil, target: nil, filesystem: nil)
    }
}

/// Whether `path` is an external backend's locator (`scheme://…`, as `Image.path` spells it)
/// rather than a file path.
public func isImageLocator(_ path: String) -> Bool {
    !path.hasPrefix("/") && path.contains(":/")
}

/// Whether `path` is an external backend's locator (relative, its first component `scheme:`)
/// rather than a file path.
public func isImageLocator(_ path: FilePath) -> Bool {
    !path.isAbsolute && (path.components.first?.string.hasSuffix(":") ?? false)
}

extension BackendRegistry {
    /// The backends owning images outside pool folders, in priority order.
    public var externalBackends: [any ExternalImageBackend] {
        backends.compactMap { $0 as? any ExternalImageBackend }
    }

    /// The external backend that receives new images of `type` (imports), if one is configured to.
    public func externalBackend(receiving type: ImageType) -> (any ExternalImageBackend)? {
        externalBackends.first { $0.receivesNewImages && $0.imageType == type }
    }
}
