import Foundation
import Glibc
import Testing
import TestSupport

/// berthd with an RBD pool (backends.d) on the one-node test cluster, driven by the real
/// machinectl: list, import-raw, image-status (inspection through rbd-fuse + loop), clone,
/// rename, read-only, set-limit, export-raw, pull-raw, remove; two berthd instances (two roots,
/// two buses) on one Ceph pool; failed imports leave no temp image.
@Suite(.serialized, .requires(.cephCluster, .loopFilesystems, .privateBus, .commands("machinectl")))
struct RbdEndToEndTests {
    /// A Ceph pool of this suite's own, so other suites' images never show in its listings.
    static let pool: Result<String, TestSupportError> = {
        do {
            let name = "e2e\(getpid())"
            try CephCluster.shared().createPoolForRBD(name)
            return .success(name)
        } catch {
            return .failure(TestSupportError("\(error)"))
        }
    }()

    /// One host: a private bus and berthd (machine1 + import1) configured for the suite's pool.
    final class Host: @unchecked Sendable {
        let bus: PrivateDBusDaemon
        let berthd: BerthdProcess
        init(_ cluster: CephCluster, pool: String) throws {
            bus = try PrivateDBusDaemon()
            do {
                berthd = try BerthdProcess(bus: bus, services: ["machine1", "import1"]) { root in
                    try cluster.configureBerthd(root: root, pool: pool)
                }
            } catch {
                bus.stop()
                throw error
            }
            try FileManager.default.createDirectory(atPath: "/run/systemd/system", withIntermediateDirectories: true)
        }

        @discardableResult
        func machinectl(_ args: [String]) throws -> CommandResult {
            try run(["timeout", "120", "machinectl", "--no-pager"] + args,
                    environment: ["DBUS_SYSTEM_BUS_ADDRESS": bus.address, "SYSTEMD_COLORS": "0"])
        }

        /// Image names machinectl lists (hidden ones included).
        func imageNames() throws -> [String] {
            try machinectl(["list-images", "--all", "--no-legend"]).stdout.split(separator: "\n")
                .compactMap { $0.split(separator: " ").first.map(String.init) }.sorted()
        }

        func stop() {
            berthd.stop()
            bus.stop()
        }
    }

    /// A 16 MiB raw disk holding a bare ext4 filesystem with an os-release, in `dir`.
    static func osImage(in dir: String, id: String = "rbde2e") throws -> String {
        try FileManager.default.createDirectory(atPath: dir + "/tree/usr/lib", withIntermediateDirectories: true)
        try "ID=\(id)\nPRETTY_NAME=\"RBD E2E\"\n".write(toFile: dir + "/tree/usr/lib/os-release", atomically: false, encoding: .utf8)
        try run(["truncate", "-s", "16M", dir + "/disk.raw"], check: true)
        try run(["mkfs.ext4", "-q", "-d", dir + "/tree", dir + "/disk.raw"], check: true)
        return dir + "/disk.raw"
    }

    static func images(_ cluster: CephCluster, _ pool: String) throws -> [String] {
        try cluster.images(in: pool).sorted()
    }

