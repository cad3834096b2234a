import CArchive
import CLinux
import FileTree
import Glibc
import Linux
import RawLoopBackend
import Transfer

/// ImportRaw's work (and PullRaw's): a raw or qcow2 disk image, gzip/bzip2/xz/zstd-compressed
/// or plain, into the (empty) `NAME.raw` file, sparse: zero blocks become holes.
public enum RawImport {
    /// Reads `input` (file, pipe or socket) into `outputPath`.
    public static func run(from input: Int32, to outputPath: String, reporter: StatusReporter = .silent) throws {
        let output = try FileDescriptor.open(outputPath, flags: O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        defer { output.close() }
        let total = remainingSize(of: input)

        let reader = try ArchiveHandle.reader()
        try reader.supportImportCompressions()
        try reader.check(archive_read_support_format_raw(reader.pointer), "raw support")
        let source = CancellableInput(fd: input, cancelEvent: -1)
        let stream = ArchiveInput(source: source.next)  // gzip inflated and checked there
        do {
            try run(reader, stream, input: input, total: total, output: output, outputPath: outputPath, reporter: reporter)
        } catch {
            // Corrupt gzip data, or the input's read error, says more than libarchive's message.
            throw stream.error ?? source.error ?? error
        }
    }

    private static func run(_ reader: ArchiveHandle, _ stream: ArchiveInput, input: Int32, total: Int64?,
                            output: FileDescriptor, outputPath: String, reporter: StatusReporter) throws {
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
        let target: FileDescriptor
        if isQcow2 {
            let directory = outputPath.lastIndex(of: "/").map { String(outputPath[..<$0]) } ?? "."
            target = try FileDescriptor.open(directory.isEmpty ? "/" : directory, flags: BERTH_O_TMPFILE | O_RDWR | O_CLOEXEC, mode: 0o600)
        } else {
            target = output
        }
        let writer = SparseWriter(fd: target.rawValue)
        while first > 0 {
            try writer.write(UnsafeRawBufferPointer(rebasing: buffer[0..<first]))
            if let total, total > 0 { reporter.progress(Double(stream.sourceBytes) / Double(total) * (isQcow2 ? 0.5 : 1)) }
            first = try readFull(reader, buffer)
        }
        try writer.finish()
        try reader.check(archive_read_close(reader.pointer), "cannot finish reading the image")
        if isQcow2 {
            defer { target.close() }
            reporter.log(LogPriority.info, "converting qcow2 image")
            try convertQcow2(target, into: output, reporter: reporter)
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

    private static func convertQcow2(_ source: FileDescriptor, into output: FileDescriptor, reporter: StatusReporter) throws {
        let image = try Qcow2Image(fd: source)
        try image.convert(to: output) { done, total in
            if total > 0 { reporter.progress(0.5 + 0.5 * Double(done) / Double(total)) }
        }
        reporter.progress(1)
    }
}
