import Foundation
import Glibc
import Testing
import TestSupport

/// machine1's members that reach into a running machine — shell, login, PTY, root directory, bind
/// mounts — driven by the real machinectl, busctl and python3-dbus against containers the real
/// systemd-nspawn registered with berthd, here where PID 1 is not systemd.
@Suite(.serialized, .requires(nspawnRequirements + [.commands("script")]))
struct MachineReachTests {
    /// berthd on a private bus and a busybox root with the applets these tests run.
    static func host() throws -> MachineRegistryTests.Host {
        let host = try MachineRegistryTests.Host()
        for applet in ["hostname", "cat", "id", "readlink", "ls", "echo", "grep"] {
            try FileManager.default.createSymbolicLink(atPath: host.root.appending("bin/\(applet)"), withDestinationPath: "busybox")
        }
        return host
    }

    /// machinectl on a terminal of its own (`script`), as shell and login need one to forward.
    private func machinectlOnTerminal(_ bus: PrivateDBusDaemon, _ args: [String]) throws -> CommandResult {
        let command = (["machinectl", "--no-pager"] + args).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
            .joined(separator: " ")
        return try run(["script", "-qec", command, "/dev/null"], environment: ["DBUS_SYSTEM_BUS_ADDRESS": bus.address, "SYSTEMD_COLORS": "0"])
    }

    private let manager = ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager"]

    private func leader(_ bus: PrivateDBusDaemon, _ name: String) throws -> String {
        let reply = try busctl(bus, ["get-property", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine/\(name)",
                                     "org.freedesktop.machine1.Machine", "Leader"]).stdout
        return reply.split(separator: " ").last.map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
    }

    /// The leader of machine `name` once it has finished setting up: nspawn registers the machine
    /// from its inner child, which mounts the container's file systems and drops capabilities
    /// before it execs the payload; until then, the namespaces and root are still being made.
    private func settledLeader(_ bus: PrivateDBusDaemon, _ name: String) throws -> String {
        let pid = try leader(bus, name)
        _ = waitUntil(30) { (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) != "systemd-nspawn\n" }
        return pid
    }

