import Bus
import Glibc
import Linux
import Machines
import PoolAPI
import struct SystemPackage.FilePath

/// machine1's members that reach into a running machine: OpenMachinePTY, OpenMachineLogin,
/// OpenMachineShell, OpenMachineRootDirectory and BindMountMachine, and their twins on the
/// Machine object (OpenPTY, OpenLogin, OpenShell, OpenRootDirectory, BindMount).
///
/// Where machined 252 asks the container's own systemd to start the shell (so a container
/// without systemd inside has no shell), berthd starts it itself in the leader's namespaces and
/// control group (`spawnInMachine`), so `machinectl shell` works in any container. Login is a
/// getty of the container's own systemd, as in machined: without it there is no login.
/// Bind mounts use the kernel's mount API (open_tree on the host, move_mount inside the
/// machine's mount namespace) rather than nspawn's propagation directory.
extension Machine1Service {
    /// The reaching-in methods of both the manager and a machine object: `method` names the
    /// manager's member, and `offset` is where the arguments after the machine's name start (1 on
    /// the manager, whose first argument is the name; 0 on a machine object).
    func reach(_ method: Machine1Manager.Method, _ name: String, _ call: MethodCall, offset i: Int) async throws -> [BusValue] {
        guard machineExists(name) else { throw Self.noSuchMachine(name) }
        // As machined 252: a VM's leader is a host process (qemu), whose namespaces are the host's.
        if name != ".host", let m = machines[name]?.machine, m.class != "container" {
            throw BusError(errno: .EOPNOTSUPP, "\(call.member) is only supported on container machines, not on \(m.class) '\(name)'.")
        }
        switch method {
        case .openMachinePTY:
            let pty = try await openTerminal(name)
            return [.unixFD(pty.master), .string(pty.path)]
        case .openMachineLogin: return try await openLogin(name)
        case .openMachineShell:
            return try await openShell(name, user: try call.string(i), path: try call.string(i + 1),
                                       arguments: try call.strings(i + 2), environment: try call.strings(i + 3))
        case .openMachineRootDirectory: return [.unixFD(try await openRootDirectory(name))]
        case .bindMountMachine:
            try await bindMount(name, source: try call.string(i), destination: try call.string(i + 1),
                                readOnly: try call.bool(i + 2), makeMissing: try call.bool(i + 3))
            return []
        default: throw Harness.notImplemented(call)
        }
    }

    // MARK: the machine's entry points

    /// The running machine `name` (not `.host`), or NoSuchMachine.
    private func runningMachine(_ name: String) throws(BusError) -> Machine {
        guard let m = machines[name]?.machine else { throw Self.noSuchMachine(name) }
        return m
    }

    /// Opens the leader's namespaces, root and groups, then checks that the leader is still the
    /// process registered (pid and start time), so a pid reused after the leader died can never
    /// lead into some other process's namespaces.
    private nonisolated static func enter(_ m: Machine, groups: Bool) throws -> MachineEntry {
        let entry: MachineEntry
        do {
            entry = try MachineEntry(leader: m.leader, cgroupProcs: groups ? controlGroupFiles(of: m.leader) : [])
        } catch {
            throw BusError(errno: error.errno, "Cannot enter machine '\(m.name)': \(error)")
        }
        guard processStartTime(m.leader) == m.leaderStartTime else {
            entry.close()
            throw BusError(errno: .ESRCH, "The leader of machine '\(m.name)' is gone")
        }
        return entry
    }

    /// The `cgroup.procs` files of `pid`'s groups in each mounted hierarchy (cgroup v2 and, in
    /// the hybrid layout, `name=systemd`), from /proc/PID/cgroup.
    private nonisolated static func controlGroupFiles(of pid: pid_t) -> [String] {
        guard let text = readSmall("/proc/\(pid)/cgroup") else { return [] }
        var files: [String] = []
        for h in ControlGroups().hierarchies {
            for line in text.split(separator: "\n") {
                let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard f.count == 3, h.isUnified ? f[0] == "0" : f[1] == "name=systemd" else { continue }
                let group = String(f[2])
                // A group path is absolute and has no `..`: anything else is not the kernel's.
                guard group.hasPrefix("/"), !FilePath(group).components.contains(where: { $0.kind == .parentDirectory }) else { continue }
                files.append(h.mount + (group == "/" ? "" : group) + "/cgroup.procs")
            }
        }
        return files
    }

