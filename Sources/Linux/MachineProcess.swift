import CLinux
import Glibc

// Reaching into a running machine (a container registered with machine1): its pseudo terminals,
// a program started in its namespaces, and mounts moved into its mount namespace.
//
// Process model: berthd is multithreaded, and a forked copy of it may run nothing but
// async-signal-safe code before exec; Swift (allocation, locks, the runtime) is not. So the
// child side is C in CLinux/shim.h (`berth_machine_spawn`, `berth_machine_move_mount`) that
// only makes raw system calls on memory prepared here before the fork. A helper executable
// spawned with posix_spawn would do the same with one more binary to install and locate; the
// C routines are short enough to read whole, and they need no argument protocol.

/// The namespaces of a process, in the order a program joins them: the user namespace first (so
/// the rest are joined with the capabilities it gives in the machine), the mount namespace last.
public enum NamespaceKind: String, CaseIterable, Sendable {
    case user, cgroup, ipc, uts, net, pid, mnt
}

/// The descriptors that let a child process enter a machine: its leader's namespaces (those
/// that differ from berthd's own), its root directory, and the `cgroup.procs` files of its
/// control groups. Opened from /proc/LEADER while the leader is pinned by a pidfd.
public final class MachineEntry: @unchecked Sendable {
    // @unchecked: immutable after init; the descriptors are owned and closed by `close()`.
    /// By kind; a kind berthd already shares with the leader is absent (setns into one's own
    /// user namespace fails with EINVAL, and the others would be no-ops).
    public let namespaces: [NamespaceKind: FileDescriptor]
    /// The leader's root (/proc/LEADER/root, BERTH_O_PATH|O_DIRECTORY).
    public let root: FileDescriptor
    /// The `cgroup.procs` files a program is moved into, one per hierarchy.
    public let controlGroupFiles: [FileDescriptor]
    /// The leader's capability bounding set (CapBnd) and no_new_privs, which a program started in
    /// the machine gets too: no more privilege than the machine's own processes have.
    public let boundingSet: UInt64
    public let noNewPrivileges: Bool

    /// Opens `leader`'s namespaces and root, and `cgroupProcs` (paths of `cgroup.procs` files).
    public init(leader: pid_t, cgroupProcs: [String]) throws(SystemCallError) {
        var found: [NamespaceKind: FileDescriptor] = [:]
        for kind in NamespaceKind.allCases {
            let theirs = try FileDescriptor.open("/proc/\(leader)/ns/\(kind.rawValue)", flags: O_RDONLY)
            let ours = try? fileStatus("/proc/self/ns/\(kind.rawValue)")
            let same = try ours.map { ours throws(SystemCallError) in
                let t = try theirs.stat()
                return t.inode == ours.inode && t.device == ours.device
            } ?? false
            if same { theirs.close() } else { found[kind] = theirs }
        }
        namespaces = found
        root = try FileDescriptor.open("/proc/\(leader)/root", flags: BERTH_O_PATH | O_DIRECTORY)
        var files: [FileDescriptor] = []
        for path in cgroupProcs.prefix(4) { files.append(try FileDescriptor.open(path, flags: O_WRONLY | O_NOCTTY)) }
        controlGroupFiles = files
        guard let status = readSmall("/proc/\(leader)/status"),
              let bounding = Self.field("CapBnd", in: status).flatMap({ UInt64($0, radix: 16) }) else {
            throw SystemCallError("read", .ESRCH, subject: "/proc/\(leader)/status")
        }
        boundingSet = bounding
        noNewPrivileges = Self.field("NoNewPrivs", in: status) == "1"
    }

    private static func field(_ name: String, in status: String) -> String? {
        for line in status.split(separator: "\n") where line.hasPrefix(name + ":") {
            return String(line.dropFirst(name.count + 1).drop { $0 == " " || $0 == "\t" })
        }
        return nil
    }

    /// Closes every descriptor (deinit does too).
    public func close() {
        for fd in namespaces.values { fd.close() }
        root.close()
        for fd in controlGroupFiles { fd.close() }
    }

    deinit { close() }
}

/// A pseudo terminal master and its slave's path as the machine sees it (`/dev/pts/N`).
public struct PseudoTerminal: Sendable {
    /// The master side, for the caller (sent back over the bus).
    public let master: FileDescriptor
    /// `/dev/pts/N`, the slave's path inside the machine.
    public let path: String
}

