import CArchive
import FileTree
import Glibc
import Linux
import Transfer
import struct SystemPackage.FilePath

/// Applies OCI layers (tar, tar+gzip, tar+zstd; detected from the bytes) one after the other
/// into one tree, as the image spec's "applying changesets" says: `.wh.NAME` deletes NAME of
/// the layers below, `.wh..wh..opq` empties its directory of what the layers below put there,
/// an entry replacing one of another type replaces it (a directory with all it holds).
///
/// Safety as ImportTar's: the work runs on a thread confined to the tree (chroot'ed there as
/// root), libarchive's disk writer refuses `..`, absolute paths and writing through symlinks;
/// whiteouts are resolved with openat2 inside the tree and refused through a symlink. A layer
/// entry that is refused fails the pull.
package enum OciLayers {
    /// Applies the layer in the file `blob` (already verified) into the tree `root`;
    /// `progress` gets the bytes of `blob` consumed so far.
    static func apply(blob: FileDescriptor, into root: FileDescriptor, reporter: StatusReporter,
                      progress: (Int64) -> Void) throws {
        try runConfined(in: root, confine: true) {
            try applyHere(blob: blob, root: root, reporter: reporter, progress: progress)
        }
    }

    /// Same, with the chroot skipped (tests prove the checks hold on their own).
    static func applyUnconfined(blob: FileDescriptor, into root: FileDescriptor) throws {
        try runConfined(in: root, confine: false) {
            try applyHere(blob: blob, root: root, reporter: .silent, progress: { _ in })
        }
    }

    private static func applyHere(blob: FileDescriptor, root: FileDescriptor, reporter: StatusReporter,
                                  progress: (Int64) -> Void) throws {
        let reader = try ArchiveHandle.reader()
        try reader.check(archive_read_support_format_tar(reader.pointer), "tar support")
        try reader.check(archive_read_support_filter_gzip(reader.pointer), "gzip support")
        try reader.supportImportCompressions()
        try reader.check(archive_read_open_fd(reader.pointer, blob.rawValue, transferBlockSize), "cannot read the layer")
        let disk = try ArchiveHandle.diskWriter()
        try disk.check(archive_write_disk_set_options(disk.pointer, TarImport.diskFlags), "disk writer options")

        // Paths this layer wrote (with their parents): an opaque directory keeps them.
        var created: Set<String> = []
        var entry: OpaquePointer?
        var count = 0
        while true {
            let r = archive_read_next_header(reader.pointer, &entry)
            if r == ARCHIVE_EOF { break }
            try reader.check(r, "cannot read the layer")
            guard let entry else { throw TransferError("layer entry missing") }
            let raw = archive_entry_pathname(entry).map { String(cString: $0) } ?? ""
            guard let path = normalize(raw) else { throw TransferError("refusing layer entry '\(raw)': not a path inside the image") }
            if path.isEmpty { continue }  // the layer's "./": the tree's root stays as it is
            let (parent, base) = split(path)
            if base == ".wh..wh..opq" {
                try makeOpaque(parent, root: root, keeping: created)
                continue
            }
            if base.hasPrefix(".wh.") {
                let name = String(base.dropFirst(4))
                guard !name.isEmpty, name != ".", name != ".." else { throw TransferError("refusing whiteout '\(raw)'") }
                let victim = parent.isEmpty ? name : parent + "/" + name
                if !created.contains(victim) { try remove(name, inDirectory: parent, root: root) }
                continue
            }
            if archive_entry_filetype(entry) != S_IFDIR {
                // A directory of a lower layer replaced by a file, link or device: it goes first
                // (libarchive would only try rmdir).
                if let dir = try? openDirectory(parent, root: root),
                   let st = try? fileStatus(base, relativeTo: dir, followSymlinks: false), st.isDirectory {
                    try TreeRemoval.remove(base, in: dir)
                }
            }
            archive_entry_set_pathname(entry, path)
            if let link = archive_entry_hardlink(entry) {
                let target = String(cString: link)
                guard let normalized = normalize(target), !normalized.isEmpty else {
                    throw TransferError("refusing hard link '\(raw)' to '\(target)'")
                }
                archive_entry_set_hardlink(entry, normalized)
            }
            let w = archive_write_header(disk.pointer, entry)
            if w < ARCHIVE_WARN { throw TransferError("refusing layer entry '\(raw)': \(disk.errorString)") }
            if w == ARCHIVE_WARN { reporter.log(LogPriority.warning, "\(raw): \(disk.errorString)") }
            if archive_entry_size_is_set(entry) != 0, archive_entry_size(entry) > 0 {
                try TarImport.copyData(reader, disk, raw)
            }
            let f = archive_write_finish_entry(disk.pointer)
            if f < ARCHIVE_WARN { throw TransferError("cannot finish '\(raw)': \(disk.errorString)") }
            // The entry and every folder above it, up to its first component.
            var p = FilePath(path)
            while true {
                created.insert(p.string)
                guard p.components.count > 1 else { break }
                p.removeLastComponent()
            }
            count += 1
            if count % 64 == 0 { progress(archive_filter_bytes(reader.pointer, -1)) }
        }
        try disk.check(archive_write_close(disk.pointer), "cannot finish writing the layer")
        progress(archive_filter_bytes(reader.pointer, -1))
    }

    /// `raw` as a relative path without `.`, empty components or a leading `/`; nil if it has
    /// a `..` component. "" for the root.
    package static func normalize(_ raw: String) -> String? {
        var parts: [Substring] = []
        for c in raw.split(separator: "/", omittingEmptySubsequences: true) {
            if c == "." { continue }
            if c == ".." { return nil }
            parts.append(c)
        }
        return parts.joined(separator: "/")
    }

    /// The folder of the normalized relative `path` ("" at the top) and its last component.
    private static func split(_ path: String) -> (String, String) {
        let p = FilePath(path)
        return (p.removingLastComponent().string, p.lastComponent?.string ?? "")
    }

    /// The directory `path` of the tree, never through a symlink; nil if it is not there.
    private static func openDirectory(_ path: String, root: FileDescriptor) throws -> FileDescriptor? {
        if path.isEmpty { return try root.duplicate() }
        let result = Result { () throws(SystemCallError) -> FileDescriptor in
            try FileDescriptor.open(path, flags: O_RDONLY | O_DIRECTORY, relativeTo: root, resolve: [.inRoot, .noSymlinks])
        }
        switch result {
        case .success(let fd): return fd
        case .failure(let e) where e.errno == .ENOENT || e.errno == .ENOTDIR: return nil
        case .failure(let e) where e.errno == .ELOOP:
            throw TransferError("refusing a whiteout below '\(path)': the path goes through a symlink")
        case .failure(let e): throw e
        }
    }

    /// Removes `name` of the directory `parent` (and all it holds), if it is there.
    private static func remove(_ name: String, inDirectory parent: String, root: FileDescriptor) throws {
        guard let dir = try openDirectory(parent, root: root) else { return }
        defer { dir.close() }
        try TreeRemoval.remove(name, in: dir)
    }

    /// `.wh..wh..opq` in `path`: everything in it that this layer did not write goes.
    private static func makeOpaque(_ path: String, root: FileDescriptor, keeping created: Set<String>) throws {
        guard let dir = try openDirectory(path, root: root) else { return }
        defer { dir.close() }
        for name in try directoryEntries(of: dir) {
            let child = path.isEmpty ? name : path + "/" + name
            if !created.contains(child) {
                try TreeRemoval.remove(name, in: dir)
            } else if (try? fileStatus(name, relativeTo: dir, followSymlinks: false))?.isDirectory == true {
                try makeOpaque(child, root: root, keeping: created)
            }
        }
    }
}
