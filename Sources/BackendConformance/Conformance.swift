import Glibc
import Linux
import PoolAPI
import struct SystemPackage.FilePath

/// A backend under test: how to make it, and the registry it runs in (the subject first, so
/// the pool creates images of its kind). One line per backend:
///
///     Subject("btrfs", backend: { _ in BtrfsBackend() }, registry: { [$0, DirectoryBackend()] })
///     Subject("raw", backend: { RawLoopBackend(runtimeDirectory: $0.runtimeDirectory) })
public struct Subject: Sendable, CustomStringConvertible {
    /// The name test output shows.
    public let name: String
    let makeBackend: @Sendable (Environment) -> any ImageBackend
    let makeRegistry: @Sendable (any ImageBackend) -> [any ImageBackend]

    /// - Parameters:
    ///   - backend: makes the backend for one check's environment (fresh root each time).
    ///   - registry: the backends of the pool, in priority order; by default the subject alone.
    public init(_ name: String, backend: @escaping @Sendable (Environment) -> any ImageBackend,
                registry: @escaping @Sendable (any ImageBackend) -> [any ImageBackend] = { [$0] }) {
        self.name = name
        self.makeBackend = backend
        self.makeRegistry = registry
    }

    public var description: String { name }
}

/// Where one check runs: a fresh root folder on the filesystem under test.
public struct Environment: Sendable {
    /// The pool's `--root`; the pool folder is `root/var/lib/machines`.
    public let root: FilePath
    /// `root/run/berth`, berthd's runtime folder (loop-device state of file backends).
    public var runtimeDirectory: FilePath { root.appending("run/berth") }
    /// `root/var/lib/machines`, the pool folder.
    public var poolPath: FilePath { root.appending("var/lib/machines") }
}

/// One behaviour every backend must have.
///
/// For an external, block-backed backend (`ExternalSubject`, e.g. Ceph RBD) the checks reach the
/// images' bytes through the subject's `ImageBytes`, never through `Image.path` (a locator), and
/// "a temp entry" includes a temp image (`.#…`) in the backend's `externalImageNames()`. Where a
/// check means something else for such a backend, its doc says so under "External:".
public enum Check: String, CaseIterable, Sendable, CustomStringConvertible {
    /// An image made by createEmpty+fill is listed with the backend's type; hidden images are
    /// listed and cleaned by CleanPool("hidden"); `.host` is there.
    /// External: the image's path is the backend's locator of its name (not in the pool folder),
    /// and the cleaned hidden image is gone from the backend.
    case createAndList
    /// A clone equals its source in every respect `TreeSnapshot` records (or byte for byte and
    /// as sparse, for file images); a read-only clone is read-only; no temp entry remains; a
    /// backend cloning in one step refuses an existing destination and leaves it alone.
    /// External: byte for byte through `ImageBytes.read` (size included), and "as sparse" means
    /// source and clone report a usage below their size.
    case cloneFidelity
    /// Rename moves the image, refuses existing and invalid names, keeps read-only.
    case rename
    /// Remove deletes a (read-only) image entirely; missing images and `.host` are refused.
    /// External: the image is gone from the backend (`hasExternalImage`, `externalImageNames`).
    case remove
    /// Read-only is enforced against root (EPERM/EROFS) and can be lifted again.
    /// External: opening the image for writing through the backend's own writer path
    /// (`ImageBytes.openForWriting`, what Berth's writers use) is refused (`readOnly`, or
    /// EROFS/EPERM/EACCES) until it is lifted, and with `.quota` a limit change is refused
    /// `readOnly`. Without `.enforcedReadOnly` that is all read-only promises (RBD: a metadata
    /// mark honoured by Berth on every host; a foreign client with write caps is not stopped).
    case readOnly
    /// Usage becomes known and grows when data is written into the image.
    /// External: usage needs no accounting switched on (no "no limit" is set first); RBD's comes
    /// from fast-diff, refreshed in the background, hence the bounded wait.
    case usageGrows
    /// With `.quota`, a write past the limit fails with EDQUOT; without, SetImageLimit is
    /// `notSupported`.
    /// External with `.quota`: the limit is the image's size. It grows the image (data kept,
    /// new bytes zero); shrinking is refused `invalidArgument`, removing it `notSupported`.
    case limits
    /// A clone and a remove of one image at once are serialised by the pool: the clone is
    /// complete or refused, never partial.
    /// External: where clones hang off their source (RBD), a remove after the clone is refused
    /// `busy` (an image with clones is not removed); the source is then unchanged, and goes
    /// once its clone is gone.
    case concurrentCloneAndRemove
    /// Invalid names are refused, odd valid ones (`a b`, `..x`, 70 characters) accepted.
    case badNames
    /// Running out of space midway through a clone leaves no partial image and no temp entry.
    /// Where clones share extents (reflink or snapshot on btrfs) there is no midway: then a clone
    /// of most of the free space succeeds at a fraction of its size instead.
    /// External: storage shared by a cluster is not filled up by a test, and a constant-time
    /// clone copies nothing: the check asserts the copy-on-write instead (right after cloning
    /// 32 MiB of data the clone's `usageExclusive` is next to nothing, its bytes its source's).
    /// An external backend without `.constantTimeClone` gets `.skipped`.
    case outOfSpace