    // MARK: OpenMachinePTY, OpenMachineRootDirectory

    /// A pty in the machine's own devpts (or the host's for `.host`).
    private func openTerminal(_ name: String) async throws -> PseudoTerminal {
        if name == ".host" {
            do { return try openPseudoTerminal(inRoot: nil) } catch { throw BusError(errno: error.errno, "Failed to open a pseudo terminal: \(error)") }
        }
        let m = try runningMachine(name)
        return try await Blocking.run(.interactive) {
            let entry = try Self.enter(m, groups: false)
            defer { entry.close() }
            do throws(SystemCallError) { return try openPseudoTerminal(inRoot: entry.root) } catch {
                throw BusError(errno: error.errno, "Failed to open a pseudo terminal in machine '\(name)': \(error)")
            }
        }
    }

    /// OpenMachineRootDirectory: the machine's root as an FileDescriptor.pathOnly directory descriptor (the
    /// leader's root, /proc/LEADER/root; for `.host`, berthd's root).
    private func openRootDirectory(_ name: String) async throws -> FileDescriptor {
        if name == ".host" {
            do { return try FileDescriptor.open(paths.root, flags: FileDescriptor.pathOnly | O_DIRECTORY) } catch {
                throw BusError(errno: error.errno, "Failed to open the host's root directory")
            }
        }
        let m = try runningMachine(name)
        let entry = try await Blocking.run(.interactive) { try Self.enter(m, groups: false) }
        defer { entry.close() }
        return try entry.root.duplicate()
    }

    // MARK: OpenMachineLogin

    /// OpenMachineLogin: a pty in the container, and `container-getty@N.service` started by the
    /// container's own systemd through its system bus (the leader's /run/dbus/system_bus_socket,
    /// reached through /proc/LEADER/root), as machined 252 does.
    private func openLogin(_ name: String) async throws -> [BusValue] {
        if name == ".host" {
            throw BusError.notSupported("Login on the host needs systemd's gettys; berthd starts none on the host")
        }
        let m = try runningMachine(name)
        guard m.class == "container" else { throw BusError.notSupported("Login is only supported on container machines.") }
        let pty = try await openTerminal(name)
        let unit = "container-getty@" + pty.path.dropFirst("/dev/pts/".count) + ".service"
        // .bulk: the container answers (or hangs) at its own pace, and must not hold the threads
        // kept for quick calls.
        try await Blocking.run(.bulk) {
            let entry = try Self.enter(m, groups: false)
            defer { entry.close() }
            // The socket is found inside the container's root (RESOLVE_IN_ROOT) and connected to
            // through its O_PATH descriptor: a path through /proc/LEADER/root would follow the
            // container's absolute symlinks from the host's root, so a container could point
            // berthd at the host's own bus (and have the host's systemd start a getty).
            let socket: FileDescriptor
            do throws(SystemCallError) {
                socket = try FileDescriptor.open("run/dbus/system_bus_socket", flags: FileDescriptor.pathOnly, relativeTo: entry.root,
                                                 resolve: [.inRoot, .noMagicLinks])
                guard try socket.stat().fileType == UInt32(S_IFSOCK) else {
                    throw SystemCallError("connect", .ENOENT, subject: "run/dbus/system_bus_socket is not a socket")
                }
            } catch {
                throw BusError(errno: .ENOENT, "There is no system bus in container \(name).")
            }
            defer { socket.close() }
            let client: BusClient
            do { client = try BusClient(address: "unix:path=/proc/self/fd/\(socket.rawValue)") } catch {
                throw BusError(errno: .ENOENT, "There is no system bus in container \(name).")
            }
            _ = try client.call(destination: "org.freedesktop.systemd1", path: "/org/freedesktop/systemd1",
                                interface: "org.freedesktop.systemd1.Manager", member: "StartUnit",
                                [.string(unit), .string("replace")], timeoutMicroseconds: 30_000_000)
        }
        return [.unixFD(pty.master), .string(pty.path)]
    }

