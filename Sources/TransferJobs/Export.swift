import CArchive
import CLinux
import FileTree
import Glibc
import Linux
import Transfer

/// ExportTar's work: an image tree as a pax tar stream (numeric owners, modes, times, xattrs,
/// ACLs, hardlinks, devices, symlinks, sparse files), compressed as asked.
public enum TarExport {
    /// Writes the tree at `directory` to `output` (a file or pipe) in `format`.
    public static func run(directory: String, to output: Int32, format: ExportFormat,
                           reporter: StatusReporter = .silent) throws {
        let dir = try FileDescriptor.openDirectory(directory)
        defer { dir.close() }
        // The tree's data is read ahead on another thread: on a cold cache the export is
        // otherwise a wait for one small file after another.
        let prefetcher = TreePrefetcher(directory: dir)
        defer { prefetcher.stop() }
        // Confined to the image so names are "./…" relative to it; not chroot'ed, as nothing
        // is written there.
        if format == .uncompressed {
            try runConfined(in: dir, confine: false) {
                try writeHere(prefetcher: prefetcher, reporter: reporter) { writer in
                    try openOutput(writer, output)
                }
            }
        } else {
            // Compression on a thread of its own, fed the plain tar stream through a block
            // pipe: the tree walk and the compressor use both cores.
            let pipe = BlockPipe(blockSize: transferBlockSize, blocks: 4)
            let compressor = try WorkerThread { try Compressor.run(from: pipe, to: output, format: format) }
            let written = Result {
                try runConfined(in: dir, confine: false) {
                    try writeHere(prefetcher: prefetcher, reporter: reporter, open: pipe.openForWriting)
                }
            }
            pipe.finish(written.failure)
            // The compressor's own error (the output went away…) says more than the tar
            // writer's failed write; a compressor stopped by a failed tar writer says less.
            if case .failure(let error) = compressor.join(), !(error is Compressor.InputFailed) { throw error }
            try written.get()
        }
        reporter.progress(1)
    }

    /// Opens `writer` on the output descriptor.
    static func openOutput(_ writer: ArchiveHandle, _ output: Int32) throws {
        // Write in big blocks rather than libarchive's 10 KiB: far fewer write(2)s. Only to a
        // file, pipe or socket, where archive_write_open_fd leaves the last block unpadded
        // anyway (to a device it pads the last block to a whole one, so keep those small).
        var outputStatus = stat()
        if fstat(output, &outputStatus) == 0,
           [S_IFREG, S_IFIFO, S_IFSOCK].contains(outputStatus.st_mode & S_IFMT) {
            try writer.check(archive_write_set_bytes_per_block(writer.pointer, Int32(transferBlockSize)), "block size")
            try writer.check(archive_write_set_bytes_in_last_block(writer.pointer, 1), "block size")
        }
        try writer.check(archive_write_open_fd(writer.pointer, output), "cannot open the output")
    }

