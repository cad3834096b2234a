import CBtrfsUtil
import Glibc
import Linux
import PoolAPI
import struct SystemPackage.FilePath

/// Images that are btrfs subvolumes (systemd's type `subvolume`): clones are recursive
/// snapshots, read-only is the subvolume property, limits are the subvolume's level-0 qgroup.
///
/// libbtrfsutil does the subvolume work; quota groups go through raw ioctls (`BtrfsIoctl`),
/// never the `btrfs` command. Quotas are switched on only when a limit is first set, never by
/// reading: with quotas off, usage and limits are `Image.unknown`, as systemd reports them.
public struct BtrfsBackend: ImageBackend {
    /// Makes the backend; it holds no state, every call works on the paths it is given.
    public init() {}

    /// "btrfs", for logs and the registry.
    public var identifier: String { "btrfs" }
    /// `subvolume`, machine1's `Image.Type` of every image this backend claims.
    public var imageType: ImageType { .subvolume }
    /// Snapshots are O(1) and share extents; limits are qgroups; images are trees.
    public var capabilities: BackendCapabilities { [.constantTimeClone, .quota, .reflink, .tree, .enforcedReadOnly] }

    /// Claims a directory (not a symlink) that is a subvolume: inode 256 on btrfs, from the
    /// status the pool took.
    public func claim(_ entry: PoolEntry) -> String? {
        guard let status = entry.status, status.isDirectory, status.inode == BtrfsIoctl.subvolumeRootInode,
              entry.filesystem?.type == FilesystemMagic.btrfs
        else { return nil }
        return entry.fileName
    }

    /// New subvolumes can be made in any folder on btrfs (statfs).
    public func canCreate(in directory: FilePath) -> Bool {
        (try? filesystemType(of: directory.string)) == FilesystemMagic.btrfs
    }

    /// machine1 `Image` properties from the subvolume: ReadOnly is the subvolume property (the
    /// root item's BTRFS_ROOT_SUBVOL_RDONLY), CreationTimestamp its otime and
    /// ModificationTimestamp its ctime (last change of any inode in it), both from
    /// btrfs_util_subvolume_info. Usage and Limit come from the level-0 qgroup
    /// (BTRFS_IOC_TREE_SEARCH on the quota tree) and stay unknown while quotas are off or being
    /// rescanned.
    public func image(named name: String, entry: PoolEntry) throws -> Image {
        let path = entry.path.string
        guard let status = entry.status else { throw PoolError(.noSuchImage, "no image at \(path)") }
        guard status.isDirectory, status.inode == BtrfsIoctl.subvolumeRootInode,
              entry.filesystem?.type == FilesystemMagic.btrfs else {
            throw PoolError(.notSupported, "\(path) is not a btrfs subvolume")
        }
        let fd: FileDescriptor
        do { fd = try FileDescriptor.openDirectory(path, followSymlinks: false) } catch {
            if error.errno == .ENOENT { throw PoolError(.noSuchImage, "no image at \(path)", cause: error) }
            throw PoolError.from(error, "cannot open \(path)")
        }
        defer { fd.close() }
        let info = try wrap("cannot read subvolume \(path)") { () throws(SystemCallError) in
            try BtrfsUtil.info(fd, subject: path)
        }
        // Read-only is the subvolume property; an immutable top directory (as the directory
        // backend uses) or a read-only mount makes it read-only just as much.
        let readOnly = info.flags & Self.rootSubvolumeReadOnly != 0
            || (status.isImmutable ?? ((try? fd.isImmutable()) == true))
            || (entry.filesystem?.isReadOnly ?? Self.isReadOnlyMount(fd))
        var image = Image(
            name: name, path: path, type: .subvolume, readOnly: readOnly,
            creationTimestamp: microseconds(info.otime), modificationTimestamp: microseconds(info.ctime))
        if let qgroup = Self.countedQgroup(fd, id: BtrfsIoctl.qgroupID(level: 0, info.id)) {
            image.usage = qgroup.referenced
            image.usageExclusive = qgroup.exclusive
            image.limit = qgroup.maxReferenced ?? Image.unknown
            image.limitExclusive = qgroup.maxExclusive ?? Image.unknown
        }
        return image
    }

