import CLinux
import Glibc
import Linux
import struct SystemPackage.FilePath

/// A faithful copy of a directory tree: numeric ownership, modes (setuid/setgid/sticky), access
/// and modification times (directories after their contents), extended attributes (security.*,
/// capabilities, ACLs as system.posix_acl_*), hardlinks as hardlinks, device nodes, fifos and
/// sockets (mknodat), symlinks verbatim, sparse files sparse, contents reflinked where the
/// filesystem allows (`FileCopy`).
///
/// Everything is fd-relative (openat/fstatat/mkdirat/mknodat/symlinkat/linkat with
/// AT_SYMLINK_NOFOLLOW and O_NOFOLLOW): no symlink of the source is ever followed, whatever it
/// points to. The walk keeps its own stack, so a deep tree cannot overflow the thread's stack.
/// The copy stays on the source's top mount: a mount point inside the tree becomes an empty
/// directory, as copying /proc of a host tree would be absurd. (systemd-machined 252 leaves
/// mount points out of a `.host` clone altogether; an empty directory keeps the tree's shape,
/// and nspawn mounts its API file systems there.)
///
/// A copy never descends into its own destination: a directory of the source with the
/// destination root's device and inode is left out (not even made empty), so copying a tree
/// into a folder inside itself (the host's root into a pool on the root's filesystem, an
/// import of an ancestor of the pool) ends, with the copy holding no trace of itself. The
/// check is one comparison per directory, on the status the walk reads anyway.
public enum TreeCopy {
    /// The device and inode of a directory: what the walk compares, never a path.
    public struct DirectoryIdentity: Sendable, Hashable {
        /// st_dev.
        public var device: UInt64
        /// st_ino.
        public var inode: UInt64

        /// The identity of the directory `status` describes.
        public init(_ status: FileStatus) {
            device = status.device
            inode = status.inode
        }
    }

    /// How a copy behaves.
    public struct Options: Sendable {
        /// Try FICLONE per file; false forces real data copies (tests, cross-checks).
        public var allowReflink: Bool
        /// Polled between entries; true stops the copy with ECANCELED.
        public var isCancelled: @Sendable () -> Bool
        /// Directories of the source copied as empty directories, their contents left out, as
        /// a mount point is: what a copy must not take along (the pool folder when the host's
        /// root is cloned). A handful at most: each directory is compared with every entry.
        public var leftEmpty: [DirectoryIdentity]
        /// The owner and group each copied inode gets, from the source's; nil keeps them as they
        /// are. A copy across a user-namespace boundary (into or out of a container started
        /// with `--private-users`) maps them here, so the copy does not leave files owned by
        /// ids that mean something else on the other side.
        public var ownership: (@Sendable (_ uid: uid_t, _ gid: gid_t) -> (uid: uid_t, gid: gid_t))?

        /// Reflinks allowed, never cancelled, everything copied, unless told otherwise.
        public init(allowReflink: Bool = true, leftEmpty: [DirectoryIdentity] = [],
                    ownership: (@Sendable (_ uid: uid_t, _ gid: gid_t) -> (uid: uid_t, gid: gid_t))? = nil,
                    isCancelled: @escaping @Sendable () -> Bool = { false }) {
            self.allowReflink = allowReflink
            self.leftEmpty = leftEmpty
            self.ownership = ownership
            self.isCancelled = isCancelled
        }
    }

    /// What a copy did.
    public struct Statistics: Sendable, Equatable {
        /// Directories made below the top.
        public var directories = 0
        /// Regular files copied (hardlinks of them not counted again).
        public var files = 0
        /// Of `files`, those whose contents were reflinked (FICLONE).
        public var reflinkedFiles = 0
        /// Extra names of already copied inodes, made with linkat(2).
        public var hardlinks = 0
        /// Symlinks made with symlinkat(2).
        public var symlinks = 0
        /// Device nodes, fifos and sockets made with mknodat(2).
        public var specialFiles = 0
        /// Bytes of regular-file contents (apparent size).
        public var bytes: UInt64 = 0
        /// Nothing copied yet.
        public init() {}
    }

    /// Opens the directory `path` (a symlink to it is followed) as the source of a copy, with
    /// O_NOATIME where allowed: reading the source leaves its access times alone.
    public static func openSource(_ path: FilePath) throws -> FileDescriptor {
        try TreeSupport.openDirectoryForReading(path.string, in: nil, followSymlinks: true)
    }

