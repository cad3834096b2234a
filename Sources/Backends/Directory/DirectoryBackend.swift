import CLinux
import FileTree
import Glibc
import Linux
import PoolAPI
import struct SystemPackage.FilePath

/// Plain directory trees as images (systemd's type `directory`). Registered last: btrfs claims
/// subvolumes first, and anything else that is a directory is ours.
///
/// Clones are faithful tree copies (`TreeCopy`), reflinked per file where the filesystem allows;
/// read-only is FS_IMMUTABLE_FL on the top directory, as systemd 252 sets it; usage is computed
/// in the background and cached, never on the path of `image(named:at:)`.
public struct DirectoryBackend: ImageBackend {
    /// "directory", for logs and the registry.
    public let identifier = "directory"
    /// systemd's `directory` image type.
    public let imageType = ImageType.directory
    /// `.reflink`: files of a clone share extents with the source where the filesystem allows
    /// (btrfs, xfs with reflink); elsewhere the copy is a sparse-aware data copy.
    public let capabilities: BackendCapabilities = [.tree, .reflink, .enforcedReadOnly]

    private let usage: UsageCache

    /// - Parameter usageLifetime: seconds a computed usage is served before a background
    ///   rescan; a top directory whose mtime or inode changed is rescanned at once.
    /// - Parameter report: told (once per tree) when a usage scan fails, for the daemon's log;
    ///   the scan is then retried with a growing backoff, not on every listing.
    public init(usageLifetime: Double, report: @escaping @Sendable (String) -> Void = { _ in }) {
        usage = UsageCache(lifetime: usageLifetime, report: report)
    }

    /// A backend whose cached usages are rescanned after 30 seconds (at once when the top
    /// directory changes): a scan walks the whole tree, so a client polling ListImages must not
    /// set off one per image every few seconds.
    public init(report: @escaping @Sendable (String) -> Void = { _ in }) { self.init(usageLifetime: 30, report: report) }

    /// Claims directories (following a symlink, as /etc/machines holds links to images), from
    /// the status the pool took.
    public func claim(_ entry: PoolEntry) -> String? {
        entry.target?.isDirectory == true ? entry.fileName : nil
    }

    /// Any directory can hold directory images.
    public func canCreate(in directory: FilePath) -> Bool {
        (try? fileStatus(directory.string))?.isDirectory ?? false
    }

    /// From the entry's statx (times, STATX_ATTR_IMMUTABLE) and statfs (read-only mount) and the
    /// cached usage: no system call where the filesystem reports the immutable attribute.
    public func image(named name: String, entry: PoolEntry) throws -> Image {
        let path = entry.path.string
        guard let st = entry.target else { throw PoolError(.noSuchImage, "no image at \(path)") }
        guard st.isDirectory else { throw PoolError(.invalidImage, "\(path) is not a directory") }
        let readOnly = (st.isImmutable ?? isImmutable(entry.path)) || (entry.filesystem?.isReadOnly ?? isReadOnlyMount(path))
        let used = usage.lookup(path: path, inode: st.inode, modification: st.modificationMicroseconds)
        return Image(name: name, path: path, type: .directory, readOnly: readOnly,
                     creationTimestamp: st.birthMicroseconds,
                     modificationTimestamp: st.modificationMicroseconds,
                     usage: used, usageExclusive: used)
    }

    /// mkdirat(2) with mode 0755.
    public func createEmpty(at path: FilePath) throws {
        do { try makeDirectory(path.string, mode: 0o755) } catch { throw PoolError.from(error, "cannot create \(path)") }
    }

    /// A faithful copy (`TreeCopy`); whatever was made is removed again on failure (ENOSPC
    /// midway), so nothing is left at `destination`.
    public func clone(from source: FilePath, to destination: FilePath) throws {
        do {
            try TreeCopy.copy(from: source, to: destination)
        } catch {
            try? TreeRemoval.remove(at: destination)
            throw Self.poolError(error, "cannot copy \(source) to \(destination)")
        }
    }

    /// renameat2(RENAME_NOREPLACE). An immutable directory cannot be renamed, so the flag is
    /// lifted for the rename and put back on whichever name the directory then has.
    public func rename(from source: FilePath, to destination: FilePath) throws {
        // Not through a symlink: renaming a link must not touch the flags of what it points to.
        let immutable = isImmutable(source, followSymlinks: false)
        if immutable { try setImmutable(false, source) }
        do {
            try renameNoReplace(source.string, destination.string)
        } catch {
            if immutable { try? setImmutable(true, source) }
            throw PoolError.from(error, "cannot rename \(source) to \(destination)")
        }
        usage.forget(path: source.string)
        if immutable { try setImmutable(true, destination) }
    }

    /// Removes the tree fd-relative (unlinkat), lifting immutable flags on every inode.
    public func remove(at path: FilePath) throws {
        do { try TreeRemoval.remove(at: path) } catch { throw Self.poolError(error, "cannot remove \(path)") }
        usage.forget(path: path.string)
    }

    /// FS_IMMUTABLE_FL (FS_IOC_SETFLAGS) on the top directory: nothing can be created in,
    /// removed from or renamed in it, by root either.
    public func setReadOnly(_ readOnly: Bool, at path: FilePath) throws {
        try setImmutable(readOnly, path)
    }

    /// The directory itself is the root filesystem; nothing to mount or release.
    public func openForInspection(at path: FilePath) throws -> any InspectionRoot {
        DirectoryInspectionRoot(root: path)
    }

    // MARK: helpers

    /// A directory on a read-only mount (statvfs ST_RDONLY).
    private func isReadOnlyMount(_ path: String) -> Bool {
        var s = statvfs()
        return statvfs(path, &s) == 0 && (s.f_flag & UInt(ST_RDONLY)) != 0
    }

    private func isImmutable(_ path: FilePath, followSymlinks: Bool = true) -> Bool {
        guard let fd = try? FileDescriptor.openDirectory(path.string, followSymlinks: followSymlinks) else { return false }
        return (try? fd.isImmutable()) ?? false
    }

    /// O_NOFOLLOW, as systemd's chattr_path: a symlink is ELOOP, never its target changed.
    private func setImmutable(_ on: Bool, _ path: FilePath) throws {
        do {
            let fd = try FileDescriptor.openDirectory(path.string, followSymlinks: false)
            try fd.setImmutable(on)
        } catch {
            throw PoolError.from(error, "cannot \(on ? "set" : "clear") the immutable flag of \(path)")
        }
    }

    static func poolError(_ error: any Error, _ message: String) -> PoolError {
        if let e = error as? PoolError { return e }
        if let e = error as? SystemCallError { return PoolError.from(e, message) }
        return PoolError(.system, message, cause: error)
    }
}

/// A directory image's root, used in place.
final class DirectoryInspectionRoot: InspectionRoot {
    let root: FilePath
    init(root: FilePath) { self.root = root }
    func close() {}
}