    /// BTRFS_ROOT_SUBVOL_RDONLY, the on-disk root item flag behind BTRFS_IOC_SUBVOL_GETFLAGS's
    /// BTRFS_SUBVOL_RDONLY (libbtrfsutil reports the root item's flags as they are on disk).
    static let rootSubvolumeReadOnly: UInt64 = 1 << 0

    /// A new, empty subvolume (btrfs_util_create_subvolume). Where the folder's subvolume has a
    /// pool qgroup (set by `setPoolLimit`), the new subvolume joins it.
    public func createEmpty(at path: FilePath) throws {
        let (parent, name) = split(path)
        let parentFD = try wrap("cannot open \(parent)") { () throws(SystemCallError) in try FileDescriptor.openDirectory(parent.string) }
        let groups = Self.poolQgroups(containing: parentFD)
        try wrap("cannot create subvolume \(path)") { () throws(SystemCallError) in
            try BtrfsUtil.withInherit(groups, subject: path.string) { inherit throws(SystemCallError) in
                try BtrfsUtil.call("btrfs_util_create_subvolume", path.string) {
                    btrfs_util_create_subvolume_fd(parentFD.rawValue, name, 0, nil, inherit)
                }
            }
        }
    }

    /// The source subvolume and the destination's folder, checked to be one btrfs filesystem.
    private func snapshotEnds(_ source: FilePath, _ destination: FilePath) throws
        -> (source: FileDescriptor, parent: FileDescriptor, name: String) {
        if (try? fileStatus(destination.string, followSymlinks: false)) != nil {
            throw PoolError(.imageExists, "\(destination) exists already")
        }
        let sourceFD = try openSubvolume(source)
        let (parent, name) = split(destination)
        let parentFD = try wrap("cannot open \(parent)") { () throws(SystemCallError) in try FileDescriptor.openDirectory(parent.string) }
        // Across filesystems the kernel answers EXDEV, or ENOTTY where the target is not btrfs:
        // say so before trying, with the errno systemd would report.
        let sameFilesystem = (try? parentFD.filesystemType()) == FilesystemMagic.btrfs
            && (try? sourceFD.filesystemType()) == FilesystemMagic.btrfs
            && Self.fsid(parentFD) == Self.fsid(sourceFD) && Self.fsid(parentFD) != nil
        guard sameFilesystem else {
            throw PoolError(.notSupported, "cannot snapshot \(source) to \(destination): not on the same btrfs filesystem",
                            cause: SystemCallError("btrfs_util_create_snapshot", .EXDEV, subject: destination.string))
        }
        return (sourceFD, parentFD, name)
    }

    /// A subvolume with no subvolume nested in it is one snapshot ioctl: atomic.
    public func clonesInOneStep(from source: FilePath) -> Bool {
        guard let fd = try? openSubvolume(source) else { return false }
        return (try? BtrfsUtil.nestedSubvolumes(fd, subject: source.string).isEmpty) ?? false
    }

    /// One snapshot ioctl, read-only from its creation when asked, joining the pool's qgroup.
    public func cloneInOneStep(from source: FilePath, to destination: FilePath, readOnly: Bool) throws {
        let (sourceFD, parentFD, name) = try snapshotEnds(source, destination)
        let groups = Self.poolQgroups(containing: parentFD)
        let flags = readOnly ? Int32(BTRFS_UTIL_CREATE_SNAPSHOT_READ_ONLY) : 0
        do {
            try BtrfsUtil.withInherit(groups, subject: destination.string) { inherit throws(SystemCallError) in
                try BtrfsUtil.call("btrfs_util_create_snapshot", "\(source) → \(destination)") {
                    btrfs_util_create_snapshot_fd2(sourceFD.rawValue, parentFD.rawValue, name, flags, nil, inherit)
                }
            }
        } catch {
            throw PoolError.from(error, "cannot snapshot \(source) to \(destination)")  // EEXIST: .imageExists
        }
    }