    /// The plain pax stream of the tree at the cwd, into the writer `open` opens.
    private static func writeHere(prefetcher: TreePrefetcher, reporter: StatusReporter,
                                  open: (ArchiveHandle) throws -> Void) throws {
        let writer = try ArchiveHandle.writer()
        try writer.check(archive_write_set_format_pax_restricted(writer.pointer), "pax format")
        try open(writer)

        let disk = try ArchiveHandle.diskReader()
        try disk.check(archive_read_disk_set_symlink_physical(disk.pointer), "disk reader")
        try disk.check(archive_read_disk_open(disk.pointer, "."), "cannot open the image")

        guard let resolver = archive_entry_linkresolver_new() else { throw TransferError("cannot allocate a link resolver") }
        defer { archive_entry_linkresolver_free(resolver) }
        archive_entry_linkresolver_set_strategy(resolver, archive_format(writer.pointer))

        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: transferBlockSize, alignment: 16)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)

        let entry = try ArchiveEntry()
        while true {
            archive_entry_clear(entry.pointer)
            let r = archive_read_next_header2(disk.pointer, entry.pointer)
            if r == ARCHIVE_EOF { break }
            let name = archive_entry_pathname(entry.pointer).map { String(cString: $0) } ?? "?"
            if r == ARCHIVE_WARN { reporter.log(LogPriority.warning, "\(name): \(disk.errorString)") }
            try disk.check(r, "cannot read the image at '\(name)'")
            try disk.check(archive_read_disk_descend(disk.pointer), "cannot descend into '\(name)'")
            // Counted as the disk has it (before linkify may zero a hardlink's size), as the
            // prefetcher counts it.
            if archive_entry_filetype(entry.pointer) == BERTH_AE_IFREG { prefetcher.consumed(archive_entry_size(entry.pointer)) }

            var current: OpaquePointer? = entry.pointer
            var spare: OpaquePointer?
            archive_entry_linkify(resolver, &current, &spare)
            guard let out = current else { continue }
            let w = archive_write_header(writer.pointer, out)
            if w == ARCHIVE_WARN { reporter.log(LogPriority.warning, "\(name): \(writer.errorString)") }
            try writer.check(w, "cannot write '\(name)'")
            let size = archive_entry_size(out)
            if size > 0 && archive_entry_filetype(out) == BERTH_AE_IFREG {
                try copyFile(disk, writer, size: size, zeros: UnsafeRawBufferPointer(zeros), name: name)
                try checkUnchanged(name, size: size)
            }
            try writer.check(archive_write_finish_entry(writer.pointer), "cannot finish '\(name)'")
        }
        // A tree removed under us reads as a short one: the walk simply finds fewer entries.
        var top = stat()
        if stat(".", &top) != 0 || top.st_nlink == 0 {
            throw TransferError("the image was removed while being exported")
        }
        try writer.check(archive_write_close(writer.pointer), "cannot finish the archive")
        _ = archive_read_close(disk.pointer)
    }

    /// After copying `name` (relative to the cwd, the image): a file that shrank or vanished
    /// while it was read came out short, its end filled with zeros that are not its data, so
    /// the export fails rather than claiming a complete archive.
    private static func checkUnchanged(_ name: String, size: Int64) throws {
        var now = stat()
        guard lstat(name, &now) == 0 else {
            throw TransferError("'\(name)' vanished while being exported (\(Errno.current))")
        }
        if Int64(now.st_size) < size {
            throw TransferError("'\(name)' shrank from \(size) to \(now.st_size) bytes while being exported")
        }
    }

    /// The file's data blocks; holes are written as zeros, which the pax writer of a sparse
    /// entry skips rather than stores.
    private static func copyFile(_ disk: ArchiveHandle, _ writer: ArchiveHandle, size: Int64,
                                 zeros: UnsafeRawBufferPointer, name: String) throws {
        var position: Int64 = 0
        func writeZeros(upTo end: Int64) throws {
            while position < end {
                let n = Int(min(Int64(zeros.count), end - position))
                let w = archive_write_data(writer.pointer, zeros.baseAddress, n)
                if w < 0 { throw TransferError("cannot write '\(name)': \(writer.errorString)") }
                position += Int64(n)
            }
        }
        var buffer: UnsafeRawPointer?
        var length = 0
        var offset: la_int64_t = 0
        while true {
            let r = archive_read_data_block(disk.pointer, &buffer, &length, &offset)
            if r == ARCHIVE_EOF { break }
            try disk.check(r, "cannot read '\(name)'")
            try writeZeros(upTo: min(offset, size))
            let n = Int(min(Int64(length), size - position))
            if n > 0 {
                let w = archive_write_data(writer.pointer, buffer, n)
                if w < 0 { throw TransferError("cannot write '\(name)': \(writer.errorString)") }
                position += Int64(n)
            }
        }
        try writeZeros(upTo: size)
    }
}

/// ExportTar's compression, on a thread of its own: the plain tar stream from a block pipe,
/// compressed by libarchive's write filter (its "raw" format: the bytes as they are) to the
/// output.
enum Compressor {
    /// The tar writer failed: the stream ended with its error, which is the one to report.
    struct InputFailed: Error {}

    /// Compresses what comes through `pipe` to `output` in `format`. On any failure it
    /// cancels the pipe, so the tar writer stops too.
    static func run(from pipe: BlockPipe, to output: Int32, format: ExportFormat) throws {
        do {
            let writer = try ArchiveHandle.writer()
            try writer.check(archive_write_set_format_raw(writer.pointer), "raw format")
            try writer.addFilter(format)
            try TarExport.openOutput(writer, output)
            let entry = try ArchiveEntry()
            archive_entry_set_pathname(entry.pointer, "image.tar")
            archive_entry_set_filetype(entry.pointer, BERTH_AE_IFREG)
            archive_entry_set_perm(entry.pointer, 0o644)
            try writer.check(archive_write_header(writer.pointer, entry.pointer), "cannot start the output")
            loop: while true {
                switch pipe.next() {
                case .data(let bytes):
                    if archive_write_data(writer.pointer, bytes.baseAddress, bytes.count) < 0 {
                        let code = archive_errno(writer.pointer)
                        throw TransferError("cannot write the archive: \(writer.errorString)" + (code > 0 ? " (\(Errno(code)))" : ""))
                    }
                case .end:
                    break loop
                case .failed:
                    throw InputFailed()
                }
            }
            try writer.check(archive_write_close(writer.pointer), "cannot finish the archive")
        } catch {
            pipe.cancel()
            throw error
        }
    }
}