    // MARK: OpenMachineShell

    /// OpenMachineShell: `path` with `arguments` as `user` on a new pty in the machine, started by
    /// berthd in the leader's namespaces and group (see the type's comment), with machined's
    /// rules: user "" is root; path "" is the user's login shell (`shell -l`, as machined's
    /// getent script runs it); a path must be absolute; arguments "" are just the path; the
    /// environment is `KEY=VALUE` assignments over systemd's defaults for a service with User=
    /// (PATH, HOME, USER, LOGNAME, SHELL) and TERM=vt220.
    private func openShell(_ name: String, user rawUser: String, path rawPath: String, arguments: [String],
                           environment: [String]) async throws -> [BusValue] {
        let userName = rawUser.isEmpty ? "root" : rawUser
        guard userName.utf8.count <= 256, !userName.contains(where: { $0 == ":" || $0 == "/" || $0.isNewline || $0 == "\0" }) else {
            throw BusError.invalidArgs("Invalid user name '\(rawUser)'")
        }
        guard rawPath.isEmpty || rawPath.hasPrefix("/") else {
            throw BusError.invalidArgs("Specified path '\(rawPath)' is not absolute")
        }
        guard !rawPath.utf8.contains(0), !arguments.contains(where: { $0.utf8.contains(0) }) else {
            throw BusError.invalidArgs("Invalid program or arguments")
        }
        guard let callerEnvironment = Self.validEnvironment(environment) else {
            throw BusError.invalidArgs("Invalid environment assignments")
        }
        let machine: Machine? = name == ".host" ? nil : try runningMachine(name)
        let (master, ptyPath, opened) = try await Blocking.run(.interactive) { () throws -> (FileDescriptor, String, pid_t) in
            let entry = try machine.map { try Self.enter($0, groups: true) }
            defer { entry?.close() }
            let account: PasswdEntry
            do {
                guard let found = try PasswdEntry.lookUp(userName, root: entry?.root) else {
                    throw BusError.invalidArgs("No user '\(userName)' in machine '\(name)'")
                }
                account = found
            } catch let error as SystemCallError {
                throw BusError(errno: error.errno, "Cannot read the users of machine '\(name)': \(error)")
            }
            let path = rawPath.isEmpty ? account.shell : rawPath
            let argv = rawPath.isEmpty ? [account.shell, "-l"] : (arguments.isEmpty ? [rawPath] : arguments)
            var env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=\(account.home)",
                       "USER=\(account.name)", "LOGNAME=\(account.name)", "SHELL=\(account.shell)", "TERM=vt220"]
            for assignment in callerEnvironment {
                let key = assignment.prefix { $0 != "=" } + "="
                env.removeAll { $0.hasPrefix(key) }
                env.append(assignment)
            }
            do throws(SystemCallError) {
                let pty = try openPseudoTerminal(inRoot: entry?.root)
                let slave = try openPeer(of: pty.master)
                defer { slave.close() }
                let program = MachineProgram(path: path, arguments: argv, environment: env, uid: account.uid, gid: account.gid,
                                             directory: account.home)
                return (pty.master, pty.path, try spawnInMachine(entry, terminal: slave, program))
            } catch {
                throw BusError(errno: error.errno, "Failed to start \(path) in machine '\(name)': \(error)")
            }
        }
        reap(opened)
        return [.unixFD(master), .string(ptyPath)]
    }

    /// Reaps berthd's child `pid` when it exits (its pidfd on the event loop), so no shell leaves
    /// a zombie behind.
    private func reap(_ pid: pid_t) {
        guard let pidfd = try? openProcessDescriptor(pid) else { return }
        let box = ReapWatch()
        box.watch = try? bus.loop.watchReadable(pidfd.rawValue) {
            _ = try? pollExit(processDescriptor: pidfd)
            pidfd.close()
            box.watch?.cancel()
            box.watch = nil
        }
        if box.watch == nil {
            // Cannot watch: wait on a worker thread instead; the shell may run long, but never unreaped.
            Task { _ = try? await Blocking.run(.bulk) { _ = try? waitForExit(pid); pidfd.close() } }
        }
    }

    /// strv_env_is_valid as machined applies it: every entry `KEY=VALUE` with a shell-variable
    /// name, no key twice; nil if not.
    package nonisolated static func validEnvironment(_ entries: [String]) -> [String]? {
        var keys = Set<Substring>()
        for e in entries {
            guard let eq = e.firstIndex(of: "=") else { return nil }
            let key = e[..<eq]
            guard let first = key.utf8.first, !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first),
                  key.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x5f }),
                  !e.utf8.contains(0), keys.insert(key).inserted else { return nil }
        }
        return entries
    }

    // MARK: BindMountMachine

    /// BindMountMachine: `source` (a host path) mounted at `destination` in the machine, with
    /// machined's rules: both absolute and normalized (destination "" is the source's path),
    /// containers only, none with a user namespace of their own. The destination is resolved
    /// inside the machine's root and never through a symlink out of it (openat2
    /// RESOLVE_BENEATH: an absolute symlink or one climbing out is refused); `makeMissing`
    /// creates it (directories, and the last as a directory or an empty file like the source).
    private func bindMount(_ name: String, source: String, destination rawDestination: String, readOnly: Bool, makeMissing: Bool) async throws {
        guard name != ".host", let m = machines[name]?.machine, m.class == "container" else {
            throw BusError.notSupported("Bind mounting is only supported on container machines.")
        }
        guard Self.isNormalizedAbsolute(source) else { throw BusError.invalidArgs("Source path must be absolute and normalized.") }
        let destination = rawDestination.isEmpty ? source : rawDestination
        guard Self.isNormalizedAbsolute(destination) else {
            throw BusError.invalidArgs("Destination path must be absolute and normalized.")
        }
        let components = FilePath(destination).components.map(\.string)
        guard !components.isEmpty else { throw BusError.invalidArgs("Cannot bind mount over the machine's root directory.") }
        try await Blocking.run(.interactive) {
            let entry = try Self.enter(m, groups: false)
            defer { entry.close() }
            guard entry.namespaces[.user] == nil else {
                throw BusError.notSupported("Can't bind mount on container with user namespacing applied.")
            }
            func failed(_ error: SystemCallError) -> BusError {
                BusError(errno: error.errno, "Failed to mount \(source) on \(destination) in machine's namespace: \(error)")
            }
            // The source first: a missing one changes nothing in the machine.
            let tree: FileDescriptor
            let isDirectory: Bool
            do throws(SystemCallError) {
                tree = try cloneMountTree(source, readOnly: readOnly)
                isDirectory = try tree.stat().isDirectory
            } catch { throw failed(error) }
            defer { tree.close() }
            let target: FileDescriptor
            do throws(SystemCallError) {
                target = try Self.resolveInside(entry.root, components, directory: isDirectory, make: makeMissing)
            } catch where error.errno == .EXDEV || error.errno == .ELOOP {
                throw BusError.invalidArgs("Destination \(destination) leads out of machine '\(name)'; refusing.")
            } catch { throw failed(error) }
            defer { target.close() }
            do throws(SystemCallError) { try moveMount(tree, onto: target, inNamespace: entry.namespaces[.mnt]) } catch { throw failed(error) }
        }
    }

    /// path_is_absolute && path_is_normalized: starts with `/`, no `.` or `..` component, no `//`.
    package nonisolated static func isNormalizedAbsolute(_ path: String) -> Bool {
        guard path.hasPrefix("/"), !path.utf8.contains(0), path.utf8.count < 4096 else { return false }
        if path == "/" { return true }
        let parts = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        for (i, part) in parts.enumerated() {
            if part == "." || part == ".." || (part.isEmpty && i != parts.count - 1) { return false }
        }
        return true
    }

    /// An FileDescriptor.pathOnly descriptor of `components` below `root`, resolved beneath it (openat2
    /// RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS: EXDEV for a symlink that leaves it); with
    /// `make`, the missing parts created on the way (directories; the last one a directory if
    /// `directory`, else an empty file).
    private nonisolated static func resolveInside(_ root: FileDescriptor, _ components: [String], directory: Bool,
                                                  make: Bool) throws(SystemCallError) -> FileDescriptor {
        let resolve: PathResolution = [.beneath, .noMagicLinks]
        let whole = components.joined(separator: "/")
        do { return try FileDescriptor.open(whole, flags: FileDescriptor.pathOnly, relativeTo: root, resolve: resolve) } catch where make && error.errno == .ENOENT {}
        for i in components.indices {
            let prefix = components[...i].joined(separator: "/")
            do {
                _ = try FileDescriptor.open(prefix, flags: FileDescriptor.pathOnly, relativeTo: root, resolve: resolve)
                continue
            } catch where error.errno == .ENOENT {}
            let parent = i == 0 ? try root.duplicate()
                : try FileDescriptor.open(components[..<i].joined(separator: "/"), flags: FileDescriptor.pathOnly | O_DIRECTORY, relativeTo: root, resolve: resolve)
            defer { parent.close() }
            if i < components.count - 1 || directory {
                do { try makeDirectory(components[i], mode: 0o755, relativeTo: parent) } catch where error.errno == .EEXIST {}
            } else {
                let file = try FileDescriptor.open(components[i], flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY, mode: 0o644,
                                                   relativeTo: parent, resolve: resolve)
                file.close()
            }
        }
        return try FileDescriptor.open(whole, flags: FileDescriptor.pathOnly, relativeTo: root, resolve: resolve)
    }
}

