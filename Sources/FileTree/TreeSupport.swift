import CLinux
import Glibc
import Linux

/// Small fd-relative helpers shared by the tree walkers of this module.
enum TreeSupport {
    /// AT_EMPTY_PATH and O_NOATIME: glibc defines them only under _GNU_SOURCE.
    static let emptyPath: Int32 = 0x1000
    static let noAccessTime: Int32 = 0o1000000
    /// O_PATH: a descriptor that names an inode without opening it (hidden likewise).
    static let pathOnly: Int32 = 0o10000000

    /// How many directory levels a walk keeps open; deeper ancestors are closed and reopened
    /// through `..` when the walk comes back up. Two descriptors per level at most.
    static let openLevels = 64

    /// openat(child, "..") checked against the (device, inode) the parent had.
    static func reopenParent(of child: FileDescriptor, expecting identity: [UInt64]) throws -> FileDescriptor {
        let parent = try FileDescriptor.openDirectory("..", relativeTo: child, followSymlinks: false)
        let st = try parent.stat()
        guard [st.device, st.inode] == identity else {
            throw SystemCallError("openat(..)", Errno(ESTALE), subject: "a directory moved during the walk")
        }
        return parent
    }

    /// fstatat(2) with AT_SYMLINK_NOFOLLOW; nil if the entry does not exist (any more).
    static func statusIfPresent(_ name: String, in dir: FileDescriptor) throws -> FileStatus? {
        do {
            return try fileStatus(name, relativeTo: dir, followSymlinks: false)
        } catch {
            if error.errno == .ENOENT { return nil }
            throw error
        }
    }

    /// Opens a regular file for copying with O_NOATIME, so reading does not disturb the
    /// source's access time; O_NOATIME needs ownership or CAP_FOWNER, so EPERM retries without.
    static func openForReading(_ name: String, in dir: FileDescriptor) throws -> FileDescriptor {
        do {
            return try FileDescriptor.open(name, flags: O_RDONLY | O_NOFOLLOW | noAccessTime, relativeTo: dir)
        } catch {
            guard error.errno == .EPERM else { throw error }
            return try FileDescriptor.open(name, flags: O_RDONLY | O_NOFOLLOW, relativeTo: dir)
        }
    }

    /// Opens a directory for listing with O_NOATIME (no symlink followed), so walking a tree
    /// (a usage scan, the source of a copy) leaves its access times alone: listing a directory
    /// is a read that would otherwise dirty its inode. EPERM retries without, as for files.
    static func openDirectoryForReading(_ name: String, in dir: FileDescriptor?, followSymlinks: Bool = false) throws -> FileDescriptor {
        let flags = O_RDONLY | O_DIRECTORY | (followSymlinks ? 0 : O_NOFOLLOW)
        do {
            return try FileDescriptor.open(name, flags: flags | noAccessTime, relativeTo: dir)
        } catch {
            guard error.errno == .EPERM else { throw error }
            return try FileDescriptor.open(name, flags: flags, relativeTo: dir)
        }
    }

    /// statx(2) STATX_MNT_ID: which mount `name` in `dir` (or `dir` itself for "") is on, so
    /// walkers stay on one mount and never copy or delete what is mounted inside a tree.
    static func mountID(_ name: String, in dir: FileDescriptor) -> UInt64? {
        var stx = CLinux.statx()
        let flags = AT_SYMLINK_NOFOLLOW | (name.isEmpty ? emptyPath : 0)
        guard statx(dir.rawValue, name, flags, UInt32(STATX_MNT_ID), &stx) == 0,
              stx.stx_mask & UInt32(STATX_MNT_ID) != 0 else { return nil }
        return stx.stx_mnt_id
    }

    /// The path that reaches `name` in `dir` through procfs, for the l*xattr(2) calls, which
    /// have no *at form. The final component is not followed by l*xattr.
    static func procPath(_ name: String, in dir: FileDescriptor) -> String {
        "/proc/self/fd/\(dir.rawValue)/\(name)"
    }

    /// Clears FS_IMMUTABLE_FL and FS_APPEND_FL, which stop even root from changing or removing
    /// an inode. Filesystems without inode flags (ENOTTY/EOPNOTSUPP) have nothing to lift.
    static func liftProtection(_ fd: FileDescriptor) {
        guard let flags = try? fd.inodeFlags() else { return }
        let mask = UInt32(BERTH_FS_IMMUTABLE_FL) | UInt32(FS_APPEND_FL)
        if flags & mask != 0 { try? fd.setInodeFlags(flags & ~mask) }
    }
}
