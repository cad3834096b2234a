import Foundation
import Glibc
import Testing
import TestSupport

/// berthctl's machine verbs against berthd, with the real systemd-nspawn registering a busybox
/// container on a private bus (as MachineRegistryTests) and the real machinectl on the same
/// daemon as the reference for what berthctl prints.
@Suite(.serialized, .requires(nspawnRequirements))
struct Machine1BerthctlMachineTests {
    typealias Host = MachineRegistryTests.Host
    typealias Container = NspawnContainer

    /// One row of `berthctl list --json`.
    struct Row: Decodable, Equatable {
        var machine: String
        var `class`: String
        var service: String
        var os: String?
        var version: String?
    }

    /// `berthctl status NAME --json`.
    struct Status: Decodable {
        var name: String
        var leader: UInt32
        var service: String
        var `class`: String
        var root: String?
        var unit: String
        var os: String?
        var since: UInt64
    }

    /// A host with busybox's applets the tests' containers use.
    static func host() throws -> Host {
        let host = try Host()
        for applet in ["touch", "cat", "echo", "hostname", "ls", "mkdir", "id"] {
            try? FileManager.default.createSymbolicLink(atPath: host.root.appending("bin/\(applet)"), withDestinationPath: "busybox")
        }
        try FileManager.default.createDirectory(atPath: "/run/systemd/system", withIntermediateDirectories: true)
        return host
    }

    func berthctl(_ bus: PrivateDBusDaemon, _ args: [String], input: Data? = nil) throws -> CommandResult {
        // The options after the verb: `shell` hands everything after the machine name to the machine.
        try run([try BerthdProcess.binaryPath("berthctl")] + args.prefix(1) + ["--bus-address", bus.address] + args.dropFirst(),
                input: input)
    }

    /// Ends a container still running at the end of a test the way berthd sees it go (SIGKILL to
    /// its leader, then the machine's removal), so berthd removes its scope's control groups
    /// before it is stopped itself.
    func finish(_ container: Container, _ name: String, _ bus: PrivateDBusDaemon) {
        _ = try? berthctl(bus, ["kill", name, "--kill-whom", "leader", "--signal", "KILL"])
        _ = container.wait(timeout: 30)
        _ = waitUntil(30) { !((try? rows(bus))?.contains { $0.machine == name } ?? false) }
        container.stop()
    }

    func rows(_ bus: PrivateDBusDaemon, all: Bool = false) throws -> [Row] {
        let r = try berthctl(bus, ["list", "--json"] + (all ? ["--all"] : []))
        guard r.succeeded else { return [] }
        return try JSONDecoder().decode([Row].self, from: Data(r.stdout.utf8))
    }

    /// Lines as words, so two tables with different column widths compare.
    func words(_ text: String) -> [[String]] {
        text.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
    }

    @Test func listStatusShowKillAndTerminateAMachineAsMachinectlSeesIt() throws {
        let host = try Self.host()
        defer { host.stop() }
        let bus = host.bus
        // A container whose init reports SIGUSR1 in a file and ends on SIGTERM (an init without
        // handlers would ignore both, as PID 1 of its namespace).
        let container = try Container(name: "bbctl", root: host.root.path, bus: bus.address,
                                      command: "trap \"touch /tmp/usr1\" USR1; trap \"exit 0\" TERM; while :; do sleep 1; done")
        defer { container.stop() }
        #expect(try waitUntil(30) { try rows(bus).contains { $0.machine == "bbctl" } }, "\(container.log)\n\(host.berthd.log)")

        // list: the rows machinectl lists, in its columns; .host only with --all.
        #expect(try rows(bus) == [Row(machine: "bbctl", class: "container", service: "systemd-nspawn", os: "bb", version: nil)])
        #expect(try rows(bus, all: true).map(\.machine) == [".host", "bbctl"])
        let table = try berthctl(bus, ["list"])
        #expect(table.succeeded && table.stdout.hasPrefix("MACHINE CLASS     SERVICE        OS VERSION ADDRESSES\n")
                && table.stdout.hasSuffix("\n1 machines listed.\n"), "\(table.stdout)")
        let ours = try berthctl(bus, ["list", "--no-legend"]).stdout
        let theirs = try machinectl(bus, ["list", "--no-legend"]).stdout
        #expect(words(ours) == words(theirs), "berthctl:\n\(ours)\nmachinectl:\n\(theirs)")