    /// A writable snapshot, recursive over nested subvolumes (btrfs_util_create_snapshot with
    /// BTRFS_UTIL_CREATE_SNAPSHOT_RECURSIVE): constant time and space whatever the size.
    /// A source on another filesystem fails with `.notSupported` (EXDEV); a partial snapshot
    /// is deleted again, so nothing is left at `destination` on failure.
    public func clone(from source: FilePath, to destination: FilePath) throws {
        let (sourceFD, parentFD, name) = try snapshotEnds(source, destination)
        let groups = Self.poolQgroups(containing: parentFD)
        do {
            if groups.isEmpty {
                try BtrfsUtil.call("btrfs_util_create_snapshot", "\(source) → \(destination)") {
                    btrfs_util_create_snapshot_fd2(sourceFD.rawValue, parentFD.rawValue, name,
                                                   Int32(BTRFS_UTIL_CREATE_SNAPSHOT_RECURSIVE), nil, nil)
                }
            } else {
                try snapshotJoiningPool(sourceFD, source: source, into: parentFD, name: name,
                                        destination: destination, groups: groups)
            }
        } catch {
            // The recursive part runs in userspace after the top snapshot: undo what was made
            // (but never an entry that appeared at `destination` meanwhile: EEXIST).
            if error.errno != .EEXIST, let status = try? fileStatus(destination.string, followSymlinks: false),
               status.inode == BtrfsIoctl.subvolumeRootInode {
                try? remove(at: destination)
            }
            if error.errno == .EXDEV {
                throw PoolError(.notSupported, "cannot snapshot \(source) to another filesystem", cause: error)
            }
            throw PoolError.from(error, "cannot snapshot \(source) to \(destination)")
        }
    }

    /// The recursive snapshot done here rather than by libbtrfsutil, whose recursion gives the
    /// pool qgroup only to the top: every nested snapshot joins `groups` at creation too, so a
    /// pool limit covers them without a rescan. Nested subvolumes come parents first; each
    /// leaves an empty directory in its parent's snapshot, replaced by its own snapshot.
    private func snapshotJoiningPool(_ sourceFD: FileDescriptor, source: FilePath, into parentFD: FileDescriptor,
                                     name: String, destination: FilePath, groups: [UInt64]) throws(SystemCallError) {
        let nested = try BtrfsUtil.nestedSubvolumes(sourceFD, subject: source.string)
        try BtrfsUtil.withInherit(groups, subject: destination.string) { inherit throws(SystemCallError) in
            try BtrfsUtil.call("btrfs_util_create_snapshot", "\(source) → \(destination)") {
                btrfs_util_create_snapshot_fd2(sourceFD.rawValue, parentFD.rawValue, name, 0, nil, inherit)
            }
            for child in nested {
                let childSource = try FileDescriptor.openDirectory(child.path, relativeTo: sourceFD, followSymlinks: false)
                let (directory, leaf) = split(destination.appending(child.path))
                let directoryFD = try FileDescriptor.openDirectory(directory.string, followSymlinks: false)
                try sys("unlinkat(AT_REMOVEDIR)", directory.appending(leaf).string) { unlinkat(directoryFD.rawValue, leaf, AT_REMOVEDIR) }
                try BtrfsUtil.call("btrfs_util_create_snapshot", source.appending(child.path).string) {
                    btrfs_util_create_snapshot_fd2(childSource.rawValue, directoryFD.rawValue, leaf, 0, nil, inherit)
                }
            }
        }
    }

    /// renameat2(RENAME_NOREPLACE); the kernel allows it for read-only subvolumes too, as only
    /// the parent folder changes.
    public func rename(from source: FilePath, to destination: FilePath) throws {
        do {
            try renameNoReplace(source.string, destination.string)
        } catch {
            if error.errno == .ENOENT { throw PoolError(.noSuchImage, "no image at \(source)", cause: error) }
            throw PoolError.from(error, "cannot rename \(source) to \(destination)")
        }
    }