    /// Copies the directory `source` to `destination`, which must not exist yet (mkdirat(2)).
    /// `source` itself may be a symlink to the tree (images in /etc/machines usually are);
    /// nothing inside it is followed. On failure the caller removes `destination` (the pool
    /// does, with `TreeRemoval`).
    @discardableResult
    public static func copy(from source: FilePath, to destination: FilePath, options: Options = Options()) throws -> Statistics {
        let src = try TreeSupport.openDirectoryForReading(source.string, in: nil, followSymlinks: true)
        try makeDirectory(destination.string, mode: 0o700)
        let dst = try FileDescriptor.openDirectory(destination.string, followSymlinks: false)
        return try copyContents(of: src, into: dst, options: options)
    }

    /// Copies everything inside the directory `source` into the (empty) directory
    /// `destination`, then gives `destination` the ownership, mode, xattrs and times of
    /// `source`. Used where the destination was made by a backend (a new btrfs subvolume).
    @discardableResult
    public static func copyContents(of source: FileDescriptor, into destination: FileDescriptor,
                                    options: Options = Options()) throws -> Statistics {
        var copier = Copier(options: options, sourceRoot: source, destinationRoot: destination)
        try copier.run()
        return copier.statistics
    }

    /// Copies the entry `name` of the directory `sourceDirectory`, whatever its type (a
    /// directory with everything in it, a regular file, a symlink verbatim, a device node,
    /// fifo or socket), to `destinationName` in `destinationDirectory`, which must not exist.
    /// Neither `name` nor anything below it is followed if it is a symlink. A directory's
    /// walk stays on the mount the directory itself is on. On failure the caller removes
    /// `destinationName` (with `TreeRemoval`): what was copied so far is left there.
    @discardableResult
    public static func copyItem(_ name: String, in sourceDirectory: FileDescriptor, to destinationName: String,
                                in destinationDirectory: FileDescriptor, options: Options = Options()) throws -> Statistics {
        var copier = Copier(options: options, sourceRoot: sourceDirectory, destinationRoot: destinationDirectory)
        try copier.runItem(name, as: destinationName)
        return copier.statistics
    }

    private struct InodeKey: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    /// One directory being copied: its descriptors, remaining entries, and its source status
    /// (applied when its last entry is done, so its times survive the copy of its contents).
    private struct Frame {
        /// nil while parked: only the deepest `TreeSupport.openLevels` levels keep their
        /// descriptors, so a deep tree cannot exhaust RLIMIT_NOFILE.
        var source: FileDescriptor?
        var destination: FileDescriptor?
        var status: FileStatus
        var destinationIdentity: [UInt64]
        var names: [String]
        var next = 0
        /// Relative path from the destination root, for linkat(2) of later hardlinks.
        var relativePath: String

        func descriptors() throws -> (source: FileDescriptor, destination: FileDescriptor) {
            guard let source, let destination else { throw SystemCallError("copy", .EBADF, subject: relativePath) }
            return (source, destination)
        }

        mutating func park() {
            source?.close(); destination?.close()
            source = nil; destination = nil
        }

        /// Reopens a parked frame through its child's `..`, checking it is still the same
        /// directory on both sides (a concurrent rename would make it another).
        mutating func unpark(from child: Frame) throws {
            let (childSource, childDestination) = try child.descriptors()
            source = try TreeSupport.reopenParent(of: childSource, expecting: [status.device, status.inode])
            destination = try TreeSupport.reopenParent(of: childDestination, expecting: destinationIdentity)
        }
    }

    private struct Copier {
        let options: Options
        let sourceRoot: FileDescriptor
        let destinationRoot: FileDescriptor
        var statistics = Statistics()
        /// First destination path (relative to the root) of each multiply-linked source inode.
        var linked: [InodeKey: String] = [:]
        var rootMount: UInt64?
        /// The destination root, which the walk must never enter (see `TreeCopy`).
        var destinationRootIdentity: DirectoryIdentity?

        init(options: Options, sourceRoot: FileDescriptor, destinationRoot: FileDescriptor) {
            self.options = options
            self.sourceRoot = sourceRoot
            self.destinationRoot = destinationRoot
        }