/// ExportRaw's work: the `.raw` file, read sparse-aware (holes are skipped with SEEK_DATA, and
/// stay holes when the output is a plain file), compressed as asked.
public enum RawExport {
    /// Writes the raw image file at `path` to `output` in `format`.
    public static func run(path: String, to output: Int32, format: ExportFormat, reporter: StatusReporter = .silent) throws {
        let source = try FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW)
        defer { source.close() }
        let size = try source.stat().size
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: transferBlockSize, alignment: 4096)
        defer { buffer.deallocate() }

        var outputStatus = stat()
        let outputIsFile = fstat(output, &outputStatus) == 0 && (outputStatus.st_mode & S_IFMT) == S_IFREG
        if format == .uncompressed && outputIsFile {
            let start = Int64(lseek(output, 0, SEEK_CUR))
            let writer = SparseWriter(fd: output, base: max(start, 0))
            try forEachSegment(source, size: size, buffer: buffer, reporter: reporter, holesAsZeros: false) { data, hole in
                if hole > 0 { writer.advance(by: hole) } else { try writer.write(data) }
            }
            try writer.finish()
            _ = lseek(output, off_t(max(start, 0) + size), SEEK_SET)
        } else if format == .uncompressed {
            try forEachSegment(source, size: size, buffer: buffer, reporter: reporter, holesAsZeros: true) { data, _ in
                try writeAll(data, to: output)
            }
        } else {
            let writer = try ArchiveHandle.writer()
            try writer.check(archive_write_set_format_raw(writer.pointer), "raw format")
            try writer.addFilter(format)
            try writer.check(archive_write_set_bytes_in_last_block(writer.pointer, 1), "block size")
            try writer.check(archive_write_open_fd(writer.pointer, output), "cannot open the output")
            let entry = try ArchiveEntry()
            archive_entry_set_pathname(entry.pointer, "image.raw")
            archive_entry_set_filetype(entry.pointer, BERTH_AE_IFREG)
            archive_entry_set_perm(entry.pointer, 0o644)
            archive_entry_set_size(entry.pointer, size)
            try writer.check(archive_write_header(writer.pointer, entry.pointer), "cannot start the output")
            try forEachSegment(source, size: size, buffer: buffer, reporter: reporter, holesAsZeros: true) { data, _ in
                if archive_write_data(writer.pointer, data.baseAddress, data.count) < 0 {
                    throw TransferError("cannot write the image: \(writer.errorString)")
                }
            }
            try writer.check(archive_write_close(writer.pointer), "cannot finish the output")
        }
        reporter.progress(1)
    }

    /// Calls `body` with the file's bytes in order. Data is read; a hole is passed either as
    /// zero-filled buffers (`holesAsZeros`, for streams) or as its length alone (second
    /// argument > 0, for a sparse file output).
    private static func forEachSegment(_ source: FileDescriptor, size: Int64, buffer: UnsafeMutableRawBufferPointer,
                                       reporter: StatusReporter, holesAsZeros: Bool,
                                       _ body: (UnsafeRawBufferPointer, Int64) throws -> Void) throws {
        var position: Int64 = 0
        while position < size {
            var dataStart = Int64(lseek(source.rawValue, off_t(position), BERTH_SEEK_DATA))
            if dataStart < 0 {
                // ENXIO: no data after `position` — a trailing hole, or a file that shrank.
                let noMoreData = errno == ENXIO
                if noMoreData { try checkSize(source, size) }
                dataStart = noMoreData ? size : position
            }
            if dataStart > position {
                if holesAsZeros {
                    var p = position
                    while p < dataStart {
                        let n = Int(min(Int64(buffer.count), dataStart - p))
                        buffer.baseAddress.map { _ = memset($0, 0, n) }
                        try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), 0)
                        p += Int64(n)
                    }
                } else {
                    try body(UnsafeRawBufferPointer(start: nil, count: 0), dataStart - position)
                }
                position = dataStart
                continue
            }
            var holeStart = Int64(lseek(source.rawValue, off_t(position), BERTH_SEEK_HOLE))
            if holeStart < 0 { holeStart = size }
            while position < min(holeStart, size) {
                let want = Int(min(Int64(buffer.count), min(holeStart, size) - position))
                let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: position)
                if n == 0 { throw TransferError("the image shrank while being exported") }
                try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), 0)
                position += Int64(n)
                if size > 0 { reporter.progress(Double(position) / Double(size)) }
            }
        }
        try checkSize(source, size)
    }

    /// A source shorter than when the export began would end in zeros that are not its data.
    private static func checkSize(_ source: FileDescriptor, _ size: Int64) throws {
        let now = try source.stat().size
        if now < size { throw TransferError("the image shrank from \(size) to \(now) bytes while being exported") }
    }
}