/// Allocates a pty in the devpts instance of the root `root` (its `/dev/ptmx`, resolved inside
/// that root by openat2 RESOLVE_IN_ROOT, so nspawn's `ptmx → pts/ptmx` link leads to the
/// container's own devpts), or the host's /dev/ptmx when `root` is nil; unlocked (TIOCSPTLCK),
/// numbered (TIOCGPTN).
public func openPseudoTerminal(inRoot root: FileDescriptor?) throws(SystemCallError) -> PseudoTerminal {
    let flags = O_RDWR | O_NOCTTY
    let master: FileDescriptor
    if let root {
        // The machine's /dev is the machine's to fill: only its ptmx (5:2) is opened, checked
        // through an O_PATH descriptor first, as opening another device can have effects of its
        // own (a watchdog starts counting, a FIFO blocks).
        let node = try FileDescriptor.open("dev/ptmx", flags: FileDescriptor.pathOnly, relativeTo: root, resolve: [.inRoot, .noMagicLinks])
        defer { node.close() }
        let status = try node.stat()
        guard status.fileType == UInt32(Glibc.S_IFCHR), status.rdev == UInt64(berth_makedev(5, 2)) else {
            throw SystemCallError("open", Errno(Glibc.ENODEV), subject: "/dev/ptmx is not the pseudo terminal multiplexer")
        }
        master = try node.reopen(flags: flags)
    } else {
        master = try FileDescriptor.open("/dev/ptmx", flags: flags)
    }
    try sys("ioctl(TIOCSPTLCK)") { berth_pty_unlock(master.rawValue) }
    var number: UInt32 = 0
    try sys("ioctl(TIOCGPTN)") { berth_pty_number(master.rawValue, &number) }
    return PseudoTerminal(master: master, path: "/dev/pts/\(number)")
}

/// ioctl(TIOCGPTPEER): the slave of `master`, opened through the master (O_NOCTTY, O_CLOEXEC),
/// with no path lookup in a /dev/pts that belongs to someone else.
public func openPeer(of master: FileDescriptor) throws(SystemCallError) -> FileDescriptor {
    FileDescriptor(owning: try sys("ioctl(TIOCGPTPEER)") { berth_pty_peer(master.rawValue) })
}

/// A program to start in a machine.
public struct MachineProgram: Sendable {
    /// The executable, an absolute path inside the machine.
    public var path: String
    /// argv, argv[0] included; empty means `[path]`.
    public var arguments: [String]
    /// `KEY=VALUE` entries, the program's whole environment.
    public var environment: [String]
    /// The user and group it runs as, in the machine's user namespace.
    public var uid: UInt32
    public var gid: UInt32
    /// Its working directory inside the machine (`/` if that cannot be entered).
    public var directory: String

    /// A program with these values.
    public init(path: String, arguments: [String], environment: [String], uid: UInt32, gid: UInt32, directory: String) {
        self.path = path
        self.arguments = arguments
        self.environment = environment
        self.uid = uid
        self.gid = gid
        self.directory = directory
    }
}