        mutating func run() throws {
            rootMount = TreeSupport.mountID("", in: sourceRoot)
            var rootStatus = try sourceRoot.stat()
            if let map = options.ownership { (rootStatus.uid, rootStatus.gid) = map(rootStatus.uid, rootStatus.gid) }
            let rootDestination = try destinationRoot.stat()
            destinationRootIdentity = DirectoryIdentity(rootDestination)
            try walk([Frame(source: sourceRoot, destination: destinationRoot, status: rootStatus,
                            destinationIdentity: [rootDestination.device, rootDestination.inode],
                            names: try directoryEntries(of: sourceRoot), relativePath: "")])
        }

        /// `copyItem`: the roots are the parents; the one entry is copied under its new name, and
        /// if it is a directory, walked with itself as the bottom of the stack (the parents'
        /// own metadata is never touched).
        mutating func runItem(_ name: String, as destinationName: String) throws {
            // The item's own mount (statx does not follow the final symlink, but does enter a
            // mount on it), so copying a mount point copies what is mounted there.
            rootMount = TreeSupport.mountID(name, in: sourceRoot)
            let parentStatus = try sourceRoot.stat()
            let parentDestination = try destinationRoot.stat()
            let parent = Frame(source: sourceRoot, destination: destinationRoot, status: parentStatus,
                               destinationIdentity: [parentDestination.device, parentDestination.inode],
                               names: [name], relativePath: "")
            guard try TreeSupport.statusIfPresent(name, in: sourceRoot) != nil else {
                throw SystemCallError("fstatat", .ENOENT, subject: name)
            }
            guard let child = try copyEntry(name, from: parent, as: destinationName) else { return }
            let made = try child.descriptors().destination.stat()
            destinationRootIdentity = DirectoryIdentity(made)
            try walk([child])
        }

        mutating func walk(_ initial: [Frame]) throws {
            var stack = initial
            while !stack.isEmpty {
                if options.isCancelled() { throw SystemCallError("copy", .ECANCELED) }
                let top = stack.count - 1
                if stack[top].next >= stack[top].names.count {
                    let frame = stack.removeLast()
                    try finishDirectory(frame)
                    if let parent = stack.indices.last, stack[parent].source == nil {
                        try stack[parent].unpark(from: frame)
                    }
                    continue
                }
                let name = stack[top].names[stack[top].next]
                stack[top].next += 1
                if let child = try copyEntry(name, from: stack[top]) {
                    stack.append(child)
                    // Index 0 holds the caller's descriptors: never closed here.
                    let park = stack.count - 1 - TreeSupport.openLevels
                    if park > 0 { stack[park].park() }
                }
            }
        }

        /// Copies one entry; for a directory returns its frame to walk next. The copy is called
        /// `destinationName` (default: `name`) in the destination.
        mutating func copyEntry(_ name: String, from parentFrame: Frame, as destinationName: String? = nil) throws -> Frame? {
            let parent = try parentFrame.descriptors()
            // An entry that vanished while we copied is skipped.
            guard var st = try TreeSupport.statusIfPresent(name, in: parent.source) else { return nil }
            if let map = options.ownership { (st.uid, st.gid) = map(st.uid, st.gid) }
            let target = destinationName ?? name
            let rel = parentFrame.relativePath.isEmpty ? target : parentFrame.relativePath + "/" + target
            let type = st.fileType
            if type != UInt32(Glibc.S_IFDIR) && st.linkCount > 1 {
                let key = InodeKey(device: st.device, inode: st.inode)
                if let first = linked[key] {
                    // The first copy is found beneath the destination root with no symlink on
                    // the way, then linked through its descriptor: a directory of the copy
                    // swapped for a symlink meanwhile (by a process in the machine a copy goes
                    // into) cannot make this link a file from elsewhere.
                    let existing = try FileDescriptor.open(first, flags: FileDescriptor.pathOnly | O_NOFOLLOW, relativeTo: destinationRoot,
                                                           resolve: [.beneath, .noSymlinks])
                    try sys("linkat", rel) {
                        linkat(AT_FDCWD, "/proc/self/fd/\(existing.rawValue)", parent.destination.rawValue, target, AT_SYMLINK_FOLLOW)
                    }
                    statistics.hardlinks += 1
                    return nil
                }
                linked[key] = rel
            }
            switch type {
            case UInt32(Glibc.S_IFDIR):
                let identity = DirectoryIdentity(st)
                // The destination inside the source: copying it would copy the copy, for ever.
                if identity == destinationRootIdentity { return nil }
                try Linux.makeDirectory(target, mode: 0o700, relativeTo: parent.destination)
                let src = try TreeSupport.openDirectoryForReading(name, in: parent.source)
                let dst = try FileDescriptor.openDirectory(target, relativeTo: parent.destination, followSymlinks: false)
                statistics.directories += 1
                let sameMount = rootMount == nil || TreeSupport.mountID("", in: src) == rootMount
                let walked = sameMount && !options.leftEmpty.contains(identity)
                let dstStatus = try dst.stat()
                return Frame(source: src, destination: dst, status: st,
                             destinationIdentity: [dstStatus.device, dstStatus.inode],
                             names: walked ? try directoryEntries(of: src) : [], relativePath: rel)
            case UInt32(Glibc.S_IFREG):
                try copyRegular(name, to: target, st, parent)
            case UInt32(Glibc.S_IFLNK):
                let link = try readLink(name, relativeTo: parent.source)
                try sys("symlinkat", rel) { symlinkat(link, parent.destination.rawValue, target) }
                try finishNonDirectory(name, to: target, st, parent, isSymlink: true)
                statistics.symlinks += 1
            case UInt32(Glibc.S_IFCHR), UInt32(Glibc.S_IFBLK), UInt32(Glibc.S_IFIFO), UInt32(Glibc.S_IFSOCK):
                try sys("mknodat", rel) { mknodat(parent.destination.rawValue, target, mode_t(st.mode), dev_t(st.rdev)) }
                try finishNonDirectory(name, to: target, st, parent, isSymlink: false)
                statistics.specialFiles += 1
            default:
                throw SystemCallError("copy", .EOPNOTSUPP, subject: rel)
            }
            return nil
        }