/// The watch on a reaped child's pidfd, kept until it fires (it cancels itself).
private final class ReapWatch: @unchecked Sendable {
    // Touched on the event loop's thread only.
    var watch: EventLoop.Watch?
}

/// One line of a machine's /etc/passwd.
package struct PasswdEntry: Sendable {
    package var name: String
    package var uid: UInt32
    package var gid: UInt32
    package var home: String
    package var shell: String

    /// `user` in the passwd file of the machine whose root is `root` (read through openat2
    /// RESOLVE_IN_ROOT, so a symlinked /etc/passwd cannot point at the host's), or the host's
    /// when nil. root without a passwd entry is uid 0 with home /root and shell /bin/sh, and a
    /// number is that uid (and gid), as systemd's User= takes them; nil for an unknown name.
    static func lookUp(_ user: String, root: FileDescriptor?) throws(SystemCallError) -> PasswdEntry? {
        var text = ""
        do throws(SystemCallError) {
            // The machine's file is hostile: only a regular file is read (a FIFO would block, a
            // device could do anything on open), checked on an O_PATH descriptor first.
            let node: FileDescriptor
            if let root {
                node = try FileDescriptor.open("etc/passwd", flags: FileDescriptor.pathOnly, relativeTo: root, resolve: [.inRoot, .noMagicLinks])
            } else {
                node = try FileDescriptor.open("/etc/passwd", flags: FileDescriptor.pathOnly)
            }
            defer { node.close() }
            guard try node.stat().isRegular else { throw SystemCallError("open", .EINVAL, subject: "/etc/passwd is not a regular file") }
            let fd = try node.reopen(flags: O_RDONLY | O_NOCTTY)
            defer { fd.close() }
            text = String(decoding: try fd.readToEnd(limit: 16 << 20), as: UTF8.self)
        } catch where error.errno == .ENOENT {}
        return find(user, inPasswd: text)
    }

    /// `user` (a name, or a number for a uid) in the text of a passwd file, with the fallbacks of
    /// `lookUp`: the parse of the machine's hostile file, apart from reading it.
    package static func find(_ user: String, inPasswd text: String) -> PasswdEntry? {
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            guard f.count >= 7, f[0] == user || (UInt32(user) != nil && f[2] == user), let uid = UInt32(f[2]), let gid = UInt32(f[3]) else { continue }
            return PasswdEntry(name: String(f[0]), uid: uid, gid: gid, home: f[5].isEmpty ? "/" : String(f[5]),
                               shell: f[6].isEmpty ? "/bin/sh" : String(f[6]))
        }
        if user == "root" || user == "0" { return PasswdEntry(name: "root", uid: 0, gid: 0, home: "/root", shell: "/bin/sh") }
        if let uid = UInt32(user), uid < UInt32.max { return PasswdEntry(name: user, uid: uid, gid: uid, home: "/", shell: "/bin/sh") }
        return nil
    }
}
