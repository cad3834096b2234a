import Glibc
import Linux
import PoolAPI

import struct SystemPackage.FilePath

/// A backend on storage several hosts share (`.shared`, e.g. Ceph RBD), under test: two pool
/// instances, each with its own root and connection, on the same storage, as two hosts have.
///
///     SharedSubject("rbd",
///         backend: { try RbdBackend(config) },                 // a new connection each call
///         write: { backend, locator, bytes in … },              // fill an image as an import does
///         holdElsewhere: { backend, name in … return release }) // a writer's lock from "another host"
public struct SharedSubject: Sendable, CustomStringConvertible {
    public let name: String
    let makeBackend: @Sendable () throws -> any ExternalImageBackend
    let write: @Sendable (any ExternalImageBackend, String, [UInt8]) throws -> Void
    let holdElsewhere: @Sendable (any ExternalImageBackend, String) throws -> @Sendable () -> Void

    /// - Parameters:
    ///   - backend: makes the backend as one host does (a connection of its own each call).
    ///   - write: writes bytes at the start of the image at a locator (growing it), as an import.
    ///   - holdElsewhere: marks image `name` in use as a running machine or an import on
    ///     another host does (through the given backend, a connection of its own); returns
    ///     what ends that use.
    public init(_ name: String, backend: @escaping @Sendable () throws -> any ExternalImageBackend,
                write: @escaping @Sendable (any ExternalImageBackend, String, [UInt8]) throws -> Void,
                holdElsewhere: @escaping @Sendable (any ExternalImageBackend, String) throws -> @Sendable () -> Void) {
        self.name = name
        self.makeBackend = backend
        self.write = write
        self.holdElsewhere = holdElsewhere
    }

    public var description: String { name }
}

/// What a pool on shared storage must do beyond the per-host `Check`s.
public enum SharedCheck: String, CaseIterable, Sendable, CustomStringConvertible {
    /// An image imported on one host is listed, with its size, by a second pool instance on the
    /// same storage; removed there, it is gone here.
    case secondInstanceSeesImages
    /// A clone made on one host appears on the other, reads its source's data, and the source
    /// cannot be removed while the clone exists; once the clone is gone, it can.
    case cloneAppearsElsewhere
    /// An image in use on another host (its lock held there) cannot be removed, renamed,
    /// resized or marked read-only here; once released, it can.
    case lockHeldElsewhereBlocks
    /// A name is unique across backends: cloning or renaming an external image to the name of a
    /// folder image (or the reverse) is refused, and nothing changes.
    case namesUniqueAcrossBackends
    /// Read-only made on one host is seen on the other, and refuses a limit change there.
    case readOnlySeenElsewhere
    /// ListImages merges external and folder images, never lists temp images, and stays one
    /// listing call: many images list without any image being opened per entry.
    case listingMerges

    public var description: String { rawValue }
}

extension Conformance {
    /// Runs a shared-storage check: two pools (`rootA`, `rootB`, fresh folders) each with a
    /// directory backend for folder images and the subject's backend, on the same storage.
    /// `folderBackend` makes the local backend of folder images (e.g. `DirectoryBackend()`).
    public static func run(_ check: SharedCheck, subject: SharedSubject, rootA: String, rootB: String,
                           folderBackend: @escaping @Sendable () -> any ImageBackend) async throws -> Outcome {
        let a = try subject.makeBackend(), b = try subject.makeBackend()
        try require(a.capabilities.contains(.shared), "\(subject) does not declare .shared")
        try require(a.capabilities.contains(.external), "\(subject) does not declare .external")
        for root in [rootA, rootB] { try makeDirectories(root + "/var/lib/machines") }
        let poolA = ImagePool(configuration: .init(root: rootA), registry: BackendRegistry([folderBackend(), a]))
        let poolB = ImagePool(configuration: .init(root: rootB), registry: BackendRegistry([folderBackend(), b]))
        let c = SharedContext(subject: subject, a: a, b: b, poolA: poolA, poolB: poolB,
                              prefix: "conf-\(UInt32.random(in: 0...UInt32.max))-")
        defer { c.cleanUp() }
        switch check {
        case .secondInstanceSeesImages: try await c.secondInstanceSeesImages()
        case .cloneAppearsElsewhere: try await c.cloneAppearsElsewhere()
        case .lockHeldElsewhereBlocks: try await c.lockHeldElsewhereBlocks()
        case .namesUniqueAcrossBackends: try await c.namesUniqueAcrossBackends(rootA: rootA)
        case .readOnlySeenElsewhere: try await c.readOnlySeenElsewhere()
        case .listingMerges: try await c.listingMerges(rootA: rootA)
        }
        return .passed
    }

}

struct SharedContext: Checking {
    let subject: SharedSubject
    let a: any ExternalImageBackend
    let b: any ExternalImageBackend
    let poolA: ImagePool
    let poolB: ImagePool
    /// Every image name of a run starts with it: the storage is shared with other runs.
    let prefix: String

    /// Imports an image on host A (through the pool's install, as import1 does).
    @discardableResult
    func makeImage(_ name: String, bytes: [UInt8] = Array("shared image data".utf8)) async throws -> Image {
        let subject = subject, backend = a
        return try await poolA.install(prefix + name, type: a.imageType, force: false, readOnly: false) { locator in
            try subject.write(backend, locator, bytes)
        }
    }

    /// Removes what a run left, children before parents (best effort).
    func cleanUp() {
        for _ in 0..<3 {
            guard let names = try? a.externalImageNames().filter({ $0.hasPrefix(prefix) }), !names.isEmpty else { return }
            for name in names.sorted(by: >) { try? a.remove(at: a.locator(of: name)) }
        }
    }

