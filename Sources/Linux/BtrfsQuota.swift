import CLinux
import Glibc

/// Raw btrfs ioctls that libbtrfsutil does not wrap: quota groups, the quota tree, filesystem
/// sync and the wait for deleted subvolumes to be cleaned. Every call takes a descriptor of any
/// file or directory on the filesystem (the subvolume matters only where said).
public enum BtrfsIoctl {
    /// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root directory.
    public static let subvolumeRootInode: UInt64 = 256

    /// A qgroup id: `level/id` packed as the kernel does (`level << 48 | id`).
    public static func qgroupID(level: UInt16, _ id: UInt64) -> UInt64 {
        UInt64(level) << 48 | (id & ((1 << 48) - 1))
    }

    /// The quota status item (0, BTRFS_QGROUP_STATUS_KEY, 0) of the quota tree.
    public struct QuotaStatus: Sendable, Hashable {
        /// `BTRFS_QGROUP_STATUS_FLAG_*`.
        public var flags: UInt64
        /// BTRFS_QGROUP_STATUS_FLAG_ON: qgroup accounting is running.
        public var isOn: Bool { flags & BERTH_BTRFS_QGROUP_STATUS_FLAG_ON != 0 }
        /// A rescan is running: the numbers are still being counted.
        public var isRescanning: Bool { flags & BERTH_BTRFS_QGROUP_STATUS_FLAG_RESCAN != 0 }
        /// The numbers are known to be wrong until a rescan (after some qgroup assignments).
        public var isInconsistent: Bool { flags & BERTH_BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT != 0 }
    }

    /// One qgroup's info and limit items. Limits are nil where none is set.
    public struct Qgroup: Sendable, Hashable {
        /// The packed `level/id` (see `qgroupID(level:_:)`).
        public var id: UInt64
        /// Bytes referenced by the qgroup's subvolumes (shared or not).
        public var referenced: UInt64
        /// Bytes referenced only by the qgroup's subvolumes.
        public var exclusive: UInt64
        /// max_rfer where BTRFS_QGROUP_LIMIT_MAX_RFER is set.
        public var maxReferenced: UInt64?
        /// max_excl where BTRFS_QGROUP_LIMIT_MAX_EXCL is set.
        public var maxExclusive: UInt64?
    }

    /// BTRFS_IOC_SYNC: flushes delayed allocation and commits the current transaction, so that
    /// qgroup numbers and the deleted-subvolume queue reflect what was written.
    public static func sync(_ fd: FileDescriptor) throws(SystemCallError) {
        try fd.ioctl(BERTH_BTRFS_IOC_SYNC, "BTRFS_IOC_SYNC", value: 0)
    }

    /// BTRFS_IOC_FS_INFO: the filesystem's UUID, the same for every subvolume of it.
    public static func filesystemUUID(_ fd: FileDescriptor) throws(SystemCallError) -> [UInt8] {
        var args = btrfs_ioctl_fs_info_args()
        try fd.ioctl(BERTH_BTRFS_IOC_FS_INFO, "BTRFS_IOC_FS_INFO", &args)
        return withUnsafeBytes(of: args.fsid) { Array($0) }
    }

    /// The quota status via BTRFS_IOC_TREE_SEARCH, or nil when quotas are off (no quota tree).
    /// Reading never switches quotas on. Needs CAP_SYS_ADMIN (EPERM otherwise).
    public static func quotaStatus(_ fd: FileDescriptor) throws(SystemCallError) -> QuotaStatus? {
        let item: [UInt8]?
        do {
            item = try searchQuotaItem(fd, type: BERTH_BTRFS_QGROUP_STATUS_KEY, offset: 0)
        } catch where error.errno == .ENOENT {
            return nil  // no quota tree: quotas were never enabled, or disabled since
        }
        guard let item, item.count >= 24 else { return nil }
        return QuotaStatus(flags: littleEndian(item, at: 16))
    }

    /// The info and limit items of qgroup `id` via BTRFS_IOC_TREE_SEARCH on the quota tree,
    /// or nil when quotas are off or there is no such qgroup.
    public static func qgroup(_ fd: FileDescriptor, id: UInt64) throws(SystemCallError) -> Qgroup? {
        let info: [UInt8]?
        do {
            info = try searchQuotaItem(fd, type: BERTH_BTRFS_QGROUP_INFO_KEY, offset: id)
        } catch where error.errno == .ENOENT {
            return nil
        }
        // btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, excl_cmpr (le64 each).
        guard let info, info.count >= 40 else { return nil }
        var result = Qgroup(id: id, referenced: littleEndian(info, at: 8), exclusive: littleEndian(info, at: 24))
        // btrfs_qgroup_limit_item: flags, max_rfer, max_excl, rsv_rfer, rsv_excl (le64 each).
        if let limit = try searchQuotaItem(fd, type: BERTH_BTRFS_QGROUP_LIMIT_KEY, offset: id), limit.count >= 24 {
            let flags = littleEndian(limit, at: 0)
            if flags & BERTH_BTRFS_QGROUP_LIMIT_MAX_RFER != 0 { result.maxReferenced = littleEndian(limit, at: 8) }
            if flags & BERTH_BTRFS_QGROUP_LIMIT_MAX_EXCL != 0 { result.maxExclusive = littleEndian(limit, at: 16) }
        }
        return result
    }

