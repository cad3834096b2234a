import Foundation
import Glibc
import Linux
import PoolAPI
import RawLoopBackend
import RbdHost
import Testing
import TestSupport

import struct SystemPackage.FilePath

/// An RBD image's bytes on this host: rbd-fuse exposes one image as a file in a private folder
/// under the runtime directory, RawLoop's read-only loop inspection reads its filesystem, and
/// closing (or a start-up clean-up after a crash) unmounts everything without touching the image.
@Suite(.serialized, .requires(.cephCluster, .loopFilesystems))
struct RbdFuseTests {
    /// An image holding a bare ext4 filesystem with an os-release, imported with the rbd CLI.
    static func makeOSImage(_ cluster: CephCluster, name: String) throws {
        let work = try TemporaryDirectory(prefix: "berth-rbdimg")
        defer { work.remove() }
        try FileManager.default.createDirectory(atPath: work.appending("tree/usr/lib"), withIntermediateDirectories: true)
        try "ID=rbdtest\nPRETTY_NAME=\"On RBD\"\n".write(toFile: work.appending("tree/usr/lib/os-release"), atomically: false, encoding: .utf8)
        try run(["truncate", "-s", "16M", work.appending("fs.img")], check: true)
        try run(["mkfs.ext4", "-q", "-d", work.appending("tree"), work.appending("fs.img")], check: true)
        try cluster.rbd(["import", "--no-progress", work.appending("fs.img"), name], asClient: true)
    }

    /// Unmounts before the recursive delete: through a live rbd-fuse mount it would delete the image.
    static func remove(_ runtime: TemporaryDirectory) {
        RbdFuse.cleanUpStaleMounts(runtimeDirectory: runtime.path)
        if !currentMountPoints().contains(where: { $0.hasPrefix(runtime.path + "/") }) { runtime.remove() }
    }

    static func client(_ cluster: CephCluster) -> RbdFuse.Client {
        RbdFuse.Client(pool: cluster.pool, confPath: cluster.clientConf, clientID: cluster.clientID, timeoutSeconds: 20)
    }

    @Test func inspectionReadsTheImagesFilesystemAndCloseLeavesNothingMounted() throws {
        let cluster = try CephCluster.shared()
        let name = "fuse-os-\(getpid())"
        try Self.makeOSImage(cluster, name: name)
        defer { _ = try? cluster.rbd(["rm", "--no-progress", name]) }
        let runtime = try TemporaryDirectory(prefix: "berth-rbdrt")
        defer { Self.remove(runtime) }

        let raw = RawLoopBackend(runtimeDirectory: FilePath(runtime.path))
        let inspection = try RbdFuse.openForInspection(image: name, client: Self.client(cluster), runtimeDirectory: runtime.path,
                                                       inspectFile: { try raw.openForInspection(at: FilePath($0)) })
        let osRelease = try String(contentsOfFile: inspection.root.string + "/usr/lib/os-release", encoding: .utf8)
        #expect(osRelease.contains("ID=rbdtest"))
        // The image is mounted alone, in a private folder only root can enter.
        let rbdFolder = RbdFuse.folder(runtimeDirectory: runtime.path)
        let fuseMounts = currentMountPoints().filter { $0.hasPrefix(rbdFolder + "/") }
        #expect(fuseMounts.count == 1)
        let poolFolder = rbdFolder + "/ceph.\(cluster.pool)"
        var st = stat()
        #expect(stat(poolFolder, &st) == 0 && st.st_mode & 0o777 == 0o700)
        #expect(try FileManager.default.contentsOfDirectory(atPath: try #require(fuseMounts.first)) == [name])

        inspection.close()
        #expect(!currentMountPoints().contains { $0.hasPrefix(runtime.path + "/") })
        #expect(try FileManager.default.contentsOfDirectory(atPath: poolFolder).isEmpty)
        // The image is still there and whole.
        #expect(try cluster.images().contains(name))
    }

