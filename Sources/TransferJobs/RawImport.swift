import CArchive
import CLinux
import Glibc
import Linux
import RawLoopBackend
import Transfer

/// Writes a stream to a file leaving holes where whole 4 KiB blocks are zero; `finish` sets
/// the size (ftruncate), so trailing zeros are holes too.
final class SparseWriter {
    /// Writes bytes at an absolute position of the output.
    private let writeAt: (UnsafeRawBufferPointer, Int64) throws -> Void
    /// Sets the output's final size.
    private let setSize: (Int64) throws -> Void
    private let base: Int64
    /// Bytes of the stream so far (the file offset is `base + offset`).
    private(set) var offset: Int64 = 0
    static let granule = 4096

    init(fd: Int32, base: Int64 = 0) {
        self.base = base
        writeAt = { data, position in try SparseWriter.pwriteAll(fd, data, at: position) }
        setSize = { size in
            if ftruncate(fd, off_t(size)) != 0 { throw SystemCallError("ftruncate", .current) }
        }
    }

    /// Into any random-access output (an RBD image): `setSize` is called once, by `finish`.
    init(output: some RawImageOutput, setSize: @escaping (Int64) throws -> Void) {
        base = 0
        writeAt = { data, position in try output.writeAll(data, at: position) }
        self.setSize = setSize
    }

    /// A hole of `count` bytes.
    func advance(by count: Int64) { offset += count }

    func write(_ data: UnsafeRawBufferPointer) throws {
        var start = 0
        while start < data.count {
            let end = min(start + Self.granule, data.count)
            let chunk = UnsafeRawBufferPointer(rebasing: data[start..<end])
            if Self.isZero(chunk) {
                start = end
                continue
            }
            // A run of non-zero granules goes out in one pwrite.
            var runEnd = end
            while runEnd < data.count {
                let next = min(runEnd + Self.granule, data.count)
                if Self.isZero(UnsafeRawBufferPointer(rebasing: data[runEnd..<next])) { break }
                runEnd = next
            }
            try writeAt(UnsafeRawBufferPointer(rebasing: data[start..<runEnd]), base + offset + Int64(start))
            start = runEnd
        }
        offset += Int64(data.count)
    }

    func finish() throws {
        try setSize(base + offset)
    }

    private static func pwriteAll(_ fd: Int32, _ data: UnsafeRawBufferPointer, at position: Int64) throws {
        var done = 0
        while done < data.count {
            let n = pwrite(fd, data.baseAddress.map { $0 + done }, data.count - done, off_t(position + Int64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("pwrite", .current)
            }
            done += n
        }
    }

    static func isZero(_ data: UnsafeRawBufferPointer) -> Bool {
        guard let base = data.baseAddress else { return true }
        let words = data.count / 8
        var i = 0
        while i < words {
            if base.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) != 0 { return false }
            i += 1
        }
        for j in (words * 8)..<data.count where data[j] != 0 { return false }
        return true
    }
}

/// Where ImportRaw writes: random access, a final size, and a local folder for the unnamed
/// temporary file a streamed qcow2 image is made seekable in.
protocol ImportDestination: RawImageOutput {
    /// Sets the image's final size (after the last write).
    func setSize(_ size: Int64) throws
    /// A folder for O_TMPFILE scratch files (a qcow2 image read from a stream).
    var scratchDirectory: String { get }
}

/// A file in the pool folder.
struct FileDestination: ImportDestination {
    let fd: FileDescriptor
    let scratchDirectory: String
    func makeZeroed(size: UInt64) throws(SystemCallError) { try fd.makeZeroed(size: size) }
    func writeAll(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws(SystemCallError) { try fd.writeAll(buffer, at: offset) }
    func setSize(_ size: Int64) throws { try fd.truncate(to: size) }
}

/// ImportRaw's work (and PullRaw's): a raw or qcow2 disk image, gzip/bzip2/xz/zstd-compressed
/// or plain, into the (empty) `NAME.raw` file, sparse: zero blocks become holes.
public enum RawImport {
    /// Reads `input` (file, pipe or socket) into `outputPath`.
    public static func run(from input: Int32, to outputPath: String, reporter: StatusReporter = .silent) throws {
        let output = try FileDescriptor.open(outputPath, flags: O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        defer { output.close() }
        let directory = outputPath.lastIndex(of: "/").map { String(outputPath[..<$0]) } ?? "."
        try run(from: input, into: FileDestination(fd: output, scratchDirectory: directory.isEmpty ? "/" : directory),
                reporter: reporter)
    }

    /// Reads `input` into `destination` (a file, or an RBD image).
    static func run(from input: Int32, into destination: some ImportDestination, reporter: StatusReporter) throws {
        let total = remainingSize(of: input)

        let reader = try ArchiveHandle.reader()
        try reader.supportImportCompressions()
        try reader.check(archive_read_support_format_raw(reader.pointer), "raw support")
        let source = CancellableInput(fd: input, cancelEvent: -1)
        let stream = ArchiveInput(source: source.next)  // gzip inflated and checked there
        do {
            try run(reader, stream, input: input, total: total, output: destination, reporter: reporter)
        } catch {
            // Corrupt gzip data, or the input's read error, says more than libarchive's message.
            throw stream.error ?? source.error ?? error
        }
    }

    private static func run(_ reader: ArchiveHandle, _ stream: ArchiveInput, input: Int32, total: Int64?,
                            output: some ImportDestination, reporter: StatusReporter) throws {
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
        // The raw data, or a qcow2 image made seekable in an unnamed temporary file.
        let staging: FileDescriptor? = isQcow2
            ? try FileDescriptor.open(output.scratchDirectory, flags: BERTH_O_TMPFILE | O_RDWR | O_CLOEXEC, mode: 0o600) : nil
        let writer = staging.map { SparseWriter(fd: $0.rawValue) } ?? SparseWriter(output: output, setSize: output.setSize)
        while first > 0 {
            try writer.write(UnsafeRawBufferPointer(rebasing: buffer[0..<first]))
            if let total, total > 0 { reporter.progress(Double(stream.sourceBytes) / Double(total) * (isQcow2 ? 0.5 : 1)) }
            first = try readFull(reader, buffer)
        }
        try writer.finish()
        try reader.check(archive_read_close(reader.pointer), "cannot finish reading the image")
        if let staging {
            defer { staging.close() }
            reporter.log(LogPriority.info, "converting qcow2 image")
            try convertQcow2(staging, into: output, reporter: reporter)
        }
        reporter.progress(1)
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
