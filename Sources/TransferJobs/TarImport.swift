import CArchive
import FileTree
import Glibc
import Linux
import Synchronization
import Transfer

/// ImportTar's work (and PullTar's after the download): a tar stream, compressed or not, into
/// an empty image directory.
///
/// Safety: extraction runs on a thread confined to the image (its own cwd, chroot'ed there when
/// root) and libarchive's disk writer refuses `..`, absolute paths and paths through symlinks
/// (SECURE_NODOTDOT / NOABSOLUTEPATHS / SYMLINKS, hardlink targets included). Unlike GNU tar,
/// which systemd runs and which skips such members with a warning, a refused entry fails the
/// whole import: an archive that tries to escape is hostile, and nothing of it is installed.
public enum TarImport {
    /// Extracts the tar stream on `input` (a file, pipe or socket; gzip, bzip2, xz, zstd or
    /// plain, detected) into the empty directory `directory`, keeping numeric owners, modes
    /// (setuid too), times, xattrs, ACLs, hardlinks, device nodes, symlinks and sparse files.
    /// If the result holds exactly one directory and that looks like an OS tree (has `usr` or
    /// `etc`), its contents become the root (systemd's behaviour).
    /// `confine: false` skips the chroot (tests prove libarchive's checks hold on their own).
    public static func extract(from input: Int32, into directory: String, reporter: StatusReporter = .silent) throws {
        try extract(from: input, into: directory, reporter: reporter, confine: true)
    }

    static func extract(from input: Int32, into directory: String, reporter: StatusReporter, confine: Bool) throws {
        let total = remainingSize(of: input)
        if total != nil && !looksCompressed(input) {
            // A plain tar in a file: nothing to decompress, and reading it on the extracting
            // thread itself is measurably faster than handing it over.
            let dir = try FileDescriptor.openDirectory(directory, followSymlinks: false)
            defer { dir.close() }
            try runConfined(in: dir, confine: confine) {
                try extractHere(total: total, reporter: reporter,
                                open: { reader in
                                    // Compressed data the magic check missed still works, on this thread.
                                    try reader.supportImportCompressions()
                                    try reader.check(archive_read_open_fd(reader.pointer, input, transferBlockSize),
                                                     "cannot read the archive")
                                },
                                position: { reader in archive_filter_bytes(reader.pointer, -1) })
            }
            try stripSingleTopDirectory(dir, reporter: reporter)
            reporter.progress(1)
            return
        }
        try extract(into: directory, total: total, source: nil, reporter: reporter, confine: confine) { pipe in
            Decompressor.pump(from: input, into: pipe)
        }
    }

    /// Does the file at `input`'s offset start like gzip, bzip2, xz or zstd data? (pread: the
    /// offset does not move.)
    static func looksCompressed(_ input: Int32) -> Bool {
        let position = lseek(input, 0, SEEK_CUR)
        guard position >= 0 else { return true }
        var magic = [UInt8](repeating: 0, count: 6)
        let n = pread(input, &magic, magic.count, position)
        guard n >= 0 else { return true }
        let head = magic.prefix(n)
        return head.starts(with: [0x1f, 0x8b]) || head.starts(with: Array("BZh".utf8))
            || head.starts(with: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) || head.starts(with: [0x28, 0xb5, 0x2f, 0xfd])
    }

    /// Extracts the tar stream (compressed or not) that a producer thread (PullTar's
    /// download) writes into `source`. Cancels `source` if the import fails, so the producer
    /// stops too.
    static func extract(from source: BlockPipe, into directory: String, reporter: StatusReporter) throws {
        try extract(into: directory, total: nil, source: source, reporter: reporter, confine: true) { pipe in
            Decompressor.pump(from: source, into: pipe)
        }
    }

    /// Decompression runs on a thread of its own (`decompress`, not confined: it touches only
    /// the input), feeding the confined extraction thread through a bounded pipe of blocks,
    /// so the two use both cores as systemd's decompressing child process does.
    private static func extract(into directory: String, total: Int64?, source: BlockPipe?, reporter: StatusReporter,
                                confine: Bool, decompress: @escaping (BlockPipe) -> Void) throws {
        let dir = try FileDescriptor.openDirectory(directory, followSymlinks: false)
        defer { dir.close() }
        let pipe = BlockPipe()
        let decompressor = try WorkerThread { decompress(pipe) }
        let extracted = Result {
            try runConfined(in: dir, confine: confine) {
                // The tar stream comes decompressed from `pipe`: a tar reader with no filters.
                try extractHere(total: total, reporter: reporter, open: pipe.open,
                                position: { _ in pipe.consumedSourceBytes.load(ordering: .relaxed) })
            }
        }
        // A decompressor still running (the extraction failed) stops now, and so does
        // whatever feeds it.
        pipe.cancel()
        if case .failure = extracted { source?.cancel() }
        _ = decompressor.join()
        // The decompressor's error (corrupt or truncated data, a read error) explains a failed
        // extraction better than the tar reader's "read error"; and a stream that failed after
        // the tar reader was satisfied still fails the import.
        if let error = pipe.producerError { throw error }
        try extracted.get()
        try stripSingleTopDirectory(dir, reporter: reporter)
        reporter.progress(1)
    }