    public var description: String { rawValue }

    /// The filesystem size the check wants (backing files are sparse: big costs nothing, but
    /// running out of space needs a small filesystem).
    public func filesystemSize(forBtrfs btrfs: Bool) -> UInt64 {
        switch self {
        case .outOfSpace: btrfs ? 256 << 20 : 128 << 20
        default: 1 << 30
        }
    }
}

/// What a check concluded.
public enum Outcome: Sendable, Equatable {
    case passed
    /// The combination cannot run (e.g. a btrfs backend on ext4), and why. Test suites generate
    /// only the combinations that apply (Tests/BackendTests/ConformanceTests.swift), so there a
    /// skipped outcome is a failure.
    case skipped(String)
}

/// A behaviour the backend got wrong.
public struct ConformanceFailure: Error, CustomStringConvertible {
    public let description: String
    /// A failure saying what differed.
    public init(_ description: String) { self.description = description }
}

/// The backend conformance suite. Vendors call `run` from their own tests for every check on
/// every filesystem their backend supports (see docs/writing-a-backend.md); it throws
/// `ConformanceFailure` (or the pool's error) on a failure. An external block-backed backend
/// (Ceph RBD) runs the same checks with an `ExternalSubject` (ExternalSubject.swift).
public enum Conformance {
    /// Runs `check` against `subject` in `root`, a fresh, empty folder on the filesystem under
    /// test (its mount point is fine). Needs root, as images carry device nodes and owners.
    public static func run(_ check: Check, subject: Subject, root: FilePath) async throws -> Outcome {
        let env = Environment(root: root)
        try makeDirectories(root.appending("var/lib").string)
        try makeDirectories(env.runtimeDirectory.string)
        let backend = subject.makeBackend(env)
        let isBtrfs = (try? filesystemType(of: root.string)) == FilesystemMagic.btrfs
        let fsName = isBtrfs ? "btrfs" : "this filesystem"
        guard backend.canCreate(in: root.appending("var/lib")) else {
            return .skipped("the \(subject) backend cannot create images on \(fsName)")
        }
        let c = Context(env: env, backend: backend,
                        pool: ImagePool(configuration: .init(root: root.string), registry: BackendRegistry(subject.makeRegistry(backend))))
        return try await c.run(check) {
            // A clone sharing extents cannot run out of space midway: assert the sharing instead.
            if isBtrfs && !backend.capabilities.isDisjoint(with: [.reflink, .constantTimeClone]) {
                try await c.cloneSharesExtents()
            } else {
                try await c.outOfSpace()
            }
            return .passed
        }
    }
}