    @Test func machinectlWorksOnAnRbdPool() throws {
        let cluster = try CephCluster.shared()
        let pool = try Self.pool.get()
        let host = try Host(cluster, pool: pool)
        defer { host.stop() }
        let work = try TemporaryDirectory(prefix: "berth-rbde2e")
        defer { work.remove() }
        let disk = try Self.osImage(in: work.path)

        // import-raw (xz-compressed) writes straight into a new RBD image, renamed when whole.
        try run(["xz", "-T1", "-k", disk], check: true)
        var r = try host.machinectl(["import-raw", disk + ".xz", "web"])
        #expect(r.succeeded, "\(r.stderr)\n\(host.berthd.log)")
        #expect(try Self.images(cluster, pool) == ["web"])
        #expect(try host.imageNames().contains("web"))
        r = try host.machinectl(["list-images", "--no-legend"])
        #expect(r.stdout.contains("web") && r.stdout.contains("raw"), "\(r.stdout)")
        // The imported bytes are the disk's.
        try cluster.rbd(pool: pool, ["export", "--no-progress", "web", work.appending("web.out")])
        #expect(FileManager.default.contentsEqual(atPath: disk, andPath: work.appending("web.out")))

        // Inspection reads the image's os-release through rbd-fuse and a read-only loop device.
        r = try host.machinectl(["image-status", "web"])
        #expect(r.stdout.contains("RBD E2E"), "\(r.stdout)\(r.stderr)\n\(host.berthd.log)")
        #expect(!currentMounts().contains { $0.hasPrefix(host.berthd.root + "/") })

        // clone: a copy-on-write RBD child of a snapshot of the source.
        r = try host.machinectl(["clone", "web", "web2"])
        #expect(r.succeeded, "\(r.stderr)")
        let info = try cluster.rbd(pool: pool, ["info", "web2"]).stdout
        #expect(info.contains("parent: \(pool)/web@"), "\(info)")

        // rename, read-only, set-limit.
        r = try host.machinectl(["rename", "web2", "web3"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try Self.images(cluster, pool) == ["web", "web3"])
        r = try host.machinectl(["read-only", "web3"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try host.machinectl(["show-image", "web3", "-p", "ReadOnly"]).stdout.contains("ReadOnly=yes"))
        r = try host.machinectl(["set-limit", "web", "64M"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try cluster.rbd(pool: pool, ["info", "web"]).stdout.contains("size 64 MiB"))

        // export-raw reads the RBD image back.
        r = try host.machinectl(["export-raw", "web3", work.appending("exported.raw")])
        #expect(r.succeeded, "\(r.stderr)\n\(host.berthd.log)")
        #expect(FileManager.default.contentsEqual(atPath: disk, andPath: work.appending("exported.raw")))

        // pull-raw from a loopback web server into the RBD pool.
        try FileManager.default.createDirectory(atPath: work.appending("www"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: disk + ".xz", toPath: work.appending("www/disk.raw.xz"))
        let server = try LoopbackHTTPServer(directory: work.appending("www"))
        defer { server.stop() }
        r = try host.machinectl(["pull-raw", "--verify=no", server.url("disk.raw.xz"), "pulled"])
        #expect(r.succeeded, "\(r.stderr)\n\(host.berthd.log)")
        #expect(try Self.images(cluster, pool).contains("pulled"))

        // remove: the clone first (its parent refuses while it has clones), then the rest.
        r = try host.machinectl(["remove", "web"])
        #expect(!r.succeeded, "removed an image with clones: \(r.stderr)")
        r = try host.machinectl(["read-only", "web3", "false"])
        #expect(r.succeeded, "\(r.stderr)")
        for name in ["web3", "web", "pulled"] {
            r = try host.machinectl(["remove", name])
            #expect(r.succeeded, "remove \(name): \(r.stderr)")
        }
        #expect(try Self.images(cluster, pool).isEmpty)

        // SIGTERM: berthd closes its Ceph connections and exits 0 (librados kills a process that
        // exits with a connection open, its static objects going before its threads).
        #expect(host.berthd.terminate() == 0, "berthd did not exit cleanly: \(host.berthd.log)")
    }

    @Test func aFailedImportLeavesNoTempImage() throws {
        let cluster = try CephCluster.shared()
        let pool = try Self.pool.get()
        let host = try Host(cluster, pool: pool)
        defer { host.stop() }
        let work = try TemporaryDirectory(prefix: "berth-rbde2e")
        defer { work.remove() }
        // An xz stream cut in the middle: the worker fails after writing part of the image.
        try run(["sh", "-c", "head -c 4000000 /dev/urandom > \(work.appending("d.raw")) && xz -T1 -0 \(work.appending("d.raw"))"], check: true)
        let data = try Data(contentsOf: URL(fileURLWithPath: work.appending("d.raw.xz")))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: work.appending("cut.raw.xz")))
        let r = try host.machinectl(["import-raw", work.appending("cut.raw.xz"), "broken"])
        #expect(!r.succeeded)
        let left = try Self.images(cluster, pool)
        #expect(left.filter { $0 == "broken" || $0.hasPrefix(".#") }.isEmpty, "\(left)")
        #expect(try !host.imageNames().contains("broken"))
    }

    /// berthd killed (SIGKILL) while import-raw writes an RBD image: the worker dies with it, its
    /// temp image stays on the cluster, never listed; the next berthd removes it at start, although
    /// the dead worker's watch would hold the image for the OSD's watch timeout.
    @Test func aCrashMidImportLeavesATempImageTheNextStartRemoves() throws {
        let cluster = try CephCluster.shared()
        let pool = try Self.pool.get()
        let host = try Host(cluster, pool: pool)
        defer { host.stop() }
        let work = try TemporaryDirectory(prefix: "berth-rbdcrash")
        defer { work.remove() }
        let fifo = work.appending("disk.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        // 4 MiB, then the FIFO stays open and silent: the import is in flight until we act.
        let feeder = try Background(["sh", "-c", "exec 3>'\(fifo)'; head -c 4194304 /dev/urandom >&3; exec sleep 600"],
                                    environment: [:], output: work.appending("feeder.out"))
        defer { feeder.wait(timeout: 0) }
        let importer = try Background(["machinectl", "import-raw", fifo, "crashed"],
                                      environment: ["DBUS_SYSTEM_BUS_ADDRESS": host.bus.address], output: work.appending("import.out"))
        defer { importer.wait(timeout: 0) }
        let temp = { try Self.images(cluster, pool).filter { $0.hasPrefix(".#crashed") } }
        #expect(try eventually(timeout: 60) { try !temp().isEmpty }, "\(importer.output)\n\(host.berthd.log)")

        host.berthd.crash()
        #expect(try temp().count == 1, "the temp image went with berthd: nothing left to clean")
        try host.berthd.restart()
        #expect(try temp().isEmpty, "\(host.berthd.log)")
        #expect(host.berthd.log.contains("removed stale rbd://"), "\(host.berthd.log)")
        #expect(try !host.imageNames().contains("crashed"))
    }

    @Test func twoHostsShareOnePoolAndRefuseWhatTheOtherHolds() throws {
        let cluster = try CephCluster.shared()
        let pool = try Self.pool.get()
        let a = try Host(cluster, pool: pool)
        defer { a.stop() }
        let b = try Host(cluster, pool: pool)
        defer { b.stop() }
        let work = try TemporaryDirectory(prefix: "berth-rbde2e")
        defer { work.remove() }
        let disk = try Self.osImage(in: work.path, id: "shared")

        // An image imported on A is listed on B; a clone made on B appears on A.
        var r = try a.machinectl(["import-raw", disk, "base"])
        #expect(r.succeeded, "\(r.stderr)\n\(a.berthd.log)")
        #expect(try waitFor { try b.imageNames().contains("base") })
        r = try b.machinectl(["clone", "base", "fromb"])
        #expect(r.succeeded, "\(r.stderr)\n\(b.berthd.log)")
        #expect(try waitFor { try a.imageNames().contains("fromb") })
        // A name held on one host is refused on the other.
        r = try b.machinectl(["import-raw", disk, "base"])
        #expect(!r.succeeded)

        // The image in use on A (its advisory lock held, as by a running machine or an import
        // writing it) cannot be removed, renamed or resized from B.
        try cluster.rbd(pool: pool, ["lock", "add", "fromb", "berth:hostA:machine"], asClient: true)
        r = try b.machinectl(["remove", "fromb"])
        #expect(!r.succeeded && r.stderr.contains("busy"), "\(r.stderr)")
        r = try b.machinectl(["rename", "fromb", "other"])
        #expect(!r.succeeded)
        r = try b.machinectl(["set-limit", "fromb", "64M"])
        #expect(!r.succeeded)
        #expect(try Self.images(cluster, pool).contains("fromb"))
        let lockers = try cluster.rbd(pool: pool, ["lock", "ls", "fromb", "--format", "json"]).stdout
        if let data = lockers.data(using: .utf8), let list = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]],
           let locker = list.first?["locker"] as? String {
            try cluster.rbd(pool: pool, ["lock", "rm", "fromb", "berth:hostA:machine", locker])
        } else {
            Issue.record("cannot parse lock ls: \(lockers)")
        }
        // Released, it goes from either host.
        r = try b.machinectl(["remove", "fromb"])
        #expect(r.succeeded, "\(r.stderr)")
        r = try a.machinectl(["remove", "base"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try Self.images(cluster, pool).isEmpty)
    }

    /// Waits (bounded) for `condition`: another host sees a change after its metadata cache
    /// (10 s) at most.
    private func waitFor(_ condition: () throws -> Bool) throws -> Bool {
        for _ in 0..<300 {
            if try condition() { return true }
            usleep(100_000)
        }
        return false
    }

    private func currentMounts() -> [String] {
        ((try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? "").split(separator: "\n")
            .compactMap { $0.split(separator: " ").dropFirst(4).first.map(String.init) }
    }
}
