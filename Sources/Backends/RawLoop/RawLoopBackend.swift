import CLinux
import Glibc
import FileTree
import Linux
import PoolAPI
import struct SystemPackage.FilePath

/// Raw disk images (`NAME.raw` files in a pool folder), systemd's image type `raw`.
///
/// Clones share extents where the filesystem can (FICLONE) and stay sparse where it cannot.
/// Read-only is the immutable inode flag (FS_IMMUTABLE_FL), so it holds against root too, where
/// systemd only drops the write bits. Inspection runs in a `berth-inspect` child: it probes the
/// file with libblkid, attaches it read-only to a loop device and mounts its root filesystem
/// read-only in a mount namespace of its own, where berthd reads it through /proc/CHILD/root.
public struct RawLoopBackend: ImageBackend {
    /// Berth's runtime folder (`<root>/run/berth`): inspection children mount a private tmpfs
    /// over `inspect/` below it, in their own namespaces.
    public let runtimeDirectory: FilePath
    /// The `berth-inspect` executable that probes and mounts images for inspection.
    public let inspectorExecutable: String

    /// - Parameters:
    ///   - runtimeDirectory: Berth's runtime folder (`<root>/run/berth`).
    ///   - inspector: the `berth-inspect` executable (default: the one beside this executable).
    public init(runtimeDirectory: FilePath, inspector: String = RawLoopBackend.inspectorBesideSelf()) {
        self.runtimeDirectory = runtimeDirectory
        self.inspectorExecutable = inspector
    }

    /// The suffix that makes a regular file in a pool folder a raw image.
    public static let fileSuffix = ".raw"

    /// "raw", for logs and the registry.
    public var identifier: String { "raw" }
    /// `raw`, the `Image.Type` of every image here.
    public var imageType: ImageType { .raw }
    /// Clones reflink where the filesystem allows; no O(1) snapshots, no quota, not a tree.
    public var capabilities: BackendCapabilities { [.reflink, .blockBacked, .enforcedReadOnly] }

    /// A regular file (not followed through a symlink) named `NAME.raw` is the image `NAME`.
    public func claim(_ entry: PoolEntry) -> String? {
        let name = entry.fileName
        guard name.hasSuffix(Self.fileSuffix), name.utf8.count > Self.fileSuffix.utf8.count else { return nil }
        guard entry.status?.isRegular == true else { return nil }
        return String(name.dropLast(Self.fileSuffix.count))
    }

    /// `NAME.raw`.
    public func entryName(forImage name: String) -> String { name + Self.fileSuffix }

    /// A raw image is a plain file: any directory can hold one.
    public func canCreate(in directory: FilePath) -> Bool {
        (try? fileStatus(directory.string))?.isDirectory == true
    }