struct Context: Checking {
    let env: Environment
    let backend: any ImageBackend
    let pool: ImagePool
    /// The backend and its bytes when it is external and block-backed (`ExternalSubject`): its
    /// images are reached through `ImageBytes`, never through `Image.path`.
    var external: ExternalAccess? = nil
    var isTree: Bool { backend.capabilities.contains(.tree) }

    /// Runs `check`; `outOfSpaceCheck` is what `.outOfSpace` means for this subject.
    func run(_ check: Check, outOfSpaceCheck: () async throws -> Outcome) async throws -> Outcome {
        switch check {
        case .createAndList: try await createAndList()
        case .cloneFidelity: try await cloneFidelity()
        case .rename: try await rename()
        case .remove: try await remove()
        case .readOnly: try await readOnly()
        case .usageGrows: try await usageGrows()
        case .limits: try await limits()
        case .concurrentCloneAndRemove: try await concurrentCloneAndRemove()
        case .badNames: try await badNames()
        case .outOfSpace: return try await outOfSpaceCheck()
        }
        return .passed
    }

    /// Expects a system call to fail with one of `errnos`.
    func expectErrno(_ errnos: [Errno], _ what: String, _ body: () throws -> Void) throws {
        do {
            try body()
        } catch let e as SystemCallError {
            try require(errnos.contains(e.errno), "\(what): expected \(errnos.map(\.name)), got \(e)")
            return
        }
        throw ConformanceFailure("\(what): expected \(errnos.map(\.name)), but it succeeded")
    }

    /// createEmpty + fill through the pool's install, as an import does.
    @discardableResult
    func makeImage(_ name: String, extra: (@Sendable (String) throws -> Void)? = nil) async throws -> Image {
        let tree = isTree, external = self.external
        let image = try await pool.install(name, type: backend.imageType, force: false, readOnly: false) { path in
            if let external {
                try external.fillFixture(path)
            } else if tree {
                try Fixture.fillTree(at: path)
            } else {
                try Fixture.fillFile(at: path)
            }
            try extra?(path)
        }
        try require(image.type == backend.imageType, "image '\(name)' has type \(image.type), not \(backend.imageType)")
        try require(!image.readOnly, "a new image is read-only")
        return image
    }

    /// Temp entries of the pool folder, and for an external backend its temp images.
    func temporaryEntries() throws -> [String] {
        try directoryEntries(pool.poolPath).filter { $0.hasPrefix(".#") } + (try external?.temporaryImages() ?? [])
    }

    func requireNoTemporaryEntries(_ when: String) throws {
        let left = try temporaryEntries()
        try require(left.isEmpty, "temp entries left \(when): \(left)")
    }

    /// Waits for `condition` up to `seconds` (for values computed in the background), polling.
    func eventually(_ seconds: Double, _ what: String, _ condition: () async throws -> Bool) async throws {
        var waited = 0.0
        while !(try await condition()) {
            try require(waited < seconds, "\(what) did not happen within \(Int(seconds)) s")
            try await Task.sleep(for: .milliseconds(250))
            waited += 0.25
        }
    }

    // MARK: checks

    func createAndList() async throws {
        let made = try await makeImage("fixture")
        try await makeImage(".hidden")
        let images = try await pool.images()
        let names = images.map(\.name)
        try require(names.contains(".host"), ".host missing from \(names)")
        try require(names.contains("fixture") && names.contains(".hidden"), "images missing: \(names)")
        try require(!names.contains { $0.hasPrefix(".#") }, "temp entries listed: \(names)")
        let fetched = try await pool.image(named: "fixture")
        if let external {
            try require(fetched.path == made.path && isImageLocator(fetched.path)
                            && external.backend.imageName(ofLocator: fetched.path) == "fixture",
                        "image path \(fetched.path) is not the backend's locator of 'fixture' (in \(external.backend.locatorFolder))")
        } else {
            try require(fetched.path == made.path && fetched.path.hasPrefix(pool.poolPath + "/"),
                        "image path \(fetched.path) is not in the pool folder \(pool.poolPath)")
        }
        try require(fetched.type == backend.imageType, "listed type \(fetched.type)")
        let cleaned = try await pool.clean(.hidden)
        try require(cleaned.map(\.name) == [".hidden"], "CleanPool(hidden) removed \(cleaned.map(\.name))")
        if let external { try require(!(try external.has(".hidden")), "CleanPool(hidden) left .hidden in the backend") }
        _ = try await pool.image(named: "fixture")
        try requireNoTemporaryEntries("after create and clean")
    }

