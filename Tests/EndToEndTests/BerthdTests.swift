import Bus
import Foundation
import Glibc
import Testing
import TestSupport

let endToEndToolsAvailable = PrivateDBusDaemon.isAvailable && commandExists("busctl") && commandExists("gdbus")

/// The reference introspection files, by manager object.
let references: [(service: String, path: String, fixture: String)] = [
    ("org.freedesktop.machine1", "/org/freedesktop/machine1", "systemd252-machine1-manager.xml"),
    ("org.freedesktop.import1", "/org/freedesktop/import1", "systemd252-import1-manager.xml"),
    ("org.freedesktop.portable1", "/org/freedesktop/portable1", "systemd252-portable1-manager.xml"),
]

func fixture(_ name: String) throws -> String {
    let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    let url = here.deletingLastPathComponent().appendingPathComponent("Fixtures/spec/\(name)")
    return try String(contentsOf: url, encoding: .utf8)
}

@Suite(.serialized, .enabled(if: endToEndToolsAvailable, "needs dbus-daemon, busctl and gdbus (apt-get install dbus systemd libglib2.0-bin)"))
struct BerthdTests {
    @Test func ownsTheThreeNamesAndAnswersPingAndIntrospect() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus)
        defer { berthd.stop() }
        for r in references {
            let ping = try run(["busctl", "--address=\(bus.address)", "call", r.service, r.path, "org.freedesktop.DBus.Peer", "Ping"])
            #expect(ping.succeeded, "\(r.service): \(ping.stderr)")
            let xml = try run(["gdbus", "introspect", "--address", bus.address, "--dest", r.service, "--object-path", r.path, "--xml"])
            #expect(xml.succeeded && xml.stdout.contains("<node"), "\(r.service): \(xml.stderr)")
        }
        #expect(berthd.terminate() == 0)
    }

    @Test func introspectionMatchesSystemd252() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus)
        defer { berthd.stop() }
        for r in references {
            let expected = try IntrospectionXML.interfaces(try fixture(r.fixture))
            let xml = try run(["gdbus", "introspect", "--address", bus.address, "--dest", r.service, "--object-path", r.path, "--xml"],
                              check: true).stdout
            let live = try IntrospectionXML.interfaces(xml)
            for (name, interface) in expected {
                let got = try #require(live[name], "\(r.service) lacks interface \(name)")
                for key in Set(interface.members.keys).union(got.members.keys).sorted() {
                    #expect(got.members[key] == interface.members[key], "\(name) \(key)")
                }
            }
            // Berth's own interface is there too, beside systemd's.
            #expect(live["io.berth.Daemon"] != nil)
        }
    }

    @Test func reportsPoolPathAndVersionAndRefusesUnwrittenMethodsHonestly() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus)
        defer { berthd.stop() }
        let pool = try run(["busctl", "--address=\(bus.address)", "get-property", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                            "org.freedesktop.machine1.Manager", "PoolPath"], check: true)
        #expect(pool.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "s \"\(berthd.root)/var/lib/machines\"")
        let list = try run(["busctl", "--address=\(bus.address)", "call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                            "org.freedesktop.machine1.Manager", "ListMachines"])
        #expect(!list.succeeded && list.stderr.contains("not implemented yet"), "\(list.stderr)")
    }

    @Test func exitsZeroOnSIGTERM() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus)
        defer { berthd.stop() }
        // Generous timeout: this checks that it exits cleanly, not how fast.
        #expect(berthd.terminate(timeout: 10) == 0, "\(berthd.log)")
        #expect(!berthd.process.isRunning)
    }

    @Test func servesOnlyTheServicesAskedFor() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["portable1"])
        defer { berthd.stop() }
        let names = try run(["busctl", "--address=\(bus.address)", "list", "--acquired", "--no-legend"], check: true).stdout
        #expect(names.contains("org.freedesktop.portable1"))
        #expect(!names.contains("org.freedesktop.machine1"))
        #expect(berthd.terminate() == 0)
    }
}

@Suite(.serialized, .enabled(if: endToEndToolsAvailable, "needs dbus-daemon and busctl"))
struct BerthctlTests {
    struct Report: Decodable {
        struct Service: Decodable { var name: String; var answers: Bool; var berth: Bool }
        var services: [Service]
        var poolPath: String?
        var version: String?
    }

    @Test func statusReportsServicesPoolAndVersion() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthctl = try BerthdProcess.binaryPath("berthctl")
        let before = try run([berthctl, "status", "--bus-address", bus.address, "--json"])
        #expect(before.status == 3)
        let idle = try JSONDecoder().decode(Report.self, from: Data(before.stdout.utf8))
        #expect(idle.services.allSatisfy { !$0.answers })

        let berthd = try BerthdProcess(bus: bus, services: ["machine1", "portable1"])
        defer { berthd.stop() }
        let r = try run([berthctl, "status", "--bus-address", bus.address, "--json"], check: true)
        let report = try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8))
        #expect(report.services.map(\.name) == ["org.freedesktop.machine1", "org.freedesktop.import1", "org.freedesktop.portable1"])
        #expect(report.services.map(\.answers) == [true, false, true])
        #expect(report.services.map(\.berth) == [true, false, true])
        #expect(report.poolPath == "\(berthd.root)/var/lib/machines")
        #expect(report.version?.isEmpty == false)
        let table = try run([berthctl, "status", "--bus-address", bus.address], check: true).stdout
        #expect(table.contains("org.freedesktop.import1    not running"), "\(table)")
    }
}