        // status: every line berthctl prints (but the relative time) is machinectl's too.
        let status = try berthctl(bus, ["status", "bbctl"])
        #expect(status.succeeded, "\(status.stderr)")
        let mcStatus = try machinectl(bus, ["status", "bbctl"]).stdout
        for line in status.stdout.split(separator: "\n") where !line.contains("Since:") {
            #expect(mcStatus.contains(line), "'\(line)' is not in machinectl's:\n\(mcStatus)")
        }
        #expect(status.stdout.contains("\t    Unit: machine-bbctl.scope") && status.stdout.contains("\t      OS: Busybox test"),
                "\(status.stdout)")
        let json = try JSONDecoder().decode(Status.self, from: Data(try berthctl(bus, ["status", "bbctl", "--json"]).stdout.utf8))
        #expect(json.name == "bbctl" && json.service == "systemd-nspawn" && json.class == "container" && json.root == host.root.path
                && json.unit == "machine-bbctl.scope" && json.os == "Busybox test" && json.leader > 1 && json.since > 0)
        // Without a name, status is still the daemon's.
        let daemon = try berthctl(bus, ["status"])
        #expect(daemon.stdout.contains("org.freedesktop.machine1") && daemon.stdout.contains("answers (berthd)"), "\(daemon.stdout)")

        // show: machinectl's NAME=value lines; -p and --value; JSON; the manager without a name.
        let show = try berthctl(bus, ["show", "bbctl"]).stdout
        let mcShow = try machinectl(bus, ["show", "bbctl"]).stdout
        #expect(Set(show.split(separator: "\n")) == Set(mcShow.split(separator: "\n")), "berthctl:\n\(show)\nmachinectl:\n\(mcShow)")
        #expect(try berthctl(bus, ["show", "bbctl", "-p", "Leader", "--value"]).stdout == "\(json.leader)\n")
        #expect(try berthctl(bus, ["show", "bbctl", "-p", "Name,Class"]).stdout == "Name=bbctl\nClass=container\n")
        let props = try JSONSerialization.jsonObject(with: Data(try berthctl(bus, ["show", "bbctl", "--json"]).stdout.utf8)) as? [String: Any]
        #expect(props?["Name"] as? String == "bbctl" && props?["Leader"] as? Int == Int(json.leader) && props?["State"] as? String == "running")
        #expect(try berthctl(bus, ["show"]).stdout.contains("PoolPath=\(host.berthd.root)/var/lib/machines"))

        // Errors: machined's words, exit status 1 (a bad signal or target is refused before any call).
        let missing = try berthctl(bus, ["status", "nope"])
        #expect(missing.status == 1 && missing.stderr.contains("No machine 'nope' known"), "\(missing.stderr)")
        #expect(try berthctl(bus, ["kill", "nope"]).stderr.contains("NoSuchMachine"))
        #expect(try berthctl(bus, ["terminate", "nope"]).status == 1)
        let badSignal = try berthctl(bus, ["kill", "bbctl", "--signal", "999"])
        #expect(!badSignal.succeeded && badSignal.stderr.contains("invalid signal"), "\(badSignal.stderr)")
        #expect(!(try berthctl(bus, ["kill", "bbctl", "--kill-whom", "everyone"])).succeeded)
        let nobody = try run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", try BerthdProcess.binaryPath("berthctl"),
                              "terminate", "--bus-address", bus.address, "bbctl"])
        #expect(nobody.status == 1 && nobody.stderr.contains("AccessDenied"), "\(nobody.stderr)")
        #expect(try rows(bus).contains { $0.machine == "bbctl" })

        // kill by name (default: all processes) reaches the container's trap.
        #expect(try berthctl(bus, ["kill", "bbctl", "--signal", "SIGUSR1"]).succeeded)
        // (nspawn mounts a tmpfs on the container's /tmp: seen through the leader's root.)
        #expect(waitUntil(30) { FileManager.default.fileExists(atPath: "/proc/\(json.leader)/root/tmp/usr1") })
        // terminate: SIGTERM ends it, nspawn exits, the machine is gone.
        let terminate = try berthctl(bus, ["terminate", "bbctl"])
        #expect(terminate.succeeded, "\(terminate.stderr)")
        #expect(container.wait(timeout: 30), "nspawn did not end")
        #expect(try waitUntil(30) { !(try rows(bus, all: true).contains { $0.machine == "bbctl" }) })
        #expect(try berthctl(bus, ["list"]).stdout == "No machines.\n")
    }

    @Test func killTheLeaderByNumber() throws {
        let host = try Self.host()
        defer { host.stop() }
        let bus = host.bus
        let container = try Container(name: "bbkill", root: host.root.path, bus: bus.address, command: "sleep 600")
        defer { container.stop() }
        #expect(try waitUntil(30) { try rows(bus).contains { $0.machine == "bbkill" } }, "\(container.log)")
        // SIGKILL (9) to the leader alone: the container's init dies and with it the machine.
        let kill = try berthctl(bus, ["kill", "bbkill", "--kill-whom", "leader", "-s", "9"])
        #expect(kill.succeeded, "\(kill.stderr)")
        #expect(container.wait(timeout: 30))
        #expect(try waitUntil(30) { !(try rows(bus).contains { $0.machine == "bbkill" }) })
    }

    @Test func listAndStatusShowTheInterfaceAndAddressesOfAVethContainer() throws {
        let host = try Self.host()
        defer { host.stop() }
        let bus = host.bus
        let setup = "/bin/busybox ip link set lo up; /bin/busybox ip addr add 10.231.46.6/24 dev host0; "
            + "/bin/busybox ip addr add 10.231.46.7/24 dev host0; /bin/busybox ip link set host0 up; exec sleep 600"
        let container = try NspawnContainer(name: "bbnet", root: host.root.path, bus: bus.address,
                                                       options: "--network-veth", command: setup)
        defer { container.stop() }
        #expect(try waitUntil(30) {
            try berthctl(bus, ["status", "bbnet"]).stdout.contains("10.231.46.7")
        }, "\(container.log)\n\(host.berthd.log)")
        // list: the first address and an ellipsis for the rest, as machinectl lists them.
        let ours = try berthctl(bus, ["list", "--no-legend"]).stdout
        let theirs = try machinectl(bus, ["list", "--no-legend"]).stdout
        #expect(words(ours) == words(theirs) && ours.contains("10.231.46.6…"), "berthctl:\n\(ours)\nmachinectl:\n\(theirs)")
        // status: the host side of the veth (Iface) and every address, in machinectl's lines.
        let status = try berthctl(bus, ["status", "bbnet"]).stdout
        let mcStatus = try machinectl(bus, ["status", "bbnet"]).stdout
        for line in status.split(separator: "\n") where !line.contains("Since:") {
            #expect(mcStatus.contains(line), "'\(line)' is not in machinectl's:\n\(mcStatus)")
        }
        #expect(status.contains("\t   Iface: ve-bbnet\n\t Address: 10.231.46.6\n\t          10.231.46.7\n"), "\(status)")
        let rows = try JSONSerialization.jsonObject(with: Data(try berthctl(bus, ["list", "--json"]).stdout.utf8)) as? [[String: Any]]
        #expect(rows?.first?["addresses"] as? [String] == ["10.231.46.6", "10.231.46.7"], "\(String(describing: rows))")
    }

    // MARK: reaching in (the server side: branches m13/reach and m13/copy)

    @Test func shellRunsACommandInTheMachineAndPipedInputEnds() throws {
        let host = try Self.host()
        defer { host.stop() }
        let bus = host.bus
        let container = try Container(name: "bbsh", root: host.root.path, bus: bus.address, command: "sleep 600")
        defer { finish(container, "bbsh", bus) }
        #expect(try waitUntil(30) { try rows(bus).contains { $0.machine == "bbsh" } }, "\(container.log)")

        // PATH with ARGS: the command runs inside (the container's hostname and os-release).
        let shell = try berthctl(bus, ["shell", "bbsh", "/bin/sh", "-c", "echo in-$(hostname); cat /usr/lib/os-release"])
        #expect(shell.succeeded, "\(shell.stderr)")
        #expect(shell.stdout.contains("in-bbsh") && shell.stdout.contains("Busybox test"), "\(shell.stdout)")
        #expect(shell.stderr.contains("Connected to machine bbsh.") && shell.stderr.contains("Connection to machine bbsh terminated."),
                "\(shell.stderr)")
        // Commands piped into the default shell run, and the end of the input ends the session.
        let piped = try berthctl(bus, ["shell", "-q", "bbsh"], input: Data("echo piped-$((6*7))\n".utf8))
        #expect(piped.succeeded && piped.stdout.contains("piped-42"), "\(piped.stdout)\n\(piped.stderr)")
        #expect(!piped.stderr.contains("Connected"))
        // On a terminal (script(1) gives berthctl one): raw mode for the session, typed commands
        // run, `exit` hangs the pty up and ends the session.
        let onTTY = try run(["script", "-qec", "'\(try BerthdProcess.binaryPath("berthctl"))' shell --bus-address '\(bus.address)' bbsh",
                             "/dev/null"], input: Data("echo tty-$((1+1))\nexit\n".utf8))
        #expect(onTTY.succeeded && onTTY.stdout.contains("tty-2") && onTTY.stdout.contains("Connection to machine bbsh terminated."),
                "\(onTTY.stdout)\n\(onTTY.stderr)")
        // USER@NAME with a user the machine does not have: a clear error, exit 1.
        let nouser = try berthctl(bus, ["shell", "nosuchuser@bbsh", "/bin/sh", "-c", "true"])
        #expect(nouser.status == 1 && nouser.stderr.hasPrefix("berthctl: Failed to get shell PTY: "), "\(nouser.stderr)")
        // A machine that is not there.
        let missing = try berthctl(bus, ["shell", "nope"])
        #expect(missing.status == 1 && missing.stderr.contains("NoSuchMachine"), "\(missing.stderr)")
        // login needs the machine's own systemd, which a busybox container has not.
        let login = try berthctl(bus, ["login", "bbsh"])
        #expect(login.status == 1 && login.stderr.hasPrefix("berthctl: Failed to get login PTY: "), "\(login.stderr)")
    }

    @Test func copyToAndCopyFromReachIntoTheMachine() throws {
        let host = try Self.host()
        defer { host.stop() }
        let bus = host.bus
        let container = try Container(name: "bbcp", root: host.root.path, bus: bus.address, command: "sleep 600")
        defer { finish(container, "bbcp", bus) }
        #expect(try waitUntil(30) { try rows(bus).contains { $0.machine == "bbcp" } }, "\(container.log)")
        let work = try TemporaryDirectory(prefix: "berth-cp")
        defer { work.remove() }

        // copy-to: a file into the machine; a relative host path is the working folder's.
        try "to the machine\n".write(toFile: work.appending("in.txt"), atomically: false, encoding: .utf8)
        let to = try run(["/bin/sh", "-c", "cd '\(work.path)' && '\(try BerthdProcess.binaryPath("berthctl"))' copy-to --bus-address '\(bus.address)' bbcp in.txt /tmp/in.txt"])
        #expect(to.succeeded, "\(to.stderr)")
        let leader = try berthctl(bus, ["show", "bbcp", "-p", "Leader", "--value"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        // (nspawn mounts a tmpfs on the container's /tmp: seen through the leader's root.)
        let inside = "/proc/\(leader)/root"
        #expect((try? String(contentsOfFile: inside + "/tmp/in.txt", encoding: .utf8)) == "to the machine\n")
        // Again without --force: refused, the file as it was; with --force: replaced.
        try "changed\n".write(toFile: work.appending("in.txt"), atomically: false, encoding: .utf8)
        let again = try berthctl(bus, ["copy-to", "bbcp", work.appending("in.txt"), "/tmp/in.txt"])
        #expect(again.status == 1 && again.stderr.hasPrefix("berthctl: Failed to copy: "), "\(again.stderr)")
        #expect(try berthctl(bus, ["copy-to", "--force", "bbcp", work.appending("in.txt"), "/tmp/in.txt"]).succeeded)
        #expect((try? String(contentsOfFile: inside + "/tmp/in.txt", encoding: .utf8)) == "changed\n")

        // copy-from: the machine's os-release to the host.
        let from = try berthctl(bus, ["copy-from", "bbcp", "/usr/lib/os-release", work.appending("os-release")])
        #expect(from.succeeded, "\(from.stderr)")
        #expect((try? String(contentsOfFile: work.appending("os-release"), encoding: .utf8))?.contains("Busybox test") == true)
        // `..` cannot lead out of the machine.
        let escape = try berthctl(bus, ["copy-from", "bbcp", "/../../../../etc/shadow", work.appending("shadow")])
        // (the container has no /etc/shadow: resolved inside its root, that is all there is to find)
        #expect(!escape.succeeded && !FileManager.default.fileExists(atPath: work.appending("shadow")), "\(escape.stderr)")
    }

    @Test func bindMountsAHostFolderIntoTheMachine() throws {
        let host = try Self.host()
        defer { host.stop() }
        let bus = host.bus
        let container = try Container(name: "bbbind", root: host.root.path, bus: bus.address, command: "sleep 600")
        defer { finish(container, "bbbind", bus) }
        #expect(try waitUntil(30) { try rows(bus).contains { $0.machine == "bbbind" } }, "\(container.log)")
        let work = try TemporaryDirectory(prefix: "berth-bind")
        defer { work.remove() }
        let leader = try berthctl(bus, ["show", "bbbind", "-p", "Leader", "--value"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let inside = "/proc/\(leader)/root"

        // bind: a host folder appears inside, made with --mkdir; read-only with --read-only.
        try FileManager.default.createDirectory(atPath: work.appending("share"), withIntermediateDirectories: true)
        try "shared\n".write(toFile: work.appending("share/file"), atomically: false, encoding: .utf8)
        let bind = try berthctl(bus, ["bind", "bbbind", work.appending("share"), "/mnt/share", "--mkdir", "--read-only"])
        #expect(bind.succeeded, "\(bind.stderr)")
        #expect((try? String(contentsOfFile: inside + "/mnt/share/file", encoding: .utf8)) == "shared\n")
        let write = try berthctl(bus, ["shell", "-q", "bbbind", "/bin/sh", "-c", "touch /mnt/share/new && echo wrote || echo refused"])
        #expect(write.stdout.contains("refused"), "\(write.stdout)")
        // A relative SRC is the working folder's (berthctl makes it absolute); no DST: the same path inside.
        let relative = try run(["/bin/sh", "-c", "cd '\(work.path)' && '\(try BerthdProcess.binaryPath("berthctl"))' bind --bus-address '\(bus.address)' --mkdir bbbind share"])
        #expect(relative.succeeded, "\(relative.stderr)")
        #expect((try? String(contentsOfFile: inside + work.appending("share/file"), encoding: .utf8)) == "shared\n")
        // A missing source: a clear error.
        let missing = try berthctl(bus, ["bind", "bbbind", work.appending("nope"), "/mnt/nope"])
        #expect(missing.status == 1 && missing.stderr.hasPrefix("berthctl: Failed to bind mount: "), "\(missing.stderr)")
    }

    @Test(.requires(.bootedSystemd))
    func loginToTheGettyOfABootedContainerOutlivesLogoutsAndEndsWithTheMachine() throws {
        let host = try Self.host()
        defer { host.stop() }
        let bus = host.bus
        let debian = try BootedSystemd.preparedRoot()
        // The cached Debian 12 (root without a password) booted by the real nspawn and registered
        // with berthd; its changes land in a tmpfs (--volatile=overlay).
        let container = try Container(name: "ctllogin", root: debian, bus: bus.address,
                                      options: "--volatile=overlay --console=read-only", command: nil, logStdout: true)
        defer { container.stop() }
        #expect(try waitUntil(180) { try rows(bus).contains { $0.machine == "ctllogin" } }, "\(host.berthd.log)")
        let leader = try berthctl(bus, ["show", "ctllogin", "-p", "Leader", "--value"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(waitUntil(180) { FileManager.default.fileExists(atPath: "/proc/\(leader)/root/run/dbus/system_bus_socket") })

        // berthctl login on a pty of its own: log in, log out (the getty hangs the line up and
        // the container's systemd starts another: the session goes on to the next prompt), then
        // terminate the machine: the session ends saying so.
        let driver = host.berthd.root + "/login.py"
        try """
        import os, pty, select, subprocess, sys, time
        berthctl, bus, name = sys.argv[1], sys.argv[2], sys.argv[3]
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(berthctl, [berthctl, 'login', '--bus-address', bus, name])
        out = b''
        def expect(token, mark, timeout):
            global out
            deadline = time.time() + timeout
            while time.time() < deadline:
                if token in out[mark:]:
                    return True
                if select.select([fd], [], [], 1)[0]:
                    try:
                        data = os.read(fd, 4096)
                    except OSError:
                        return False
                    if not data:
                        return False
                    out += data
            return False
        def step(label, ok):
            print('STEP %s %s' % (label, 'ok' if ok else 'FAILED'), flush=True)
        step('prompt', expect(b'login:', 0, 120))
        mark = len(out); os.write(fd, b'root\\n'); step('shell', expect(b'# ', mark, 60))
        mark = len(out); os.write(fd, b'echo logged-$((2+3))\\n'); step('command', expect(b'logged-5', mark, 30))
        mark = len(out); os.write(fd, b'exit\\n'); step('again', expect(b'login:', mark, 90))
        mark = len(out)
        subprocess.run([berthctl, 'terminate', '--bus-address', bus, name])
        step('gone', expect(b'Machine ' + name.encode() + b' terminated.', mark, 90))
        _, status = os.waitpid(pid, 0)
        step('exit', os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
        print(out.decode(errors='replace'))
        """.write(toFile: driver, atomically: false, encoding: .utf8)
        let login = try run(["/usr/bin/python3", driver, try BerthdProcess.binaryPath("berthctl"), bus.address, "ctllogin"])
        for step in ["prompt", "shell", "command", "again", "gone", "exit"] {
            #expect(login.stdout.contains("STEP \(step) ok"), "\(step):\n\(login.stdout)\n\(login.stderr)")
        }
        #expect(login.stdout.contains("Connected to machine ctllogin. Press ^] three times within 1s to exit session."))
    }
}
