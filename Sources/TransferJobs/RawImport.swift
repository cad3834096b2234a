import CArchive
import CLinux
import FileTree
import Glibc
import Linux
import PoolAPI
import RawLoopBackend
import Transfer
import struct SystemPackage.FilePath

/// Where ImportRaw writes: a raw image at offsets (zero blocks left unallocated) and a final
/// size. A file in the pool folder, or an RBD image (RbdTransfer.swift).
protocol ImportDestination: RawImageOutput {
    /// Writes a piece of the stream at `offset` (zero blocks left holes), growing the output as
    /// needed: a streamed image's size is known only at its end.
    func writeGrowing(_ data: UnsafeRawBufferPointer, at offset: Int64) throws
    /// Sets the image's final size (after the last write).
    func setSize(_ size: Int64) throws
    /// A new unnamed file (O_TMPFILE) for a qcow2 image read from a stream, when the worker
    /// was given none (`scratch`).
    func makeScratch() throws -> FileDescriptor
}

/// A file in the pool folder: it grows by itself; its size is set by ftruncate at the end.
struct FileDestination: ImportDestination {
    let fd: FileDescriptor
    let path: String
    func makeZeroed(size: UInt64) throws(SystemCallError) { try fd.makeZeroed(size: size) }
    func writeSparse(_ data: UnsafeRawBufferPointer, at offset: Int64) throws(SystemCallError) { try fd.writeSparse(data, at: offset) }
    func writeGrowing(_ data: UnsafeRawBufferPointer, at offset: Int64) throws { try fd.writeSparse(data, at: offset) }
    func setSize(_ size: Int64) throws { try fd.truncate(to: size) }
    /// Beside the image, on the pool's filesystem.
    func makeScratch() throws -> FileDescriptor {
        let directory = FilePath(path).removingLastComponent()
        return try FileDescriptor.open(directory.isEmpty ? "." : directory.string, flags: BERTH_O_TMPFILE | O_RDWR | O_CLOEXEC, mode: 0o600)
    }
}

/// ImportRaw's work (and PullRaw's): a raw or qcow2 disk image, gzip/bzip2/xz/zstd-compressed
/// or plain, into the (empty) `NAME.raw` file or RBD image, sparse: zero blocks become holes.
public enum RawImport {
    /// Reads `input` (file, pipe or socket) into `outputPath`, or into the RBD image it names
    /// when it is a locator (`rbd://…`: connected as `root`'s backends.d says). A qcow2 image
    /// that is compressed or piped is first unpacked into `scratch` (an unnamed file, which this
    /// closes once used), or without one into a new unnamed file beside `outputPath`.
    public static func run(from input: Int32, to outputPath: String, root: String = "/", scratch: FileDescriptor? = nil,
                           reporter: StatusReporter = .silent) throws {
        if let locator = RbdLocator(outputPath) {
            let image = try RbdTransfer.open(locator, root: root, readOnly: false)
            let destination = try RbdDestination(image: image)
            try run(from: input, into: destination, scratch: scratch, reporter: reporter)
            try destination.finish()
            return
        }
        let output = try FileDescriptor.open(outputPath, flags: O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        defer { output.close() }
        try run(from: input, into: FileDestination(fd: output, path: outputPath), scratch: scratch, reporter: reporter)
    }

    /// Reads `input` into `destination` (a file, or an RBD image).
    static func run(from input: Int32, into destination: some ImportDestination, scratch: FileDescriptor?,
                    reporter: StatusReporter) throws {
        let total = remainingSize(of: input)

        let reader = try ArchiveHandle.reader()
        try reader.supportImportCompressions()
        try reader.check(archive_read_support_format_raw(reader.pointer), "raw support")
        let source = CancellableInput(fd: input, cancelEvent: -1)
        let stream = ArchiveInput(source: source.next)  // gzip inflated and checked there
        do {
            try run(reader, stream, input: input, total: total, output: destination, scratch: scratch, reporter: reporter)
        } catch {
            // Corrupt gzip data, or the input's read error, says more than libarchive's message.
            throw stream.error ?? source.error ?? error
        }
    }

    private static func run(_ reader: ArchiveHandle, _ stream: ArchiveInput, input: Int32, total: Int64?,
                            output: some ImportDestination, scratch: FileDescriptor?, reporter: StatusReporter) throws {
        try stream.open(reader)
        var entry: OpaquePointer?
        let h = archive_read_next_header(reader.pointer, &entry)
        if h == ARCHIVE_EOF { throw TransferError("the image is empty") }
        try reader.check(h, "cannot read the image")
        // archive_filter_count is 1 when only the pass-through "none" filter runs.
        let compressed = archive_filter_count(reader.pointer) > 1 || stream.isGzip

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: transferBlockSize, alignment: 4096)
        defer { buffer.deallocate() }
        var first = try readFull(reader, buffer)
        if first == 0 { throw TransferError("the image is empty") }

        let isQcow2 = first >= 4 && Array(UnsafeRawBufferPointer(rebasing: buffer[0..<4])) == Qcow2Image.magic
        if isQcow2 && !compressed && total != nil {
            // A plain qcow2 file is converted straight from the caller's file.
            reporter.log(LogPriority.info, "converting qcow2 image")
            try convertQcow2(FileDescriptor(owning: try sys("dup") { dup(input) }), into: output, reporter: reporter)
            return
        }
        guard isQcow2 else {
            // The raw data, straight into the output.
            var offset: Int64 = 0
            while first > 0 {
                try output.writeGrowing(UnsafeRawBufferPointer(rebasing: buffer[0..<first]), at: offset)
                offset += Int64(first)
                if let total, total > 0 { reporter.progress(Double(stream.sourceBytes) / Double(total)) }
                first = try readFull(reader, buffer)
            }
            try output.setSize(offset)
            try reader.check(archive_read_close(reader.pointer), "cannot finish reading the image")
            reporter.progress(1)
            return
        }
        // A qcow2 image made seekable in an unnamed temporary file first.
        let staging = try scratch ?? output.makeScratch()
        defer { staging.close() }
        let writer = SparseWriter(fd: staging.rawValue)
        while first > 0 {
            try writer.write(UnsafeRawBufferPointer(rebasing: buffer[0..<first]))
            if let total, total > 0 { reporter.progress(Double(stream.sourceBytes) / Double(total) * 0.5) }
            first = try readFull(reader, buffer)
        }
        try writer.finish()
        try reader.check(archive_read_close(reader.pointer), "cannot finish reading the image")
        reporter.log(LogPriority.info, "converting qcow2 image")
        try convertQcow2(staging, into: output, reporter: reporter)
    }

    /// Fills `buffer` as far as the stream goes; 0 at its end.
    private static func readFull(_ reader: ArchiveHandle, _ buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            let n = archive_read_data(reader.pointer, buffer.baseAddress.map { $0 + filled }, buffer.count - filled)
            if n < 0 { throw TransferError("cannot read the image: \(reader.errorString)") }
            if n == 0 { break }
            filled += n
        }
        return filled
    }

    private static func convertQcow2(_ source: FileDescriptor, into output: some ImportDestination, reporter: StatusReporter) throws {
        let image = try Qcow2Image(fd: source)
        try image.convert(to: output) { done, total in
            if total > 0 { reporter.progress(0.5 + 0.5 * Double(done) / Double(total)) }
        }
        reporter.progress(1)
    }
}