    /// The parent qgroups of qgroup `id` (relation items `(id, RELATION, parent)` with parent > id).
    public static func parentQgroups(_ fd: FileDescriptor, of id: UInt64) throws(SystemCallError) -> [UInt64] {
        var parents: [UInt64] = []
        do {
            try search(fd, tree: BERTH_BTRFS_QUOTA_TREE_OBJECTID, objectID: id, type: BERTH_BTRFS_QGROUP_RELATION_KEY,
                       offsets: (id + 1)...UInt64.max) { offset, _ in parents.append(offset) }
        } catch where error.errno == .ENOENT {
            return []
        }
        return parents
    }

    /// BTRFS_IOC_QUOTA_CTL with BTRFS_QUOTA_CTL_ENABLE: full qgroup accounting (not simple
    /// quotas, which would not count data written before). The kernel starts a rescan.
    public static func enableQuota(_ fd: FileDescriptor) throws(SystemCallError) {
        var args = btrfs_ioctl_quota_ctl_args(cmd: BERTH_BTRFS_QUOTA_CTL_ENABLE, status: 0)
        try fd.ioctl(BERTH_BTRFS_IOC_QUOTA_CTL, "BTRFS_IOC_QUOTA_CTL", &args)
    }

    /// BTRFS_IOC_QUOTA_RESCAN: starts recounting every qgroup. EINPROGRESS if one is running.
    public static func startRescan(_ fd: FileDescriptor) throws(SystemCallError) {
        var args = btrfs_ioctl_quota_rescan_args()
        try fd.ioctl(BERTH_BTRFS_IOC_QUOTA_RESCAN, "BTRFS_IOC_QUOTA_RESCAN", &args)
    }

    /// BTRFS_IOC_QUOTA_RESCAN_WAIT: blocks until a running rescan is done (at once if none is).
    public static func waitForRescan(_ fd: FileDescriptor) throws(SystemCallError) {
        try fd.ioctl(BERTH_BTRFS_IOC_QUOTA_RESCAN_WAIT, "BTRFS_IOC_QUOTA_RESCAN_WAIT", value: 0)
    }

    /// BTRFS_IOC_QGROUP_LIMIT: sets max_rfer of qgroup `id`; `UInt64.max` removes the limit.
    public static func setReferencedLimit(_ fd: FileDescriptor, qgroup id: UInt64, bytes: UInt64) throws(SystemCallError) {
        var args = btrfs_ioctl_qgroup_limit_args()
        args.qgroupid = id
        args.lim.flags = BERTH_BTRFS_QGROUP_LIMIT_MAX_RFER
        // The kernel reads (u64)-1 as "clear this limit".
        args.lim.max_rfer = bytes
        try fd.ioctl(BERTH_BTRFS_IOC_QGROUP_LIMIT, "BTRFS_IOC_QGROUP_LIMIT", &args)
    }

    /// BTRFS_IOC_QGROUP_LIMIT with both limits: nil for either clears it.
    public static func setLimits(_ fd: FileDescriptor, qgroup id: UInt64, maxReferenced: UInt64?, maxExclusive: UInt64?) throws(SystemCallError) {
        var args = btrfs_ioctl_qgroup_limit_args()
        args.qgroupid = id
        args.lim.flags = BERTH_BTRFS_QGROUP_LIMIT_MAX_RFER | BERTH_BTRFS_QGROUP_LIMIT_MAX_EXCL
        args.lim.max_rfer = maxReferenced ?? UInt64.max
        args.lim.max_excl = maxExclusive ?? UInt64.max
        try fd.ioctl(BERTH_BTRFS_IOC_QGROUP_LIMIT, "BTRFS_IOC_QGROUP_LIMIT", &args)
    }

    /// BTRFS_IOC_QGROUP_CREATE with create=1.
    public static func createQgroup(_ fd: FileDescriptor, id: UInt64) throws(SystemCallError) {
        var args = btrfs_ioctl_qgroup_create_args(create: 1, qgroupid: id)
        try fd.ioctl(BERTH_BTRFS_IOC_QGROUP_CREATE, "BTRFS_IOC_QGROUP_CREATE", &args)
    }

