import ArgumentParser
@testable import BerthCLI
import Bus
import Foundation
import Glibc
import Testing

/// How berthctl's machine verbs read their arguments and print what berthd answers.
struct MachineArgumentTests {
    @Test func shellArgumentsAreMachinectls() throws {
        // Nothing: the host, berthd's default user and shell, the caller's TERM passed on.
        #expect(try ShellRequest.parse([], uid: nil, setenv: [], callerTerm: "xterm")
                == ShellRequest(machine: ".host", user: "", path: "", arguments: [], environment: ["TERM=xterm"]))
        // USER@NAME wins over --uid; PATH alone leaves the arguments to berthd.
        #expect(try ShellRequest.parse(["alice@bb", "/bin/sh"], uid: "bob", setenv: ["A=1"], callerTerm: nil)
                == ShellRequest(machine: "bb", user: "alice", path: "/bin/sh", arguments: [], environment: ["A=1"]))
        // PATH with ARGS: the argv starts with PATH; TERM given stays.
        #expect(try ShellRequest.parse(["bb", "/bin/sh", "-c", "echo hi"], uid: "bob", setenv: ["TERM=dumb"], callerTerm: "xterm")
                == ShellRequest(machine: "bb", user: "bob", path: "/bin/sh", arguments: ["/bin/sh", "-c", "echo hi"],
                                environment: ["TERM=dumb"]))
        // A leading -- ends berthctl's options and is not a machine name.
        #expect(try ShellRequest.parse(["--", "bb", "/bin/ls", "-l"], uid: nil, setenv: [], callerTerm: nil)
                == ShellRequest(machine: "bb", user: "", path: "/bin/ls", arguments: ["/bin/ls", "-l"], environment: []))
        // user@ alone means the host.
        #expect(try ShellRequest.parse(["root@"], uid: nil, setenv: [], callerTerm: nil).machine == ".host")
        #expect(throws: (any Error).self) { try ShellRequest.parse(["@bb"], uid: nil, setenv: [], callerTerm: nil) }
        #expect(throws: (any Error).self) { try ShellRequest.parse(["bb"], uid: nil, setenv: ["NOEQUALS"], callerTerm: nil) }
        #expect(throws: (any Error).self) { try ShellRequest.parse(["bb"], uid: nil, setenv: ["=x"], callerTerm: nil) }
    }

    @Test func shellPassesOptionsAfterTheNameToTheMachine() throws {
        let shell = try Shell.parse(["--uid", "bob", "-E", "A=1", "--bus-address", "unix:path=/x", "bb", "/bin/sh", "-c", "ls -l"])
        #expect(shell.command == ["bb", "/bin/sh", "-c", "ls -l"])
        #expect(shell.uid == "bob" && shell.setenv == ["A=1"] && shell.global.busAddress == "unix:path=/x")
        // --help before the name is berthctl's, after it the machine's.
        do {
            _ = try Shell.parse(["--help"])
            Issue.record("--help parsed as a machine name")
        } catch {
            #expect(Shell.exitCode(for: error) == .success && Shell.fullMessage(for: error).contains("OVERVIEW"))
        }
        #expect(try Shell.parse(["bb", "/bin/ls", "--help"]).command == ["bb", "/bin/ls", "--help"])
    }

    @Test func signalsByNameAndNumber() throws {
        #expect(try SignalName.parse("SIGTERM") == SIGTERM)
        #expect(try SignalName.parse("term") == SIGTERM)
        #expect(try SignalName.parse("KILL") == SIGKILL)
        #expect(try SignalName.parse("9") == 9)
        #expect(try SignalName.parse("RTMIN") == 34)
        #expect(try SignalName.parse("SIGRTMIN+4") == 38)
        #expect(try SignalName.parse("RTMAX-1") == 63)
        for bad in ["0", "65", "-1", "FOO", "RTMIN+31", "RTMIN-1", "SIG", ""] {
            #expect(throws: (any Error).self, "\(bad)") { try SignalName.parse(bad) }
        }
    }

    @Test func killChecksWhomAndSignalBeforeCalling() throws {
        #expect(throws: (any Error).self) { try Kill.parse(["--kill-whom", "everyone", "bb"]) }
        #expect(throws: (any Error).self) { try Kill.parse(["--signal", "NOPE", "bb"]) }
        #expect(throws: (any Error).self) { try Kill.parse([]) }
        let k = try Kill.parse(["--kill-who", "leader", "-s", "USR1", "bb", "cc"])
        #expect(k.killWhom == "leader" && k.signal == "USR1" && k.names == ["bb", "cc"])
    }

    @Test func copyPathsAreMachinectls() {
        // copy-to: (host made absolute, machine); no DST: the same path inside.
        #expect(CopyArguments.paths(from: false, source: "a.txt", destination: "/in/a", cwd: "/home/u") == ("/home/u/a.txt", "/in/a"))
        #expect(CopyArguments.paths(from: false, source: "/etc/x", destination: nil, cwd: "/home/u") == ("/etc/x", "/etc/x"))
        // copy-from: (machine, host made absolute).
        #expect(CopyArguments.paths(from: true, source: "/etc/os-release", destination: "out", cwd: "/tmp/") == ("/etc/os-release", "/tmp/out"))
        #expect(CopyArguments.paths(from: true, source: "/etc/x", destination: nil, cwd: "/tmp") == ("/etc/x", "/etc/x"))
    }

    @Test func propertiesPrintAsMachinectlShows() {
        #expect(propertyText("Name", .string("bb"), all: false) == "bb")
        #expect(propertyText("RootDirectory", .string(""), all: false) == nil)
        #expect(propertyText("RootDirectory", .string(""), all: true) == "")
        #expect(propertyText("Id", .bytes([0xab, 0x01]), all: false) == "ab01")
        #expect(propertyText("Leader", .uint32(42), all: false) == "42")
        #expect(propertyText("TimestampMonotonic", .uint64(7), all: false) == "7")
        #expect(propertyText("Timestamp", .uint64(0), all: false) == nil)
        #expect(propertyText("Timestamp", .uint64(1_000_000), all: false)?.contains("1970-01-01") == true)
        #expect(propertyText("Timestamp", .uint64(0), all: true) == "")
        // machinectl prints no `ai` (NetworkInterfaces), `au` as hex words, `as` quoted where needed.
        #expect(propertyText("NetworkInterfaces", .array(element: "i", [.int32(3), .int32(7)]), all: false) == nil)
        #expect(propertyText("NetworkInterfaces", .array(element: "i", [.int32(3)]), all: true) == "[unprintable]")
        #expect(propertyText("X", .array(element: "u", [.uint32(255), .uint32(1)]), all: false) == "000000ff00000001")
        #expect(propertyText("X", .array(element: "s", [.string("a"), .string("b c"), .string("$x")]), all: false) == "a \"b c\" \"\\$x\"")
        #expect(propertyText("X", .array(element: "s", []), all: false) == nil)
        #expect(propertyText("ReadOnly", .boolean(true), all: false) == "yes")
    }

    @Test func addressesAsInetNtopPrintsThem() {
        #expect(MachineAddress.format(family: AF_INET, [10, 0, 0, 2]) == "10.0.0.2")
        #expect(MachineAddress.format(family: AF_INET6, [0xfe, 0x80] + [UInt8](repeating: 0, count: 13) + [1]) == "fe80::1")
        #expect(MachineAddress.format(family: AF_INET, [1, 2, 3]) == nil)
        #expect(MachineAddress.format(family: 99, [1, 2, 3, 4]) == nil)
    }

    @Test func statusLinesAreMachinectls() {
        let status = MachineStatus(name: "bb", id: "ab", since: 0, leader: 42, leaderCommand: "sh", service: "systemd-nspawn",
                                   class: "container", root: "/srv/bb", unit: "machine-bb.scope", interfaces: ["ve-bb"],
                                   addresses: ["10.0.0.2", "fd00::2"], os: "Busybox", uidShift: 65536)
        // As machinectl 252 prints them on a container started with -U and --network-veth.
        #expect(status.text == """
            bb(ab)
            \t  Leader: 42 (sh)
            \t Service: systemd-nspawn; class container
            \t    Root: /srv/bb
            \t   Iface: ve-bb
            \t Address: 10.0.0.2
            \t          fd00::2
            \t      OS: Busybox
              UID Shift: 65536
            \t    Unit: machine-bb.scope
            """)
    }

    @Test func relativeTimes() {
        let now = Date(timeIntervalSince1970: 10_000)
        #expect(formatRelative(9_995_000_000, now: now) == "5s ago")
        #expect(formatRelative(9_880_000_000, now: now) == "2min 0s ago")
        #expect(formatRelative(9_000_000_000, now: now) == "16min ago")
        #expect(formatRelative(2_800_000_000, now: now) == "2h 0min ago")
        #expect(formatRelative(10_000_000_000, now: now) == "now")
        #expect(formatRelative(10_060_000_000, now: now) == "in 1min 0s")
        let later = Date(timeIntervalSince1970: 10_000 + 3 * 86400 + 100)
        #expect(formatRelative(10_000_000_000, now: later) == "3 days ago")
        let muchLater = Date(timeIntervalSince1970: 10_000 + 26 * 3600)
        #expect(formatRelative(10_000_000_000, now: muchLater) == "1 day 2h ago")
    }
}