    @Test func theMountIsReadOnlyUnlessAskedWritable() throws {
        let cluster = try CephCluster.shared()
        let name = "fuse-ro-\(getpid())"
        try cluster.rbd(["create", "--size", "4M", name], asClient: true)
        defer { _ = try? cluster.rbd(["rm", "--no-progress", name]) }
        let runtime = try TemporaryDirectory(prefix: "berth-rbdrt")
        defer { Self.remove(runtime) }
        let mount = try RbdFuse.mount(image: name, client: Self.client(cluster), runtimeDirectory: runtime.path)
        #expect(open(mount.imageFile, O_WRONLY) < 0 && errno == EROFS)
        mount.close()
        let writable = try RbdFuse.mount(image: name, client: Self.client(cluster), runtimeDirectory: runtime.path, writable: true)
        try Data("berth".utf8).write(to: URL(fileURLWithPath: writable.imageFile))
        writable.close()
        let exported = try TemporaryDirectory(prefix: "berth-rbdexp")
        defer { exported.remove() }
        try cluster.rbd(["export", "--no-progress", name, exported.appending("out")])
        let head = try FileHandle(forReadingFrom: URL(fileURLWithPath: exported.appending("out"))).readData(ofLength: 5)
        #expect(String(decoding: head, as: UTF8.self) == "berth")
    }

    @Test func aMissingImageOrABadNameIsRefusedAndLeavesNoMount() throws {
        let cluster = try CephCluster.shared()
        let runtime = try TemporaryDirectory(prefix: "berth-rbdrt")
        defer { Self.remove(runtime) }
        #expect(throws: PoolError.self) {
            try RbdFuse.mount(image: "no-such-image", client: Self.client(cluster), runtimeDirectory: runtime.path)
        }
        for bad in ["a/b", "-o", "..", ""] {
            do {
                _ = try RbdFuse.mount(image: bad, client: Self.client(cluster), runtimeDirectory: runtime.path)
                Issue.record("mounted '\(bad)'")
            } catch let e as PoolError {
                #expect(e.code == .invalidName)
            }
        }
        #expect(!currentMountPoints().contains { $0.hasPrefix(runtime.path + "/") })
    }

    @Test func anUnreachableClusterFailsWithinTheTimeout() throws {
        let cluster = try CephCluster.shared()
        let runtime = try TemporaryDirectory(prefix: "berth-rbdrt")
        defer { Self.remove(runtime) }
        // Port 9 (discard) on loopback: nothing listens there.
        let conf = runtime.appending("unreachable.conf")
        let text = try String(contentsOfFile: cluster.clientConf, encoding: .utf8)
            .replacingOccurrences(of: "127.0.0.1:\(cluster.port)", with: "127.0.0.1:9")
        try text.write(toFile: conf, atomically: false, encoding: .utf8)
        var client = Self.client(cluster)
        client.confPath = conf
        client.timeoutSeconds = 3
        let started = Date()
        do {
            _ = try RbdFuse.mount(image: "anything", client: client, runtimeDirectory: runtime.path)
            Issue.record("mounted from an unreachable cluster")
        } catch let e as PoolError {
            #expect(e.code == .system && e.description.contains("reachable"), "\(e)")
        }
        #expect(Date().timeIntervalSince(started) < 60)  // bounded: connect timeout + the kill bound
        #expect(!currentMountPoints().contains { $0.hasPrefix(runtime.path + "/") })
    }

    @Test func startUpCleanUpUnmountsWhatACrashedDaemonLeftWithoutDeletingTheImage() throws {
        let cluster = try CephCluster.shared()
        let name = "fuse-stale-\(getpid())"
        try cluster.rbd(["create", "--size", "4M", name], asClient: true)
        defer { _ = try? cluster.rbd(["rm", "--no-progress", name]) }
        let runtime = try TemporaryDirectory(prefix: "berth-rbdrt")
        defer { Self.remove(runtime) }
        // A mount made by hand, as a killed berthd leaves it.
        let stale = RbdFuse.folder(runtimeDirectory: runtime.path) + "/ceph.\(cluster.pool)/ABCDEF"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: true)
        try spawnAndWait(["/usr/bin/rbd-fuse", "-c", cluster.clientConf, "-p", cluster.pool, "-r", name, stale, "--id", cluster.clientID],
                         stdout: "/dev/null")
        #expect(FileManager.default.fileExists(atPath: stale + "/" + name))

        RbdFuse.cleanUpStaleMounts(runtimeDirectory: runtime.path)
        #expect(!currentMountPoints().contains { $0.hasPrefix(runtime.path + "/") })
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(try cluster.images().contains(name))
    }
}
