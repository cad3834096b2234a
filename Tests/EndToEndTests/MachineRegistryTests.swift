import Foundation
import Glibc
import Testing
import TestSupport

/// machine1's machine registry with the real systemd-nspawn registering a busybox container with
/// berthd on a private bus, here where PID 1 is not systemd (machined 252 can register nothing
/// then), and the real machinectl reading and terminating it.
@Suite(.serialized, .requires(nspawnRequirements))
struct MachineRegistryTests {
    /// A busybox root with an os-release, in a new folder.
    static func busyboxRoot() throws -> TemporaryDirectory {
        let root = try TemporaryDirectory(prefix: "berth-bb")
        for dir in ["bin", "etc", "proc", "sys", "dev", "run", "tmp", "usr/lib"] {
            try FileManager.default.createDirectory(atPath: root.appending(dir), withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: root.appending("bin/busybox"))
        for applet in ["sh", "sleep"] { try FileManager.default.createSymbolicLink(atPath: root.appending("bin/\(applet)"), withDestinationPath: "busybox") }
        try "ID=bb\nPRETTY_NAME=\"Busybox test\"\n".write(toFile: root.appending("usr/lib/os-release"), atomically: false, encoding: .utf8)
        return root
    }

    /// berthd serving machine1 on a private bus, and a busybox root for containers.
    final class Host: @unchecked Sendable {
        let bus: PrivateDBusDaemon
        let berthd: BerthdProcess
        let root: TemporaryDirectory
        init() throws {
            bus = try PrivateDBusDaemon()
            berthd = try BerthdProcess(bus: bus, services: ["machine1"])
            root = try MachineRegistryTests.busyboxRoot()
        }
        func stop() {
            root.remove()
            berthd.stop()
            bus.stop()
        }
    }

    @Test func nspawnRegistersAndMachinectlSeesAndTerminatesTheContainer() throws {
        let host = try Host()
        defer { host.stop() }
        let (bus, berthd, root) = (host.bus, host.berthd, host.root)
        try FileManager.default.createDirectory(atPath: "/run/systemd/system", withIntermediateDirectories: true)
        let monitor = try startBusMonitor(address: bus.address, match: "type=signal,interface=org.freedesktop.machine1.Manager",
                                          log: berthd.root + "/signals.log")
        defer { kill(monitor, SIGTERM); _ = waitpid(monitor, nil, 0) }

        let container = try NspawnContainer(name: "bbreg", root: root.path, bus: bus.address, command: "sleep 600")
        defer { container.stop() }
        #expect(try waitUntil { try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbreg") }, "\(container.log)\n\(berthd.log)")
        let status = try machinectl(bus, ["status", "bbreg"]).stdout
        #expect(status.contains("OS: Busybox test") && status.contains("Unit: machine-bbreg.scope") && status.contains("Root: \(root.path)"),
                "\(status)")
        let listed = try busctl(bus, ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager",
                                      "ListMachines"]).stdout
        #expect(listed.contains("\"bbreg\" \"container\" \"systemd-nspawn\" \"/org/freedesktop/machine1/machine/bbreg\""), "\(listed)")
        #expect(listed.contains("\".host\" \"host\""))
        // The leader is in the scope berthd made, and GetMachineByPID finds it by any of its processes.
        let leader = try busctl(bus, ["get-property", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine/bbreg",
                                      "org.freedesktop.machine1.Machine", "Leader"]).stdout
        let leaderPID = leader.split(separator: " ").last.map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
        #expect((try? String(contentsOfFile: "/proc/\(leaderPID)/cgroup", encoding: .utf8))?.contains("/machine.slice/machine-bbreg.scope") == true)
        #expect(try busctl(bus, ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager",
                                 "GetMachineByPID", "u", leaderPID]).stdout == "o \"/org/freedesktop/machine1/machine/bbreg\"\n")
        #expect(FileManager.default.fileExists(atPath: berthd.root + "/run/berth/machines/bbreg"))

        // Refusals, with nothing changed: a taken name, a bad name, a bad kill target or signal, a non-root caller.
        let manager = ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager"]
        let taken = try busctl(bus, manager + ["RegisterMachine", "sayssus", "bbreg", "0", "x", "container", "\(getpid())", ""])
        #expect(!taken.succeeded && taken.stderr.contains("already exists"), "\(taken.stderr)")
        // As machined 252 answers (Tests/Fixtures/machined252/registry-errors.txt).
        let takenLeader = try busctl(bus, manager + ["RegisterMachine", "sayssus", "other", "0", "x", "container", leaderPID, ""])
        #expect(!takenLeader.succeeded && takenLeader.stderr.contains("File exists"), "\(takenLeader.stderr)")
        let noMachine = try busctl(bus, manager + ["GetMachineByPID", "u", "1"])
        #expect(!noMachine.succeeded && noMachine.stderr.contains("PID 1 does not belong to any known machine"))
        let badName = try busctl(bus, manager + ["RegisterMachine", "sayssus", "bad_name", "0", "x", "container", "\(getpid())", ""])
        #expect(!badName.succeeded && badName.stderr.contains("Invalid machine name"), "\(badName.stderr)")
        let badWho = try busctl(bus, manager + ["KillMachine", "ssi", "bbreg", "everyone", "15"])
        #expect(!badWho.succeeded && badWho.stderr.contains("Invalid kill parameter"))
        let badSignal = try busctl(bus, manager + ["KillMachine", "ssi", "bbreg", "all", "999"])
        #expect(!badSignal.succeeded && badSignal.stderr.contains("Invalid signal"))
        let nobody = try run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "busctl", "--address=\(bus.address)"]
                             + manager + ["TerminateMachine", "s", "bbreg"])
        #expect(!nobody.succeeded)
        #expect(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbreg"))

        // Terminate: the container goes (its init ignores SIGTERM, so the SIGKILL that follows ends it).
        #expect(try machinectl(bus, ["terminate", "bbreg"]).succeeded)
        #expect(container.wait(timeout: 30), "nspawn did not end")
        #expect(try waitUntil { !(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbreg")) })
        #expect(!FileManager.default.fileExists(atPath: berthd.root + "/run/berth/machines/bbreg"))
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/unified/machine.slice/machine-bbreg.scope"))
        let signals = (try? String(contentsOfFile: berthd.root + "/signals.log", encoding: .utf8)) ?? ""
        #expect(signals.contains("Member=MachineNew") && signals.contains("Member=MachineRemoved"), "\(signals)")
    }

    @Test func aContainerThatExitsDisappears() throws {
        let host = try Host()
        defer { host.stop() }
        let (bus, berthd, root) = (host.bus, host.berthd, host.root)
        let container = try NspawnContainer(name: "bbexit", root: root.path, bus: bus.address, options: "--keep-unit", command: "sleep 2")
        defer { container.stop() }
        // --keep-unit: RegisterMachineWithNetwork, the leader stays in nspawn's own group.
        #expect(try waitUntil { try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbexit") }, "\(container.log)")
        #expect(container.wait(timeout: 30))
        #expect(try waitUntil { !(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbexit")) })
        #expect(!FileManager.default.fileExists(atPath: berthd.root + "/run/berth/machines/bbexit"))
    }

    @Test func machinectlShowAndKillReachTheLeaderOrTheWholeMachine() throws {
        let host = try Host()
        defer { host.stop() }
        let (bus, berthd, root) = (host.bus, host.berthd, host.root)
        // The payload (the machine's leader) notes a SIGUSR1 in the container's /tmp.
        let container = try NspawnContainer(name: "bbkill", root: root.path, bus: bus.address,
                                            command: "trap \"echo usr1 > /tmp/got-usr1\" USR1; touch /tmp/trap-set; while :; do sleep 1; done")
        defer { container.stop() }
        #expect(try waitUntil { try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbkill") }, "\(container.log)\n\(berthd.log)")
        let show = try machinectl(bus, ["show", "bbkill"])
        #expect(show.succeeded && show.stdout.contains("Name=bbkill\n") && show.stdout.contains("Class=container\n")
                && show.stdout.contains("Service=systemd-nspawn\n") && show.stdout.contains("State=running\n"), "\(show.stdout)\(show.stderr)")
        let leader = try #require(show.stdout.split(separator: "\n").first { $0.hasPrefix("Leader=") }.map { String($0.dropFirst(7)) })

        // The leader is PID 1 of its namespace, which drops a signal it has no handler for: wait
        // for the trap before signalling (under load the shell may not have reached it yet).
        #expect(try waitUntil { FileManager.default.fileExists(atPath: "/proc/\(leader)/root/tmp/trap-set") }, "\(container.log)")
        // --kill-whom=leader: only the leader, with the signal asked for.
        let usr1 = try machinectl(bus, ["kill", "bbkill", "--kill-whom=leader", "--signal=USR1"])
        #expect(usr1.succeeded, "\(usr1.stderr)")
        #expect(try waitUntil { FileManager.default.fileExists(atPath: "/proc/\(leader)/root/tmp/got-usr1") }, "\(container.log)")
        #expect(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbkill"))
        // A bad signal is refused by machinectl itself; an unknown machine by berthd.
        let unknown = try machinectl(bus, ["kill", "nosuch", "--signal=TERM"])
        #expect(!unknown.succeeded && unknown.stderr.contains("No machine 'nosuch' known"), "\(unknown.stderr)")

        // The default, all: every process of the machine gets SIGKILL, and the machine goes.
        #expect(try machinectl(bus, ["kill", "bbkill", "--signal=KILL"]).succeeded)
        #expect(container.wait(timeout: 30), "nspawn did not end")
        #expect(try waitUntil { !(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbkill")) })
        #expect(!FileManager.default.fileExists(atPath: berthd.root + "/run/berth/machines/bbkill"))
    }
}
