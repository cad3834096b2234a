import CArchive
import CLinux
import Glibc
import Linux
import Transfer

/// A libarchive handle (reader, writer or disk writer/reader), freed on deinit.
/// `@unchecked Sendable`: never shared; it only crosses into the one thread that uses it.
final class ArchiveHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    private let free: (OpaquePointer) -> Void

    init(_ pointer: OpaquePointer?, free: @escaping (OpaquePointer) -> Void, what: String) throws {
        guard let pointer else { throw TransferError("cannot allocate \(what)") }
        self.pointer = pointer
        self.free = free
    }

    static func reader() throws -> ArchiveHandle {
        try ArchiveHandle(archive_read_new(), free: { _ = archive_read_free($0) }, what: "an archive reader")
    }

    static func writer() throws -> ArchiveHandle {
        try ArchiveHandle(archive_write_new(), free: { _ = archive_write_free($0) }, what: "an archive writer")
    }

    static func diskWriter() throws -> ArchiveHandle {
        try ArchiveHandle(archive_write_disk_new(), free: { _ = archive_write_free($0) }, what: "a disk writer")
    }

    static func diskReader() throws -> ArchiveHandle {
        try ArchiveHandle(archive_read_disk_new(), free: { _ = archive_read_free($0) }, what: "a disk reader")
    }

    deinit { free(pointer) }

    /// libarchive's message for the last error.
    var errorString: String {
        guard let s = archive_error_string(pointer) else { return "unknown libarchive error" }
        return String(cString: s)
    }

    /// Throws on ARCHIVE_FAILED/ARCHIVE_FATAL (and anything below ARCHIVE_WARN).
    @discardableResult
    func check(_ r: Int32, _ what: @autoclosure () -> String) throws -> Int32 {
        if r < ARCHIVE_WARN { throw TransferError("\(what()): \(errorString)") }
        return r
    }

    /// The read filters for the compressions import1 detects besides gzip: bzip2, xz, zstd (and
    /// none). Gzip is inflated by `ArchiveInput`, which checks what libarchive's filter does not.
    /// No program-backed filters (lrzip…): a worker never execs helpers on hostile input.
    func supportImportCompressions() throws {
        try check(archive_read_support_filter_bzip2(pointer), "bzip2 support")
        try check(archive_read_support_filter_xz(pointer), "xz support")
        try check(archive_read_support_filter_zstd(pointer), "zstd support")
    }

    /// The write filter for `format`.
    func addFilter(_ format: ExportFormat) throws {
        switch format {
        case .uncompressed: try check(archive_write_add_filter_none(pointer), "no compression")
        case .gzip: try check(archive_write_add_filter_gzip(pointer), "gzip compression")
        case .bzip2: try check(archive_write_add_filter_bzip2(pointer), "bzip2 compression")
        case .xz: try check(archive_write_add_filter_xz(pointer), "xz compression")
        case .zstd: try check(archive_write_add_filter_zstd(pointer), "zstd compression")
        }
    }
}

/// An archive_entry, freed on deinit.
final class ArchiveEntry {
    let pointer: OpaquePointer
    init() throws {
        guard let p = archive_entry_new() else { throw TransferError("cannot allocate an archive entry") }
        pointer = p
    }
    deinit { archive_entry_free(pointer) }
}

/// Size to read and write in: big buffers keep the syscall count down.
let transferBlockSize = 1 << 20

/// Runs `body` on a fresh thread whose working directory (and root, with `confine` where we
/// may chroot) is `directory`, unshared from the rest of the process (unshare(CLONE_FS)), so
/// the process's other threads and in-process tests keep theirs. Paths in an archive then
/// resolve inside the image even if libarchive's own checks had a gap.
func runConfined<T>(in directory: FileDescriptor, confine: Bool, _ body: () throws -> T) throws -> T {
    let fd = directory.rawValue
    return try withoutActuallyEscaping(body) { body in
        // Joined before returning, so `body` does not outlive this call.
        try WorkerThread {
            if unshare(BERTH_CLONE_FS) != 0 { throw SystemCallError("unshare(CLONE_FS)", .current) }
            if fchdir(fd) != 0 { throw SystemCallError("fchdir", .current) }
            if confine && geteuid() == 0 {
                if chroot(".") != 0 { throw SystemCallError("chroot", .current) }
                if chdir("/") != 0 { throw SystemCallError("chdir", .current) }
            }
            return try body()
        }.join().get()
    }
}

/// How much of a regular file is left to read from `fd`'s offset; nil for pipes and sockets.
func remainingSize(of fd: Int32) -> Int64? {
    var st = stat()
    guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
    let position = lseek(fd, 0, SEEK_CUR)
    guard position >= 0 else { return nil }
    return max(Int64(st.st_size) - Int64(position), 0)
}
