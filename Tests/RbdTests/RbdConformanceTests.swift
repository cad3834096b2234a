import BackendConformance
import DirectoryBackend
import Foundation
import Linux
import PoolAPI
import Rbd
import RbdBackend
import Testing
import TestSupport

import struct SystemPackage.FilePath

/// The per-host backend conformance checks (`Check`, those the file backends run in
/// Tests/BackendTests/ConformanceTests.swift) against RbdBackend on the one-node test cluster,
/// every one of them. The checks use fixed image names and CleanPool removes every hidden
/// image, so each check gets an RBD pool of its own, emptied through the backend and deleted
/// after it.
@Suite(.serialized, .requires(.cephCluster))
struct RbdConformanceTests {
    /// The RBD backend with its bytes reached through librbd, in berthd's registry (folder
    /// images too) on RADOS pool `pool`.
    static func subject(pool: String) -> ExternalSubject {
        ExternalSubject("rbd", backend: { _ in try backend(pool: pool) }, bytes: bytes, registry: { [DirectoryBackend(), $0] })
    }

    /// A new connection to `pool` as berthd's client, with a short cache time (a listing or
    /// usage changed elsewhere shows within it).
    static func backend(pool: String) throws -> RbdBackend {
        let cluster = try CephCluster.shared()
        return try RbdBackend(.init(cluster: .init(configFile: cluster.clientConf, clientID: cluster.clientID), pool: pool,
                                    cacheSeconds: 0.5))
    }

    /// librbd's view of an image's bytes; "open for writing" is the backend's writer path,
    /// `lockForWriting` (what Berth's writers and running machines take), released at once.
    static let bytes = librbdBytes { backend, locator in
        let (rbd, name) = try image(backend, locator)
        let image = try rbd.lockForWriting(name, purpose: "conformance")
        try image.unlock(cookie: RbdBackend.cookie(host: rbd.configuration.hostName, purpose: "conformance"))
    }

    /// Reads and writes through librbd, opening for writing with `openForWriting`.
    static func librbdBytes(openForWriting: @escaping @Sendable (any ExternalImageBackend, String) throws -> Void) -> ImageBytes {
        ImageBytes(
            read: { backend, locator in
                let (rbd, name) = try image(backend, locator)
                let image = try rbd.pool.openImage(name, readOnly: true)
                return try image.read(at: 0, count: Int(try image.size()))
            },
            write: { backend, locator, offset, data in
                let (rbd, name) = try image(backend, locator)
                let image = try rbd.pool.openImage(name)
                let end = offset + UInt64(data.count)
                if try image.size() < end { try image.resize(to: end) }
                try image.write(data, at: offset)
                try image.flush()
            },
            openForWriting: openForWriting)
    }

    static func image(_ backend: any ExternalImageBackend, _ locator: String) throws -> (RbdBackend, String) {
        guard let rbd = backend as? RbdBackend, let name = rbd.imageName(ofLocator: locator) else {
            throw ConformanceFailure("not an RBD image locator: \(locator)")
        }
        return (rbd, name)
    }

    @Test(arguments: Check.allCases)
    func rbdConforms(_ check: Check) async throws {
        let cluster = try CephCluster.shared()
        let pool = "conf-\(check.rawValue.lowercased())-\(UInt32.random(in: 0...UInt32.max))"
        try cluster.createPoolForRBD(pool)
        defer { Self.removePool(pool, of: cluster) }
        let root = try TemporaryDirectory()
        defer { root.remove() }
        let outcome = try await Conformance.run(check, subject: Self.subject(pool: pool), root: FilePath(root.path))
        #expect(outcome == .passed)
    }

    @Test("the readOnly check fails a subject whose writes bypass the backend's writer path (a plain librbd open ignores berth.read-only)")
    func readOnlyCheckHasTeeth() async throws {
        let cluster = try CephCluster.shared()
        let pool = "conf-teeth-\(UInt32.random(in: 0...UInt32.max))"
        try cluster.createPoolForRBD(pool)
        defer { Self.removePool(pool, of: cluster) }
        let root = try TemporaryDirectory()
        defer { root.remove() }
        let bypassing = Self.librbdBytes { backend, locator in
            let (rbd, name) = try Self.image(backend, locator)
            try rbd.pool.openImage(name).write([1], at: 0)
        }
        let subject = ExternalSubject("rbd-bypassing", backend: { _ in try Self.backend(pool: pool) }, bytes: bypassing,
                                      registry: { [DirectoryBackend(), $0] })
        let failure = await #expect(throws: ConformanceFailure.self) {
            _ = try await Conformance.run(.readOnly, subject: subject, root: FilePath(root.path))
        }
        #expect(failure?.description.contains("expected it refused, but it succeeded") == true, "\(String(describing: failure))")
    }

    @Test("Conformance.run refuses storage that already holds an image: the checks' fixed names would meet it")
    func refusesStorageInUse() async throws {
        let cluster = try CephCluster.shared()
        let pool = "conf-used-\(UInt32.random(in: 0...UInt32.max))"
        try cluster.createPoolForRBD(pool)
        defer { Self.removePool(pool, of: cluster) }
        try cluster.rbd(pool: pool, ["create", "--size", "1M", "fixture"])
        let root = try TemporaryDirectory()
        defer { root.remove() }
        let failure = await #expect(throws: ConformanceFailure.self) {
            _ = try await Conformance.run(.createAndList, subject: Self.subject(pool: pool), root: FilePath(root.path))
        }
        #expect(failure?.description.contains("is not empty") == true, "\(String(describing: failure))")
        #expect(try cluster.images(in: pool) == ["fixture"], "the refused run touched the pool")
    }

    /// Removes every image a check left through the backend (clones before the images they
    /// hang off), expects none left, then deletes the pool. The backend's connection is gone
    /// before the pool is, and before the process ends (librados crashes a process that exits
    /// with a connection open).
    static func removePool(_ pool: String, of cluster: CephCluster) {
        do {
            let backend = try backend(pool: pool)
            for _ in 0..<4 {
                let names = try backend.externalImageNames()
                if names.isEmpty { break }
                for name in names { try? backend.remove(at: backend.locator(of: name)) }
            }
        } catch {
            Issue.record("cannot empty RBD pool \(pool): \(error)")
        }
        let left = (try? cluster.images(in: pool)) ?? ["(cannot list)"]
        #expect(left.isEmpty, "images left in RBD pool \(pool): \(left)")
        do {
            try cluster.ceph(["osd", "pool", "delete", pool, pool, "--yes-i-really-really-mean-it"])
        } catch {
            Issue.record("cannot delete RBD pool \(pool): \(error)")
        }
    }
}