    /// Deletes the subvolume and every subvolume below it (btrfs_util_delete_subvolume with
    /// BTRFS_UTIL_DELETE_SUBVOLUME_RECURSIVE), lifting read-only properties and immutable flags
    /// first, which would make the kernel refuse (EROFS, EPERM). Then their level-0 qgroups are
    /// destroyed (BTRFS_IOC_QGROUP_CREATE with create=0) once the cleaner has dropped them:
    /// this waits for the space to be freed (BTRFS_IOC_SUBVOL_SYNC_WAIT).
    public func remove(at path: FilePath) throws {
        let fd = try openSubvolume(path)
        let (parent, _) = split(path)
        let parentFD = try wrap("cannot open \(parent)") { () throws(SystemCallError) in try FileDescriptor.openDirectory(parent.string) }
        let topID = try wrap("cannot read subvolume \(path)") { () throws(SystemCallError) in
            try BtrfsUtil.subvolumeID(fd, subject: path.string)
        }
        let nested = try wrap("cannot list subvolumes below \(path)") { () throws(SystemCallError) in
            try BtrfsUtil.nestedSubvolumes(fd, subject: path.string)
        }
        try makeDeletable(fd, subject: path.string)
        for child in nested {
            let childPath = path.appending(child.path).string
            let childFD = try wrap("cannot open \(childPath)") { () throws(SystemCallError) in
                try FileDescriptor.openDirectory(child.path, relativeTo: fd, followSymlinks: false)
            }
            try makeDeletable(childFD, subject: childPath)
        }
        let quotaOn = (try? BtrfsIoctl.quotaStatus(fd))??.isOn ?? false
        fd.close()
        let delete = { () throws(SystemCallError) in
            try BtrfsUtil.call("btrfs_util_delete_subvolume", path.string) {
                btrfs_util_delete_subvolume(path.string, Int32(BTRFS_UTIL_DELETE_SUBVOLUME_RECURSIVE))
            }
        }
        do {
            try delete()
        } catch where error.errno == .EDQUOT && quotaOn {
            // Unlinking a subvolume needs a little metadata space, charged to the folder's
            // subvolume: in a pool at its limit, removing an image (the way to make room)
            // would fail. Lift the limits in the way for the deletion, then put them back.
            let parentID = try wrap("cannot read subvolume of \(parent)") { () throws(SystemCallError) in
                try BtrfsUtil.subvolumeID(parentFD, subject: parent.string)
            }
            try Self.withoutLimits(on: [parentID, topID] + nested.map(\.id), fd: Self.quotaControl(from: parentFD)) { () throws(PoolError) in
                try wrap("cannot delete subvolume \(path)", delete)
            }
        } catch {
            throw PoolError.from(error, "cannot delete subvolume \(path)")
        }
        if quotaOn {
            Self.destroyQgroups(of: [topID] + nested.map(\.id), on: parentFD)
        }
    }

    /// The subvolume read-only property (btrfs_util_set_subvolume_read_only): enforced by the
    /// kernel for root too (EROFS).
    public func setReadOnly(_ readOnly: Bool, at path: FilePath) throws {
        let fd = try openSubvolume(path)
        try wrap("cannot set the read-only property of \(path)") { () throws(SystemCallError) in
            try BtrfsUtil.setReadOnly(fd, readOnly, subject: path.string)
            // Writable again means writable: an immutable top (from a directory image's copy)
            // would still refuse new entries.
            if !readOnly, try fd.isImmutable() { try fd.setImmutable(false) }
        }
    }

    /// machine1 `SetImageLimit`: max_rfer of the subvolume's level-0 qgroup
    /// (BTRFS_IOC_QGROUP_LIMIT), switching quotas on first if they are off. `UInt64.max`
    /// removes the limit, as in systemd; a limit below what the image uses now is refused
    /// (`invalidArgument`): it would fail every write at once, which no caller means.
    public func setLimit(_ bytes: UInt64, at path: FilePath) throws {
        let fd = try openSubvolume(path)
        try Self.ensureQuota(fd, subject: path.string)
        let id = try wrap("cannot read subvolume \(path)") { () throws(SystemCallError) in try BtrfsUtil.subvolumeID(fd, subject: path.string) }
        let group = BtrfsIoctl.qgroupID(level: 0, id)
        try Self.refuseLimitBelowUsage(bytes, of: group, fd: fd, subject: "image \(path)")
        try wrap("cannot set the limit of \(path)") { () throws(SystemCallError) in
            try BtrfsIoctl.setReferencedLimit(Self.quotaControl(from: fd), qgroup: group, bytes: bytes)
        }
    }