    /// A file image's own access time is left out: reading the file to clone it may move it.
    func snapshot(_ image: Image) throws -> TreeSnapshot {
        try TreeSnapshot(of: image.path, includeAccessTimes: isTree)
    }

    /// What comparisons of `image` look at: its `snapshot`, or an external image's bytes.
    func contents(_ image: Image) throws -> Contents {
        if let external { return .bytes(try external.read(image.path)) }
        return .files(try snapshot(image))
    }

    /// Waits (bounded: usage is computed in the background) until the usage of image `name` is
    /// known, and returns it with the image.
    func knownUsage(_ name: String) async throws -> Image {
        var image = try await pool.image(named: name)
        try await eventually(120, "usage of '\(name)' becoming known") {
            image = try await pool.image(named: name)
            return image.usage != Image.unknown
        }
        return image
    }

    /// Data too, where mostly holes: an image's usage (whole storage objects) under its size.
    func requireSparse(_ name: String, _ what: String) async throws {
        let image = try await knownUsage(name)
        try require(image.limit != Image.unknown && image.usage < image.limit,
                    "\(what) is not sparse: usage \(image.usage) of \(image.limit) bytes")
    }

    func cloneFidelity() async throws {
        let source = try await makeImage("source")
        let before = try contents(source)
        let copy = try await pool.clone("source", to: "copy", readOnly: false)
        try require(copy.type == source.type, "clone type \(copy.type) ≠ \(source.type)")
        try require(!copy.readOnly, "a clone asked writable is read-only")
        let diff = try contents(copy).differences(from: before)
        try require(diff.isEmpty, "clone differs from its source:\n" + diff.joined(separator: "\n"))
        if case .files(let tree) = before {
            let sparseEntry = isTree ? "sparse" : "."
            try require(tree.entries[sparseEntry]?.isSparse == true, "the fixture's sparse file is not sparse")
        } else {
            try await requireSparse("source", "the fixture image")
            try await requireSparse("copy", "the clone")
        }
        let after = try contents(source)
        try require(after.differences(from: before).isEmpty, "cloning changed the source")
        let ro = try await pool.clone("source", to: "copy-ro", readOnly: true)
        try require(ro.readOnly, "a clone asked read-only is writable")
        let listedRO = try await pool.image(named: "copy-ro")
        try require(listedRO.readOnly, "listed read-only clone is writable")
        let roDiff = try contents(ro).differences(from: before)
        try require(roDiff.isEmpty, "read-only clone differs:\n" + roDiff.joined(separator: "\n"))
        try requireNoTemporaryEntries("after cloning")
        // A backend cloning in one step (the pool used it above) never replaces what is there.
        if backend.clonesInOneStep(from: FilePath(source.path)) {
            let existing = try contents(copy)
            try await expect(.imageExists, "cloneInOneStep onto an existing image") {
                try backend.cloneInOneStep(from: FilePath(source.path), to: FilePath(copy.path), readOnly: false)
            }
            try require(try contents(copy).differences(from: existing).isEmpty, "cloneInOneStep changed the image it was refused onto")
        }
    }