    func names(_ pool: ImagePool) async throws -> Set<String> {
        Set(try await pool.images().map(\.name))
    }

    /// Waits, bounded (a host's view of shared storage may lag by its cache time), until `name`
    /// is listed by `pool` (or, `present` false, no longer is).
    func eventuallyListed(_ pool: ImagePool, _ name: String, present: Bool = true, _ what: String) async throws {
        for _ in 0..<60 {
            if try await names(pool).contains(name) == present { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw ConformanceFailure("\(what): did not happen within 15 s")
    }

    func secondInstanceSeesImages() async throws {
        let made = try await makeImage("seen")
        try require(a.imageName(ofLocator: FilePath(made.path)) == made.name, "the image is not on the shared storage: \(made.path)")
        let there = try await poolB.image(named: made.name)
        try require(there.type == made.type, "host B sees type \(there.type), A made \(made.type)")
        try require(there.limit == made.limit, "host B sees size \(there.limit), A made \(made.limit)")
        try await eventuallyListed(poolB, made.name, "host B lists \(made.name)")
        try await poolB.remove(made.name)
        try await eventuallyListed(poolA, made.name, present: false, "host A no longer lists \(made.name) once host B removed it")
        try await expect(.noSuchImage, "host A looking up an image host B removed") {
            for _ in 0..<40 {
                _ = try await poolA.image(named: made.name)
                try await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    func cloneAppearsElsewhere() async throws {
        let source = try await makeImage("source")
        let clone = try await poolA.clone(source.name, to: prefix + "clone", readOnly: false)
        try await eventuallyListed(poolB, clone.name, "host B lists the clone made on host A")
        try require(try await poolB.image(named: clone.name).limit == source.limit, "the clone's size differs from its source's")
        try await expect(.busy, "removing a source with a clone (host B)") { try await poolB.remove(source.name) }
        try require(try await names(poolA).contains(source.name), "a refused remove removed the source")
        try await poolB.remove(clone.name)
        try await poolA.remove(source.name)
        try await eventuallyListed(poolB, source.name, present: false, "the source is no longer listed after removal")
    }

    func lockHeldElsewhereBlocks() async throws {
        let image = try await makeImage("busy")
        let release = try subject.holdElsewhere(b, image.name)
        var released = false
        defer { if !released { release() } }
        try await expect(.busy, "removing an image in use on another host") { try await poolA.remove(image.name) }
        try await expect(.busy, "renaming an image in use on another host") { try await poolA.rename(image.name, to: prefix + "moved") }
        try await expect(.busy, "resizing an image in use on another host") { try await poolA.setLimit(image.name, image.limit * 2 + 4096) }
        try await expect(.busy, "marking an image in use on another host read-only") { try await poolA.setReadOnly(image.name, true) }
        try require(try await names(poolA).contains(image.name), "a refused operation changed the image")
        release()
        released = true
        try await poolA.rename(image.name, to: prefix + "moved")
        try await poolA.remove(prefix + "moved")
    }

    func namesUniqueAcrossBackends(rootA: String) async throws {
        let external = try await makeImage("external")
        // A folder image on host A.
        let local = prefix + "local"
        try makeDirectories(rootA + "/var/lib/machines/" + local)
        try require(try await poolA.image(named: local).type == .directory, "the folder image is not listed")
        try await expect(.imageExists, "cloning an external image to a folder image's name") {
            _ = try await poolA.clone(external.name, to: local, readOnly: false)
        }
        try await expect(.imageExists, "renaming an external image to a folder image's name") {
            try await poolA.rename(external.name, to: local)
        }
        try await expect(.imageExists, "renaming a folder image to an external image's name") {
            try await poolA.rename(local, to: external.name)
        }
        try await expect(.imageExists, "importing under an external image's name") {
            _ = try await poolA.install(external.name, type: .directory, force: false, readOnly: false) { _ in }
        }
        try require(try await poolA.image(named: local).type == .directory, "the folder image changed")
        try require(try await poolA.image(named: external.name).path == external.path, "the external image changed")
    }

    func readOnlySeenElsewhere() async throws {
        let image = try await makeImage("ro")
        try await poolA.setReadOnly(image.name, true)
        let seen = try await waitReadOnly(image.name)
        try require(seen, "host B does not see the image read-only")
        try await expect(.readOnly, "resizing a read-only image on the other host") {
            try await poolB.setLimit(image.name, image.limit * 2 + 4096)
        }
        try await poolB.setReadOnly(image.name, false)
        try await poolA.remove(image.name)
    }

    /// Host B's cached view may lag by its cache time: wait a bounded while.
    private func waitReadOnly(_ name: String) async throws -> Bool {
        for _ in 0..<40 {
            if try await poolB.image(named: name).readOnly { return true }
            try await Task.sleep(for: .milliseconds(250))
        }
        return false
    }

    func listingMerges(rootA: String) async throws {
        let count = 20
        for index in 0..<count { try await makeImage("many-\(index)", bytes: [UInt8(index)]) }
        try makeDirectories(rootA + "/var/lib/machines/" + prefix + "folder")
        let listed = try await poolA.images()
        let ours = listed.filter { $0.name.hasPrefix(prefix) }
        try require(ours.count == count + 1, "expected \(count + 1) images, listed \(ours.map(\.name))")
        try require(!listed.contains { $0.name.hasPrefix(".#") }, "a temp image is listed")
        try require(ours.filter { $0.type == a.imageType }.allSatisfy { a.imageName(ofLocator: FilePath($0.path)) == $0.name },
                    "an external image's path is not its locator")
    }
}
