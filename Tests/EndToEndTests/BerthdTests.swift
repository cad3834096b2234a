import Bus
import Foundation
import Glibc
import Services
import Testing
import TestSupport

/// What the machine registry tests need: root, a bus, systemd-nspawn and a busybox to run in it.
let nspawnRequirements: [Requirement] = [.root, .privateBus, .commands("systemd-nspawn"), .file("/bin/busybox")]

/// The reference introspection files, by manager object.
let references: [(service: String, path: String, fixture: String)] = [
    ("org.freedesktop.machine1", "/org/freedesktop/machine1", "systemd252-machine1-manager.xml"),
    ("org.freedesktop.import1", "/org/freedesktop/import1", "systemd252-import1-manager.xml"),
    ("org.freedesktop.portable1", "/org/freedesktop/portable1", "systemd252-portable1-manager.xml"),
]

/// Members newer than systemd 252 that an interface carries beside 252's, by interface name.
let newerMembersByInterface: [String: Set<String>] = [
    Import1Manager.name: Import1Manager.newerMembers,
    Machine1Manager.name: Machine1Manager.newerMembers,
]

func fixture(_ name: String) throws -> String {
    let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    let url = here.deletingLastPathComponent().appendingPathComponent("Fixtures/spec/\(name)")
    return try String(contentsOf: url, encoding: .utf8)
}

@Suite(.serialized, .requires(.privateBus))
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
                // 252's members exactly; the newer members each interface lists, and nothing else.
                let newer = newerMembersByInterface[name] ?? []
                for key in Set(interface.members.keys).union(got.members.keys).sorted() where !newer.contains(key) {
                    #expect(got.members[key] == interface.members[key], "\(name) \(key)")
                }
                for key in newer.sorted() {
                    #expect(interface.members[key] == nil, "\(name) \(key) is 252's, not newer")
                    #expect(got.members[key] != nil, "\(name) lacks the newer member \(key)")
                }
            }
            // Berth's own interface is there too, beside systemd's.
            #expect(live["io.berth.Daemon"] != nil)
        }
    }

    @Test func reportsPoolPathAndVersionAndRefusesUnknownMembers() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus)
        defer { berthd.stop() }
        let pool = try run(["busctl", "--address=\(bus.address)", "get-property", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                            "org.freedesktop.machine1.Manager", "PoolPath"], check: true)
        #expect(pool.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "s \"\(berthd.root)/var/lib/machines\"")
        // The version is the VERSION file's, on the bus and on the command line.
        let version = try String(contentsOfFile: BootedSystemd.packageRoot().appendingPathComponent("VERSION").path, encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!version.isEmpty)
        let reported = try run(["busctl", "--address=\(bus.address)", "get-property", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                                "io.berth.Daemon", "Version"], check: true)
        #expect(reported.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "s \"\(version)\"")
        let printed = try run([try BerthdProcess.binaryPath(), "--version"], check: true)
        #expect(printed.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == version)
        let list = try run(["busctl", "--address=\(bus.address)", "call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                            "org.freedesktop.machine1.Manager", "ListMachines"])
        #expect(list.succeeded && list.stdout.contains("\".host\" \"host\""), "\(list.stderr)")
        // The host's addresses (berthd's network namespace), as machined lists them for `.host`.
        let addresses = try run(["busctl", "--address=\(bus.address)", "call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                                 "org.freedesktop.machine1.Manager", "GetMachineAddresses", "s", ".host"])
        #expect(addresses.succeeded && addresses.stdout.hasPrefix("a(iay) "), "\(addresses.stderr)")
        // A member no table declares is refused as unknown, rather than answered with something made up.
        let unknown = try run(["busctl", "--address=\(bus.address)", "call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                               "org.freedesktop.machine1.Manager", "NoSuchMember"])
        #expect(!unknown.succeeded && unknown.stderr.contains("Unknown method"), "\(unknown.stderr)")
    }

    @Test func refusesToStartImport1WithoutItsTransferWorkerBesideIt() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        // berthd alone in a folder: no berth-transfer beside it.
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let lonely = folder.appending("berthd")
        try FileManager.default.copyItem(atPath: try BerthdProcess.binaryPath(), toPath: lonely)
        try FileManager.default.createDirectory(atPath: folder.appending("root"), withIntermediateDirectories: true)
        let r = try run(["timeout", "20", lonely, "--root", folder.appending("root"), "--bus-address", bus.address,
                         "--services", "machine1,import1"])
        #expect(r.status == 1, "\(r)")
        #expect(r.stderr.contains("\(folder.path)/berth-transfer"), "\(r.stderr)")
        // It failed before owning any name: no client sees a half-started daemon.
        for name in ["org.freedesktop.machine1", "org.freedesktop.import1"] {
            let owner = try run(["busctl", "--address=\(bus.address)", "status", name])
            #expect(!owner.succeeded, "\(name) was taken")
        }
    }

    @Test func exitsZeroOnSIGTERM() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus)
        defer { berthd.stop() }
        // Generous timeout: this checks that it exits cleanly, not how fast.
        #expect(berthd.terminate(timeout: 10) == 0, "\(berthd.log)")
        #expect(!berthd.isRunning)
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

@Suite(.serialized, .requires(.privateBus))
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
        let version = try String(contentsOfFile: BootedSystemd.packageRoot().appendingPathComponent("VERSION").path, encoding: .utf8)
        #expect(report.version == version.trimmingCharacters(in: .whitespacesAndNewlines))
        let table = try run([berthctl, "status", "--bus-address", bus.address], check: true).stdout
        #expect(table.contains("org.freedesktop.import1    not running"), "\(table)")
    }
}

@Suite(.serialized, .requires(.root, .privateBus, .commands("setpriv")))
struct DistributionFileTests {
    static let policies = ["machine1", "import1", "portable1"].map { name in
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("dist/dbus-1/system.d/org.freedesktop.\(name).conf").path
    }

    @Test func busPoliciesLetRootOwnTheNamesAndEveryoneCall() throws {
        let bus = try PrivateDBusDaemon(includes: DistributionFileTests.policies, allowOwningAnyName: false)
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus)
        defer { berthd.stop() }
        let asNobody = try run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "busctl", "--address=\(bus.address)",
                                "get-property", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                                "org.freedesktop.machine1.Manager", "PoolPath"])
        #expect(asNobody.succeeded, "\(asNobody.stderr)")
        #expect(berthd.terminate() == 0)
    }

    @Test func withoutThePoliciesBerthdCannotOwnTheNames() throws {
        let bus = try PrivateDBusDaemon(allowOwningAnyName: false)
        defer { bus.stop() }
        #expect(throws: TestSupportError.self) { try BerthdProcess(bus: bus, services: ["machine1"]) }
    }
}