    /// BTRFS_IOC_QGROUP_CREATE with create=0: destroys qgroup `id`. The kernel refuses (EBUSY)
    /// while a level-0 qgroup's subvolume still exists or still holds space.
    public static func destroyQgroup(_ fd: FileDescriptor, id: UInt64) throws(SystemCallError) {
        var args = btrfs_ioctl_qgroup_create_args(create: 0, qgroupid: id)
        try fd.ioctl(BERTH_BTRFS_IOC_QGROUP_CREATE, "BTRFS_IOC_QGROUP_CREATE", &args)
    }

    /// BTRFS_IOC_QGROUP_ASSIGN: makes `child` a member of `parent` (or removes it).
    /// - Returns: true when the kernel says the numbers now need a rescan.
    @discardableResult
    public static func assignQgroup(_ fd: FileDescriptor, child: UInt64, parent: UInt64, assign: Bool = true) throws(SystemCallError) -> Bool {
        var args = btrfs_ioctl_qgroup_assign_args(assign: assign ? 1 : 0, src: child, dst: parent)
        return try fd.ioctl(BERTH_BTRFS_IOC_QGROUP_ASSIGN, "BTRFS_IOC_QGROUP_ASSIGN", &args) > 0
    }

    /// BTRFS_IOC_SUBVOL_SYNC_WAIT (Linux 6.13) for one deleted subvolume: blocks until the
    /// cleaner has dropped it. ENOTTY on older kernels.
    public static func waitForSubvolumeCleanup(_ fd: FileDescriptor, id: UInt64) throws(SystemCallError) {
        var args = berth_btrfs_ioctl_subvol_wait(subvolid: id, mode: BERTH_BTRFS_SUBVOL_SYNC_WAIT_FOR_ONE, count: 0)
        try fd.ioctl(BERTH_BTRFS_IOC_SUBVOL_SYNC_WAIT, "BTRFS_IOC_SUBVOL_SYNC_WAIT", &args)
    }

    /// Whether subvolume `id` still has a root item (deleted subvolumes keep one until cleaned),
    /// via BTRFS_IOC_TREE_SEARCH on the root tree.
    public static func rootItemExists(_ fd: FileDescriptor, id: UInt64) throws(SystemCallError) -> Bool {
        var found = false
        // Tree 1 is the root tree; BTRFS_ROOT_ITEM_KEY is 132.
        try search(fd, tree: 1, objectID: id, type: 132, offsets: 0...UInt64.max) { _, _ in found = true }
        return found
    }

    /// The one item `(0, type, offset)` of the quota tree, or nil if it is missing.
    private static func searchQuotaItem(_ fd: FileDescriptor, type: UInt32, offset: UInt64) throws(SystemCallError) -> [UInt8]? {
        var item: [UInt8]?
        try search(fd, tree: BERTH_BTRFS_QUOTA_TREE_OBJECTID, objectID: 0, type: type, offsets: offset...offset) { _, bytes in
            item = bytes
        }
        return item
    }

    /// BTRFS_IOC_TREE_SEARCH over the items `(objectID, type, offsets)` of `tree`, calling
    /// `body(offset, item bytes)` for each, continuing until the range is exhausted.
    public static func search(_ fd: FileDescriptor, tree: UInt64, objectID: UInt64, type: UInt32,
                              offsets: ClosedRange<UInt64>, _ body: (UInt64, [UInt8]) -> Void) throws(SystemCallError) {
        var args = btrfs_ioctl_search_args()
        args.key.tree_id = tree
        args.key.min_objectid = objectID
        args.key.max_objectid = objectID
        args.key.min_type = type
        args.key.max_type = type
        args.key.min_offset = offsets.lowerBound
        args.key.max_offset = offsets.upperBound
        args.key.min_transid = 0
        args.key.max_transid = UInt64.max
        let headerSize = MemoryLayout<btrfs_ioctl_search_header>.size
        while true {
            args.key.nr_items = 4096
            try fd.ioctl(BERTH_BTRFS_IOC_TREE_SEARCH, "BTRFS_IOC_TREE_SEARCH", &args)
            let count = Int(args.key.nr_items)
            if count == 0 { return }
            var lastOffset: UInt64 = 0
            withUnsafeBytes(of: &args.buf) { buf in
                var position = 0
                for _ in 0..<count {
                    guard position + headerSize <= buf.count else { break }
                    let header = buf.loadUnaligned(fromByteOffset: position, as: btrfs_ioctl_search_header.self)
                    let start = position + headerSize, end = min(start + Int(header.len), buf.count)
                    // The key range is a range of whole (objectid, type, offset) keys: filter
                    // on each part so neighbouring objectids/types never leak in.
                    if header.objectid == objectID && header.type == type && offsets.contains(header.offset) {
                        body(header.offset, Array(buf[start..<end]))
                    }
                    lastOffset = header.offset
                    position = end
                }
            }
            if lastOffset >= offsets.upperBound { return }
            args.key.min_offset = lastOffset + 1
        }
    }

    private static func littleEndian(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<8 { value |= UInt64(bytes[offset + i]) << (8 * i) }
        return value
    }
}