    /// Metadata as systemd reports it for raw images: usage and exclusive usage are the bytes
    /// allocated (st_blocks × 512), limit and exclusive limit the file's size; read-only if the
    /// immutable flag is set or no write bit is (systemd's own way of marking it).
    public func image(named name: String, entry: PoolEntry) throws -> Image {
        let path = entry.path.string
        guard let status = entry.status else { throw PoolError(.noSuchImage, "no image at \(path)") }
        guard status.isRegular else { throw PoolError(.invalidImage, "\(path) is not a regular file") }
        var readOnly = status.mode & 0o222 == 0
        if !readOnly {
            if let immutable = status.isImmutable {
                readOnly = immutable
            } else if let fd = try? FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY),
                      let immutable = try? fd.isImmutable() {
                readOnly = immutable
            }
        }
        return Image(
            name: name, path: path, type: .raw, readOnly: readOnly,
            creationTimestamp: status.birthMicroseconds,
            modificationTimestamp: status.modificationMicroseconds,
            usage: status.allocatedBytes, usageExclusive: status.allocatedBytes,
            limit: status.size, limitExclusive: status.size)
    }

    /// An empty raw image: a new file of mode 0644 (O_CREAT|O_EXCL, so nothing is replaced).
    public func createEmpty(at path: FilePath) throws {
        let fd = try systemCall("cannot create \(path)") { () throws(SystemCallError) in
            try FileDescriptor.open(path.string, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o644)
        }
        defer { fd.close() }
        // The umask may have taken bits away from 0644.
        do {
            try sys("fchmod", path.string) { fchmod(fd.rawValue, 0o644) }
        } catch {
            unlink(path.string)
            throw PoolError.from(error, "cannot set the mode of \(path)")
        }
    }

    /// Copies the file with FICLONE where source and destination share a filesystem that can,
    /// else copies only its data extents so that a sparse image stays sparse; then owner, mode,
    /// extended attributes and access/modification times, so the clone is faithful. The source
    /// is read with O_NOATIME: cloning does not touch it. On any failure (ENOSPC…) the partial
    /// destination is removed.
    public func clone(from source: FilePath, to destination: FilePath) throws {
        let input: FileDescriptor
        do {
            input = try FileDescriptor.openPreservingAccessTime(source.string, flags: O_RDONLY | O_NOFOLLOW | O_NOCTTY)
        } catch {
            throw error.errno == .ENOENT ? PoolError(.noSuchImage, "cannot open \(source)", cause: error)
                                         : PoolError.from(error, "cannot open \(source)")
        }
        defer { input.close() }
        let status = try systemCall("cannot stat \(source)") { () throws(SystemCallError) in try input.stat() }
        guard status.isRegular else { throw PoolError(.invalidImage, "\(source) is not a regular file") }
        let output = try systemCall("cannot create \(destination)") { () throws(SystemCallError) in
            try FileDescriptor.open(destination.string, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        }
        defer { output.close() }
        do {
            try FileCopy.copyContents(from: input, to: output)
            try copyMetadata(from: input, status: status, to: output, destination: destination.string)
        } catch {
            unlink(destination.string)
            throw PoolError.from(error, "cannot clone \(source) to \(destination)")
        }
    }

    /// Owner (fchown), extended attributes (ACLs included), mode (after the owner, as chown clears
    /// set-user-ID bits) and times (futimens, last, as every other change moves them).
    private func copyMetadata(from input: FileDescriptor, status: FileStatus, to output: FileDescriptor,
                              destination: String) throws(SystemCallError) {
        try sys("fchown", destination) { fchown(output.rawValue, status.uid, status.gid) }
        // A namespace the destination filesystem does not have (or one that is not settable,
        // e.g. security.* under some LSMs) cannot be copied; anything else fails.
        try copyExtendedAttributes(from: .fd(input), to: .fd(output), alsoSkipping: [.EPERM])
        try sys("fchmod", destination) { fchmod(output.rawValue, mode_t(status.mode & 0o7777)) }
        var times = [status.accessTime, status.modificationTime]
        try sys("futimens", destination) { futimens(output.rawValue, &times) }
    }

    /// renameat2(RENAME_NOREPLACE). An immutable file cannot be renamed, so the flag is lifted
    /// for the rename and set again afterwards (on the old name if the rename failed).
    public func rename(from source: FilePath, to destination: FilePath) throws {
        let fd = try? FileDescriptor.open(source.string, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
        defer { fd?.close() }
        let immutable = (try? fd?.isImmutable()) == true
        if immutable, let fd {
            try systemCall("cannot lift the immutable flag of \(source)") { () throws(SystemCallError) in try fd.setImmutable(false) }
        }
        do {
            try renameNoReplace(source.string, destination.string)
        } catch {
            if immutable, let fd { try? fd.setImmutable(true) }
            if error.errno == .ENOENT, fd == nil {
                throw PoolError(.noSuchImage, "cannot rename \(source): it does not exist", cause: error)
            }
            throw PoolError.from(error, "cannot rename \(source) to \(destination)")
        }
        // The descriptor still names the same inode, now at its new name.
        if immutable, let fd {
            try systemCall("cannot set the immutable flag of \(destination) again") { () throws(SystemCallError) in
                try fd.setImmutable(true)
            }
        }
    }

    /// Lifts the immutable flag, then unlinks the file.
    public func remove(at path: FilePath) throws {
        if let fd = try? FileDescriptor.open(path.string, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY) {
            if (try? fd.isImmutable()) == true {
                try systemCall("cannot lift the immutable flag of \(path)") { () throws(SystemCallError) in try fd.setImmutable(false) }
            }
            fd.close()
        }
        try systemCall("cannot remove \(path)") { () throws(SystemCallError) in
            try sys("unlinkat", path.string) { unlinkat(AT_FDCWD, path.string, 0) }
        }
    }

    /// Sets or clears FS_IMMUTABLE_FL (FS_IOC_SETFLAGS), which even root cannot write through.
    /// Making an image writable also gives the owner its write bit back if none was set (an
    /// image systemd made read-only by chmod). Where the filesystem has no immutable flag, falls
    /// back to systemd's way: dropping or restoring the write bits.
    public func setReadOnly(_ readOnly: Bool, at path: FilePath) throws {
        let fd = try systemCall("cannot open \(path)") { () throws(SystemCallError) in
            try FileDescriptor.open(path.string, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
        }
        defer { fd.close() }
        let status = try systemCall("cannot stat \(path)") { () throws(SystemCallError) in try fd.stat() }
        guard status.isRegular else { throw PoolError(.invalidImage, "\(path) is not a regular file") }
        let mode = status.mode & 0o7777
        do {
            try fd.setImmutable(readOnly)
            if !readOnly, mode & 0o222 == 0 {
                try sys("fchmod", path.string) { fchmod(fd.rawValue, mode_t(mode | 0o200)) }
            }
        } catch where [.EOPNOTSUPP, .ENOTTY, .EINVAL].contains(error.errno) {
            let newMode = readOnly ? mode & ~0o222 : mode | 0o200
            try systemCall("cannot change the mode of \(path)") { () throws(SystemCallError) in
                try sys("fchmod", path.string) { fchmod(fd.rawValue, mode_t(newMode)) }
            }
        } catch {
            throw PoolError.from(error, "cannot make \(path) \(readOnly ? "read-only" : "writable")")
        }
    }

    /// Raw images have no size limit Berth could enforce (systemd: NotSupported).
    public func setLimit(_ bytes: UInt64, at path: FilePath) throws {
        throw PoolError(.notSupported, "raw images have no size limits")
    }

    /// Has a `berth-inspect` child probe the image with libblkid, attach it read-only to a loop
    /// device and mount its root filesystem (the DPS root and /usr partitions of a GPT disk, the
    /// one Linux partition of an MBR disk, or a bare filesystem) read-only, nosuid, nodev, noexec
    /// in the child's own mount namespace; the returned root reads it through /proc/CHILD/root.
    /// Nothing stays attached, mounted or running if this throws; the root's `close()` ends it all.
    public func openForInspection(at path: FilePath) throws -> any InspectionRoot {
        try inspect(path: path.string)
    }

    /// Wraps a system call's error; ENOENT on the image becomes `.noSuchImage`.
    @discardableResult
    private func systemCall<T>(_ message: @autoclosure () -> String, _ body: () throws(SystemCallError) -> T) throws -> T {
        do {
            return try body()
        } catch where error.errno == .ENOENT {
            throw PoolError(.noSuchImage, message(), cause: error)
        } catch {
            throw PoolError.from(error, message())
        }
    }
}
