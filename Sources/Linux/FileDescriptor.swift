import CLinux
import Glibc

/// An owned file descriptor, closed exactly once by `close()` or on deinit.
/// `@unchecked Sendable`: the fd number is immutable and closing is guarded by `closed`,
/// which only the owner touches.
public final class FileDescriptor: @unchecked Sendable {
    public let rawValue: Int32
    private var closed = false

    /// Takes ownership of `rawValue`.
    public init(owning rawValue: Int32) {
        self.rawValue = rawValue
    }

    /// openat(2) with O_CLOEXEC added.
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o644, relativeTo dir: FileDescriptor? = nil) throws(SystemCallError) -> FileDescriptor {
        let dirfd = dir?.rawValue ?? AT_FDCWD
        let fd = try sys("openat", path) { berth_openat(dirfd, path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(owning: fd)
    }

    /// Opens a directory for *at() calls (O_DIRECTORY|O_RDONLY).
    public static func openDirectory(_ path: String, relativeTo dir: FileDescriptor? = nil, followSymlinks: Bool = true) throws(SystemCallError) -> FileDescriptor {
        try open(path, flags: O_RDONLY | O_DIRECTORY | (followSymlinks ? 0 : O_NOFOLLOW), relativeTo: dir)
    }

    /// O_NOATIME: reading the file does not update its access time (needs ownership or
    /// CAP_FOWNER). GNU-only in glibc's headers, so not imported: 01000000 on every Linux ABI
    /// Swift runs on.
    public static let noAccessTime: Int32 = 0o1000000

    /// AT_EMPTY_PATH (GNU-only in glibc's headers): an `*at` call on the descriptor itself.
    public static let emptyPath: Int32 = 0x1000

    /// openat(2) with O_NOATIME added, so reading (a clone's source, a tree walked for a copy
    /// or a scan) leaves access times alone; where O_NOATIME is not allowed (EPERM: neither
    /// owner nor CAP_FOWNER) it opens without.
    public static func openPreservingAccessTime(_ path: String, flags: Int32, relativeTo dir: FileDescriptor? = nil) throws(SystemCallError) -> FileDescriptor {
        do {
            return try open(path, flags: flags | noAccessTime, relativeTo: dir)
        } catch where error.errno == .EPERM {
            return try open(path, flags: flags, relativeTo: dir)
        }
    }

    /// fcntl(F_DUPFD_CLOEXEC): a new owned descriptor for the same open file.
    public func duplicate() throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(owning: try sys("fcntl(F_DUPFD_CLOEXEC)") { berth_fcntl_int(rawValue, F_DUPFD_CLOEXEC, 3) })
    }

    /// Gives up ownership without closing; the caller now owns the number.
    public func release() -> Int32 {
        closed = true
        return rawValue
    }

    /// close(2). EINTR is not retried: on Linux the fd is gone either way.
    public func close() {
        guard !closed else { return }
        closed = true
        _ = Glibc.close(rawValue)
    }

    deinit { close() }

    /// read(2) into `buffer`; 0 at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
        try sys("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// pread(2).
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(SystemCallError) -> Int {
        try sys("pread") { Glibc.pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// Writes all of `buffer`, looping over short writes (`writeAll(_:to:)`).
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws(SystemCallError) {
        try Linux.writeAll(buffer, to: rawValue)
    }

    /// Writes all of `buffer` at `offset`, looping over short writes (`writeAll(_:to:at:)`).
    public func writeAll(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws(SystemCallError) {
        try Linux.writeAll(buffer, to: rawValue, at: offset)
    }

    /// Reads the whole rest of the file (for small files: os-release, machine-id).
    public func readToEnd(limit: Int = 1 << 20) throws(SystemCallError) -> [UInt8] {
        var result: [UInt8] = []
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 16384, alignment: 8)
        defer { chunk.deallocate() }
        while result.count < limit {
            let n = try read(into: chunk)
            if n == 0 { break }
            result.append(contentsOf: chunk[0..<n])
        }
        return result
    }

    /// fstat(2).
    public func stat() throws(SystemCallError) -> FileStatus {
        var st = Glibc.stat()
        try sys("fstat") { fstat(rawValue, &st) }
        return FileStatus(st)
    }

    /// fstatfs(2): the filesystem's magic number tells btrfs from ext4.
    public func filesystemType() throws(SystemCallError) -> UInt64 {
        var s = statfs()
        try sys("fstatfs") { fstatfs(rawValue, &s) }
        return UInt64(bitPattern: Int64(s.f_type))
    }

    /// ftruncate(2).
    public func truncate(to size: Int64) throws(SystemCallError) {
        try sys("ftruncate") { ftruncate(rawValue, off_t(size)) }
    }

    /// fsync(2).
    public func sync() throws(SystemCallError) {
        try sys("fsync") { fsync(rawValue) }
    }

    /// futimens(2): the access and modification times of the open inode.
    public func setTimes(access: timespec, modification: timespec) throws(SystemCallError) {
        var times = [access, modification]
        try sys("futimens") { futimens(rawValue, &times) }
    }

    /// fchmod(2): the permission bits (and setuid/setgid/sticky) of the open inode.
    public func setMode(_ mode: mode_t) throws(SystemCallError) {
        try sys("fchmod") { fchmod(rawValue, mode) }
    }

    /// ioctl(2) with a pointer argument.
    @discardableResult
    public func ioctl(_ request: UInt, _ name: String, _ arg: UnsafeMutableRawPointer?) throws(SystemCallError) -> Int32 {
        try sys("ioctl(\(name))") { berth_ioctl_ptr(rawValue, request, arg) }
    }

    /// ioctl(2) with an integer argument.
    @discardableResult
    public func ioctl(_ request: UInt, _ name: String, value: UInt) throws(SystemCallError) -> Int32 {
        try sys("ioctl(\(name))") { berth_ioctl_int(rawValue, request, value) }
    }

    /// FS_IOC_GETFLAGS: the inode flags (FS_IMMUTABLE_FL…).
    public func inodeFlags() throws(SystemCallError) -> UInt32 {
        var flags: Int32 = 0
        try ioctl(BERTH_FS_IOC_GETFLAGS, "FS_IOC_GETFLAGS", &flags)
        return UInt32(bitPattern: flags)
    }

    /// FS_IOC_SETFLAGS.
    public func setInodeFlags(_ flags: UInt32) throws(SystemCallError) {
        var f = Int32(bitPattern: flags)
        try ioctl(BERTH_FS_IOC_SETFLAGS, "FS_IOC_SETFLAGS", &f)
    }

    /// Sets or clears FS_IMMUTABLE_FL, which makes a file or directory read-only even for root.
    public func setImmutable(_ on: Bool) throws(SystemCallError) {
        let flags = try inodeFlags()
        let new = on ? flags | BERTH_FS_IMMUTABLE_FL : flags & ~BERTH_FS_IMMUTABLE_FL
        if new != flags { try setInodeFlags(new) }
    }

    /// Whether FS_IMMUTABLE_FL is set.
    public func isImmutable() throws(SystemCallError) -> Bool {
        try inodeFlags() & BERTH_FS_IMMUTABLE_FL != 0
    }
}

/// write(2) of all of `buffer` to `fd` (a descriptor the caller owns: a pipe or file handed in),
/// continuing after short writes; EINTR is retried (`sys`).
public func writeAll(_ buffer: UnsafeRawBufferPointer, to fd: Int32) throws(SystemCallError) {
    guard let base = buffer.baseAddress else { return }
    var done = 0
    while done < buffer.count {
        done += try sys("write") { Glibc.write(fd, base + done, buffer.count - done) }
    }
}

/// pwrite(2) of all of `buffer` at `offset` of `fd`, continuing after short writes.
public func writeAll(_ buffer: UnsafeRawBufferPointer, to fd: Int32, at offset: Int64) throws(SystemCallError) {
    guard let base = buffer.baseAddress else { return }
    var done = 0
    while done < buffer.count {
        done += try sys("pwrite") { Glibc.pwrite(fd, base + done, buffer.count - done, off_t(offset) + off_t(done)) }
    }
}

/// Filesystem magic numbers from linux/magic.h.
public enum FilesystemMagic {
    public static let btrfs = UInt64(BERTH_BTRFS_MAGIC)
    public static let ext4 = UInt64(BERTH_EXT4_MAGIC)
}

/// pipe2(2): a pipe's read and write ends, close-on-exec unless `flags` says otherwise.
public func makePipe(flags: Int32 = O_CLOEXEC) throws(SystemCallError) -> (read: FileDescriptor, write: FileDescriptor) {
    var fds: [Int32] = [-1, -1]
    try sys("pipe2") { pipe2(&fds, flags) }
    return (FileDescriptor(owning: fds[0]), FileDescriptor(owning: fds[1]))
}
