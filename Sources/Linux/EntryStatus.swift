import CLinux
import Glibc

/// What one statx(2) says about a file: everything listing an image pool needs (type, inode,
/// times, birth time, the immutable attribute, whether it is a mount point), so a pool entry is
/// looked at once, not once per question.
public struct EntryStatus: Sendable, Hashable {
    /// `st_dev`: `makedev(stx_dev_major, stx_dev_minor)`, comparable with `FileStatus.device`.
    public var device: UInt64
    public var inode: UInt64
    public var mode: UInt32
    public var size: UInt64
    /// 512-byte blocks allocated.
    public var blocks: UInt64
    /// Modification time in µs since the epoch.
    public var modificationMicroseconds: UInt64
    /// Birth time in µs since the epoch; 0 where the filesystem does not record it.
    public var birthMicroseconds: UInt64
    /// FS_IMMUTABLE_FL as statx reports it (STATX_ATTR_IMMUTABLE); nil where the filesystem does
    /// not report it (`stx_attributes_mask`), so the caller asks FS_IOC_GETFLAGS instead.
    public var isImmutable: Bool?
    /// STATX_ATTR_MOUNT_ROOT: the file is the root of a mount (a bind-mounted image); nil if unknown.
    public var isMountRoot: Bool?

    public var fileType: UInt32 { mode & UInt32(Glibc.S_IFMT) }
    public var isDirectory: Bool { fileType == UInt32(Glibc.S_IFDIR) }
    public var isRegular: Bool { fileType == UInt32(Glibc.S_IFREG) }
    public var isSymlink: Bool { fileType == UInt32(Glibc.S_IFLNK) }
    /// Bytes allocated on disk (blocks × 512).
    public var allocatedBytes: UInt64 { blocks * 512 }

    init(_ stx: CLinux.statx) {
        device = UInt64(berth_makedev(stx.stx_dev_major, stx.stx_dev_minor))
        inode = stx.stx_ino
        mode = UInt32(stx.stx_mode)
        size = stx.stx_size
        blocks = stx.stx_blocks
        modificationMicroseconds = Self.microseconds(stx.stx_mtime)
        birthMicroseconds = stx.stx_mask & UInt32(STATX_BTIME) != 0 ? Self.microseconds(stx.stx_btime) : 0
        let immutable = UInt64(STATX_ATTR_IMMUTABLE), mountRoot = UInt64(STATX_ATTR_MOUNT_ROOT)
        isImmutable = stx.stx_attributes_mask & immutable != 0 ? stx.stx_attributes & immutable != 0 : nil
        isMountRoot = stx.stx_attributes_mask & mountRoot != 0 ? stx.stx_attributes & mountRoot != 0 : nil
    }

    private static func microseconds(_ t: statx_timestamp) -> UInt64 {
        UInt64(max(t.tv_sec, 0)) * 1_000_000 + UInt64(t.tv_nsec / 1000)
    }
}

/// statx(2) of `path` (relative to `dir` when given) for the basic fields and the birth time;
/// `followSymlinks: false` is AT_SYMLINK_NOFOLLOW.
public func entryStatus(_ path: String, relativeTo dir: FileDescriptor? = nil,
                        followSymlinks: Bool = false) throws(SystemCallError) -> EntryStatus {
    var stx = CLinux.statx()
    let dirfd = dir?.rawValue ?? AT_FDCWD
    let flags = followSymlinks ? 0 : AT_SYMLINK_NOFOLLOW
    try sys("statx", path) { statx(dirfd, path, flags, UInt32(STATX_BASIC_STATS) | UInt32(STATX_BTIME), &stx) }
    return EntryStatus(stx)
}

/// What statfs(2) says about the filesystem holding a file: its type and whether it is mounted
/// read-only (`f_flags` carries the mount flags, ST_RDONLY among them).
public struct FilesystemStatus: Sendable, Hashable {
    /// `f_type`, e.g. `FilesystemMagic.btrfs`.
    public var type: UInt64
    /// ST_RDONLY.
    public var isReadOnly: Bool

    init(_ s: statfs) {
        type = UInt64(bitPattern: Int64(s.f_type))
        isReadOnly = UInt(s.f_flags) & UInt(ST_RDONLY) != 0
    }
}

/// statfs(2) of the filesystem holding `path`.
public func filesystemStatus(_ path: String) throws(SystemCallError) -> FilesystemStatus {
    var s = statfs()
    try sys("statfs", path) { statfs(path, &s) }
    return FilesystemStatus(s)
}

extension FileDescriptor {
    /// fstatfs(2): the filesystem holding this file.
    public func filesystemStatus() throws(SystemCallError) -> FilesystemStatus {
        var s = statfs()
        try sys("fstatfs") { fstatfs(rawValue, &s) }
        return FilesystemStatus(s)
    }
}
