import Foundation
import Glibc
import Testing
import TestSupport

/// An import onto RBD while the cluster's only OSD is stopped and started again: the transfer
/// either completes once the OSD is back (librbd waits, bounded by the pool's timeout) or fails
/// cleanly; in no case is a half-made image listed. On a cluster of its own: stopping the OSD
/// of the shared one would stall every other suite.
@Suite(.serialized, .requires(.cephCluster, .privateBus, .commands("machinectl")))
struct RbdOsdStopTests {
    @Test func anOsdStoppedMidImportEndsWithTheWholeImageOrNone() throws {
        let cluster = try CephCluster(pool: "osdstop")
        defer { cluster.stop() }
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["machine1", "import1"]) { root in
            try cluster.configureBerthd(root: root, extra: "required=yes\ntimeout=120\n")
        }
        defer { berthd.stop() }
        try FileManager.default.createDirectory(atPath: "/run/systemd/system", withIntermediateDirectories: true)
        let work = try TemporaryDirectory(prefix: "berth-osdstop")
        defer { work.remove() }
        let disk = work.appending("big.raw")
        try run(["sh", "-c", "head -c 268435456 /dev/urandom > \(disk)"], check: true)

        let environment = ["DBUS_SYSTEM_BUS_ADDRESS": bus.address, "SYSTEMD_COLORS": "0"]
        let importer = try spawn(["/usr/bin/machinectl", "--no-pager", "import-raw", disk, "big"],
                                 stdout: work.appending("import.out"), stderr: work.appending("import.err"), environment: environment)
        // Once the worker writes the temp image, stop the OSD for a while, then bring it back.
        var sawTemp = false
        for _ in 0..<600 where !sawTemp {
            sawTemp = (try? cluster.images())?.contains { $0.hasPrefix(".#") } ?? false
            if !sawTemp { usleep(50_000) }
        }
        #expect(sawTemp, "the import never made its temp image: \(berthd.log)")
        usleep(500_000)
        cluster.stopOSD()
        // While the OSD is gone, the half-made image is not listed.
        let listed = try run(["machinectl", "--no-pager", "list-images", "--no-legend"], environment: environment).stdout
        #expect(!listed.contains("big"), "\(listed)")
        sleep(5)
        try cluster.startOSD()

        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(300)
        while waitpid(importer, &status, WNOHANG) == 0 && Date() < deadline { usleep(100_000) }
        if Date() >= deadline { kill(importer, SIGKILL); _ = waitpid(importer, &status, 0); Issue.record("import did not end") }
        let succeeded = status == 0
        let images = try cluster.images()
        let names = try run(["machinectl", "--no-pager", "list-images", "--no-legend"], environment: environment).stdout
        if succeeded {
            // Complete: the whole image, bytes equal.
            #expect(images == ["big"], "\(images)")
            try cluster.rbd(["export", "--no-progress", "big", work.appending("back.raw")])
            #expect(FileManager.default.contentsEqual(atPath: disk, andPath: work.appending("back.raw")))
        } else {
            // Failed cleanly: nothing listed, no temp image left behind.
            let err = (try? String(contentsOfFile: work.appending("import.err"), encoding: .utf8)) ?? ""
            #expect(!names.contains("big") && images.isEmpty, "\(images) \(err)")
        }
        #expect(!images.contains { $0.hasPrefix(".#") })
    }
}
