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

    /// The names in the directory `dir` (without `.` and `..`), read through a duplicate so
    /// `dir` stays usable: fdopendir(3) takes ownership of the descriptor it is given.
    static func names(in dir: FileDescriptor) throws -> [String] {
        let dup = try dir.duplicate()
        // A duplicate shares the file offset: rewind so a second listing sees everything.
        _ = lseek(dup.rawValue, 0, SEEK_SET)
        guard let stream = fdopendir(dup.rawValue) else {
            throw SystemCallError("fdopendir", .current)
        }
        _ = dup.release()
        defer { closedir(stream) }
        var result: [String] = []
        while true {
            errno = 0
            guard let ent = readdir(stream) else {
                if errno != 0 { throw SystemCallError("readdir", .current) }
                break
            }
            let name = withUnsafeBytes(of: ent.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { result.append(name) }
        }
        return result
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

    /// Where an inode's extended attributes are read and written: an open fd, or a path for
    /// symlinks and special files, which must not be opened (a fifo would block, a device
    /// would be opened).
    enum XattrTarget {
        case fd(FileDescriptor)
        case path(String)
    }

    /// All extended attributes (user.*, trusted.*, security.* incl. capabilities,
    /// system.posix_acl_* = ACLs) of `target` (flistxattr/fgetxattr or llistxattr/lgetxattr).
    static func xattrs(of target: XattrTarget) throws -> [(String, [UInt8])] {
        var size = 0
        let list: [CChar]
        while true {
            size = switch target {
            case .fd(let fd): flistxattr(fd.rawValue, nil, 0)
            case .path(let p): llistxattr(p, nil, 0)
            }
            if size < 0 {
                let e = Errno.current
                if e == .EOPNOTSUPP { return [] }
                throw SystemCallError("listxattr", e)
            }
            if size == 0 { return [] }
            var buffer = [CChar](repeating: 0, count: size)
            let n = switch target {
            case .fd(let fd): flistxattr(fd.rawValue, &buffer, size)
            case .path(let p): llistxattr(p, &buffer, size)
            }
            if n < 0 {
                if Errno.current == Errno(ERANGE) { continue }  // grew meanwhile
                throw SystemCallError("listxattr", .current)
            }
            list = Array(buffer[0..<n])
            break
        }
        var result: [(String, [UInt8])] = []
        for raw in list.split(separator: 0) {
            let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            while true {
                let len = switch target {
                case .fd(let fd): fgetxattr(fd.rawValue, name, nil, 0)
                case .path(let p): lgetxattr(p, name, nil, 0)
                }
                if len < 0 {
                    if Errno.current == .ENODATA { break }  // removed meanwhile
                    throw SystemCallError("getxattr", .current, subject: name)
                }
                var value = [UInt8](repeating: 0, count: max(len, 1))
                let got = switch target {
                case .fd(let fd): fgetxattr(fd.rawValue, name, &value, len)
                case .path(let p): lgetxattr(p, name, &value, len)
                }
                if got < 0 {
                    if Errno.current == Errno(ERANGE) { continue }
                    if Errno.current == .ENODATA { break }
                    throw SystemCallError("getxattr", .current, subject: name)
                }
                result.append((name, Array(value[0..<got])))
                break
            }
        }
        return result
    }

    /// Sets each attribute on `target` (fsetxattr/lsetxattr). A destination filesystem that
    /// has no xattrs at all, or refuses a namespace on symlinks (user.*), is skipped; running out
    /// of space is not.
    static func setXattrs(_ attrs: [(String, [UInt8])], on target: XattrTarget) throws {
        for (name, value) in attrs {
            let r = value.withUnsafeBytes { buf in
                switch target {
                case .fd(let fd): fsetxattr(fd.rawValue, name, buf.baseAddress, value.count, 0)
                case .path(let p): lsetxattr(p, name, buf.baseAddress, value.count, 0)
                }
            }
            if r != 0 {
                let e = Errno.current
                if e == .EOPNOTSUPP { continue }
                if case .path = target, e == .EPERM { continue }
                throw SystemCallError("setxattr", e, subject: name)
            }
        }
    }

    /// Clears FS_IMMUTABLE_FL and FS_APPEND_FL, which stop even root from changing or removing
    /// an inode. Filesystems without inode flags (ENOTTY/EOPNOTSUPP) have nothing to lift.
    static func liftProtection(_ fd: FileDescriptor) {
        guard let flags = try? fd.inodeFlags() else { return }
        let mask = UInt32(BERTH_FS_IMMUTABLE_FL) | UInt32(FS_APPEND_FL)
        if flags & mask != 0 { try? fd.setInodeFlags(flags & ~mask) }
    }
}
