import BackendConformance
import DirectoryBackend
import Foundation
import Linux
import PoolAPI
import Rbd
import RbdBackend
import Testing
import TestSupport

/// The RBD backend as a pool on shared storage: BackendConformance's shared-pool checks with two
/// pool instances (two "hosts", two connections) on one Ceph pool, and RBD's own rules.
@Suite(.serialized, .requires(RbdTestCluster.requirement))
struct RbdBackendTests {
    static func backend() throws -> RbdBackend {
        try RbdBackend(.init(cluster: try RbdTestCluster.clusterConfiguration(), pool: RbdTestCluster.poolName, cacheSeconds: 0.5))
    }

    static let subject = SharedSubject(
        "rbd",
        backend: { try RbdBackendTests.backend() },
        write: { backend, locator, bytes in
            guard let rbd = backend as? RbdBackend, let name = rbd.imageName(ofLocator: locator) else {
                throw ConformanceFailure("not an RBD locator: \(locator)")
            }
            let image = try rbd.pool.openImage(name)
            try image.resize(to: 8 << 20)
            try image.write(bytes, at: 0)
        },
        holdElsewhere: { backend, name in
            guard let rbd = backend as? RbdBackend else { throw ConformanceFailure("not an RBD backend") }
            let holder = Holder(try rbd.lockForWriting(name, purpose: "conformance"))
            let cookie = RbdBackend.cookie(host: rbd.configuration.hostName, purpose: "conformance")
            // Unlocked and closed: an image another host still has open is in use (rbd_remove: EBUSY).
            return { holder.release(cookie: cookie) }
        })

    /// The other host's open, locked image, until released.
    final class Holder: @unchecked Sendable {
        // @unchecked: used by one test at a time; the lock guards the handover.
        private var image: RbdImage?
        private let lock = NSLock()
        init(_ image: RbdImage) { self.image = image }
        func release(cookie: String) {
            lock.lock()
            defer { lock.unlock() }
            try? image?.unlock(cookie: cookie)
            image = nil
        }
    }

    @Test(arguments: SharedCheck.allCases)
    func sharedPoolConformance(_ check: SharedCheck) async throws {
        let a = try TemporaryDirectory(), b = try TemporaryDirectory()
        defer { a.remove(); b.remove() }
        let outcome = try await Conformance.run(check, subject: Self.subject, rootA: a.path, rootB: b.path,
                                                folderBackend: { DirectoryBackend() })
        #expect(outcome == .passed)
    }

