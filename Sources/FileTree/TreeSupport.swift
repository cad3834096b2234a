import CLinux
import Glibc
import Linux

/// Small fd-relative helpers shared by the tree walkers of this module.
enum TreeSupport {
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

    /// A directory the walk goes into: what `walk`'s `visit` returns for an entry to descend.
    struct Descent {
        var fd: FileDescriptor
        /// (device, inode), checked when the directory is reopened through `..` of a child.
        var identity: [UInt64]
        var names: [String]
    }

    /// The depth-first, fd-relative walk of TreeRemoval and DiskUsage: an explicit stack (a deep
    /// tree cannot overflow the thread's stack), at most `openLevels` directories open at once
    /// (ancestors are closed and reopened through `..`, checked against their identity).
    /// - Parameters:
    ///   - top: the directory the walk starts in, its identity and entry names, and its name in
    ///     its parent (handed back to `leave`).
    ///   - visit: called for each entry name with its directory; returns the directory to walk
    ///     into next, or nil to go on with the next entry.
    ///   - leave: called once a directory's entries are done, with its name, its descriptor
    ///     (nil if parked) and its parent's (nil for `top`), deepest first.
    static func walk(_ top: Descent, named topName: String,
                     visit: (_ name: String, _ dir: FileDescriptor) throws -> Descent?,
                     leave: (_ name: String, _ fd: FileDescriptor?, _ parent: FileDescriptor?) throws -> Void) throws {
        var stack = [WalkLevel(fd: top.fd, identity: top.identity, names: top.names, nameInParent: topName)]
        while !stack.isEmpty {
            let i = stack.count - 1
            if stack[i].next >= stack[i].names.count {
                let done = stack.removeLast()
                if let p = stack.indices.last, stack[p].fd == nil, let child = done.fd {
                    stack[p].fd = try reopenParent(of: child, expecting: stack[p].identity)
                }
                try leave(done.nameInParent, done.fd, stack.last?.fd)
                continue
            }
            let name = stack[i].names[stack[i].next]
            stack[i].next += 1
            // The deepest level is never parked.
            guard let dir = stack[i].fd else { throw SystemCallError("openat", .EBADF, subject: name) }
            guard let next = try visit(name, dir) else { continue }
            stack.append(WalkLevel(fd: next.fd, identity: next.identity, names: next.names, nameInParent: name))
            // Only the deepest levels stay open (index 0 is reopened like any other).
            let park = stack.count - 1 - openLevels
            if park >= 0 { stack[park].fd?.close(); stack[park].fd = nil }
        }
    }

    /// One directory of `walk`; `fd` is nil while parked.
    private struct WalkLevel {
        var fd: FileDescriptor?
        var identity: [UInt64]
        var names: [String]
        var next = 0
        var nameInParent: String
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

    /// Opens a regular file for copying with O_NOATIME where allowed, so reading does not
    /// disturb the source's access time.
    static func openForReading(_ name: String, in dir: FileDescriptor) throws(SystemCallError) -> FileDescriptor {
        try FileDescriptor.openPreservingAccessTime(name, flags: O_RDONLY | O_NOFOLLOW, relativeTo: dir)
    }

    /// Opens a directory for listing with O_NOATIME where allowed (no symlink followed), so
    /// walking a tree (a usage scan, the source of a copy) leaves its access times alone:
    /// listing a directory is a read that would otherwise dirty its inode.
    static func openDirectoryForReading(_ name: String, in dir: FileDescriptor?, followSymlinks: Bool = false) throws(SystemCallError) -> FileDescriptor {
        try FileDescriptor.openPreservingAccessTime(name, flags: O_RDONLY | O_DIRECTORY | (followSymlinks ? 0 : O_NOFOLLOW), relativeTo: dir)
    }

    /// statx(2) STATX_MNT_ID: which mount `name` in `dir` (or `dir` itself for "") is on, so
    /// walkers stay on one mount and never copy or delete what is mounted inside a tree.
    static func mountID(_ name: String, in dir: FileDescriptor) -> UInt64? {
        var stx = CLinux.statx()
        let flags = AT_SYMLINK_NOFOLLOW | (name.isEmpty ? FileDescriptor.emptyPath : 0)
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
