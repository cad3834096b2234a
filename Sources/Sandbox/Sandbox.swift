import CLinux
import CSandbox
import Glibc
import Linux

/// Why a process could not confine itself: the step and the system call that failed.
public struct SandboxError: Error, CustomStringConvertible, Sendable {
    /// What was being set up ("building the mount view").
    public let step: String
    /// The failed call and its errno, or the reason.
    public let reason: String

    public init(step: String, reason: String) {
        self.step = step
        self.reason = reason
    }

    public var description: String { "\(step): \(reason)" }
}

/// Confines the calling process for good, as a `SandboxPolicy` says (see docs/security.md):
/// its own mount namespace whose root shows only what the policy lists, a new network
/// namespace unless it keeps the host's, a new IPC namespace, not dumpable (so no other
/// process of the same capabilities can reach into it through /proc), only the policy's
/// capabilities (bounding, effective, permitted; none inheritable or ambient, none regained by
/// execve), no_new_privs, and `SeccompFilter`'s deny-list.
///
/// Call it first thing, while the process has one thread: namespaces, capabilities and
/// no_new_privs belong to the calling thread only. Any failure is thrown; the caller must then
/// exit rather than go on unconfined (nothing here is undone, and nothing is skipped).
public enum Sandbox {
    /// Where the new root is assembled before pivot_root: a tmpfs mounted over the host's
    /// `/tmp`, in the new mount namespace only (invisible to every other process).
    static let stagingPath = "/tmp"