    static let diskFlags: Int32 = ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME
        | ARCHIVE_EXTRACT_XATTR | ARCHIVE_EXTRACT_ACL
        | ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS

    /// The extraction loop, in the confined thread: cwd is the image root. `open` opens the
    /// reader on the stream; `position` is how far into the input it got, for progress.
    private static func extractHere(total: Int64?, reporter: StatusReporter, open: (ArchiveHandle) throws -> Void,
                                    position: (ArchiveHandle) -> Int64) throws {
        let reader = try ArchiveHandle.reader()
        try reader.check(archive_read_support_format_tar(reader.pointer), "tar support")
        // Read on past end-of-archive markers to the real end of the stream: trailing members
        // are not silently ignored, and a decompressing filter on this reader (a compressed
        // file the magic check missed) sees and checks all of its input, so a corrupt tail
        // fails. (The decompressing thread reads its input to the end on its own.)
        try reader.check(archive_read_set_options(reader.pointer, "tar:read_concatenated_archives"), "tar options")
        try open(reader)

        let disk = try ArchiveHandle.diskWriter()
        try disk.check(archive_write_disk_set_options(disk.pointer, diskFlags), "disk writer options")
        // No name lookup: owners stay numeric, and a chroot'ed thread has no passwd to read.

        var entry: OpaquePointer?
        var count = 0
        while true {
            let r = archive_read_next_header(reader.pointer, &entry)
            if r == ARCHIVE_EOF { break }
            try reader.check(r, "cannot read the archive")
            guard let entry else { throw TransferError("archive entry missing") }
            let name = archive_entry_pathname(entry).map { String(cString: $0) } ?? "?"
            if r == ARCHIVE_WARN { reporter.log(LogPriority.warning, "\(name): \(reader.errorString)") }

            let w = archive_write_header(disk.pointer, entry)
            if w < ARCHIVE_WARN { throw TransferError("refusing archive entry '\(name)': \(disk.errorString)") }
            if w == ARCHIVE_WARN { reporter.log(LogPriority.warning, "\(name): \(disk.errorString)") }
            if archive_entry_size_is_set(entry) != 0, archive_entry_size(entry) > 0 {
                try copyData(reader, disk, name)
            }
            let f = archive_write_finish_entry(disk.pointer)
            if f < ARCHIVE_WARN { throw TransferError("cannot write '\(name)': \(disk.errorString)") }
            if f == ARCHIVE_WARN { reporter.log(LogPriority.warning, "\(name): \(disk.errorString)") }

            count += 1
            if let total, total > 0 {
                reporter.progress(Double(position(reader)) / Double(total))
            }
        }
        // Directory modes and times are fixed up at close.
        try disk.check(archive_write_close(disk.pointer), "cannot finish writing the image")
        try reader.check(archive_read_close(reader.pointer), "cannot finish reading the archive")
        if count == 0 { throw TransferError("the archive holds no entries") }
    }

    static func copyData(_ reader: ArchiveHandle, _ disk: ArchiveHandle, _ name: String) throws {
        var buffer: UnsafeRawPointer?
        var size = 0
        var offset: la_int64_t = 0
        while true {
            let r = archive_read_data_block(reader.pointer, &buffer, &size, &offset)
            if r == ARCHIVE_EOF { return }
            try reader.check(r, "cannot read '\(name)' from the archive")
            let w = archive_write_data_block(disk.pointer, buffer, size, offset)
            if w < ARCHIVE_WARN { throw TransferError("cannot write '\(name)': \(disk.errorString)") }
        }
    }

    /// If `dir` holds exactly one entry, a directory with `usr` or `etc` in it, moves that
    /// directory's contents up and gives `dir` its owner, mode and times.
    static func stripSingleTopDirectory(_ dir: FileDescriptor, reporter: StatusReporter) throws {
        let entries = try directoryEntries(of: dir)
        guard entries.count == 1, let top = entries.first,
              let st = try? fileStatus(top, relativeTo: dir, followSymlinks: false), st.isDirectory else { return }
        let sub = try FileDescriptor.openDirectory(top, relativeTo: dir, followSymlinks: false)
        defer { sub.close() }
        let looksLikeOS = ["usr", "etc"].contains { (try? fileStatus($0, relativeTo: sub, followSymlinks: false)) != nil }
        guard looksLikeOS else { return }
        reporter.log(LogPriority.info, "archive holds one OS tree '\(top)': importing its contents")
        // Moved aside first, so an entry of the same name inside it can come up.
        let aside = ".#berth-top-\(UInt64.random(in: 0...UInt64.max))"
        try renameNoReplace(top, aside, fromDirectory: dir, toDirectory: dir)
        for name in try directoryEntries(of: sub) {
            try renameNoReplace(name, name, fromDirectory: sub, toDirectory: dir)
        }
        _ = try sys("fchown") { fchown(dir.rawValue, st.uid, st.gid) }
        _ = try sys("fchmod") { fchmod(dir.rawValue, st.mode & 0o7777) }
        var times = [st.accessTime, st.modificationTime]
        _ = try sys("futimens") { futimens(dir.rawValue, &times) }
        _ = try sys("unlinkat", aside) { unlinkat(dir.rawValue, aside, AT_REMOVEDIR) }
    }
}