    func rename() async throws {
        let a = try await makeImage("a")
        let before = try contents(a)
        try await makeImage("c")
        try await pool.rename("a", to: "b")
        try await expect(.noSuchImage, "the old name after rename") { _ = try await pool.image(named: "a") }
        let b = try await pool.image(named: "b")
        try require(b.type == a.type, "renamed image changed type")
        let diff = try contents(b).differences(from: before)
        try require(diff.isEmpty, "rename changed contents:\n" + diff.joined(separator: "\n"))
        try await expect(.imageExists, "rename onto an existing image") { try await pool.rename("b", to: "c") }
        try await expect(.invalidName, "rename to a/b") { try await pool.rename("b", to: "a/b") }
        try await expect(.noSuchImage, "rename of a missing image") { try await pool.rename("nope", to: "x") }
        try await expect(.readOnly, "rename of .host") { try await pool.rename(".host", to: "x") }
        try await pool.setReadOnly("b", true)
        try await pool.rename("b", to: "b2")
        let b2 = try await pool.image(named: "b2")
        try require(b2.readOnly, "rename lost read-only")
        try requireNoTemporaryEntries("after renames")
    }

    func remove() async throws {
        let image = try await makeImage("gone")
        try await pool.setReadOnly("gone", true)
        try await pool.remove("gone")
        try await expect(.noSuchImage, "a removed image") { _ = try await pool.image(named: "gone") }
        if let external {
            try require(!(try external.has("gone")), "\(image.path) is still an image of the backend")
        } else {
            try require((try? fileStatus(image.path, followSymlinks: false)) == nil, "\(image.path) still exists")
        }
        try await expect(.noSuchImage, "removing a missing image") { try await pool.remove("gone") }
        try await expect(.readOnly, "removing .host") { try await pool.remove(".host") }
        try requireNoTemporaryEntries("after remove")
    }