    /// The subvolume itself: it is a plain directory tree, readable in place.
    public func openForInspection(at path: FilePath) throws -> any InspectionRoot {
        _ = try openSubvolume(path)
        return SubvolumeInspectionRoot(root: path)
    }

    /// machine1 `PoolUsage`/`PoolLimit` where the pool folder is a subvolume: its pool qgroup
    /// (level 1, made by `setPoolLimit`, holding the images) or else its level-0 qgroup.
    /// Unknown while quotas are off; nil where the folder is no subvolume.
    public func poolUsage(of directory: FilePath) throws -> (usage: UInt64, limit: UInt64)? {
        guard let fd = try? FileDescriptor.openDirectory(directory.string),
              (try? fd.filesystemType()) == FilesystemMagic.btrfs,
              (try? fd.stat())?.inode == BtrfsIoctl.subvolumeRootInode,
              let id = try? BtrfsUtil.subvolumeID(fd, subject: directory.string)
        else { return nil }
        let group = Self.countedQgroup(fd, id: BtrfsIoctl.qgroupID(level: 1, id))
            ?? Self.countedQgroup(fd, id: BtrfsIoctl.qgroupID(level: 0, id))
        guard let group else { return (Image.unknown, Image.unknown) }
        return (group.referenced, group.maxReferenced ?? Image.unknown)
    }

    /// machine1 `SetPoolLimit`: limits the pool folder's subvolume and every subvolume below
    /// it together. Like systemd, this is a level-1 qgroup `1/<pool id>` holding the level-0
    /// qgroups of the pool and of the images in it (BTRFS_IOC_QGROUP_CREATE, _ASSIGN), limited
    /// with BTRFS_IOC_QGROUP_LIMIT; images made later join it at creation. Quotas are switched
    /// on first if they are off.
    /// `UInt64.max` removes the limit, as in systemd; a limit below what the pool uses now is
    /// refused (`invalidArgument`), as it would fail every write in the pool at once (systemd
    /// 252 accepts it, 0 included). Raising or removing a limit works however full the pool
    /// is: the qgroup ioctls go through a subvolume outside it (`quotaControl`).
    public func setPoolLimit(_ bytes: UInt64, of directory: FilePath) throws {
        let fd = try openSubvolume(directory)
        try Self.ensureQuota(fd, subject: directory.string)
        let control = Self.quotaControl(from: fd)
        let poolGroup = try wrap("cannot set the limit of pool \(directory)") { () throws(SystemCallError) in
            let id = try BtrfsUtil.subvolumeID(fd, subject: directory.string)
            let poolGroup = BtrfsIoctl.qgroupID(level: 1, id)
            if try BtrfsIoctl.qgroup(fd, id: poolGroup) == nil {
                try BtrfsIoctl.createQgroup(control, id: poolGroup)
            }
            var needRescan = false
            let members = [id] + (try BtrfsUtil.nestedSubvolumes(fd, subject: directory.string)).map(\.id)
            for member in members {
                let child = BtrfsIoctl.qgroupID(level: 0, member)
                if try BtrfsIoctl.parentQgroups(fd, of: child).contains(poolGroup) { continue }
                do throws(SystemCallError) {
                    if try BtrfsIoctl.assignQgroup(control, child: child, parent: poolGroup) { needRescan = true }
                } catch where error.errno == .EEXIST {
                    continue
                }
            }
            let inconsistent = try BtrfsIoctl.quotaStatus(fd)?.isInconsistent == true
            if needRescan || inconsistent {
                try Self.rescan(control)
            }
            return poolGroup
        }
        try Self.refuseLimitBelowUsage(bytes, of: poolGroup, fd: fd, subject: "the pool \(directory)")
        try wrap("cannot set the limit of pool \(directory)") { () throws(SystemCallError) in
            try BtrfsIoctl.setReferencedLimit(control, qgroup: poolGroup, bytes: bytes)
        }
    }

    // MARK: - Helpers

