import CRbd
import Linux
#if canImport(Glibc)
import Glibc
#endif

/// rbd_stat's answer.
public struct RbdImageInfo: Sendable, Hashable {
    public var size: UInt64
    public var objectSize: UInt64
    public var objectCount: UInt64
    public var order: Int
}

/// A snapshot of an image (rbd_snap_list).
public struct RbdSnapshot: Sendable, Hashable {
    public var id: UInt64
    public var name: String
    public var size: UInt64
}

/// An advisory lock's holder (rbd_list_lockers).
public struct RbdLocker: Sendable, Hashable {
    /// The RADOS client holding it (`client.4123`).
    public var client: String
    /// The cookie the holder chose.
    public var cookie: String
    /// The holder's network address.
    public var address: String
}

/// The advisory locks of an image: exclusive or shared, their tag, who holds them.
public struct RbdLockers: Sendable, Hashable {
    public var exclusive: Bool
    public var tag: String
    public var lockers: [RbdLocker]
}

/// An open RBD image (`rbd_image_t`), closed in `deinit` (rbd_close).
public final class RbdImage: @unchecked Sendable {
    // @unchecked: librbd serialises operations on one rbd_image_t internally (its image context
    // locks), and this object never changes the handle after init.
    public let pool: RbdPool
    public let name: String
    public let isReadOnly: Bool
    let handle: rbd_image_t
    var library: RbdLibrary { pool.library }

    init(pool: RbdPool, name: String, readOnly: Bool, snapshot: String?) throws(RbdError) {
        self.pool = pool
        self.name = name
        self.isReadOnly = readOnly
        var image: rbd_image_t?
        if readOnly {
            try check("rbd_open_read_only", name, pool.library.rbd_open_read_only(pool.handle, name, &image, snapshot))
        } else {
            try check("rbd_open", name, pool.library.rbd_open(pool.handle, name, &image, snapshot))
        }
        guard let image else { throw RbdError(call: "rbd_open", errno: .ENOMEM, subject: name) }
        handle = image
    }

    deinit {
        _ = library.rbd_close(handle)
    }

    // MARK: data

    /// Reads up to `buffer.count` bytes at `offset` (rbd_read); returns how many were read
    /// (fewer only at the image's end).
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(RbdError) -> Int {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        let result = library.rbd_read(handle, offset, buffer.count, base.assumingMemoryBound(to: CChar.self))
        return try check("rbd_read", name, result)
    }

