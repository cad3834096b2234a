import CLinux
import Glibc
import Linux
import struct SystemPackage.FilePath

/// Removes a tree fd-relative (unlinkat), never following symlinks, lifting the immutable and
/// append-only flags that stop even root, on every inode and not just the top. It refuses to
/// descend into a mount point inside the tree (EBUSY) rather than delete what is mounted there.
public enum TreeRemoval {
    /// Removes `path` (a directory tree, a file, a symlink); a missing path is not an error.
    public static func remove(at path: FilePath) throws {
        guard let name = path.lastComponent else { throw SystemCallError("unlinkat", .EBUSY, subject: path.string) }
        let folder = path.removingLastComponent()
        let parent = try FileDescriptor.openDirectory(folder.isEmpty ? "." : folder.string)
        try remove(name.string, in: parent)
    }

    /// Removes the entry `name` of the directory `parent`, and everything below it.
    public static func remove(_ name: String, in parent: FileDescriptor) throws {
        guard let st = try TreeSupport.statusIfPresent(name, in: parent) else { return }
        guard st.isDirectory else {
            try unlinkFile(name, in: parent)
            return
        }
        // The parent's own flags: an immutable parent forbids unlinking its entries.
        let top = try FileDescriptor.openDirectory(name, relativeTo: parent, followSymlinks: false)
        TreeSupport.liftProtection(top)
        let rootMount = TreeSupport.mountID("", in: top)
        let start = TreeSupport.Descent(fd: top, identity: [st.device, st.inode], names: try directoryEntries(of: top))
        try TreeSupport.walk(start, named: name, visit: { child, dir in
            guard let cst = try TreeSupport.statusIfPresent(child, in: dir) else { return nil }
            guard cst.isDirectory else {
                try unlinkFile(child, in: dir)
                return nil
            }
            let fd = try FileDescriptor.openDirectory(child, relativeTo: dir, followSymlinks: false)
            if let rootMount, let m = TreeSupport.mountID("", in: fd), m != rootMount {
                throw SystemCallError("unlinkat", .EBUSY, subject: "\(child): a mount point inside the tree")
            }
            TreeSupport.liftProtection(fd)
            return TreeSupport.Descent(fd: fd, identity: [cst.device, cst.inode], names: try directoryEntries(of: fd))
        }, leave: { done, fd, above in
            fd?.close()
            try removeDirectoryEntry(done, in: above ?? parent)
        })
    }

    private static func unlinkFile(_ name: String, in dir: FileDescriptor) throws {
        if unlinkat(dir.rawValue, name, 0) == 0 { return }
        let e = Errno.current
        if e == .ENOENT { return }
        guard e == .EPERM else { throw SystemCallError("unlinkat", e, subject: name) }
        // An immutable or append-only regular file: lift and retry. O_NONBLOCK|O_NOFOLLOW so a
        // special file cannot block or redirect us; those cannot carry the flags we lift anyway.
        if let fd = try? FileDescriptor.open(name, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, relativeTo: dir) {
            TreeSupport.liftProtection(fd)
        }
        try sys("unlinkat", name) { unlinkat(dir.rawValue, name, 0) }
    }

    private static func removeDirectoryEntry(_ name: String, in dir: FileDescriptor) throws {
        if unlinkat(dir.rawValue, name, AT_REMOVEDIR) == 0 { return }
        let e = Errno.current
        if e == .ENOENT { return }
        throw SystemCallError("unlinkat(AT_REMOVEDIR)", e, subject: name)
    }

}

/// Space a tree occupies: allocated blocks of every inode, hardlinked inodes counted once
/// (what `du` reports), staying on the tree's mount.
public enum DiskUsage {
    /// Walks `path` fd-relative and sums st_blocks × 512, one open directory per level, with
    /// O_NOATIME: a scan changes nothing in the tree, not even access times.
    /// `path` itself may be a symlink to the tree; nothing inside it is followed.
    public static func allocatedBytes(of path: FilePath) throws -> UInt64 {
        let path = path.string
        let st = try fileStatus(path)
        guard st.isDirectory else { return st.allocatedBytes }
        let top = try TreeSupport.openDirectoryForReading(path, in: nil, followSymlinks: true)
        let rootMount = TreeSupport.mountID("", in: top)
        var seen = Set<[UInt64]>()
        var total = st.allocatedBytes
        let start = TreeSupport.Descent(fd: top, identity: [st.device, st.inode], names: try directoryEntries(of: top))
        try TreeSupport.walk(start, named: "", visit: { name, dir in
            guard let cst = try? fileStatus(name, relativeTo: dir, followSymlinks: false) else { return nil }
            if cst.linkCount > 1 && !cst.isDirectory {
                guard seen.insert([cst.device, cst.inode]).inserted else { return nil }
            }
            total += cst.allocatedBytes
            guard cst.isDirectory, let fd = try? TreeSupport.openDirectoryForReading(name, in: dir) else { return nil }
            if let rootMount, let m = TreeSupport.mountID("", in: fd), m != rootMount { return nil }
            return TreeSupport.Descent(fd: fd, identity: [cst.device, cst.inode], names: (try? directoryEntries(of: fd)) ?? [])
        }, leave: { _, _, _ in })
        return total
    }
}
