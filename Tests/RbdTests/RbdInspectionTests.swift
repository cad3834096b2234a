import DirectoryBackend
import Foundation
import Linux
import PoolAPI
import RawLoopBackend
import RbdBackend
import RbdHost
import Testing

import struct SystemPackage.FilePath
import TestSupport

/// Inspection of a block-backed external image through the pool (what GetImageOSRelease calls):
/// RbdBackend's inspector reaches the bytes with rbd-fuse and RawLoop reads the filesystem.
@Suite(.serialized, .requires(RbdTestCluster.requirement, .loopFilesystems))
struct RbdInspectionTests {
    @Test func osReleaseOfAnRbdImageIsReadThroughThePool() async throws {
        let cluster = try CephCluster.shared()
        let root = try TemporaryDirectory()
        defer { root.remove() }
        let runtime = try TemporaryDirectory(prefix: "berth-rbdrt")
        defer {
            // Unmount before any recursive delete: through a live rbd-fuse mount it deletes images.
            RbdFuse.cleanUpStaleMounts(runtimeDirectory: runtime.path)
            if !currentMountPoints().contains(where: { $0.hasPrefix(runtime.path + "/") }) { runtime.remove() }
        }
        try makeDirectories(root.path + "/var/lib/machines")
        let client = RbdFuse.Client(pool: cluster.pool, confPath: cluster.clientConf, clientID: cluster.clientID, timeoutSeconds: 20)
        let raw = RawLoopBackend(runtimeDirectory: FilePath(runtime.path))
        let backend = try RbdBackend(.init(cluster: .init(configFile: cluster.clientConf, clientID: cluster.clientID),
                                           pool: cluster.pool),
                                     inspector: { _, name, _ in
                                         try RbdFuse.openForInspection(image: name, client: client, runtimeDirectory: runtime.path,
                                                                       inspectFile: { try raw.openForInspection(at: FilePath($0)) })
                                     })
        let pool = ImagePool(configuration: .init(root: root.path), registry: BackendRegistry([DirectoryBackend(), backend]))

        // A bare ext4 filesystem with an os-release, written into a new RBD image via the pool's
        // install (as an import does).
        let work = try TemporaryDirectory(prefix: "berth-rbdimg")
        defer { work.remove() }
        try makeDirectories(work.appending("tree/usr/lib"))
        try "ID=rbdpool\nPRETTY_NAME=\"Through the pool\"\n".write(toFile: work.appending("tree/usr/lib/os-release"),
                                                                  atomically: false, encoding: .utf8)
        try run(["truncate", "-s", "16M", work.appending("fs.img")], check: true)
        try run(["mkfs.ext4", "-q", "-d", work.appending("tree"), work.appending("fs.img")], check: true)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: work.appending("fs.img"))))
        let name = "inspect-\(getpid())"
        _ = try await pool.install(name, type: .raw, force: false, readOnly: false) { locator in
            let image = try backend.pool.openImage(try #require(backend.imageName(ofLocator: locator)))
            try image.resize(to: UInt64(bytes.count))
            try image.write(bytes, at: 0)
            try image.flush()
        }
        defer { try? backend.remove(at: backend.locator(of: name)) }

        let metadata = try await pool.metadata(of: name)
        #expect(metadata.osRelease["ID"] == "rbdpool")
        #expect(!currentMountPoints().contains { $0.hasPrefix(runtime.path + "/") }, "inspection left a mount")
    }
}