    /// berthd's children that are zombies (exited, not reaped).
    private func zombies(of parent: pid_t) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { entry in
            guard Int32(entry) != nil, let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && fields[0] == "Z" && fields[1] == "\(parent)"
        }
    }

    @Test func machinectlShellRunsInTheContainerWithoutSystemdInside() throws {
        let host = try Self.host()
        defer { host.stop() }
        let (bus, berthd) = (host.bus, host.berthd)
        let container = try NspawnContainer(name: "reachsh", root: host.root.path, bus: bus.address, command: "sleep 600")
        defer { container.stop() }
        #expect(try waitUntil(30) { try machinectl(bus, ["list", "--no-legend"]).stdout.contains("reachsh") }, "\(container.log)\n\(berthd.log)")
        let leaderPID = try settledLeader(bus, "reachsh")
        let leaderPIDNamespace = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(leaderPID)/ns/pid")

        // The command runs in the container: its hostname, its os-release, its pid namespace, as root.
        let shell = try machinectlOnTerminal(bus, ["shell", "reachsh", "/bin/sh", "-c",
                                                   "echo host=$(hostname); cat /usr/lib/os-release; echo ns=$(readlink /proc/self/ns/pid); echo pid=$$ uid=$(id -u) tty=$(readlink /proc/self/fd/0) term=$TERM home=$HOME"])
        #expect(shell.succeeded, "\(shell.stdout)\(shell.stderr)\n\(berthd.log)")
        #expect(shell.stdout.contains("host=reachsh"), "\(shell.stdout)")
        #expect(shell.stdout.contains("PRETTY_NAME=\"Busybox test\""), "\(shell.stdout)")
        #expect(shell.stdout.contains("ns=\(leaderPIDNamespace)"), "\(shell.stdout)")
        #expect(shell.stdout.contains("uid=0 tty=/dev/pts/"), "\(shell.stdout)")
        #expect(shell.stdout.contains("term=") && shell.stdout.contains("home=/root"), "\(shell.stdout)")
        // No more privilege than the container's own processes: the leader's capability bounding set.
        let caps = try machinectlOnTerminal(bus, ["shell", "reachsh", "/bin/grep", "CapBnd", "/proc/self/status"])
        let leaderStatus = try String(contentsOfFile: "/proc/\(leaderPID)/status", encoding: .utf8)
        let leaderBounding = leaderStatus.split(separator: "\n").first { $0.hasPrefix("CapBnd:") }.map(String.init) ?? "?"
        let hostBounding = try String(contentsOfFile: "/proc/self/status", encoding: .utf8).split(separator: "\n")
            .first { $0.hasPrefix("CapBnd:") }.map(String.init) ?? "?"
        #expect(caps.stdout.contains(leaderBounding), "\(caps.stdout) vs the leader's \(leaderBounding)")
        #expect(leaderBounding != hostBounding, "nspawn's container keeps fewer capabilities than the host")
        let pid = shell.stdout.split(separator: "pid=").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) } ?? -1
        #expect(pid > 1 && pid < 1000, "the shell's pid \(pid) is not one of the container's pid namespace")

        // A login shell when no program is named: the user's shell (root's default, /bin/sh) with -l.
        try "root:x:0:0:root:/:/bin/sh\n".write(toFile: host.root.appending("etc/passwd"), atomically: false, encoding: .utf8)
        let login = try run(["script", "-qec", "machinectl shell reachsh", "/dev/null"],
                            environment: ["DBUS_SYSTEM_BUS_ADDRESS": bus.address, "SYSTEMD_COLORS": "0"],
                            input: Data("echo in-login-shell-$((40+2)) $0\nexit\n".utf8))
        #expect(login.stdout.contains("in-login-shell-42 -sh") || login.stdout.contains("in-login-shell-42 /bin/sh"), "\(login.stdout)")

        // The shell's process is in the machine's control group (berthd's scope for it).
        let background = try spawn(["/usr/bin/script", "-qec", "machinectl shell reachsh /bin/sleep 7", "/dev/null"], stdout: "/dev/null", stderr: nil,
                                   environment: ["DBUS_SYSTEM_BUS_ADDRESS": bus.address])
        defer { kill(background, SIGKILL); _ = waitpid(background, nil, 0) }
        var sleeperGroup = ""
        #expect(waitUntil(20) {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int32(entry) != nil {
                guard let cmdline = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"),
                      cmdline == Data("/bin/sleep\u{0}7\u{0}".utf8) else { continue }
                sleeperGroup = (try? String(contentsOfFile: "/proc/\(entry)/cgroup", encoding: .utf8)) ?? ""
                return true
            }
            return false
        })
        #expect(sleeperGroup.contains("/machine.slice/machine-reachsh.scope"), "\(sleeperGroup)")

        // .host: a shell on the host, as the user asked for.
        let onHost = try machinectlOnTerminal(bus, ["shell", "nobody@.host", "/bin/sh", "-c", "echo host-$(hostname) uid-$(id -u)"])
        let hostName = try run(["hostname"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(onHost.stdout.contains("host-\(hostName) uid-65534"),
                "\(onHost.stdout)")

        // Refusals, clear and with nothing started.
        let ghost = try machinectlOnTerminal(bus, ["shell", "ghost@reachsh", "/bin/sh", "-c", "id"])
        #expect(!ghost.succeeded && ghost.stdout.contains("No user 'ghost' in machine 'reachsh'"), "\(ghost.stdout)")
        let relative = try busctl(bus, manager + ["OpenMachineShell", "sssasas", "reachsh", "", "bin/sh", "0", "0"])
        #expect(!relative.succeeded && relative.stderr.contains("is not absolute"), "\(relative.stderr)")
        let missingProgram = try busctl(bus, manager + ["OpenMachineShell", "sssasas", "reachsh", "", "/bin/nonexistent", "0", "0"])
        #expect(!missingProgram.succeeded && missingProgram.stderr.contains("No such file or directory"), "\(missingProgram.stderr)")
        let badEnvironment = try busctl(bus, manager + ["OpenMachineShell", "sssasas", "reachsh", "", "/bin/sh", "0", "1", "NOEQUALS"])
        #expect(!badEnvironment.succeeded && badEnvironment.stderr.contains("Invalid environment assignments"), "\(badEnvironment.stderr)")
        let gone = try busctl(bus, manager + ["OpenMachineShell", "sssasas", "nosuch", "", "/bin/sh", "0", "0"])
        #expect(!gone.succeeded && gone.stderr.contains("No machine 'nosuch' known"), "\(gone.stderr)")
        let nobody = try run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "busctl", "--address=\(bus.address)"]
                             + manager + ["OpenMachineShell", "sssasas", "reachsh", "", "/bin/sh", "0", "0"])
        #expect(!nobody.succeeded && nobody.stderr.contains("Access denied"), "\(nobody.stderr)")
        // machined 252's login needs the container's own systemd: this one has none.
        let noLogin = try machinectlOnTerminal(bus, ["login", "reachsh"])
        #expect(!noLogin.succeeded && noLogin.stdout.contains("There is no system bus in container reachsh"), "\(noLogin.stdout)")
        // Nor does a symlink to a bus outside the container count as one: it is followed inside
        // the container's root (here: to nothing), never to the host's (here: berthd's own bus).
        let busSocket = String(bus.address.split(separator: ",").first ?? "").replacingOccurrences(of: "unix:path=", with: "")
        try FileManager.default.createDirectory(atPath: host.root.appending("run/dbus"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: host.root.appending("run/dbus/system_bus_socket"), withDestinationPath: busSocket)
        let pointedOut = try machinectlOnTerminal(bus, ["login", "reachsh"])
        #expect(!pointedOut.succeeded && pointedOut.stdout.contains("There is no system bus in container reachsh"), "\(pointedOut.stdout)")

        // A hostile /etc/passwd (a FIFO, which would block whoever opens it) is refused, not read.
        try FileManager.default.removeItem(atPath: host.root.appending("etc/passwd"))
        #expect(mkfifo(host.root.appending("etc/passwd"), 0o644) == 0)
        let fifo = try busctl(bus, manager + ["OpenMachineShell", "sssasas", "reachsh", "", "/bin/sh", "0", "0"])
        #expect(!fifo.succeeded && fifo.stderr.contains("not a regular file"), "\(fifo.stderr)")

        // Every shell berthd started was reaped.
        kill(background, SIGKILL)
        _ = waitpid(background, nil, 0)
        #expect(waitUntil(20) { zombies(of: berthd.pid).isEmpty }, "zombies: \(zombies(of: berthd.pid))")
        #expect(berthd.isRunning)
    }

    @Test func machinectlBindMountsIntoTheContainerAndRefusesSymlinksOut() throws {
        let host = try Self.host()
        defer { host.stop() }
        let (bus, berthd, root) = (host.bus, host.berthd, host.root)
        let shared = try TemporaryDirectory(prefix: "berth-bind")
        defer { shared.remove() }
        try "from the host\n".write(toFile: shared.appending("note"), atomically: false, encoding: .utf8)
        // Symlinks in the container's tree that lead out of it, absolutely and by climbing.
        try FileManager.default.createSymbolicLink(atPath: root.appending("out"), withDestinationPath: "/tmp")
        try FileManager.default.createSymbolicLink(atPath: root.appending("climb"), withDestinationPath: "../../../../../../../../tmp")
        let container = try NspawnContainer(name: "reachbind", root: root.path, bus: bus.address, command: "sleep 600")
        defer { container.stop() }
        #expect(try waitUntil(30) { try machinectl(bus, ["list", "--no-legend"]).stdout.contains("reachbind") }, "\(container.log)\n\(berthd.log)")
        let leaderPID = try settledLeader(bus, "reachbind")
        let inside = "/proc/\(leaderPID)/root"

        let bind = try machinectl(bus, ["bind", "reachbind", shared.path, "/mnt/shared", "--mkdir"])
        #expect(bind.succeeded, "\(bind.stderr)\n\(berthd.log)")
        #expect((try? String(contentsOfFile: inside + "/mnt/shared/note", encoding: .utf8)) == "from the host\n")
        // Seen from the container's own shell, and writable through to the host.
        let shell = try machinectlOnTerminal(bus, ["shell", "reachbind", "/bin/sh", "-c", "cat /mnt/shared/note; echo back > /mnt/shared/reply"])
        #expect(shell.stdout.contains("from the host"), "\(shell.stdout)")
        #expect((try? String(contentsOfFile: shared.appending("reply"), encoding: .utf8)) == "back\n")
        // Not on the host's side: the mount is in the container's namespace only.
        #expect(!FileManager.default.fileExists(atPath: root.appending("mnt/shared/note")))

        let readOnly = try machinectl(bus, ["bind", "reachbind", shared.path, "/srv/ro", "--mkdir", "--read-only"])
        #expect(readOnly.succeeded, "\(readOnly.stderr)")
        #expect((try? String(contentsOfFile: inside + "/srv/ro/note", encoding: .utf8)) == "from the host\n")
        #expect(open(inside + "/srv/ro/new", O_WRONLY | O_CREAT, 0o644) == -1 && errno == EROFS)

        // Refusals, with nothing changed in the container or on the host.
        // A name no one else uses in the host's shared /tmp, so the check below sees only this bind.
        let escape = "berth-bind-escape-\(UUID().uuidString)"
        for link in ["/out/\(escape)", "/climb/\(escape)"] {
            let out = try machinectl(bus, ["bind", "reachbind", shared.path, link, "--mkdir"])
            #expect(!out.succeeded && out.stderr.contains("leads out of machine 'reachbind'"), "\(out.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: "/tmp/\(escape)"))
        let missing = try machinectl(bus, ["bind", "reachbind", shared.appending("missing"), "/mnt/missing", "--mkdir"])
        #expect(!missing.succeeded && missing.stderr.contains("No such file or directory"), "\(missing.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root.appending("mnt/missing")))
        let relative = try busctl(bus, manager + ["BindMountMachine", "sssbb", "reachbind", "tmp", "/mnt/x", "false", "true"])
        #expect(!relative.succeeded && relative.stderr.contains("Source path must be absolute and normalized"), "\(relative.stderr)")
        let dotdot = try busctl(bus, manager + ["BindMountMachine", "sssbb", "reachbind", shared.path, "/mnt/../etc", "false", "true"])
        #expect(!dotdot.succeeded && dotdot.stderr.contains("Destination path must be absolute and normalized"), "\(dotdot.stderr)")
        let onHost = try busctl(bus, manager + ["BindMountMachine", "sssbb", ".host", shared.path, "/mnt/x", "false", "true"])
        #expect(!onHost.succeeded && onHost.stderr.contains("only supported on container machines"), "\(onHost.stderr)")
        let nobody = try run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "busctl", "--address=\(bus.address)"]
                             + manager + ["BindMountMachine", "sssbb", "reachbind", shared.path, "/mnt/nobody", "false", "true"])
        #expect(!nobody.succeeded && nobody.stderr.contains("Access denied"), "\(nobody.stderr)")
        #expect(!FileManager.default.fileExists(atPath: inside + "/mnt/nobody"))
        #expect(berthd.isRunning)
    }

    @Test func openMachinePTYAndRootDirectoryHandBackUsableDescriptors() throws {
        let host = try Self.host()
        defer { host.stop() }
        let (bus, berthd) = (host.bus, host.berthd)
        let container = try NspawnContainer(name: "reachpty", root: host.root.path, bus: bus.address, command: "sleep 600")
        defer { container.stop() }
        #expect(try waitUntil(30) { try machinectl(bus, ["list", "--no-legend"]).stdout.contains("reachpty") }, "\(container.log)\n\(berthd.log)")
        _ = try settledLeader(bus, "reachpty")
        let script = berthd.root + "/pty.py"
        // The pty's slave opened through the root directory fd, so both descriptors are proved at once.
        try """
        import dbus, os, sys
        m = dbus.Interface(dbus.SystemBus().get_object('org.freedesktop.machine1', '/org/freedesktop/machine1'),
                           'org.freedesktop.machine1.Manager')
        name = sys.argv[1]
        fd, path = m.OpenMachinePTY(name)
        master = fd.take()
        root = m.OpenMachineRootDirectory(name).take()
        print('path', path)
        print('flags', open('/proc/self/fdinfo/%d' % root).read().split('\\n')[1].split()[1])
        print('os', open('/proc/self/fd/%d/usr/lib/os-release' % root).read().split('\\n')[0])
        slave = os.open('/proc/self/fd/%d%s' % (root, path), os.O_RDWR | os.O_NOCTTY)
        os.write(slave, b'ping\\n')
        print('read', os.read(master, 100))
        """.write(toFile: script, atomically: false, encoding: .utf8)
        let environment = ["DBUS_SYSTEM_BUS_ADDRESS": bus.address]
        let reply = try run(["/usr/bin/python3", script, "reachpty"], environment: environment)
        #expect(reply.succeeded, "\(reply.stderr)\n\(berthd.log)")
        #expect(reply.stdout.contains("path /dev/pts/"), "\(reply.stdout)")
        // O_PATH (010000000) | O_DIRECTORY (0200000).
        let flags = reply.stdout.split(separator: "\n").first { $0.hasPrefix("flags ") }.flatMap { Int($0.dropFirst(6), radix: 8) } ?? 0
        #expect(flags & 0o10_200_000 == 0o10_200_000, "\(reply.stdout)")
        #expect(reply.stdout.contains("os ID=bb"), "\(reply.stdout)")
        #expect(reply.stdout.contains("read b'ping\\r\\n'"), "\(reply.stdout)")
        // The same through the machine's object.
        let object = ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine/reachpty", "org.freedesktop.machine1.Machine"]
        let viaObject = try busctl(bus, object + ["OpenPTY"])
        #expect(viaObject.succeeded && viaObject.stdout.hasPrefix("hs ") && viaObject.stdout.contains("\"/dev/pts/"), "\(viaObject.stdout)\(viaObject.stderr)")
        let rootViaObject = try busctl(bus, object + ["OpenRootDirectory"])
        #expect(rootViaObject.succeeded && rootViaObject.stdout.hasPrefix("h "), "\(rootViaObject.stdout)\(rootViaObject.stderr)")

        // The host's, and refusals.
        let hostPTY = try run(["/usr/bin/python3", script, ".host"], environment: environment)
        #expect(hostPTY.stdout.contains("path /dev/pts/"), "\(hostPTY.stderr)")
        let gone = try run(["/usr/bin/python3", script, "nosuch"], environment: environment)
        #expect(gone.stderr.contains("org.freedesktop.machine1.NoSuchMachine"), "\(gone.stderr)")
        let nobody = try run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "busctl", "--address=\(bus.address)"]
                             + manager + ["OpenMachinePTY", "s", "reachpty"])
        #expect(!nobody.succeeded && nobody.stderr.contains("Access denied"), "\(nobody.stderr)")
        // A VM's leader is a host process: nothing of this reaches into it.
        let vmLeader = try spawn(["/bin/sleep", "600"], stdout: "/dev/null", stderr: nil)
        defer { kill(vmLeader, SIGKILL); _ = waitpid(vmLeader, nil, 0) }
        let registered = try busctl(bus, manager + ["RegisterMachine", "sayssus", "reachvm", "0", "qemu", "vm", "\(vmLeader)", ""])
        #expect(registered.succeeded, "\(registered.stderr)")
        for call in [["OpenMachinePTY", "s", "reachvm"], ["OpenMachineRootDirectory", "s", "reachvm"],
                     ["OpenMachineShell", "sssasas", "reachvm", "", "/bin/sh", "0", "0"]] {
            let refused = try busctl(bus, manager + call)
            #expect(!refused.succeeded && refused.stderr.contains("only supported on container machines"), "\(call[0]): \(refused.stderr)")
        }
        let nobodyRoot = try run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "busctl", "--address=\(bus.address)"]
                                 + manager + ["OpenMachineRootDirectory", "s", "reachpty"])
        #expect(!nobodyRoot.succeeded && nobodyRoot.stderr.contains("Access denied"), "\(nobodyRoot.stderr)")
    }

    @Test(.requires(.bootedSystemd))
    func machinectlLoginReachesTheGettyOfTheContainersSystemd() throws {
        let host = try Self.host()
        defer { host.stop() }
        let (bus, berthd) = (host.bus, host.berthd)
        let debian = try BootedSystemd.preparedRoot()
        // The cached Debian 12 booted by the real nspawn and registered with berthd; its changes
        // land in a tmpfs (--volatile=overlay).
        let container = try NspawnContainer(name: "reachlogin", root: debian, bus: bus.address,
                                            options: "--volatile=overlay --console=read-only", command: nil, logStdout: true)
        // SIGTERM to nspawn first, and up to 30 s for the booted container to shut down.
        defer { container.stop(gracePeriod: 30) }
        #expect(try waitUntil(180) { try machinectl(bus, ["list", "--no-legend"]).stdout.contains("reachlogin") }, "\(berthd.log)")
        let leaderPID = try leader(bus, "reachlogin")
        // Its system bus is up once its dbus.service made the socket.
        #expect(waitUntil(180) { FileManager.default.fileExists(atPath: "/proc/\(leaderPID)/root/run/dbus/system_bus_socket") })

        // machinectl login on a pty of its own, read until the container's getty prompts.
        let driver = berthd.root + "/login.py"
        try """
        import os, pty, select, sys, time
        pid, fd = pty.fork()
        if pid == 0:
            os.execvp('machinectl', ['machinectl', 'login', sys.argv[1]])
        out = b''
        deadline = time.time() + 120
        while time.time() < deadline and b'login:' not in out:
            if select.select([fd], [], [], 1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
        sys.stdout.write(out.decode(errors='replace'))
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        """.write(toFile: driver, atomically: false, encoding: .utf8)
        let login = try run(["/usr/bin/python3", driver, "reachlogin"], environment: ["DBUS_SYSTEM_BUS_ADDRESS": bus.address, "SYSTEMD_COLORS": "0"])
        #expect(login.stdout.contains("Connected to machine reachlogin"), "\(login.stdout)\(login.stderr)\n\(berthd.log)")
        #expect(login.stdout.contains("Debian GNU/Linux 12") && login.stdout.contains("login:"), "\(login.stdout)")
        #expect(try machinectl(bus, ["terminate", "reachlogin"]).succeeded)
    }
}
