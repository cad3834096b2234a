import Glibc
import Linux
import PoolAPI

import struct SystemPackage.FilePath

/// How the suite reaches the bytes of an image of an external, block-backed backend (Ceph RBD),
/// whose `Image.path` is a locator (`rbd://CLUSTER/POOL/NAME`), no file to open. The vendor
/// gives three closures, each handed the backend under test and a locator as a string, in
/// either spelling (`rbd://…` as `Image.path` has it, `rbd:/…` as `install` hands its filler,
/// FilePath having folded the `//`): `ExternalImageBackend.imageName(ofLocator:)` reads both.
///
///     ImageBytes(
///         read: { backend, locator in … },                   // every byte, size included
///         write: { backend, locator, offset, bytes in … },   // grows the image if it ends before
///         openForWriting: { backend, locator in … })         // the backend's own writer path
public struct ImageBytes: Sendable {
    let read: @Sendable (any ExternalImageBackend, String) throws -> [UInt8]
    let write: @Sendable (any ExternalImageBackend, String, UInt64, [UInt8]) throws -> Void
    let openForWriting: @Sendable (any ExternalImageBackend, String) throws -> Void

    /// - Parameters:
    ///   - read: all bytes of the image, as many as its size (the checks compare clones and
    ///     renamed images with their source through it).
    ///   - write: writes the bytes at the offset, growing the image first where it ends before
    ///     `offset + bytes.count` (as an import does), and makes them durable.
    ///   - openForWriting: opens the image for writing as Berth's own writers do (imports, a
    ///     running machine: for RBD `RbdBackend.lockForWriting`) and closes it again. It must
    ///     throw for a read-only image: `PoolError(.readOnly)`, or a `SystemCallError` with
    ///     EROFS, EPERM or EACCES.
    public init(read: @escaping @Sendable (any ExternalImageBackend, String) throws -> [UInt8],
                write: @escaping @Sendable (any ExternalImageBackend, String, UInt64, [UInt8]) throws -> Void,
                openForWriting: @escaping @Sendable (any ExternalImageBackend, String) throws -> Void) {
        self.read = read
        self.write = write
        self.openForWriting = openForWriting
    }
}

/// An external, block-backed backend under test (`.external` + `.blockBacked`, e.g. Ceph RBD):
/// how to make it for one check, the registry it runs in, and its `ImageBytes`. The backend
/// must receive new images of its type (`receivesNewImages`), so the pool installs them there.
///
///     ExternalSubject("rbd", backend: { _ in try RbdBackend(config) }, bytes: rbdBytes,
///                     registry: { [DirectoryBackend(), $0] })
public struct ExternalSubject: Sendable, CustomStringConvertible {
    /// The name test output shows.
    public let name: String
    let makeBackend: @Sendable (Environment) throws -> any ExternalImageBackend
    let makeRegistry: @Sendable (any ExternalImageBackend) -> [any ImageBackend]
    let bytes: ImageBytes

    /// - Parameters:
    ///   - backend: makes the backend for one check (a fresh, empty storage each time: the
    ///     checks use fixed image names, and `createAndList` cleans every hidden image).
    ///   - bytes: how the checks read and write its images' bytes.
    ///   - registry: the backends of the pool in priority order; by default the subject alone.
    public init(_ name: String, backend: @escaping @Sendable (Environment) throws -> any ExternalImageBackend,
                bytes: ImageBytes,
                registry: @escaping @Sendable (any ExternalImageBackend) -> [any ImageBackend] = { [$0] }) {
        self.name = name
        self.makeBackend = backend
        self.makeRegistry = registry
        self.bytes = bytes
    }

    public var description: String { name }
}

