import Foundation
import Glibc
import Testing
import TestSupport

/// The one-node Ceph test cluster itself: it starts from Debian's packages, serves RBD to
/// berthd's client identity, and tears down in the safe order with an image still reached
/// through rbd-fuse + loop (nothing mounted, attached or running is left, and the folder goes).
@Suite(.serialized, .requires(.cephCluster))
struct CephClusterTests {
    @Test func startsMakesAnImageAsBerthsClientAndTearsDownInTheSafeOrder() throws {
        let cluster = try CephCluster(pool: "cct")
        defer { cluster.stop() }
        let directory = cluster.directory

        // berthd's client (profile rbd caps, its own keyring and conf) can make and list images.
        try cluster.rbd(["create", "--size", "32M", "first"], asClient: true)
        #expect(try cluster.images() == ["first"])
        let info = try cluster.rbd(["info", "first", "--format", "json"], asClient: true).stdout
        #expect(info.contains("\"size\":33554432") && info.contains("exclusive-lock"), "\(info)")
        // The admin key is not in what berthd is handed.
        let clientConf = try String(contentsOfFile: cluster.clientConf, encoding: .utf8)
        #expect(clientConf.contains("client.berth.keyring") && !clientConf.contains("admin"))

        // Reach the image's bytes through rbd-fuse and a read-only loop device, as berthd does.
        let file = try cluster.mountFuse(image: "first")
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect((attributes[.size] as? NSNumber)?.int64Value == 32 << 20)
        try run(["mkfs.ext4", "-q", "-F", file], check: true)
        let loop = try run(["losetup", "-f", "--show", "-r", file], check: true).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let mountPoint = try TemporaryDirectory(prefix: "berth-cct")
        defer { mountPoint.remove() }
        try run(["mount", "-o", "ro", loop, mountPoint.path], check: true)
        #expect(FileManager.default.fileExists(atPath: mountPoint.appending("lost+found")))
        let pids = ["mon.a", "mgr.x", "osd.0"].compactMap { cluster.pid(of: $0) }
        #expect(pids.count == 3)

        // Stop with the filesystem, the loop device and the fuse mount all still live.
        cluster.stop()
        let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(!mountinfo.contains(directory + "/") && !mountinfo.contains(" \(mountPoint.path) "), "\(mountinfo)")
        // The loop device let go of the image file. (A parallel test may already have attached
        // the freed device number to a file of its own: only a backing file of ours is a leak.)
        let backing = try? String(contentsOfFile: "/sys/block/\((loop as NSString).lastPathComponent)/loop/backing_file", encoding: .utf8)
        #expect(!(backing ?? "").hasPrefix(directory + "/"), "\(loop) still backed by \(backing ?? "")")
        for pid in pids { #expect(kill(pid, 0) != 0, "daemon \(pid) still runs") }
        #expect(!FileManager.default.fileExists(atPath: directory))
    }

    @Test func theSharedClusterServesTheConfiguredPool() throws {
        let cluster = try CephCluster.shared()
        let name = "shared-\(getpid())"
        try cluster.rbd(["create", "--size", "4M", name], asClient: true)
        #expect(try cluster.images().contains(name))
        try cluster.rbd(["rm", "--no-progress", name], asClient: true)
        #expect(try !cluster.images().contains(name))
        #expect(cluster.backendConfig().contains("pool=\(cluster.pool)\n"))
    }
}