    /// Opens `path` as a directory that must be a btrfs subvolume (not a symlink to one).
    private func openSubvolume(_ path: FilePath) throws -> FileDescriptor {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.openDirectory(path.string, followSymlinks: false)
        } catch {
            if error.errno == .ENOENT { throw PoolError(.noSuchImage, "no image at \(path)", cause: error) }
            throw PoolError.from(error, "cannot open \(path)")
        }
        let isBtrfs = (try? fd.filesystemType()) == FilesystemMagic.btrfs
        guard isBtrfs, (try? fd.stat())?.inode == BtrfsIoctl.subvolumeRootInode else {
            throw PoolError(.notSupported, "\(path) is not a btrfs subvolume")
        }
        return fd
    }

    /// Lifts what makes the kernel refuse to delete a subvolume: its read-only property
    /// (EROFS for it and for unlinking subvolumes inside it) and an immutable root (EPERM).
    private func makeDeletable(_ fd: FileDescriptor, subject: String) throws {
        try wrap("cannot make \(subject) writable for removal") { () throws(SystemCallError) in
            if try BtrfsUtil.isReadOnly(fd, subject: subject) {
                try BtrfsUtil.setReadOnly(fd, false, subject: subject)
            }
            if try fd.isImmutable() { try fd.setImmutable(false) }
        }
    }

    /// The folder of `path` ("." for a bare name) and its last component.
    private func split(_ path: FilePath) -> (parent: FilePath, name: String) {
        let parent = path.removingLastComponent()
        return (parent.isEmpty ? "." : parent, path.lastComponent?.string ?? "")
    }

    private func microseconds(_ t: timespec) -> UInt64 {
        UInt64(max(t.tv_sec, 0)) * 1_000_000 + UInt64(max(t.tv_nsec, 0) / 1000)
    }

    private func wrap<T>(_ message: @autoclosure () -> String, _ body: () throws(SystemCallError) -> T) throws(PoolError) -> T {
        do {
            return try body()
        } catch {
            throw PoolError.from(error, message())
        }
    }

    /// fstatvfs(3) ST_RDONLY: the filesystem is mounted read-only.
    private static func isReadOnlyMount(_ fd: FileDescriptor) -> Bool {
        var s = statvfs()
        return fstatvfs(fd.rawValue, &s) == 0 && s.f_flag & UInt(ST_RDONLY) != 0
    }

    /// The btrfs filesystem UUID (BTRFS_IOC_FS_INFO), which tells two filesystems apart.
    private static func fsid(_ fd: FileDescriptor) -> [UInt8]? {
        try? BtrfsIoctl.filesystemUUID(fd)
    }

    /// Qgroup `id` when its numbers can be trusted: quotas on, no rescan running, not marked
    /// inconsistent. Reading needs CAP_SYS_ADMIN; without it the numbers are unknown too.
    static func countedQgroup(_ fd: FileDescriptor, id: UInt64) -> BtrfsIoctl.Qgroup? {
        guard let status = try? BtrfsIoctl.quotaStatus(fd), status.isOn, !status.isRescanning, !status.isInconsistent
        else { return nil }
        return try? BtrfsIoctl.qgroup(fd, id: id)
    }

    /// The pool qgroups a new subvolume in the folder of `fd` joins: `1/<id>` of the subvolume
    /// holding that folder, where `setPoolLimit` made one.
    static func poolQgroups(containing fd: FileDescriptor) -> [UInt64] {
        guard let status = try? BtrfsIoctl.quotaStatus(fd), status.isOn,
              let id = try? BtrfsUtil.subvolumeID(fd, subject: "pool"),
              (try? BtrfsIoctl.qgroup(fd, id: BtrfsIoctl.qgroupID(level: 1, id))) != nil
        else { return [] }
        return [BtrfsIoctl.qgroupID(level: 1, id)]
    }

    /// Switches full qgroup accounting on if it is off (BTRFS_IOC_QUOTA_CTL), then waits for
    /// the rescan so that data written before counts (BTRFS_IOC_QUOTA_RESCAN_WAIT). Dirty data
    /// is flushed first (BTRFS_IOC_SYNC): the rescan counts only what is on disk.
    static func ensureQuota(_ fd: FileDescriptor, subject: String) throws {
        do {
            let status = try BtrfsIoctl.quotaStatus(fd)
            if status?.isOn != true {
                try BtrfsIoctl.sync(fd)
                try BtrfsIoctl.enableQuota(fd)
                try BtrfsIoctl.waitForRescan(fd)
            } else if status?.isInconsistent == true {
                try rescan(fd)
            }
            // The wait returns at once if the rescan has not quite started, and the status
            // item shows it only once committed: check again, a bounded number of times.
            for _ in 0..<10 {
                try BtrfsIoctl.sync(fd)
                guard try BtrfsIoctl.quotaStatus(fd)?.isRescanning == true else { break }
                try BtrfsIoctl.waitForRescan(fd)
            }
        } catch {
            throw PoolError.from(error, "cannot switch on quotas for \(subject)")
        }
    }

    /// Throws `invalidArgument` when `bytes` (not `UInt64.max`, which removes the limit) is below
    /// what qgroup `group` references now. Data written but not yet committed counts too: the
    /// filesystem is synced first (BTRFS_IOC_SYNC). Where the usage is not known (a rescan
    /// running), the limit is let through: refusing needs a number to show.
    static func refuseLimitBelowUsage(_ bytes: UInt64, of group: UInt64, fd: FileDescriptor, subject: String) throws {
        guard bytes != UInt64.max else { return }
        _ = try? BtrfsIoctl.sync(fd)
        guard let usage = countedQgroup(fd, id: group)?.referenced, bytes < usage else { return }
        throw PoolError(.invalidArgument, "the limit \(bytes) is below what \(subject) uses now (\(usage) bytes): "
                            + "it would refuse every write; free space first or choose a higher limit")
    }

    /// A descriptor to issue qgroup ioctls through (BTRFS_IOC_QGROUP_LIMIT, _CREATE, _ASSIGN,
    /// BTRFS_IOC_QUOTA_RESCAN). They act on the filesystem's qgroups by id whatever file they
    /// are called on, but start a transaction in that file's subvolume, reserving metadata
    /// charged to its qgroups: on a subvolume in a qgroup at or over its limit they fail
    /// EDQUOT, even the call that lifts that limit. So this is the nearest directory up from
    /// `fd` (through `..`, on the same btrfs filesystem) whose subvolume's qgroup and its
    /// parents have no limit — the pool folder's parent for a limited pool — else `fd` itself.
    static func quotaControl(from fd: FileDescriptor) -> FileDescriptor {
        guard let filesystem = fsid(fd) else { return fd }
        var current = fd
        for _ in 0..<64 {
            if isUnlimited(current) { return current }
            guard let here = try? current.stat(),
                  let parent = try? FileDescriptor.openDirectory("..", relativeTo: current, followSymlinks: false),
                  let up = try? parent.stat(), [up.device, up.inode] != [here.device, here.inode],
                  fsid(parent) == filesystem
            else { break }
            current = parent
        }
        return fd
    }

    /// No limit on the level-0 qgroup of the subvolume of `fd`, nor on a qgroup it belongs to.
    private static func isUnlimited(_ fd: FileDescriptor) -> Bool {
        guard let id = try? BtrfsUtil.subvolumeID(fd, subject: "quota control") else { return false }
        let group = BtrfsIoctl.qgroupID(level: 0, id)
        for g in [group] + ((try? BtrfsIoctl.parentQgroups(fd, of: group)) ?? []) {
            guard let q = try? BtrfsIoctl.qgroup(fd, id: g) else { continue }
            if q.maxReferenced != nil || q.maxExclusive != nil { return false }
        }
        return true
    }

    /// Recounts all qgroups (BTRFS_IOC_QUOTA_RESCAN) and waits for it; joins a running one.
    static func rescan(_ fd: FileDescriptor) throws(SystemCallError) {
        try BtrfsIoctl.sync(fd)
        do {
            try BtrfsIoctl.startRescan(fd)
        } catch where error.errno == Errno(EINPROGRESS) {
            // One is running already: waiting for it is as good.
        }
        try BtrfsIoctl.waitForRescan(fd)
    }

    /// Runs `body` with the limits of the level-0 qgroups of `subvolumes` and of their parent
    /// qgroups cleared (BTRFS_IOC_QGROUP_LIMIT), restoring those that still exist afterwards.
    static func withoutLimits(on subvolumes: [UInt64], fd: FileDescriptor, _ body: () throws(PoolError) -> Void) throws(PoolError) {
        var groups: [UInt64] = []
        for id in subvolumes {
            let group = BtrfsIoctl.qgroupID(level: 0, id)
            groups.append(group)
            groups += (try? BtrfsIoctl.parentQgroups(fd, of: group)) ?? []
        }
        var lifted: [BtrfsIoctl.Qgroup] = []
        for group in Set(groups) {
            guard let qgroup = try? BtrfsIoctl.qgroup(fd, id: group),
                  qgroup.maxReferenced != nil || qgroup.maxExclusive != nil else { continue }
            do {
                try BtrfsIoctl.setLimits(fd, qgroup: group, maxReferenced: nil, maxExclusive: nil)
                lifted.append(qgroup)
            } catch {
                throw PoolError.from(error, "cannot lift the limit of qgroup \(group >> 48)/\(group & 0xffff_ffff_ffff)")
            }
        }
        defer {
            for qgroup in lifted where (try? BtrfsIoctl.qgroup(fd, id: qgroup.id)) != nil {
                _ = try? BtrfsIoctl.setLimits(fd, qgroup: qgroup.id, maxReferenced: qgroup.maxReferenced,
                                              maxExclusive: qgroup.maxExclusive)
            }
        }
        try body()
    }

    /// Gives the space of deleted subvolumes back to their qgroups and destroys their level-0
    /// qgroups. The cleaner drops a deleted subvolume in the background, and the freed extents
    /// are taken off its qgroups (and the pool qgroup above them) only at the next commit; the
    /// kernel also refuses to destroy the qgroup (EBUSY) until then. So: commit
    /// (BTRFS_IOC_SYNC), wait for each to be dropped (BTRFS_IOC_SUBVOL_SYNC_WAIT, else polling
    /// the root tree on kernels before 6.13), commit again so the accounting runs while the
    /// qgroups still exist, then destroy them (BTRFS_IOC_QGROUP_CREATE create=0; ENOENT where
    /// the kernel removed one itself, as 6.x does), with their subtree qgroups `1/<id>`.
    /// Best effort: the image is gone regardless.
    static func destroyQgroups(of ids: [UInt64], on fd: FileDescriptor) {
        _ = try? BtrfsIoctl.sync(fd)
        for id in ids { waitUntilDropped(id, on: fd) }
        _ = try? BtrfsIoctl.sync(fd)
        for id in ids {
            _ = try? BtrfsIoctl.destroyQgroup(fd, id: BtrfsIoctl.qgroupID(level: 0, id))
            // A subtree qgroup `1/<id>` (systemd's scheme, or our pool qgroup when the pool
            // folder itself is removed) has lost its members: it goes too.
            if (try? BtrfsIoctl.qgroup(fd, id: BtrfsIoctl.qgroupID(level: 1, id))) != nil {
                _ = try? BtrfsIoctl.destroyQgroup(fd, id: BtrfsIoctl.qgroupID(level: 1, id))
            }
        }
        _ = try? BtrfsIoctl.sync(fd)
    }

    private static func waitUntilDropped(_ id: UInt64, on fd: FileDescriptor) {
        do {
            try BtrfsIoctl.waitForSubvolumeCleanup(fd, id: id)
            return
        } catch where error.errno == .ENOENT {
            return  // already dropped
        } catch {
            // ENOTTY/EINVAL: a kernel before 6.13; poll below.
        }
        // Bounded: a very large subvolume may take longer, and then its qgroup stays behind.
        for _ in 0..<600 {
            guard (try? BtrfsIoctl.rootItemExists(fd, id: id)) == true else { return }
            _ = try? BtrfsIoctl.sync(fd)
            usleep(100_000)
        }
    }
}

/// A subvolume opened for inspection: the subvolume's own tree, read in place.
final class SubvolumeInspectionRoot: InspectionRoot {
    let root: FilePath
    init(root: FilePath) { self.root = root }
    func close() {}
}