extension Conformance {
    /// Runs `check` against an external, block-backed `subject`, with `root` a fresh, empty
    /// folder for the pool's `--root` (its pool folder holds no image of the subject: only
    /// `.host` and what other backends of the registry make). The subject's storage must be
    /// empty and the check's own (e.g. an RBD pool made for the one check): check names are
    /// fixed. Where a check means something else for an external image, its `Check` doc says.
    public static func run(_ check: Check, subject: ExternalSubject, root: FilePath) async throws -> Outcome {
        let env = Environment(root: root)
        try makeDirectories(root.appending("var/lib").string)
        try makeDirectories(env.runtimeDirectory.string)
        let backend = try subject.makeBackend(env)
        let capabilities = backend.capabilities
        try require(capabilities.contains(.external), "\(subject) does not declare .external")
        try require(capabilities.contains(.blockBacked), "\(subject) does not declare .blockBacked: ImageBytes reaches disk images only")
        try require(backend.receivesNewImages, "\(subject) does not receive new images: the pool would install them elsewhere")
        let present = try backend.externalImageNames()
        try require(present.isEmpty, "the storage of \(subject) is not empty (\(present.prefix(5))): each check needs storage of its own")
        let registry = BackendRegistry(subject.makeRegistry(backend))
        let pool = ImagePool(configuration: .init(root: root.string), registry: registry)
        try require(registry.externalBackend(receiving: backend.imageType)?.identifier == backend.identifier,
                    "another backend of the registry receives new \(backend.imageType.rawValue) images")
        let c = Context(env: env, backend: backend, pool: pool, external: ExternalAccess(backend: backend, bytes: subject.bytes))
        return try await c.run(check) {
            // A clone that copies nothing cannot run out of space midway: assert the copy-on-write.
            guard capabilities.contains(.constantTimeClone) else {
                return .skipped("running out of space midway through a clone is not checked on external storage: \(subject) does not clone in constant time")
            }
            try await c.cloneIsCopyOnWrite()
            return .passed
        }
    }
}

/// An external backend under test and its bytes: what `Context` uses instead of file paths.
struct ExternalAccess: Sendable {
    let backend: any ExternalImageBackend
    let bytes: ImageBytes

    func read(_ locator: String) throws -> [UInt8] { try bytes.read(backend, locator) }

    func write(_ locator: String, at offset: UInt64, _ data: [UInt8]) throws { try bytes.write(backend, locator, offset, data) }

    func openForWriting(_ locator: String) throws { try bytes.openForWriting(backend, locator) }

    /// The file fixture as a disk image: `Fixture.sparseSize` bytes, data only at
    /// `Fixture.sparseDataOffsets` (the last block grows it to its size).
    func fillFixture(_ locator: String) throws {
        for (i, offset) in Fixture.sparseDataOffsets.enumerated() {
            try write(locator, at: UInt64(offset), [UInt8](repeating: UInt8(0x41 + i), count: 4096))
        }
    }

    /// Writes `count` bytes of non-zero data at `offset`, 1 MiB at a time (as `Context.writeData`).
    func writeData(_ locator: String, offset: Int64, count: Int) throws {
        let chunk = Context.dataChunk()
        var done = 0
        while done < count {
            let n = min(chunk.count, count - done)
            try write(locator, at: UInt64(offset + Int64(done)), Array(chunk[0..<n]))
            done += n
        }
    }

    /// Names of temp images (`.#…`) the backend lists.
    func temporaryImages() throws -> [String] {
        try backend.externalImageNames().filter { $0.hasPrefix(".#") }
    }

    /// Whether the backend still has image `name`, by its lookup and by a listing.
    func has(_ name: String) throws -> Bool {
        if backend.hasExternalImage(named: name) { return true }
        return try backend.externalImageNames().contains(name)
    }
}

/// What a check compares of an image: its `TreeSnapshot` (tree and file images), or the bytes
/// of an external block-backed image.
enum Contents {
    case files(TreeSnapshot)
    case bytes([UInt8])

    /// What differs from `other`, one line each (empty: nothing).
    func differences(from other: Contents) -> [String] {
        switch (self, other) {
        case (.files(let a), .files(let b)):
            return a.differences(from: b)
        case (.bytes(let a), .bytes(let b)):
            if a.count != b.count { return ["size \(a.count) ≠ \(b.count)"] }
            guard let first = Self.firstDifference(a[...], b[...]) else { return [] }
            return ["bytes differ from offset \(first) on"]
        default:
            return ["a tree compared with bytes"]
        }
    }