/// Starts `program` in `machine` (or on the host, in berthd's namespaces, when nil) with the pty
/// slave `terminal` as its controlling terminal (berth_machine_spawn: fork, join the groups and
/// namespaces, chroot, fork, setsid, TIOCSCTTY, drop to uid/gid, exec). Blocks until the program
/// has been exec'd or has failed to be; run it off the bus thread.
/// - Returns: the pid of the intermediate child, berthd's own child, which exits with the
///   program's status (128 + signal if it was killed): reap it.
public func spawnInMachine(_ machine: MachineEntry?, terminal: FileDescriptor, _ program: MachineProgram) throws(SystemCallError) -> pid_t {
    let (reader, writer) = try makePipe()
    defer { reader.close(); writer.close() }

    var spec = berth_machine_spec()
    let ns: [Int32] = NamespaceKind.allCases.map { machine?.namespaces[$0]?.rawValue ?? -1 }
    let groups: [Int32] = Array(((machine?.controlGroupFiles.map(\.rawValue) ?? []) + [Int32](repeating: -1, count: 4)).prefix(4))
    ns.withUnsafeBytes { source in withUnsafeMutableBytes(of: &spec.ns_fds) { $0.copyMemory(from: source) } }
    groups.withUnsafeBytes { source in withUnsafeMutableBytes(of: &spec.cgroup_fds) { $0.copyMemory(from: source) } }
    spec.keep_caps = machine?.boundingSet ?? UInt64.max
    spec.last_cap = machine == nil ? -1 : (readSmall("/proc/sys/kernel/cap_last_cap")?.split(separator: "\n").first.flatMap { Int32($0) } ?? 63)
    spec.no_new_privs = machine?.noNewPrivileges == true ? 1 : 0
    spec.root_fd = machine?.root.rawValue ?? -1
    spec.tty_fd = terminal.rawValue
    spec.error_fd = writer.rawValue
    spec.uid = program.uid
    spec.gid = program.gid

    // C strings made before the fork: the child only reads them.
    let argv = program.arguments.isEmpty ? [program.path] : program.arguments
    var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    var cEnv: [UnsafeMutablePointer<CChar>?] = program.environment.map { strdup($0) } + [nil]
    let cPath = strdup(program.path), cDirectory = strdup(program.directory)
    defer {
        for p in cArgs { free(p) }
        for p in cEnv { free(p) }
        free(cPath)
        free(cDirectory)
    }
    spec.path = UnsafePointer(cPath)
    spec.directory = UnsafePointer(cDirectory)
    let pid = cArgs.withUnsafeMutableBufferPointer { args in
        cEnv.withUnsafeMutableBufferPointer { env in
            spec.argv = UnsafePointer(args.baseAddress)
            spec.envp = UnsafePointer(env.baseAddress)
            return berth_machine_spawn(&spec)
        }
    }
    if pid < 0 { throw SystemCallError("fork", Errno(-pid), subject: program.path) }
    writer.close()
    // (step, errno) from a child that failed, or end of file once the program is exec'd.
    var report: (Int32, Int32) = (0, 0)
    let got = withUnsafeMutableBytes(of: &report) { buffer in (try? reader.read(into: buffer)) ?? 0 }
    guard got == MemoryLayout<(Int32, Int32)>.size else { return pid }
    var status: Int32 = 0
    _ = waitpid(pid, &status, 0)
    let call = switch report.0 {
    case BERTH_MACHINE_STEP_CGROUP: "write(cgroup.procs)"
    case BERTH_MACHINE_STEP_SETNS: "setns"
    case BERTH_MACHINE_STEP_ROOT: "chroot"
    case BERTH_MACHINE_STEP_FORK: "fork"
    case BERTH_MACHINE_STEP_TTY: "ioctl(TIOCSCTTY)"
    case BERTH_MACHINE_STEP_IDS: "setresuid"
    case BERTH_MACHINE_STEP_CAPS: "prctl(PR_CAPBSET_DROP)"
    default: "execve"
    }
    throw SystemCallError(call, Errno(report.1), subject: program.path)
}

/// open_tree(2) with OPEN_TREE_CLONE|AT_RECURSIVE: a detached copy of the mounts at `path` (on
/// the host), to be moved elsewhere with `moveMount`; made read-only throughout (mount_setattr
/// MOUNT_ATTR_RDONLY with AT_RECURSIVE) when `readOnly`.
public func cloneMountTree(_ path: String, readOnly: Bool) throws(SystemCallError) -> FileDescriptor {
    let tree = FileDescriptor(owning: try sys("open_tree", path) { berth_open_tree_clone(path) })
    if readOnly { try sys("mount_setattr(MOUNT_ATTR_RDONLY)", path) { berth_mount_set_read_only(tree.rawValue) } }
    return tree
}

/// move_mount(2) of the detached tree `tree` onto `target` (an BERTH_O_PATH descriptor of a file or
/// directory in the mount namespace `namespace`, nil for berthd's own), from a short-lived child that joins that
/// namespace (berth_machine_move_mount). Blocks for the child; run it off the bus thread.
public func moveMount(_ tree: FileDescriptor, onto target: FileDescriptor, inNamespace namespace: FileDescriptor?) throws(SystemCallError) {
    let r = berth_machine_move_mount(namespace?.rawValue ?? -1, tree.rawValue, target.rawValue)
    if r < 0 { throw SystemCallError("move_mount", Errno(-r)) }
}

extension FileDescriptor {
    /// Opens the file this (O_PATH) descriptor names anew, with `flags` (through
    /// /proc/self/fd/N, the kernel's way to turn an O_PATH descriptor into an open file): what
    /// was checked on the O_PATH descriptor is what gets opened, with no path lookup between.
    public func reopen(flags: Int32) throws(SystemCallError) -> FileDescriptor {
        try FileDescriptor.open("/proc/self/fd/\(rawValue)", flags: flags)
    }

    /// O_PATH (GNU-only in glibc's headers): a descriptor that names a file without opening it
    /// for reading or writing (a machine's root, a mount target).
    public static let pathOnly: Int32 = BERTH_O_PATH
}
