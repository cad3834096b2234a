import CLinux
import Glibc

/// The parts of `struct stat` Berth uses.
public struct FileStatus: Sendable, Hashable {
    public var device: UInt64
    public var inode: UInt64
    public var mode: UInt32
    public var linkCount: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: Int64
    /// 512-byte blocks allocated.
    public var blocks: Int64
    public var accessTime: timespec
    public var modificationTime: timespec
    public var changeTime: timespec

    public init(_ st: Glibc.stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        mode = UInt32(st.st_mode)
        linkCount = UInt64(st.st_nlink)
        uid = st.st_uid
        gid = st.st_gid
        rdev = UInt64(st.st_rdev)
        size = Int64(st.st_size)
        blocks = Int64(st.st_blocks)
        accessTime = st.st_atim
        modificationTime = st.st_mtim
        changeTime = st.st_ctim
    }

    public var fileType: UInt32 { mode & UInt32(Glibc.S_IFMT) }
    public var isDirectory: Bool { fileType == UInt32(Glibc.S_IFDIR) }
    public var isRegular: Bool { fileType == UInt32(Glibc.S_IFREG) }
    public var isSymlink: Bool { fileType == UInt32(Glibc.S_IFLNK) }
    public var isBlockDevice: Bool { fileType == UInt32(Glibc.S_IFBLK) }
    /// Bytes allocated on disk (st_blocks × 512).
    public var allocatedBytes: UInt64 { UInt64(max(blocks, 0)) * 512 }
    public var modificationMicroseconds: UInt64 {
        UInt64(max(modificationTime.tv_sec, 0)) * 1_000_000 + UInt64(modificationTime.tv_nsec / 1000)
    }
}

extension timespec: @retroactive Hashable {
    public static func == (a: timespec, b: timespec) -> Bool { a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec }
    public func hash(into h: inout Hasher) { h.combine(tv_sec); h.combine(tv_nsec) }
}

/// fstatat(2); `followSymlinks: false` is AT_SYMLINK_NOFOLLOW.
public func fileStatus(_ path: String, relativeTo dir: FileDescriptor? = nil, followSymlinks: Bool = true) throws(SystemCallError) -> FileStatus {
    var st = Glibc.stat()
    let dirfd = dir?.rawValue ?? AT_FDCWD
    try sys("fstatat", path) { fstatat(dirfd, path, &st, followSymlinks ? 0 : AT_SYMLINK_NOFOLLOW) }
    return FileStatus(st)
}

/// statx(2) birth time in µs since the epoch, or 0 where the filesystem does not record it.
public func birthTimeMicroseconds(_ path: String, relativeTo dir: FileDescriptor? = nil) -> UInt64 {
    var stx = CLinux.statx()
    let dirfd = dir?.rawValue ?? AT_FDCWD
    let r = statx(dirfd, path, AT_SYMLINK_NOFOLLOW, UInt32(STATX_BTIME), &stx)
    guard r == 0, stx.stx_mask & UInt32(STATX_BTIME) != 0 else { return 0 }
    return UInt64(max(stx.stx_btime.tv_sec, 0)) * 1_000_000 + UInt64(stx.stx_btime.tv_nsec / 1000)
}

/// statfs(2) f_type of the filesystem holding `path`.
public func filesystemType(of path: String) throws(SystemCallError) -> UInt64 {
    var s = statfs()
    try sys("statfs", path) { statfs(path, &s) }
    return UInt64(bitPattern: Int64(s.f_type))
}
