import Foundation
import Glibc
import Testing
import TestSupport

/// The machine lifecycle beyond registration: berthd restarted keeps its machines and drops those
/// whose leader died meanwhile, and the newer members (RegisterMachineEx, CreateMachineEx,
/// GetMachineSSHInfo) answer as systemd v259 does, here where systemd is not on the bus.
@Suite(.serialized, .requires(nspawnRequirements))
struct MachineLifecycleTests {
    private let manager = ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager"]

    /// A sleeping process to be a machine's leader, reaped when the test ends.
    private func sleeper() throws -> pid_t { try spawn(["/bin/sleep", "600"], stdout: "/dev/null", stderr: nil) }

    private func reap(_ pid: pid_t) {
        kill(pid, SIGKILL)
        _ = waitpid(pid, nil, 0)
    }

    @Test func aRestartedBerthdKeepsItsMachinesAndDropsThoseWhoseLeaderDied() throws {
        let host = try MachineRegistryTests.Host()
        defer { host.stop() }
        let (bus, berthd, root) = (host.bus, host.berthd, host.root)
        try FileManager.default.createDirectory(atPath: "/run/systemd/system", withIntermediateDirectories: true)
        let container = try NspawnContainer(name: "bbkeep", root: root.path, bus: bus.address, command: "sleep 600")
        defer { container.stop() }
        #expect(try waitUntil { try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbkeep") }, "\(container.log)\n\(berthd.log)")
        // A second machine whose leader is a plain sleeping process, to die while berthd is down.
        // Reaped by the test itself below (a deferred kill could hit a reused pid).
        let doomed = try sleeper()
        let registered = try busctl(bus, manager + ["RegisterMachine", "sayssus", "doomed", "0", "test", "container", "\(doomed)", ""])
        #expect(registered.succeeded, "\(registered.stderr)")
        #expect(FileManager.default.fileExists(atPath: berthd.root + "/run/berth/machines/doomed"))

        #expect(try berthd.restart() == 0, "\(berthd.log)")
        // Only on the restarted berthd's bus connection from here on.
        let monitor = try startBusMonitor(address: bus.address, match: "type=signal,interface=org.freedesktop.machine1.Manager",
                                          log: berthd.root + "/signals.log")
        defer { kill(monitor, SIGTERM); _ = waitpid(monitor, nil, 0) }
        reap(doomed)
        // The pidfd watch of the restarted berthd sees the leader go.
        #expect(try waitUntil { !(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("doomed")) }, "\(berthd.log)")
        let listed = try machinectl(bus, ["list", "--no-legend"]).stdout
        #expect(listed.contains("bbkeep"), "\(listed)\n\(berthd.log)")
        let status = try machinectl(bus, ["status", "bbkeep"]).stdout
        #expect(status.contains("Unit: machine-bbkeep.scope") && status.contains("OS: Busybox test"), "\(status)")

        // A leader that died while berthd was down: stopped, killed, restarted.
        let gone = try sleeper()
        #expect(try busctl(bus, manager + ["RegisterMachine", "sayssus", "gone", "0", "test", "container", "\(gone)", ""]).succeeded)
        #expect(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("gone"))
        _ = berthd.terminate()
        reap(gone)
        try berthd.restart()
        let afterRestart = try machinectl(bus, ["list", "--no-legend"]).stdout
        #expect(!afterRestart.contains("gone") && afterRestart.contains("bbkeep"), "\(afterRestart)")
        #expect(!FileManager.default.fileExists(atPath: berthd.root + "/run/berth/machines/gone"))

        // The kept machine is still berthd's to terminate: its group is killed, nspawn ends.
        #expect(try machinectl(bus, ["terminate", "bbkeep"]).succeeded)
        #expect(container.wait(timeout: 30), "nspawn did not end")
        #expect(try waitUntil { !(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbkeep")) })
        #expect(!FileManager.default.fileExists(atPath: berthd.root + "/run/berth/machines/bbkeep"))
        let signals = (try? String(contentsOfFile: berthd.root + "/signals.log", encoding: .utf8)) ?? ""
        #expect(signals.contains("Member=MachineNew") && signals.contains("Member=MachineRemoved") && signals.contains("\"bbkeep\""), "\(signals)")
    }