    /// The devices every confined process gets (nothing else of /dev).
    static let devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]

    /// Top-level names that are links into /usr on merged-/usr systems, or folders elsewhere.
    static let topLevelLibraryNames = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"]

    /// Applies `policy` to this process. See the type's comment.
    public static func enter(_ policy: SandboxPolicy) throws(SandboxError) {
        guard geteuid() == 0 else {
            throw SandboxError(step: "checking privileges", reason: "not running as root (euid \(geteuid()))")
        }
        let threads = threadCount()
        guard threads == 1 else {
            throw SandboxError(step: "checking threads", reason: "\(threads.map(String.init) ?? "an unknown number of") threads: namespaces, capabilities and no_new_privs would confine only one")
        }
        closeDescriptors(keeping: policy.keepDescriptors + (policy.directoryDescriptor.map { [$0] } ?? []))
        for fd in policy.nonDirectoryDescriptors {
            var st = stat()
            if fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR {
                throw SandboxError(step: "checking descriptors", reason: "descriptor \(fd) is a directory, where a file, pipe or socket is expected")
            }
        }
        let last = lastCapability()

        // Detached copies of everything the view shows, taken while the host's paths resolve.
        let base: (binds: [SandboxPolicy.Bind], links: [(String, String)])
        do throws(SystemCallError) { base = try baseBinds() } catch {
            throw SandboxError(step: "reading the host's top-level folders", reason: "\(error)")
        }
        var placements: [Placement] = []
        for bind in base.binds + policy.binds {
            let placement: Placement?
            do throws(SystemCallError) { placement = try Placement(bind) } catch {
                throw SandboxError(step: "copying the mount of \(bind.path)", reason: "\(error)")
            }
            if let placement {
                placements.append(placement)
            } else if bind.required {
                throw SandboxError(step: "copying the mount of \(bind.path)", reason: "it does not exist")
            }
        }
        if let fd = policy.directoryDescriptor {
            do throws(SystemCallError) { placements.append(try Placement(descriptor: fd, path: SandboxPolicy.inputPath)) } catch {
                throw SandboxError(step: "copying the mount of the input folder", reason: "\(error)")
            }
        }

        do throws(SystemCallError) {
            let flags = BERTH_SANDBOX_CLONE_NEWNS | BERTH_SANDBOX_CLONE_NEWIPC | (policy.hostNetwork ? 0 : BERTH_SANDBOX_CLONE_NEWNET)
            try sys("unshare") { berth_sandbox_unshare(flags) }
            // Nothing of this namespace propagates back to the host, nor the host's to it.
            try sys("mount(MS_REC|MS_PRIVATE)", "/") { berth_sandbox_mount(nil, "/", nil, BERTH_SANDBOX_MS_REC | BERTH_SANDBOX_MS_PRIVATE, nil) }
        } catch {
            throw SandboxError(step: "making the namespaces", reason: "\(error)")
        }
        do throws(SystemCallError) {
            let root = try buildView(placements, links: base.links, scratchBytes: policy.scratchBytes)
            defer { root.close() }
            try sys("fchdir") { fchdir(root.rawValue) }
            // The old root is stacked under the new one, then detached: nothing of it is left.
            try sys("pivot_root") { berth_sandbox_pivot_root(".", ".") }
            try sys("umount2(MNT_DETACH)", "the old root") { berth_sandbox_umount2(".", BERTH_SANDBOX_MNT_DETACH) }
            try sys("chdir", "/") { chdir("/") }
            // The root itself holds only mount points: read-only, so nothing is written beside them.
            try sys("mount(MS_REMOUNT|MS_RDONLY)", "/") {
                berth_sandbox_mount(nil, "/", nil, BERTH_SANDBOX_MS_REMOUNT | BERTH_SANDBOX_MS_BIND | BERTH_SANDBOX_MS_RDONLY
                                    | BERTH_SANDBOX_MS_NOSUID | BERTH_SANDBOX_MS_NODEV | BERTH_SANDBOX_MS_NOEXEC, nil)
            }
        } catch {
            throw SandboxError(step: "building the mount view", reason: "\(error)")
        }
        if let fd = policy.directoryDescriptor {
            do throws(SystemCallError) {
                let reopened = try FileDescriptor.open(SandboxPolicy.inputPath, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                defer { reopened.close() }
                try sys("dup2") { dup2(reopened.rawValue, fd) }
                try sys("fcntl(F_SETFD)") { fcntl(fd, F_SETFD, FD_CLOEXEC) }
            } catch {
                throw SandboxError(step: "reopening the input folder", reason: "\(error)")
            }
        }
        do throws(SystemCallError) {
            try sys("prctl(PR_SET_DUMPABLE)") { berth_sandbox_prctl(PR_SET_DUMPABLE, 0, 0) }
            try restrictCapabilities(to: policy.capabilities, lastCapability: last)
            try sys("prctl(PR_SET_NO_NEW_PRIVS)") { berth_sandbox_prctl(PR_SET_NO_NEW_PRIVS, 1, 0) }
        } catch {
            throw SandboxError(step: "dropping privileges", reason: "\(error)")
        }
        do throws(SystemCallError) { try SeccompFilter.install() } catch {
            throw SandboxError(step: "installing the seccomp filter", reason: "\(error)")
        }
    }

    /// The new root on a tmpfs at `stagingPath`: the top-level links, /proc, /tmp, then each
    /// placement (parents first). Returns the root, open.
    private static func buildView(_ placements: [Placement], links: [(String, String)], scratchBytes: Int) throws(SystemCallError) -> FileDescriptor {
        try mountTemporaryFilesystem(at: stagingPath, options: "mode=0755,size=1m,nr_inodes=1024")
        let root = try FileDescriptor.open(stagingPath, flags: BERTH_O_PATH_DIRECTORY)
        do throws(SystemCallError) {
            for (name, target) in links {
                try sys("symlinkat", name) { symlinkat(target, root.rawValue, name) }
            }
            for name in ["proc", "tmp", "dev", "run"] {
                try sys("mkdirat", name) { mkdirat(root.rawValue, name, 0o755) }
            }
            // Only the per-process files (subset=pid), and of the processes only those this one
            // may ptrace-read (hidepid=invisible): none once it has fewer capabilities than any
            // other root process and is not dumpable, beside itself and its own children. The
            // `gid=` group sees them all, and by default that is root's group: it is one this
            // process is not in.
            let options = "hidepid=invisible,subset=pid,gid=\(groupNotHeld())"
            try sys("mount", "proc") {
                berth_sandbox_mount("proc", stagingPath + "/proc", "proc", BERTH_SANDBOX_MS_NOSUID | BERTH_SANDBOX_MS_NODEV | BERTH_SANDBOX_MS_NOEXEC,
                                    options)
            }
            try mountTemporaryFilesystem(at: stagingPath + "/tmp", options: "mode=1777,size=\(scratchBytes)")
            var placed: [[String]: SandboxPolicy.Access] = [:]
            for placement in placements.sorted(by: { $0.components.count < $1.components.count }) {
                try placement.place(in: root, placed: &placed)
            }
        } catch {
            root.close()
            throw error
        }
        return root
    }

    /// What every view holds: /usr and the top-level library folders or links, the devices.
    static func baseBinds() throws(SystemCallError) -> (binds: [SandboxPolicy.Bind], links: [(String, String)]) {
        var binds = [SandboxPolicy.Bind("/usr", .readOnly, system: true)]
        var links: [(String, String)] = []
        for name in topLevelLibraryNames {
            guard let st = try? fileStatus("/" + name, followSymlinks: false) else { continue }
            if st.isSymlink {
                links.append((name, try readLink("/" + name)))
            } else if st.isDirectory {
                binds.append(SandboxPolicy.Bind("/" + name, .readOnly, system: true))
            }
        }
        binds += devices.map { SandboxPolicy.Bind($0, .readOnly, system: true) }
        return (binds, links)
    }

    private static func mountTemporaryFilesystem(at path: String, options: String) throws(SystemCallError) {
        try sys("mount", "tmpfs on \(path)") {
            berth_sandbox_mount("tmpfs", path, "tmpfs", BERTH_SANDBOX_MS_NOSUID | BERTH_SANDBOX_MS_NODEV | BERTH_SANDBOX_MS_NOEXEC, options)
        }
    }

    /// A group id this process is not in (neither its real or effective gid nor a
    /// supplementary group): nogroup's 65534, or the next free one below.
    static func groupNotHeld() -> gid_t {
        var held: Set<gid_t> = [getgid(), getegid()]
        let count = getgroups(0, nil)
        if count > 0 {
            var groups = [gid_t](repeating: 0, count: Int(count))
            let n = getgroups(count, &groups)
            if n > 0 { held.formUnion(groups.prefix(Int(n))) }
        }
        var candidate: gid_t = 65534
        while held.contains(candidate) { candidate -= 1 }
        return candidate
    }

    /// Threads of this process (/proc/self/status), nil if unreadable.
    static func threadCount() -> Int? {
        guard let fd = try? FileDescriptor.open("/proc/self/status", flags: O_RDONLY | O_CLOEXEC) else { return nil }
        defer { fd.close() }
        let text = String(decoding: (try? fd.readToEnd(limit: 1 << 16)) ?? [], as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Threads:") }) else { return nil }
        return Int(line.dropFirst("Threads:".count).filter(\.isNumber))
    }

    /// Closes every descriptor from 3 up but `keep` (close_range between them).
    static func closeDescriptors(keeping keep: [Int32]) {
        var next: UInt32 = 3
        for fd in Set(keep.filter { $0 >= 3 }).sorted() {
            if UInt32(fd) > next { _ = berth_sandbox_close_range(next, UInt32(fd) - 1) }
            next = UInt32(fd) + 1
        }
        _ = berth_sandbox_close_range(next, UInt32.max)
    }
}

/// O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC: a handle on a folder to build in.
private let BERTH_O_PATH_DIRECTORY = BERTH_O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC

/// One detached mount tree (open_tree OPEN_TREE_CLONE) on its way into the view.
struct Placement {
    let path: String
    let components: [String]
    let tree: FileDescriptor
    let isDirectory: Bool
    let access: SandboxPolicy.Access

    /// A copy of the mount at `bind.path` with the bind's attributes; nil if the path does not exist.
    init?(_ bind: SandboxPolicy.Bind) throws(SystemCallError) {
        let flags = BERTH_SANDBOX_OPEN_TREE_CLONE | BERTH_SANDBOX_OPEN_TREE_CLOEXEC | (bind.system ? BERTH_SANDBOX_AT_RECURSIVE : 0)
        let fd = berth_sandbox_open_tree(AT_FDCWD, bind.path, flags)
        if fd < 0 {
            let e = Errno.current
            if e == .ENOENT { return nil }
            throw SystemCallError("open_tree", e, subject: bind.path)
        }
        try self.init(tree: FileDescriptor(owning: fd), path: bind.path, access: bind.access, system: bind.system)
    }

    /// A copy of the mount of the folder open as `descriptor`, for the view's `path`, read-only.
    init(descriptor: Int32, path: String) throws(SystemCallError) {
        let fd = try sys("open_tree", "descriptor \(descriptor)") {
            berth_sandbox_open_tree(descriptor, "", BERTH_SANDBOX_OPEN_TREE_CLONE | BERTH_SANDBOX_OPEN_TREE_CLOEXEC | BERTH_SANDBOX_AT_EMPTY_PATH)
        }
        try self.init(tree: FileDescriptor(owning: fd), path: path, access: .readOnly, system: false)
    }

    private init(tree: FileDescriptor, path: String, access: SandboxPolicy.Access, system: Bool) throws(SystemCallError) {
        let components = pathComponents(path)
        guard path.hasPrefix("/"), !components.isEmpty, !components.contains(where: { $0 == "." || $0 == ".." }),
              components.first != "proc" else {
            tree.close()
            throw SystemCallError("open_tree", .EINVAL, subject: "\(path): not a plain absolute path outside /proc")
        }
        self.path = path
        self.components = components
        self.tree = tree
        self.access = access
        do {
            isDirectory = try tree.stat().isDirectory
            var set = BERTH_SANDBOX_MOUNT_ATTR_NOSUID
            if access == .readOnly { set |= BERTH_SANDBOX_MOUNT_ATTR_RDONLY }
            if !system { set |= BERTH_SANDBOX_MOUNT_ATTR_NODEV | BERTH_SANDBOX_MOUNT_ATTR_NOEXEC }
            try sys("mount_setattr", path) { berth_sandbox_mount_setattr(tree.rawValue, set, 0, UInt64(BERTH_SANDBOX_MS_PRIVATE)) }
        } catch {
            tree.close()
            throw error
        }
    }

    /// Moves the tree to its path under `root` (the staging tmpfs), making the folders and the
    /// mount point on the way — unless a tree placed before already shows this path with at
    /// least this access (then this one is closed unused). Inside such a tree nothing is
    /// created: the path exists there, as on the host.
    func place(in root: FileDescriptor, placed: inout [[String]: SandboxPolicy.Access]) throws(SystemCallError) {
        defer { tree.close() }
        let relative = components.joined(separator: "/")
        let cover = (0..<components.count).reversed().first { placed[Array(components.prefix($0 + 1))] != nil }
            .flatMap { placed[Array(components.prefix($0 + 1))] }
        if let cover {
            if cover == .readWrite || access == .readOnly { return }
            try sys("move_mount", path) { berth_sandbox_move_mount(tree.rawValue, root.rawValue, relative) }
            placed[components] = access
            return
        }
        var folder = try root.duplicate()
        defer { folder.close() }
        for name in components.dropLast() {
            if mkdirat(folder.rawValue, name, 0o755) != 0 && errno != EEXIST {
                throw SystemCallError("mkdirat", .current, subject: name)
            }
            let next = try FileDescriptor.open(name, flags: BERTH_O_PATH_DIRECTORY, relativeTo: folder)
            folder.close()
            folder = next
        }
        guard let name = components.last else { return }
        if isDirectory {
            if mkdirat(folder.rawValue, name, 0o755) != 0 && errno != EEXIST { throw SystemCallError("mkdirat", .current, subject: name) }
        } else {
            let fd = openat(folder.rawValue, name, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
            if fd < 0 { throw SystemCallError("openat", .current, subject: name) }
            _ = close(fd)
        }
        try sys("move_mount", path) { berth_sandbox_move_mount(tree.rawValue, folder.rawValue, name) }
        placed[components] = access
    }
}
