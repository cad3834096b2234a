import CLinux
import Glibc
import Linux

/// Copies one regular file's contents, as cheaply as the filesystem allows and never denser than
/// the source: a reflink (FICLONE) where source and destination share a filesystem that supports
/// it, else only the data extents (SEEK_DATA/SEEK_HOLE, copy_file_range), leaving holes as holes.
public enum FileCopy {
    /// How the contents were copied.
    public enum Method: Sendable, Equatable { case reflink, sparseCopy }

    /// Copies all of `source` into `destination` (an empty, writable regular file).
    /// - Parameter allowReflink: false forces a real copy (for tests and for cross-checks).
    @discardableResult
    public static func copyContents(from source: FileDescriptor, to destination: FileDescriptor,
                                    allowReflink: Bool = true) throws(SystemCallError) -> Method {
        if allowReflink {
            if berth_ioctl_int(destination.rawValue, BERTH_FICLONE, UInt(source.rawValue)) == 0 {
                return .reflink
            }
            let e = Errno.current
            // Not supported here, or across filesystems: fall back to copying. Anything else is real.
            guard [.EOPNOTSUPP, .EXDEV, .EINVAL, .ENOTTY, .EPERM, .EBADF].contains(e) else {
                throw SystemCallError("ioctl(FICLONE)", e)
            }
        }
        let size = try source.stat().size
        // Read front to back: the kernel doubles its readahead for the file, which is what a
        // copy from cold caches waits on (a hint; nothing depends on it being taken).
        _ = posix_fadvise(source.rawValue, 0, 0, POSIX_FADV_SEQUENTIAL)
        var offset: Int64 = 0
        while offset < size {
            let dataStart = lseek(source.rawValue, off_t(offset), BERTH_SEEK_DATA)
            if dataStart < 0 {
                if errno == ENXIO { break }  // only a hole remains
                throw SystemCallError("lseek(SEEK_DATA)", .current)
            }
            var holeStart = lseek(source.rawValue, dataStart, BERTH_SEEK_HOLE)
            if holeStart < 0 { holeStart = off_t(size) }
            try copyRange(source, destination, from: Int64(dataStart), count: Int64(holeStart - dataStart))
            offset = Int64(holeStart)
        }
        // The tail may be a hole: set the size so it stays one.
        try destination.truncate(to: size)
        return .sparseCopy
    }

    /// copy_file_range(2) of `count` bytes at `from` to the same offset, with a read/write
    /// fallback where the kernel refuses (EXDEV on old kernels, EINVAL on some filesystems).
    static func copyRange(_ src: FileDescriptor, _ dst: FileDescriptor, from: Int64, count: Int64) throws(SystemCallError) {
        var inOff = loff_t(from), outOff = loff_t(from)
        var left = count
        while left > 0 {
            let n = copy_file_range(src.rawValue, &inOff, dst.rawValue, &outOff, Int(min(left, 1 << 30)), 0)
            if n > 0 { left -= Int64(n); continue }
            if n == 0 { return }
            let e = Errno.current
            if e == .EINTR { continue }
            guard [.EXDEV, .EINVAL, .EOPNOTSUPP, .ENOSYS].contains(e) else { throw SystemCallError("copy_file_range", e) }
            try readWriteCopy(src, dst, from: Int64(inOff), count: left)
            return
        }
    }

    private static func readWriteCopy(_ src: FileDescriptor, _ dst: FileDescriptor, from: Int64, count: Int64) throws(SystemCallError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var pos = from
        let end = from + count
        while pos < end {
            let want = Int(min(Int64(buffer.count), end - pos))
            let n = try src.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: pos)
            if n == 0 { break }
            try dst.writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), at: pos)
            pos += Int64(n)
        }
    }
}