    @Test func registerMachineExTakesItsArgumentsAsPropertiesAndKeepsTheSSHInfo() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["machine1"])
        defer { berthd.stop() }
        let leader = try sleeper()
        defer { reap(leader) }

        // Refusals first, each leaving nothing registered: an unknown key, a value of the wrong
        // type, a bad class, a relative root, a bad name.
        let refusals: [([String], String)] = [
            (["ex1", "1", "Colour", "s", "blue"], "Unknown property 'Colour'"),
            (["ex1", "1", "LeaderPID", "s", "\(leader)"], "wrong type"),
            (["ex1", "1", "Class", "s", "toaster"], "Invalid machine class"),
            (["ex1", "1", "RootDirectory", "s", "relative/path"], "absolute path"),
            (["bad_name", "1", "LeaderPID", "u", "\(leader)"], "Invalid machine name"),
            (["ex1", "1", "NetworkInterfaces", "ai", "1", "0"], "Invalid network interface index 0"),
        ]
        for (arguments, message) in refusals {
            let r = try busctl(bus, manager + ["RegisterMachineEx", "sa(sv)"] + arguments)
            #expect(!r.succeeded && r.stderr.contains(message), "\(arguments): \(r.stderr)")
        }
        #expect(!(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("ex1")))

        let path = try busctl(bus, manager + ["RegisterMachineEx", "sa(sv)", "ex1", "5", "LeaderPID", "u", "\(leader)",
                                              "Service", "s", "berth-test", "Class", "s", "vm", "SSHAddress", "s", "vsock%3",
                                              "SSHPrivateKeyPath", "s", "/run/ex1/key"])
        #expect(path.stdout == "o \"/org/freedesktop/machine1/machine/ex1\"\n", "\(path.stderr)")
        let listed = try busctl(bus, manager + ["ListMachines"]).stdout
        #expect(listed.contains("\"ex1\" \"vm\" \"berth-test\""), "\(listed)")
        #expect(try busctl(bus, manager + ["GetMachineSSHInfo", "s", "ex1"]).stdout == "ss \"vsock%3\" \"/run/ex1/key\"\n")
        let onObject = try busctl(bus, ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine/ex1",
                                        "org.freedesktop.machine1.Machine", "GetSSHInfo"])
        #expect(onObject.stdout == "ss \"vsock%3\" \"/run/ex1/key\"\n", "\(onObject.stderr)")

        // A machine without SSH info, and one that does not exist, answered as systemd does.
        let other = try sleeper()
        defer { reap(other) }
        #expect(try busctl(bus, manager + ["RegisterMachineEx", "sa(sv)", "ex2", "1", "LeaderPID", "u", "\(other)"]).succeeded)
        let noSSH = try busctl(bus, manager + ["GetMachineSSHInfo", "s", "ex2"])
        #expect(!noSSH.succeeded && noSSH.stderr.contains("No such file or directory"), "\(noSSH.stderr)")
        let noMachine = try busctl(bus, manager + ["GetMachineSSHInfo", "s", "nothere"])
        #expect(!noMachine.succeeded && noMachine.stderr.contains("No machine 'nothere' known"), "\(noMachine.stderr)")
        // A leader taken by ex1 is refused as RegisterMachine refuses it.
        let taken = try busctl(bus, manager + ["RegisterMachineEx", "sa(sv)", "ex3", "1", "LeaderPID", "u", "\(leader)"])
        #expect(!taken.succeeded && taken.stderr.contains("File exists"), "\(taken.stderr)")
    }

    @Test func createMachineExTakesTheLeaderAsAPidfdAndMakesItsScope() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["machine1"])
        defer { berthd.stop() }
        let leader = try sleeper()
        defer { reap(leader) }
        // busctl cannot send a pidfd; python3-dbus (Debian's, in /usr/bin/python3) can.
        let script = """
            import dbus, os, sys
            bus = dbus.bus.BusConnection(sys.argv[1])
            m = bus.get_object('org.freedesktop.machine1', '/org/freedesktop/machine1')
            fd = os.pidfd_open(int(sys.argv[2]))
            props = dbus.Array([dbus.Struct(('LeaderPIDFD', dbus.types.UnixFd(fd, variant_level=1)), signature='sv'),
                                dbus.Struct(('Class', dbus.String('container', variant_level=1)), signature='sv')], signature='(sv)')
            print(m.CreateMachineEx('pidfdbox', props, dbus.Array([], signature='(sv)'), dbus_interface='org.freedesktop.machine1.Manager'))
            """
        let created = try run(["/usr/bin/python3", "-c", script, bus.address, "\(leader)"])
        #expect(created.stdout == "/org/freedesktop/machine1/machine/pidfdbox\n", "\(created.stderr)\n\(berthd.log)")
        let leaderProperty = try busctl(bus, ["get-property", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine/pidfdbox",
                                              "org.freedesktop.machine1.Machine", "Leader", "Unit"]).stdout
        #expect(leaderProperty == "u \(leader)\ns \"machine-pidfdbox.scope\"\n", "\(leaderProperty)")
        // Without systemd on the bus, berthd made the scope's group itself and moved the leader in.
        let cgroup = (try? String(contentsOfFile: "/proc/\(leader)/cgroup", encoding: .utf8)) ?? ""
        #expect(cgroup.contains("/machine.slice/machine-pidfdbox.scope"), "\(cgroup)")
        #expect(try busctl(bus, manager + ["TerminateMachine", "s", "pidfdbox"]).succeeded)
        #expect(try waitUntil { !(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("pidfdbox")) })
    }
}
