import Foundation
import Linux
import Rbd
import Testing
import TestSupport

/// The Swift binding of librados/librbd against a real one-node Ceph cluster: every call the
/// RBD backend and the transfer worker use, with real data on a real OSD.
@Suite(.serialized, .requires(RbdTestCluster.requirement))
struct RbdBindingTests {
    let pool: RbdPool

    init() throws {
        pool = try RbdTestCluster.pool()
    }

    private func uniqueName(_ base: String) -> String {
        "\(base)-\(UInt32.random(in: 0...UInt32.max))"
    }

    @Test func createWriteReadResizeStatAndRemove() throws {
        let name = uniqueName("rw")
        try pool.createImage(name, size: 8 << 20)
        defer { try? pool.removeImage(name) }
        #expect(try pool.listImages().contains { $0.name == name })
        do {
            let image = try pool.openImage(name)
            try image.write(Array("hello rbd".utf8), at: 4096)
            try image.flush()
            #expect(try image.read(at: 4096, count: 9) == Array("hello rbd".utf8))
            // Reading past the end gives fewer bytes, never garbage.
            #expect(try image.read(at: (8 << 20) - 4, count: 100).count == 4)
            try image.resize(to: 16 << 20)
            #expect(try image.size() == 16 << 20)
            let info = try image.stat()
            #expect(info.size == 16 << 20)
            #expect(info.objectSize == 1 << UInt64(info.order))
            #expect(try image.features().isSuperset(of: [.layering, .exclusiveLock, .objectMap, .fastDiff]))
            #expect(try image.hasValidFastDiff())
            #expect(try image.creationTimestamp() > 0)
            // Usage from fast-diff: one 4 MiB object written, whole objects counted.
            #expect(try image.allocatedBytes(includeParent: true) == info.objectSize)
            try image.discard(at: 0, length: info.objectSize)
            #expect(try image.allocatedBytes(includeParent: true) == 0)
        }
        try pool.removeImage(name)
        #expect(try !pool.listImages().contains { $0.name == name })
    }

    @Test func errorsNameTheCallAndTheErrno() throws {
        let missing = uniqueName("missing")
        let error = #expect(throws: RbdError.self) { try pool.openImage(missing) }
        #expect(error?.call == "rbd_open")
        #expect(error?.errno == .ENOENT)
        #expect(error?.description.contains(missing) == true)
        let name = uniqueName("dup")
        try pool.createImage(name, size: 1 << 20)
        defer { try? pool.removeImage(name) }
        let exists = #expect(throws: RbdError.self) { try pool.createImage(name, size: 1 << 20) }
        #expect(exists?.errno == .EEXIST)
    }

    @Test func readOnlyOpenRefusesWrites() throws {
        let name = uniqueName("ro")
        try pool.createImage(name, size: 1 << 20)
        defer { try? pool.removeImage(name) }
        let image = try pool.openImage(name, readOnly: true)
        let error = #expect(throws: RbdError.self) { try image.write([1, 2, 3], at: 0) }
        #expect(error?.errno == .EROFS)
    }

    @Test func snapshotProtectCloneChildrenFlattenAndRename() throws {
        let parent = uniqueName("parent")
        let child = uniqueName("child")
        let renamed = uniqueName("renamed")
        try pool.createImage(parent, size: 8 << 20)
        defer { try? pool.removeImage(parent) }
        do {
            let image = try pool.openImage(parent)
            try image.write(Array("parent data".utf8), at: 0)
            try image.createSnapshot("base")
            try image.protectSnapshot("base")
            #expect(try image.isSnapshotProtected("base"))
            #expect(try image.snapshots().map(\.name) == ["base"])
        }
        try pool.clone(parent: parent, snapshot: "base", to: child)
        do {
            let clone = try pool.openImage(child)
            #expect(try clone.read(at: 0, count: 11) == Array("parent data".utf8))
            let link = try clone.parent()
            #expect(link?.image.imageName == parent)
            #expect(link?.snapshot == "base")
            // The clone holds nothing of its own yet; with its parent it reads one object.
            #expect(try clone.allocatedBytes(includeParent: false) == 0)
            #expect(try clone.allocatedBytes(includeParent: true) > 0)
        }
        do {
            let image = try pool.openImage(parent)
            #expect(try image.children().map(\.imageName) == [child])
            // A protected snapshot with a child cannot be unprotected.
            let busy = #expect(throws: RbdError.self) { try image.unprotectSnapshot("base") }
            #expect(busy?.errno == .EBUSY)
        }
        try pool.renameImage(child, to: renamed)
        defer { try? pool.removeImage(renamed) }
        do {
            let clone = try pool.openImage(renamed)
            try clone.flatten()
            #expect(try clone.parent() == nil)
            #expect(try clone.read(at: 0, count: 11) == Array("parent data".utf8))
        }
        let image = try pool.openImage(parent)
        #expect(try image.children().isEmpty)
        try image.unprotectSnapshot("base")
        try image.removeSnapshot("base")
        #expect(try image.snapshots().isEmpty)
    }

