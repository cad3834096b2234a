import CRbd
import Linux
#if canImport(Glibc)
import Glibc
#endif

/// One RBD image of a pool listing: its name and its stable id (which survives a rename).
public struct RbdImageSpec: Sendable, Hashable {
    public var id: String
    public var name: String
}

/// An image linked to another (a clone's parent or a parent's child).
public struct RbdLinkedImage: Sendable, Hashable {
    public var poolName: String
    public var poolNamespace: String
    public var imageID: String
    public var imageName: String
    /// The image sits in the RBD trash (removed but kept for its children).
    public var inTrash: Bool
}

/// Feature bits of an RBD image (librbd's RBD_FEATURE_*).
public struct RbdFeatures: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let layering = RbdFeatures(rawValue: BERTH_RBD_FEATURE_LAYERING)
    public static let exclusiveLock = RbdFeatures(rawValue: BERTH_RBD_FEATURE_EXCLUSIVE_LOCK)
    public static let objectMap = RbdFeatures(rawValue: BERTH_RBD_FEATURE_OBJECT_MAP)
    public static let fastDiff = RbdFeatures(rawValue: BERTH_RBD_FEATURE_FAST_DIFF)
    public static let deepFlatten = RbdFeatures(rawValue: BERTH_RBD_FEATURE_DEEP_FLATTEN)

    /// What Berth gives every image it makes: clones (layering), a lock a writer holds
    /// (exclusive-lock), usage without reading data (object-map + fast-diff), and clones that
    /// can be flattened away from snapshots (deep-flatten). Ceph 16's own default set.
    public static let berthDefault: RbdFeatures = [.layering, .exclusiveLock, .objectMap, .fastDiff, .deepFlatten]
}

/// An I/O context on one Ceph pool (`rados_ioctx_t`), and the pool-level RBD calls: list,
/// create, clone, rename, remove, open.
public final class RbdPool: @unchecked Sendable {
    // @unchecked: librados allows concurrent use of one ioctx as long as its settings (snap
    // context, namespace) are not changed, and nothing here changes them.
    public let cluster: RadosCluster
    public let name: String
    let handle: rados_ioctx_t
    var library: RbdLibrary { cluster.library }

    init(cluster: RadosCluster, name: String) throws(RbdError) {
        self.cluster = cluster
        self.name = name
        var io: rados_ioctx_t?
        try check("rados_ioctx_create", name, cluster.library.rados_ioctx_create(cluster.handle, name, &io))
        guard let io else { throw RbdError(call: "rados_ioctx_create", errno: .ENOMEM, subject: name) }
        handle = io
    }

    deinit {
        library.rados_ioctx_destroy(handle)
    }

    /// Every image of the pool (rbd_list2: one read of the pool's directory object, no image
    /// opened).
    public func listImages() throws(RbdError) -> [RbdImageSpec] {
        var capacity = 64
        while true {
            var specs = [rbd_image_spec_t](repeating: rbd_image_spec_t(), count: capacity)
            var count = capacity
            let result = specs.withUnsafeMutableBufferPointer { library.rbd_list2(handle, $0.baseAddress, &count) }
            if result == -ERANGE {
                capacity = max(count, capacity * 2)
                continue
            }
            try check("rbd_list2", name, result)
            var images: [RbdImageSpec] = []
            images.reserveCapacity(count)
            for spec in specs.prefix(count) {
                images.append(RbdImageSpec(id: string(spec.id), name: string(spec.name)))
            }
            specs.withUnsafeMutableBufferPointer { library.rbd_image_spec_list_cleanup($0.baseAddress, count) }
            return images
        }
    }

    /// Makes a new image of `size` bytes (rbd_create4); EEXIST if the name is taken.
    /// - Parameter order: object size as a power of two (22: 4 MiB, Ceph's default); nil keeps
    ///   the pool's default.
    public func createImage(_ imageName: String, size: UInt64, features: RbdFeatures = .berthDefault,
                            order: UInt64? = nil) throws(RbdError) {
        try withOptions(features: features, order: order) { (options) throws(RbdError) in
            try check("rbd_create4", imageName, library.rbd_create4(handle, imageName, size, options))
        }
    }

    /// A copy-on-write clone of `parent@snapshot` named `child` in this pool (rbd_clone3), made
    /// in constant time: no data is copied, the child reads through to the snapshot. The
    /// snapshot must be protected (clone format 1) unless the cluster allows format 2 clones.
    public func clone(parent: String, snapshot: String, to child: String,
                      features: RbdFeatures = .berthDefault) throws(RbdError) {
        try withOptions(features: features, order: nil) { (options) throws(RbdError) in
            try check("rbd_clone3", "\(parent)@\(snapshot) → \(child)",
                      library.rbd_clone3(handle, parent, snapshot, handle, child, options))
        }
    }

    /// Removes an image and its data (rbd_remove). EBUSY while a client has it open with a
    /// watch (a running user), ENOTEMPTY while it has snapshots, ENOENT if it does not exist.
    public func removeImage(_ imageName: String) throws(RbdError) {
        try check("rbd_remove", imageName, library.rbd_remove(handle, imageName))
    }

    /// Renames an image within the pool (rbd_rename); EEXIST if `newName` is taken.
    public func renameImage(_ imageName: String, to newName: String) throws(RbdError) {
        try check("rbd_rename", "\(imageName) → \(newName)", library.rbd_rename(handle, imageName, newName))
    }

    /// Opens an image (rbd_open, or rbd_open_read_only, which takes no lock and refuses every
    /// write with EROFS), at its head or at `snapshot`.
    public func openImage(_ imageName: String, readOnly: Bool = false, snapshot: String? = nil) throws(RbdError) -> RbdImage {
        try RbdImage(pool: self, name: imageName, readOnly: readOnly, snapshot: snapshot)
    }

    private func withOptions(features: RbdFeatures, order: UInt64?,
                             _ body: (rbd_image_options_t?) throws(RbdError) -> Void) throws(RbdError) {
        var options: rbd_image_options_t?
        library.rbd_image_options_create(&options)
        defer { library.rbd_image_options_destroy(options) }
        try check("rbd_image_options_set_uint64", "features",
                  library.rbd_image_options_set_uint64(options, Int32(RBD_IMAGE_OPTION_FEATURES), features.rawValue))
        if let order {
            try check("rbd_image_options_set_uint64", "order",
                      library.rbd_image_options_set_uint64(options, Int32(RBD_IMAGE_OPTION_ORDER), order))
        }
        try body(options)
    }
}

/// A C string from Ceph, or "" for NULL.
func string(_ pointer: UnsafePointer<CChar>?) -> String {
    pointer.map { String(cString: $0) } ?? ""
}

func string(_ pointer: UnsafeMutablePointer<CChar>?) -> String {
    pointer.map { String(cString: $0) } ?? ""
}