@Suite(.requires(.privateBus))
struct NotifyTests {
    /// A unix datagram socket standing in for systemd's `$NOTIFY_SOCKET`.
    final class NotifySocket {
        let path: String
        let fd: Int32
        init(path: String) throws {
            self.path = path
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw TestSupportError("socket: \(errno)") }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (i, b) in path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = b }
            }
            let r = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard r == 0 else { throw TestSupportError("bind \(path): \(errno)") }
        }
        /// The messages received within `seconds`, joined.
        func receive(seconds: Int) -> String {
            var text = ""
            var tv = timeval(tv_sec: seconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { text += String(decoding: buffer[0..<n], as: UTF8.self) }
            return text
        }
        deinit {
            close(fd)
            unlink(path)
        }
    }

    @Test func sendsReadyOnceItsNamesAreOwned() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let folder = try TemporaryDirectory(prefix: "berth-notify")
        defer { folder.remove() }
        let notify = try NotifySocket(path: folder.appending("notify"))
        let berthd = try BerthdProcess(bus: bus, environment: ["NOTIFY_SOCKET": notify.path])
        defer { berthd.stop() }
        #expect(notify.receive(seconds: 10).contains("READY=1"))
        #expect(berthd.terminate() == 0)
        #expect(notify.receive(seconds: 10).contains("STOPPING=1"))
    }
}

@Suite(.serialized, .requires(.root, .privateBus, .commands("setpriv")))
struct AuthorizationTests {
    func call(_ bus: PrivateDBusDaemon, asNobody: Bool, _ member: String, _ args: [String]) throws -> CommandResult {
        let prefix = asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []
        return try run(prefix + ["busctl", "--address=\(bus.address)", "call", "--", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                                 "org.freedesktop.machine1.Manager", member] + args)
    }

    @Test func mutationsNeedRootWithoutPolkitAndReadsAreOpen() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["machine1"])
        defer { berthd.stop() }
        // A mutating method on an image that exists: the harness asks for root (no polkit on
        // this bus), and nobody is refused with the image untouched; root may remove it.
        let image = berthd.root + "/var/lib/machines/x"
        try FileManager.default.createDirectory(atPath: image, withIntermediateDirectories: true)
        let denied = try call(bus, asNobody: true, "RemoveImage", ["s", "x"])
        #expect(denied.stderr.contains("Access denied"), "\(denied.stderr)")
        #expect(FileManager.default.fileExists(atPath: image))
        let root = try call(bus, asNobody: false, "RemoveImage", ["s", "x"])
        #expect(root.succeeded, "\(root.stderr)")
        #expect(!FileManager.default.fileExists(atPath: image))
        // A root-only method: sd-bus itself refuses it, as it does for systemd-machined.
        let privileged = try call(bus, asNobody: true, "RegisterMachine", ["sayssus", "m", "0", "svc", "container", "1", "/"])
        #expect(privileged.stderr.contains("Access denied"), "\(privileged.stderr)")
        // A reading method is open to everyone.
        let read = try call(bus, asNobody: true, "GetImage", ["s", ".host"])
        #expect(read.stdout.contains("/org/freedesktop/machine1/image/_2ehost"), "\(read.stdout) \(read.stderr)")
        #expect(berthd.terminate() == 0)
    }
}