    /// Reads `count` bytes at `offset`, fewer at the end of the image.
    public func read(at offset: UInt64, count: Int) throws(RbdError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let result: Result<Int, RbdError> = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(RbdError) -> Int in try self.read(at: offset, into: buffer) }
        }
        let read = try result.get()
        bytes.removeLast(count - read)
        return bytes
    }

    /// Writes all of `bytes` at `offset` (rbd_write); EROFS on a read-only open, EBUSY if
    /// another client holds the exclusive lock and will not release it.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(RbdError) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var done = 0
        while done < bytes.count {
            let result = library.rbd_write(handle, offset + UInt64(done), bytes.count - done,
                                           (base + done).assumingMemoryBound(to: CChar.self))
            let written = try check("rbd_write", name, result)
            if written == 0 { throw RbdError(call: "rbd_write", errno: .EIO, subject: name) }
            done += written
        }
    }

    /// Writes `bytes` at `offset`.
    public func write(_ bytes: [UInt8], at offset: UInt64) throws(RbdError) {
        let result: Result<Void, RbdError> = bytes.withUnsafeBytes { buffer in
            Result { () throws(RbdError) in try write(buffer, at: offset) }
        }
        try result.get()
    }

    /// Deallocates a byte range (rbd_discard): it reads as zeros and frees its objects.
    public func discard(at offset: UInt64, length: UInt64) throws(RbdError) {
        try check("rbd_discard", name, library.rbd_discard(handle, offset, length))
    }

    /// Waits until every write so far is on the OSDs (rbd_flush).
    public func flush() throws(RbdError) {
        try check("rbd_flush", name, library.rbd_flush(handle))
    }

    /// Grows or shrinks the image to `size` bytes (rbd_resize).
    public func resize(to size: UInt64) throws(RbdError) {
        try check("rbd_resize", name, library.rbd_resize(handle, size))
    }

    // MARK: metadata

    /// Size, object size and count (rbd_stat).
    public func stat() throws(RbdError) -> RbdImageInfo {
        var info = rbd_image_info_t()
        try check("rbd_stat", name, library.rbd_stat(handle, &info, MemoryLayout<rbd_image_info_t>.size))
        return RbdImageInfo(size: info.size, objectSize: info.obj_size, objectCount: info.num_objs, order: Int(info.order))
    }

    /// The image's size in bytes (rbd_get_size).
    public func size() throws(RbdError) -> UInt64 {
        var size: UInt64 = 0
        try check("rbd_get_size", name, library.rbd_get_size(handle, &size))
        return size
    }

    /// The image's features (rbd_get_features).
    public func features() throws(RbdError) -> RbdFeatures {
        var bits: UInt64 = 0
        try check("rbd_get_features", name, library.rbd_get_features(handle, &bits))
        return RbdFeatures(rawValue: bits)
    }

    /// The image's flags (rbd_get_flags): RBD_FLAG_OBJECT_MAP_INVALID (1), RBD_FLAG_FAST_DIFF_INVALID (2).
    public func flags() throws(RbdError) -> UInt64 {
        var flags: UInt64 = 0
        try check("rbd_get_flags", name, library.rbd_get_flags(handle, &flags))
        return flags
    }

    /// Whether fast-diff can answer usage now (the feature is on and its map is valid).
    public func hasValidFastDiff() throws(RbdError) -> Bool {
        let features = try features()
        let flags = try flags()
        return features.contains(.fastDiff) && flags & 0x3 == 0
    }

    /// When the image was made, µs since the epoch (rbd_get_create_timestamp).
    public func creationTimestamp() throws(RbdError) -> UInt64 {
        var time = timespec()
        try check("rbd_get_create_timestamp", name, library.rbd_get_create_timestamp(handle, &time))
        return Self.microseconds(time)
    }

    /// When the image was last written, µs since the epoch (rbd_get_modify_timestamp).
    public func modificationTimestamp() throws(RbdError) -> UInt64 {
        var time = timespec()
        try check("rbd_get_modify_timestamp", name, library.rbd_get_modify_timestamp(handle, &time))
        return Self.microseconds(time)
    }

    private static func microseconds(_ time: timespec) -> UInt64 {
        guard time.tv_sec > 0 else { return 0 }
        return UInt64(time.tv_sec) * 1_000_000 + UInt64(max(0, time.tv_nsec)) / 1_000
    }

    /// The clone's parent image and snapshot name (rbd_get_parent); nil if it has none.
    public func parent() throws(RbdError) -> (image: RbdLinkedImage, snapshot: String)? {
        var image = rbd_linked_image_spec_t()
        var snap = rbd_snap_spec_t()
        let result = library.rbd_get_parent(handle, &image, &snap)
        if result == -ENOENT { return nil }
        try check("rbd_get_parent", name, result)
        defer {
            library.rbd_linked_image_spec_cleanup(&image)
            library.rbd_snap_spec_cleanup(&snap)
        }
        return (Self.linked(image), string(snap.name))
    }

    /// The value of image metadata `key` (rbd_metadata_get); nil if it is not set.
    public func metadata(_ key: String) throws(RbdError) -> String? {
        var length = 256
        while true {
            var value = [CChar](repeating: 0, count: length)
            var wanted = length
            let result = value.withUnsafeMutableBufferPointer { library.rbd_metadata_get(handle, key, $0.baseAddress, &wanted) }
            if result == -ENOENT { return nil }
            if result == -ERANGE, wanted > length {
                length = wanted
                continue
            }
            try check("rbd_metadata_get", "\(name) \(key)", result)
            return value.withUnsafeBufferPointer { buffer in
                buffer.baseAddress.map { String(cString: $0) } ?? ""
            }
        }
    }

    /// Sets image metadata `key` (rbd_metadata_set); stored with the image, seen by every client.
    public func setMetadata(_ key: String, _ value: String) throws(RbdError) {
        try check("rbd_metadata_set", "\(name) \(key)", library.rbd_metadata_set(handle, key, value))
    }

    /// Removes image metadata `key` (rbd_metadata_remove); not set already is fine.
    public func removeMetadata(_ key: String) throws(RbdError) {
        let result = library.rbd_metadata_remove(handle, key)
        if result == -ENOENT { return }
        try check("rbd_metadata_remove", "\(name) \(key)", result)
    }

    // MARK: snapshots and clones

    /// The image's snapshots (rbd_snap_list).
    public func snapshots() throws(RbdError) -> [RbdSnapshot] {
        var capacity: Int32 = 16
        while true {
            var snaps = [rbd_snap_info_t](repeating: rbd_snap_info_t(), count: Int(capacity) + 1)
            var wanted = capacity
            let result = snaps.withUnsafeMutableBufferPointer { library.rbd_snap_list(handle, $0.baseAddress, &wanted) }
            if result == -ERANGE {
                capacity = max(wanted, capacity * 2)
                continue
            }
            let count = try check("rbd_snap_list", name, result)
            let list = snaps.prefix(Int(count)).map { RbdSnapshot(id: $0.id, name: string($0.name), size: $0.size) }
            snaps.withUnsafeMutableBufferPointer { library.rbd_snap_list_end($0.baseAddress) }
            return list
        }
    }

    /// Takes a snapshot (rbd_snap_create).
    public func createSnapshot(_ snapshot: String) throws(RbdError) {
        try check("rbd_snap_create", "\(name)@\(snapshot)", library.rbd_snap_create(handle, snapshot))
    }

    /// Removes a snapshot (rbd_snap_remove); EBUSY while protected.
    public func removeSnapshot(_ snapshot: String) throws(RbdError) {
        try check("rbd_snap_remove", "\(name)@\(snapshot)", library.rbd_snap_remove(handle, snapshot))
    }

    /// Protects a snapshot from removal, so clones can hang off it (rbd_snap_protect).
    public func protectSnapshot(_ snapshot: String) throws(RbdError) {
        try check("rbd_snap_protect", "\(name)@\(snapshot)", library.rbd_snap_protect(handle, snapshot))
    }

    /// Unprotects a snapshot (rbd_snap_unprotect); EBUSY while it has clones.
    public func unprotectSnapshot(_ snapshot: String) throws(RbdError) {
        try check("rbd_snap_unprotect", "\(name)@\(snapshot)", library.rbd_snap_unprotect(handle, snapshot))
    }

    /// Whether a snapshot is protected (rbd_snap_is_protected).
    public func isSnapshotProtected(_ snapshot: String) throws(RbdError) -> Bool {
        var protected: Int32 = 0
        try check("rbd_snap_is_protected", "\(name)@\(snapshot)", library.rbd_snap_is_protected(handle, snapshot, &protected))
        return protected != 0
    }

    /// The clones of this image's snapshots (rbd_list_children3), including ones in the trash.
    public func children() throws(RbdError) -> [RbdLinkedImage] {
        var capacity = 16
        while true {
            var specs = [rbd_linked_image_spec_t](repeating: rbd_linked_image_spec_t(), count: capacity)
            var count = capacity
            let result = specs.withUnsafeMutableBufferPointer { library.rbd_list_children3(handle, $0.baseAddress, &count) }
            if result == -ERANGE {
                capacity = max(count, capacity * 2)
                continue
            }
            try check("rbd_list_children3", name, result)
            let list = specs.prefix(count).map(Self.linked)
            specs.withUnsafeMutableBufferPointer { library.rbd_linked_image_spec_list_cleanup($0.baseAddress, count) }
            return list
        }
    }

    /// Copies the parent's data into this clone and detaches it (rbd_flatten).
    public func flatten() throws(RbdError) {
        try check("rbd_flatten", name, library.rbd_flatten(handle))
    }

    private static func linked(_ spec: rbd_linked_image_spec_t) -> RbdLinkedImage {
        RbdLinkedImage(poolName: string(spec.pool_name), poolNamespace: string(spec.pool_namespace),
                       imageID: string(spec.image_id), imageName: string(spec.image_name), inTrash: spec.trash)
    }

    // MARK: locks

    /// Takes the image's advisory lock exclusively under `cookie` (rbd_lock_exclusive); EBUSY
    /// if another client (or this one with another cookie) holds it, EEXIST if this client
    /// already holds it with this cookie. Advisory: it stops other lockers, not writers.
    public func lockExclusive(cookie: String) throws(RbdError) {
        try check("rbd_lock_exclusive", name, library.rbd_lock_exclusive(handle, cookie))
    }

    /// Takes a shared advisory lock (rbd_lock_shared); holders must agree on `tag`.
    public func lockShared(cookie: String, tag: String) throws(RbdError) {
        try check("rbd_lock_shared", name, library.rbd_lock_shared(handle, cookie, tag))
    }

    /// Releases this client's advisory lock under `cookie` (rbd_unlock).
    public func unlock(cookie: String) throws(RbdError) {
        try check("rbd_unlock", name, library.rbd_unlock(handle, cookie))
    }

    /// Who holds the advisory lock (rbd_list_lockers).
    public func lockers() throws(RbdError) -> RbdLockers {
        var sizes = (tag: 64, clients: 256, cookies: 256, addresses: 256)
        while true {
            var exclusive: Int32 = 0
            var tag = [CChar](repeating: 0, count: sizes.tag)
            var clients = [CChar](repeating: 0, count: sizes.clients)
            var cookies = [CChar](repeating: 0, count: sizes.cookies)
            var addresses = [CChar](repeating: 0, count: sizes.addresses)
            var wanted = sizes
            let result = library.rbd_list_lockers(handle, &exclusive, &tag, &wanted.tag, &clients, &wanted.clients,
                                                  &cookies, &wanted.cookies, &addresses, &wanted.addresses)
            if result == Int(-ERANGE) {
                sizes = (max(wanted.tag, sizes.tag), max(wanted.clients, sizes.clients),
                         max(wanted.cookies, sizes.cookies), max(wanted.addresses, sizes.addresses))
                continue
            }
            let count = try check("rbd_list_lockers", name, result)
            let clientList = Self.split(clients, count: count)
            let cookieList = Self.split(cookies, count: count)
            let addressList = Self.split(addresses, count: count)
            let lockers = (0..<count).map { index in
                RbdLocker(client: clientList[index], cookie: cookieList[index], address: addressList[index])
            }
            return RbdLockers(exclusive: exclusive != 0, tag: Self.split(tag, count: 1)[0], lockers: lockers)
        }
    }

    /// Breaks another client's advisory lock (rbd_break_lock), for a holder known dead. Ceph
    /// also blocklists the holder's client (rbd_blocklist_on_break_lock, on by default), so a
    /// holder that was alive after all is fenced off: its writes fail with ESHUTDOWN.
    public func breakLock(client: String, cookie: String) throws(RbdError) {
        try check("rbd_break_lock", name, library.rbd_break_lock(handle, client, cookie))
    }

    /// Takes the exclusive-lock feature's lock now (rbd_lock_acquire) rather than at the first
    /// write, and keeps it: other clients' writes then fail instead of taking it over.
    public func acquireExclusiveLock() throws(RbdError) {
        try check("rbd_lock_acquire", name, library.rbd_lock_acquire(handle, RBD_LOCK_MODE_EXCLUSIVE))
    }

    /// Gives the exclusive-lock feature's lock back (rbd_lock_release).
    public func releaseExclusiveLock() throws(RbdError) {
        try check("rbd_lock_release", name, library.rbd_lock_release(handle))
    }

    /// Whether this open image holds the exclusive-lock feature's lock (rbd_is_exclusive_lock_owner).
    public func ownsExclusiveLock() throws(RbdError) -> Bool {
        var owner: Int32 = 0
        try check("rbd_is_exclusive_lock_owner", name, library.rbd_is_exclusive_lock_owner(handle, &owner))
        return owner != 0
    }

    /// The clients holding the exclusive-lock feature's lock (rbd_lock_get_owners), as Ceph
    /// names them (`client.4123`); empty when nobody holds it.
    public func exclusiveLockOwners() throws(RbdError) -> [String] {
        var capacity = 4
        while true {
            var owners = [UnsafeMutablePointer<CChar>?](repeating: nil, count: capacity)
            var count = capacity
            var mode = RBD_LOCK_MODE_EXCLUSIVE
            let result = library.rbd_lock_get_owners(handle, &mode, &owners, &count)
            if result == -ENOENT { return [] }
            if result == -ERANGE && count > capacity {
                capacity = count
                continue
            }
            try check("rbd_lock_get_owners", name, result)
            defer { library.rbd_lock_get_owners_cleanup(&owners, count) }
            return owners.prefix(count).compactMap { $0.map { String(cString: $0) } }
        }
    }

    /// Breaks the exclusive-lock feature's lock `owner` holds (rbd_lock_break), for an owner known
    /// dead. Ceph blocklists the owner's client (rbd_blocklist_on_break_lock, on by default),
    /// which also drops its watch on the image, so a dead writer no longer keeps the image busy
    /// for the watch timeout; an owner alive after all is fenced off (its writes fail).
    public func breakExclusiveLock(owner: String) throws(RbdError) {
        try check("rbd_lock_break", name, library.rbd_lock_break(handle, RBD_LOCK_MODE_EXCLUSIVE, owner))
    }

    /// `count` NUL-separated strings of `buffer` ("" for missing ones).
    private static func split(_ buffer: [CChar], count: Int) -> [String] {
        var strings: [String] = []
        var start = 0
        while strings.count < count {
            guard start < buffer.count, let end = buffer[start...].firstIndex(of: 0) else {
                strings.append("")
                continue
            }
            strings.append(String(decoding: buffer[start..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            start = end + 1
        }
        return strings
    }

    // MARK: usage

    /// Bytes allocated in the image (rbd_diff_iterate2 over the whole image with fast-diff and
    /// whole objects: answered from the object map, no data read). `includeParent`: count what
    /// a clone reads through from its parent; false gives what the clone itself holds.
    /// Without a valid fast-diff map librbd falls back to listing objects (slower, still no
    /// data read).
    public func allocatedBytes(includeParent: Bool) throws(RbdError) -> UInt64 {
        let size = try self.size()
        // An empty image holds nothing, and Ceph 16's fast-diff path aborts the whole process on
        // one (DiffIterate.cc: FAILED ceph_assert(object_diff_state.size() == end_object_no -
        // start_object_no)): every import's temp image is empty at first, and anyone may make one.
        if size == 0 { return 0 }
        var total: UInt64 = 0
        let result = withUnsafeMutablePointer(to: &total) { pointer in
            library.rbd_diff_iterate2(handle, nil, 0, size, includeParent ? 1 : 0, 1, { _, length, exists, context in
                if exists != 0, let context {
                    context.assumingMemoryBound(to: UInt64.self).pointee += UInt64(length)
                }
                return 0
            }, pointer)
        }
        try check("rbd_diff_iterate2", name, result)
        return total
    }
}