    @Test func cloneIsCopyOnWriteAndItsSnapshotGoesWithTheLastClone() async throws {
        let root = try TemporaryDirectory()
        defer { root.remove() }
        try makeDirectories(root.path + "/var/lib/machines")
        let backend = try Self.backend()
        let pool = ImagePool(configuration: .init(root: root.path), registry: BackendRegistry([DirectoryBackend(), backend]))
        let name = "cow-\(UInt32.random(in: 0...UInt32.max))"
        _ = try await pool.install(name, type: .raw, force: false, readOnly: false) { locator in
            let image = try backend.pool.openImage(try #require(backend.imageName(ofLocator: locator)))
            try image.resize(to: 8 << 20)
            try image.write(Array(repeating: 7, count: 1 << 20), at: 0)
        }
        let clone = try await pool.clone(name, to: name + "-clone", readOnly: true)
        #expect(clone.readOnly)
        let child = try backend.pool.openImage(clone.name, readOnly: true)
        // Copy-on-write: the child reads its parent's data and holds none of its own.
        #expect(try child.read(at: 0, count: 4) == [7, 7, 7, 7])
        #expect(try child.parent()?.image.imageName == name)
        #expect(try child.allocatedBytes(includeParent: false) == 0)
        #expect(try backend.pool.openImage(name).snapshots().count == 1)
        try await pool.setReadOnly(clone.name, false)
        try await pool.remove(clone.name)
        #expect(try backend.pool.openImage(name).snapshots().isEmpty)
        try await pool.remove(name)
    }

    @Test func limitIsTheSizeAndOnlyGrows() async throws {
        let root = try TemporaryDirectory()
        defer { root.remove() }
        try makeDirectories(root.path + "/var/lib/machines")
        let backend = try Self.backend()
        let pool = ImagePool(configuration: .init(root: root.path), registry: BackendRegistry([DirectoryBackend(), backend]))
        let name = "limit-\(UInt32.random(in: 0...UInt32.max))"
        _ = try await pool.install(name, type: .raw, force: false, readOnly: false) { locator in
            try backend.pool.openImage(try #require(backend.imageName(ofLocator: locator))).resize(to: 4 << 20)
        }
        defer { try? backend.remove(at: backend.locator(of: name)) }
        try await pool.setLimit(name, 16 << 20)
        #expect(try backend.pool.openImage(name).size() == 16 << 20)
        #expect(try await pool.image(named: name).limit == 16 << 20)
        let shrink = await #expect(throws: PoolError.self) { try await pool.setLimit(name, 1 << 20) }
        #expect(shrink?.code == .invalidArgument)
        #expect(try backend.pool.openImage(name).size() == 16 << 20)
    }

    @Test func usageComesFromFastDiff() async throws {
        let backend = try Self.backend()
        let name = "usage-\(UInt32.random(in: 0...UInt32.max))"
        try backend.pool.createImage(name, size: 64 << 20)
        defer { try? backend.pool.removeImage(name) }
        try backend.pool.openImage(name).write(Array(repeating: 1, count: 4096), at: 8 << 20)
        var usage = Image.unknown
        for _ in 0..<40 where usage == Image.unknown || usage == 0 {
            usage = try backend.image(named: name, entry: backend.poolEntry(forImage: name)).usage
            if usage == Image.unknown || usage == 0 { try await Task.sleep(for: .milliseconds(250)) }
        }
        // One 4 MiB object allocated, counted whole from the object map.
        #expect(usage == 4 << 20)
    }

    @Test func failedImportLeavesNoTempImage() async throws {
        let root = try TemporaryDirectory()
        defer { root.remove() }
        try makeDirectories(root.path + "/var/lib/machines")
        let backend = try Self.backend()
        let pool = ImagePool(configuration: .init(root: root.path), registry: BackendRegistry([DirectoryBackend(), backend]))
        let name = "failed-\(UInt32.random(in: 0...UInt32.max))"
        struct Broken: Error {}
        await #expect(throws: (any Error).self) {
            _ = try await pool.install(name, type: .raw, force: false, readOnly: false) { _ in throw Broken() }
        }
        let left = try backend.externalImageNames().filter { $0.contains(name) }
        #expect(left.isEmpty, "left behind: \(left)")
    }

    /// A berthd killed mid-import leaves its temp image (`.#…`) on the shared pool: its next start
    /// removes it, but never another instance's temp image (another host may be importing into
    /// it). (A dead writer still registered on the image: RbdEndToEndTests.)
    @Test func startUpRemovesOnlyThisInstancesStaleTempImages() async throws {
        let settings = try RbdBackend.Configuration(cluster: RbdTestCluster.clusterConfiguration(), pool: RbdTestCluster.poolName,
                                                    owner: "host-a:/root-a", cacheSeconds: 0.5)
        let hostA = try RbdBackend(settings)
        var other = settings
        other.owner = "host-b:/root-b"
        let hostB = try RbdBackend(other)
        let tag = UInt32.random(in: 0...UInt32.max)
        let mine = ".#killed-\(tag)", aside = ".#aside-\(tag)", theirs = ".#elsewhere-\(tag)", kept = "kept-\(tag)"
        try hostA.createEmpty(at: hostA.locator(of: mine))
        try hostA.createEmpty(at: hostA.locator(of: kept))
        try hostB.createEmpty(at: hostB.locator(of: theirs))
        defer {
            for name in [mine, aside, theirs, kept] { try? hostA.pool.removeImage(name) }
        }
        #expect(try hostA.pool.openImage(mine, readOnly: true).metadata(RbdBackend.tempOwnerKey) == "host-a:/root-a")
        #expect(try hostA.pool.openImage(kept, readOnly: true).metadata(RbdBackend.tempOwnerKey) == nil)
        // An image moved aside under a temp name (an import replacing it) is marked as well.
        try hostA.rename(from: hostA.locator(of: kept), to: hostA.locator(of: aside))
        #expect(try hostA.pool.openImage(aside, readOnly: true).metadata(RbdBackend.tempOwnerKey) == "host-a:/root-a")

        let root = try TemporaryDirectory()
        defer { root.remove() }
        try makeDirectories(root.path + "/var/lib/machines")
        let pool = ImagePool(configuration: .init(root: root.path), registry: BackendRegistry([DirectoryBackend(), hostA]))
        let report = await pool.removeStaleTemporaryEntries()
        #expect(Set(report.removed).isSuperset(of: [hostA.imagePath(of: mine), hostA.imagePath(of: aside)]), "\(report.removed)")
        #expect(report.failed.isEmpty, "\(report.failed.map(\.reason))")
        let left = try hostA.pool.listImages().map(\.name)
        #expect(!left.contains(mine) && !left.contains(aside))
        #expect(left.contains(theirs))
    }
}