        mutating func copyRegular(_ name: String, to target: String, _ st: FileStatus,
                                  _ parent: (source: FileDescriptor, destination: FileDescriptor)) throws {
            // O_NOATIME: reading must not disturb the source's access time (root may use it).
            let src = try TreeSupport.openForReading(name, in: parent.source)
            let dst = try FileDescriptor.open(target, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600,
                                              relativeTo: parent.destination)
            let method = try FileCopy.copyContents(from: src, to: dst, allowReflink: options.allowReflink)
            if method == .reflink { statistics.reflinkedFiles += 1 }
            statistics.files += 1
            statistics.bytes += UInt64(max(st.size, 0))
            // chown before chmod (chown clears setuid/setgid) and before xattrs (it clears
            // security.capability).
            try sys("fchown") { fchown(dst.rawValue, st.uid, st.gid) }
            try sys("fchmod") { fchmod(dst.rawValue, mode_t(st.mode & 0o7777)) }
            try copyExtendedAttributes(from: .fd(src), to: .fd(dst))
            var times = [st.accessTime, st.modificationTime]
            try sys("futimens") { futimens(dst.rawValue, &times) }
        }

        func finishNonDirectory(_ name: String, to target: String, _ st: FileStatus,
                                _ parent: (source: FileDescriptor, destination: FileDescriptor), isSymlink: Bool) throws {
            try sys("fchownat", target) { fchownat(parent.destination.rawValue, target, st.uid, st.gid, AT_SYMLINK_NOFOLLOW) }
            if !isSymlink {
                // mknodat applied the umask; a device node is not a symlink, so following is moot.
                try sys("fchmodat", target) { fchmodat(parent.destination.rawValue, target, mode_t(st.mode & 0o7777), 0) }
            }
            try copyExtendedAttributes(from: .path(TreeSupport.procPath(name, in: parent.source)),
                                       to: .path(TreeSupport.procPath(target, in: parent.destination)))
            var times = [st.accessTime, st.modificationTime]
            try sys("utimensat", target) { utimensat(parent.destination.rawValue, target, &times, AT_SYMLINK_NOFOLLOW) }
        }

        /// Applies a directory's own metadata once its contents are in place; ACLs last-but-one
        /// as a default ACL set earlier would have leaked into the children created since.
        func finishDirectory(_ frame: Frame) throws {
            let st = frame.status
            let (src, dst) = try frame.descriptors()
            try sys("fchown") { fchown(dst.rawValue, st.uid, st.gid) }
            try sys("fchmod") { fchmod(dst.rawValue, mode_t(st.mode & 0o7777)) }
            try copyExtendedAttributes(from: .fd(src), to: .fd(dst))
            var times = [st.accessTime, st.modificationTime]
            try sys("futimens") { futimens(dst.rawValue, &times) }
        }
    }
}