    /// The first offset where `a` and `b` (of one length) differ, or nil: memcmp 1 MiB at a
    /// time, as images are tens of MiB.
    static func firstDifference(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> Int? {
        a.withUnsafeBytes { a in
            b.withUnsafeBytes { b -> Int? in
                guard let pa = a.baseAddress, let pb = b.baseAddress else { return nil }
                var offset = 0
                while offset < a.count {
                    let n = min(1 << 20, a.count - offset)
                    if memcmp(pa + offset, pb + offset, n) != 0 {
                        return (offset..<offset + n).first { a[$0] != b[$0] }
                    }
                    offset += n
                }
                return nil
            }
        }
    }
}

extension Context {
    /// `.outOfSpace` for an external backend that clones in constant time: a clone copies no
    /// data, so it cannot run out of space midway; what the check asserts instead is the
    /// copy-on-write itself. Right after cloning an image holding 32 MiB of data, the clone
    /// holds next to nothing of its own (`usageExclusive` under 1/16 of the data), reads the
    /// same bytes as its source, and no temp image is left.
    func cloneIsCopyOnWrite() async throws {
        guard let external else { throw ConformanceFailure("cloneIsCopyOnWrite is for external backends") }
        let bulk = 32 << 20
        let big = try await makeImage("big") { locator in
            try external.writeData(locator, offset: Fixture.sparseSize, count: bulk)
        }
        try await eventually(120, "the source's usage becoming known and counting the \(bulk >> 20) MiB written") {
            let usage = try await pool.image(named: "big").usage
            return usage != Image.unknown && usage >= UInt64(bulk)
        }
        let copy = try await pool.clone("big", to: "big-copy", readOnly: false)
        var exclusive = Image.unknown
        try await eventually(120, "the clone's exclusive usage becoming known") {
            exclusive = try await pool.image(named: "big-copy").usageExclusive
            return exclusive != Image.unknown
        }
        try require(exclusive < UInt64(bulk / 16),
                    "a copy-on-write clone of \(bulk >> 20) MiB of data holds \(exclusive) bytes of its own right after cloning")
        try requireNoTemporaryEntries("after a copy-on-write clone")
        let diff = try contents(copy).differences(from: try contents(big))
        try require(diff.isEmpty, "the clone's data differs from its source: " + diff.joined(separator: "; "))
    }
}

extension Context {
    /// `.limits` for an external block-backed backend with `.quota`: the limit is the image's
    /// size (RBD: `rbd_resize`). A new image's limit is its size; a bigger limit grows the image
    /// (its data kept, the new bytes zero); shrinking, which would cut the filesystem inside, is
    /// refused `invalidArgument` and removing the limit `notSupported`, changing nothing. No
    /// write past the limit is tried: a disk image has no bytes past its size to write.
    func limitIsTheSize(_ image: Image) async throws {
        guard let external else { throw ConformanceFailure("limitIsTheSize is for external backends") }
        let size = UInt64(Fixture.sparseSize)
        try require(image.limit == size, "a new image of \(size) bytes reports the limit \(image.limit), not its size")
        let before = try external.read(image.path)
        let grown = size + (32 << 20)
        try await pool.setLimit(image.name, grown)
        let listed = try await pool.image(named: image.name)
        try require(listed.limit == grown, "the limit set to \(grown) is reported as \(listed.limit)")
        let after = try external.read(image.path)
        try require(after.count == Int(grown), "the image is \(after.count) bytes after its limit was set to \(grown)")
        try require(Contents.firstDifference(after[0..<before.count], before[...]) == nil, "growing the limit changed the image's data")
        let added = after[before.count...]
        try require(Contents.firstDifference(added, [UInt8](repeating: 0, count: added.count)[...]) == nil,
                    "the bytes a grown limit added are not zero")
        try await expect(.invalidArgument, "shrinking the limit below the size (it would cut the data)") {
            try await pool.setLimit(image.name, 32 << 20)
        }
        try await expect(.notSupported, "removing the limit (it is the image's size)") {
            try await pool.setLimit(image.name, Image.unknown)
        }
        let kept = try await pool.image(named: image.name)
        try require(kept.limit == grown, "a refused limit change changed the limit to \(kept.limit)")
        try require(try external.read(image.path).count == Int(grown), "a refused limit change resized the image")
    }
}