    @Test func advisoryLocksRefuseASecondHolderAndCanBeBroken() throws {
        let name = uniqueName("lock")
        try pool.createImage(name, size: 1 << 20)
        defer { try? pool.removeImage(name) }
        // Each holder on a connection of its own: breaking a lock blocklists the holder's
        // client, which would end the shared connection the other tests use.
        let first = try RbdTestCluster.pool(newConnection: true).openImage(name)
        try first.lockExclusive(cookie: "host-a")
        let lockers = try first.lockers()
        #expect(lockers.exclusive)
        #expect(lockers.lockers.map(\.cookie) == ["host-a"])
        // Another client (a second connection, as another host would be) is refused.
        let other = try RbdTestCluster.pool(newConnection: true)
        let second = try other.openImage(name)
        let busy = #expect(throws: RbdError.self) { try second.lockExclusive(cookie: "host-b") }
        #expect(busy?.errno == .EBUSY)
        let holder = try #require(lockers.lockers.first)
        try second.breakLock(client: holder.client, cookie: holder.cookie)
        #expect(try second.lockers().lockers.isEmpty)
        try second.lockExclusive(cookie: "host-b")
        try second.unlock(cookie: "host-b")
        // The broken holder was fenced: its connection can no longer write.
        let fenced = #expect(throws: RbdError.self) { try first.write([1], at: 0) }
        #expect(fenced != nil)
    }

    @Test func exclusiveLockHeldByOneClientIsSeenByIt() throws {
        let name = uniqueName("xlock")
        try pool.createImage(name, size: 1 << 20)
        defer { try? pool.removeImage(name) }
        let image = try pool.openImage(name)
        try image.acquireExclusiveLock()
        #expect(try image.ownsExclusiveLock())
        try image.releaseExclusiveLock()
        #expect(try !image.ownsExclusiveLock())
    }

    /// An empty image (every import's temp image at first) has usage 0: asked through fast-diff,
    /// Ceph 16 would abort the whole process (a failed ceph_assert in DiffIterate).
    @Test func usageOfAnEmptyImageIsZero() throws {
        let name = uniqueName("empty")
        try pool.createImage(name, size: 0)
        defer { try? pool.removeImage(name) }
        let image = try pool.openImage(name, readOnly: true)
        #expect(try image.allocatedBytes(includeParent: true) == 0)
        #expect(try image.allocatedBytes(includeParent: false) == 0)
    }

    @Test func metadataRoundTrips() throws {
        let name = uniqueName("meta")
        try pool.createImage(name, size: 1 << 20)
        defer { try? pool.removeImage(name) }
        let image = try pool.openImage(name)
        #expect(try image.metadata("berth.read-only") == nil)
        try image.setMetadata("berth.read-only", "1")
        let long = String(repeating: "x", count: 1000)
        try image.setMetadata("berth.long", long)
        // Another connection sees the metadata: it is stored with the image, not the client.
        let other = try RbdTestCluster.pool(newConnection: true).openImage(name, readOnly: true)
        #expect(try other.metadata("berth.read-only") == "1")
        #expect(try other.metadata("berth.long") == long)
        try image.removeMetadata("berth.read-only")
        try image.removeMetadata("berth.read-only")
        #expect(try image.metadata("berth.read-only") == nil)
    }

    @Test func listingPagesPastTheFirstBuffer() throws {
        // rbd_list2 answers ERANGE when its buffer is short: more than the first 64 slots.
        let names = (0..<70).map { uniqueName("list\($0)") }
        for name in names { try pool.createImage(name, size: 1 << 20) }
        defer { for name in names { try? pool.removeImage(name) } }
        let listed = Set(try pool.listImages().map(\.name))
        #expect(listed.isSuperset(of: names))
    }

    @Test func unreachableClusterFailsWithinItsTimeout() throws {
        // A monitor nobody listens on: rados_connect gives up after the timeout, never hangs.
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let conf = directory.path + "/ceph.conf"
        try "[global]\nmon host = [v2:127.0.0.1:9]\nms bind msgr1 = false\nauth client required = none\n"
            .write(toFile: conf, atomically: true, encoding: .utf8)
        let error = #expect(throws: RbdError.self) {
            _ = try RadosCluster(.init(configFile: conf, clientID: "nobody", timeoutSeconds: 3))
        }
        #expect(error?.call == "rados_connect")
    }
}