    func readOnly() async throws {
        let image = try await makeImage("ro")
        try await pool.setReadOnly("ro", true)
        let marked = try await pool.image(named: "ro")
        try require(marked.readOnly, "image not reported read-only")
        let probe = image.path + "/probe"
        if let external {
            try expectWriteRefused("opening a read-only image for writing through the backend's writer path") {
                try external.openForWriting(image.path)
            }
            if backend.capabilities.contains(.quota) {
                try require(marked.limit != Image.unknown, "the size of a read-only image is not reported")
                try await expect(.readOnly, "resizing a read-only image") { try await pool.setLimit("ro", marked.limit + (32 << 20)) }
            }
        } else if isTree {
            try expectErrno([.EPERM, .EROFS], "creating a file in a read-only image as root") {
                _ = try FileDescriptor.open(probe, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
            }
        } else {
            try expectErrno([.EPERM, .EROFS, .EACCES], "opening a read-only image file for writing as root") {
                _ = try FileDescriptor.open(image.path, flags: O_WRONLY)
            }
        }
        try await expect(.readOnly, "making .host writable") { try await pool.setReadOnly(".host", false) }
        try await pool.setReadOnly("ro", false)
        let unmarked = try await pool.image(named: "ro")
        try require(!unmarked.readOnly, "image still reported read-only")
        if let external {
            try external.openForWriting(image.path)
        } else if isTree {
            _ = try FileDescriptor.open(probe, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
        } else {
            _ = try FileDescriptor.open(image.path, flags: O_WRONLY)
        }
    }

    /// Writes `bytes` of non-zero data at `offset` of `path` (created if missing), synced.
    func writeData(_ path: String, offset: Int64, bytes: Int, fsyncEvery: Int = 4 << 20) throws {
        let fd = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT, mode: 0o644)
        let chunk = Self.dataChunk()
        var done = 0
        while done < bytes {
            let n = min(chunk.count, bytes - done)
            try chunk.withUnsafeBytes { try fd.writeAll(UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: offset + Int64(done)) }
            done += n
            if done % fsyncEvery == 0 || done == bytes { try fd.sync() }
        }
    }

    /// 1 MiB of non-zero data (nothing a filesystem or block store could leave a hole for).
    static func dataChunk() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: 1 << 20) { buf, n in
            for i in 0..<(1 << 20) { buf[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) | 1 }
            n = 1 << 20
        }
    }

    /// Expects opening for writing to be refused as for a read-only image: `PoolError(.readOnly)`
    /// or a system call failing with EROFS, EPERM or EACCES.
    func expectWriteRefused(_ what: String, _ body: () throws -> Void) throws {
        do {
            try body()
        } catch let e as PoolError {
            try require(e.code == .readOnly, "\(what): expected readOnly, got \(e.code): \(e)")
            return
        } catch let e as SystemCallError {
            try require([Errno.EROFS, .EPERM, .EACCES].contains(e.errno), "\(what): expected EROFS, EPERM or EACCES, got \(e)")
            return
        }
        throw ConformanceFailure("\(what): expected it refused, but it succeeded")
    }

    func usageGrows() async throws {
        let image = try await makeImage("used")
        // Quota backends report usage only while accounting is on (systemd reports it unknown
        // otherwise, and reading must not switch it on): setting "no limit" switches it on.
        // An external backend's usage needs no switch (RBD: fast-diff), and its limit is the
        // image's size, which cannot be removed.
        if backend.capabilities.contains(.quota) && external == nil {
            try await pool.setLimit("used", Image.unknown)
        }
        var before = Image.unknown
        try await eventually(120, "usage of a new image becoming known") {
            before = try await pool.image(named: "used").usage
            return before != Image.unknown
        }
        let grow = 16 << 20
        if let external {
            try external.writeData(image.path, offset: 30 << 20, count: grow)  // into the hole
        } else if isTree {
            try writeData(image.path + "/grown", offset: 0, bytes: grow)
        } else {
            try writeData(image.path, offset: 30 << 20, bytes: grow)  // into the hole
        }
        // Quota-based accounting (btrfs qgroups) counts data once a transaction commits.
        sync()
        try await eventually(120, "usage growing by the \(grow >> 20) MiB written") {
            let now = try await pool.image(named: "used").usage
            return now != Image.unknown && now >= before + UInt64(grow / 2)
        }
    }

    func limits() async throws {
        let image = try await makeImage("limited")
        guard backend.capabilities.contains(.quota) else {
            try await expect(.notSupported, "SetImageLimit without quota support") {
                try await pool.setLimit("limited", 32 << 20)
            }
            return
        }
        if external != nil { return try await limitIsTheSize(image) }
        try await pool.setLimit("limited", 32 << 20)
        let listed = try await pool.image(named: "limited")
        try require(listed.limit != Image.unknown, "the limit set is not reported")
        guard isTree else { return }
        do {
            try writeData(image.path + "/filler", offset: 0, bytes: 128 << 20, fsyncEvery: 1 << 20)
        } catch let e as SystemCallError {
            try require(e.errno == .EDQUOT, "writing past the limit failed with \(e.errno.name), not EDQUOT")
            return
        }
        throw ConformanceFailure("wrote 128 MiB into an image limited to 32 MiB")
    }

    func concurrentCloneAndRemove() async throws {
        let isExternal = external != nil
        let source = try await makeImage("contested") { path in
            // Bulk, so the clone takes a while: 400 files of 64 KiB. (A locator is no file.)
            guard !isExternal else { return }
            var tree = false
            if let st = try? fileStatus(path), st.isDirectory { tree = true }
            guard tree else { return }
            try makeDirectory(path + "/bulk", mode: 0o755)
            let block = [UInt8](repeating: 0x5a, count: 64 << 10)
            for i in 0..<400 {
                let fd = try FileDescriptor.open(path + "/bulk/\(i)", flags: O_WRONLY | O_CREAT, mode: 0o644)
                try block.withUnsafeBytes { try fd.writeAll($0) }
            }
        }
        let before = try contents(source)
        let pool = self.pool
        async let cloned: Result<Image, any Error> = { do { return .success(try await pool.clone("contested", to: "rescued", readOnly: false)) } catch { return .failure(error) } }()
        async let removed: Result<Void, any Error> = { do { return .success(try await pool.remove("contested")) } catch { return .failure(error) } }()
        let (c, r) = await (cloned, removed)
        // An external backend whose clones hang off their source (RBD) refuses, as documented, to
        // remove an image with clones: where the clone went first, the remove is refused `busy`.
        var sourceKeptForItsClone = false
        if case .failure(let e) = r {
            guard isExternal, case .success = c, let e = e as? PoolError, e.code == .busy else {
                throw ConformanceFailure("remove during a clone failed: \(e)")
            }
            sourceKeptForItsClone = true
        }
        switch c {
        case .success(let copy):
            let diff = try contents(copy).differences(from: before)
            try require(diff.isEmpty, "clone racing a remove is not complete:\n" + diff.prefix(10).joined(separator: "\n"))
            if sourceKeptForItsClone {
                let kept = try contents(try await pool.image(named: "contested")).differences(from: before)
                try require(kept.isEmpty, "a source whose remove was refused changed:\n" + kept.prefix(10).joined(separator: "\n"))
                // Once its clone is gone, it goes.
                try await pool.remove("rescued")
                try await pool.remove("contested")
            }
        case .failure(let e as PoolError) where e.code == .noSuchImage:
            break  // the remove went first: a clean refusal
        case .failure(let e):
            throw ConformanceFailure("clone racing a remove failed with \(e) (the remove pulled the tree away?)")
        }
        try await expect(.noSuchImage, "the removed image") { _ = try await pool.image(named: "contested") }
        try requireNoTemporaryEntries("after a clone raced a remove")
    }

    func badNames() async throws {
        try await makeImage("good")
        let bad = ["", ".", "..", "a/b", "../x", ".#tmp", "bad\nname", "tab\tname", String(repeating: "x", count: 256)]
        for name in bad {
            try await expect(.invalidName, "clone to \(name.debugDescription)") {
                _ = try await pool.clone("good", to: name, readOnly: false)
            }
            try await expect(.invalidName, "install as \(name.debugDescription)") {
                _ = try await pool.install(name, type: backend.imageType, force: false, readOnly: false) { _ in }
            }
        }
        try await expect(.imageExists, "clone onto an existing name") {
            _ = try await pool.clone("good", to: "good", readOnly: false)
        }
        try await expect(.imageExists, "install onto an existing name without force") {
            _ = try await pool.install("good", type: backend.imageType, force: false, readOnly: false) { _ in
                throw ConformanceFailure("fill ran although the name was taken")
            }
        }
        try await expect(.noSuchImage, "clone of a missing image") {
            _ = try await pool.clone("missing", to: "other", readOnly: false)
        }
        for name in ["a b", "..x", String(repeating: "y", count: 70), ".dotted"] {
            let made = try await pool.clone("good", to: name, readOnly: false)
            try require(made.name == name, "clone named \(name.debugDescription) came back as \(made.name)")
            _ = try await pool.image(named: name)
        }
        try requireNoTemporaryEntries("after bad names")
    }

    func outOfSpace() async throws {
        var fs = statvfs()
        try sys("statvfs") { statvfs(env.root.string, &fs) }
        let free = Int(fs.f_bavail) * Int(fs.f_frsize)
        let bulk = free * 6 / 10 / (1 << 20) * (1 << 20)
        let tree = isTree
        try await makeImage("big") { path in
            try writeData(tree ? path + "/bulk" : path, offset: tree ? 0 : Fixture.sparseSize, bytes: bulk)
        }
        try await expect(.noSpace, "cloning \(bulk >> 20) MiB with \((free - bulk) >> 20) MiB free") {
            _ = try await pool.clone("big", to: "big-copy", readOnly: false)
        }
        try await expect(.noSuchImage, "the clone that ran out of space") { _ = try await pool.image(named: "big-copy") }
        try requireNoTemporaryEntries("after running out of space")
        _ = try await pool.image(named: "big")
    }
}
