import Foundation
import Glibc
import Linux
import PoolAPI
import Testing
import TestSupport
import struct SystemPackage.FilePath

@testable import BtrfsBackend

/// The btrfs backend on a real loopback btrfs: every outcome is read back from the kernel,
/// with the `btrfs` command as an independent witness where it helps.
@Suite(.serialized, .requires(.loopFilesystems, .commands("btrfs")))
struct BtrfsBackendTests {
    let backend = BtrfsBackend()

    // MARK: - Helpers

    /// Writes `bytes` of non-zero data to `path` in 1 MiB chunks, then fsyncs.
    static func writeFile(_ path: String, bytes: Int, append: Bool = false) throws(SystemCallError) {
        let fd = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC))
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 8)
        defer { chunk.deallocate() }
        for i in 0..<chunk.count { chunk[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        var left = bytes
        while left > 0 {
            let n = min(left, chunk.count)
            try fd.writeAll(UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
            left -= n
        }
        try fd.sync()
    }

    /// `btrfs qgroup show --raw`: qgroup id ("0/257") → (referenced, exclusive).
    static func qgroups(_ path: String) throws -> [String: (UInt64, UInt64)] {
        let out = try run(["btrfs", "qgroup", "show", "--raw", path], check: true).stdout
        var result: [String: (UInt64, UInt64)] = [:]
        for line in out.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 3, f[0].contains("/"), let r = UInt64(f[1]), let e = UInt64(f[2]) else { continue }
            result[String(f[0])] = (r, e)
        }
        return result
    }

    static func quotasEnabled(_ path: String) throws -> Bool {
        try run(["btrfs", "qgroup", "show", path]).succeeded
    }

    static func subvolumeID(_ path: String) throws -> UInt64 {
        let out = try run(["btrfs", "inspect-internal", "rootid", path], check: true).stdout
        return try #require(UInt64(out.trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    static func isSubvolume(_ path: String) -> Bool {
        (try? fileStatus(path, followSymlinks: false))?.inode == 256
    }

    static func syncFilesystem(_ path: String) throws {
        try BtrfsIoctl.sync(FileDescriptor.openDirectory(path))
    }

    /// Bytes in use on the filesystem (statvfs: blocks − free), after a commit.
    static func usedBytes(_ path: String) throws -> UInt64 {
        try syncFilesystem(path)
        var s = statvfs()
        #expect(statvfs(path, &s) == 0)
        return UInt64(s.f_blocks - s.f_bfree) * UInt64(s.f_frsize)
    }

    static func exists(_ path: String) -> Bool { (try? fileStatus(path, followSymlinks: false)) != nil }

    // MARK: - Identity, claim, canCreate

    @Test func declaresSubvolumeTypeAndCapabilities() {
        #expect(backend.identifier == "btrfs")
        #expect(backend.imageType == .subvolume)
        #expect(backend.capabilities == [.constantTimeClone, .quota, .reflink, .tree, .enforcedReadOnly])
        #expect(backend.entryName(forImage: "a b") == "a b")
    }

    @Test func claimsSubvolumesOnlyAndCreatesOnlyOnBtrfs() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let ext4 = try LoopbackFilesystem(.ext4, size: 64 << 20)
        try backend.createEmpty(at: FilePath(fs.appending("sub")))
        try makeDirectory(fs.appending("plain"))
        try Self.writeFile(fs.appending("file"), bytes: 10)
        try makeDirectory(ext4.appending("dir"))

        #expect(backend.claim(PoolEntry(directory: FilePath(fs.mountPoint), fileName: "sub")) == "sub")
        #expect(backend.claim(PoolEntry(directory: FilePath(fs.mountPoint), fileName: "plain")) == nil)
        #expect(backend.claim(PoolEntry(directory: FilePath(fs.mountPoint), fileName: "file")) == nil)
        #expect(backend.claim(PoolEntry(directory: FilePath(fs.mountPoint), fileName: "missing")) == nil)
        #expect(backend.claim(PoolEntry(directory: FilePath(ext4.mountPoint), fileName: "dir")) == nil)
        #expect(backend.canCreate(in: FilePath(fs.mountPoint)))
        #expect(backend.canCreate(in: FilePath(fs.appending("plain"))))
        #expect(!backend.canCreate(in: FilePath(ext4.mountPoint)))
        #expect(throws: PoolError.self) { try backend.image(named: "plain", at: FilePath(fs.appending("plain"))) }
    }

    // MARK: - Metadata

    @Test func createEmptyMakesAWritableSubvolumeWithTimesAndUnknownUsage() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let path = fs.appending("img")
        let before = UInt64(Date().timeIntervalSince1970 * 1_000_000)
        try backend.createEmpty(at: FilePath(path))
        let after = UInt64(Date().timeIntervalSince1970 * 1_000_000)
        #expect(Self.isSubvolume(path))
        #expect(try directoryEntries(path).isEmpty)

        let image = try backend.image(named: "img", at: FilePath(path))
        #expect(image.name == "img")
        #expect(image.path == path)
        #expect(image.type == .subvolume)
        #expect(!image.readOnly)
        #expect(image.creationTimestamp + 2_000_000 >= before && image.creationTimestamp <= after + 2_000_000)
        #expect(image.modificationTimestamp >= image.creationTimestamp)
        // Quotas are off: nothing is known, and reading did not switch them on.
        #expect(image.usage == Image.unknown)
        #expect(image.usageExclusive == Image.unknown)
        #expect(image.limit == Image.unknown)
        #expect(image.limitExclusive == Image.unknown)
        #expect(try !Self.quotasEnabled(fs.mountPoint))

        // The modification time follows changes anywhere in the tree, not just the top folder.
        try makeDirectories(joinPath(path, "deep", "er"))
        try Self.syncFilesystem(fs.mountPoint)
        let touched = try backend.image(named: "img", at: FilePath(path)).modificationTimestamp
        try Self.writeFile(joinPath(path, "deep", "er", "file"), bytes: 10)
        try Self.syncFilesystem(fs.mountPoint)
        #expect(try backend.image(named: "img", at: FilePath(path)).modificationTimestamp > touched)

        #expect(throws: PoolError.self) { try backend.createEmpty(at: FilePath(path)) }
        let missing = #expect(throws: PoolError.self) { try backend.image(named: "nope", at: FilePath(fs.appending("nope"))) }
        #expect(missing?.code == .noSuchImage)
    }

    // MARK: - Clone

    @Test func cloneIsARecursiveWritableSnapshotTakingNoExtraSpace() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let source = fs.appending("src"), clone = fs.appending("copy")
        try backend.createEmpty(at: FilePath(source))
        try Self.writeFile(joinPath(source, "big"), bytes: 64 << 20)
        try backend.createEmpty(at: FilePath(joinPath(source, "nested")))
        try Self.writeFile(joinPath(source, "nested", "inner"), bytes: 4096)
        try backend.createEmpty(at: FilePath(joinPath(source, "nested", "deeper")))
        try backend.setReadOnly(true, at: FilePath(source))

        let usedBefore = try Self.usedBytes(fs.mountPoint)
        try backend.clone(from: FilePath(source), to: FilePath(clone))
        let usedAfter = try Self.usedBytes(fs.mountPoint)

        // O(1): a 64 MiB image costs a few metadata blocks, and the clone shares all its data.
        #expect(usedAfter < usedBefore + (2 << 20), "clone used \(usedAfter &- usedBefore) bytes")
        let du = try run(["btrfs", "filesystem", "du", "-s", "--raw", clone], check: true).stdout
        let fields = try #require(du.split(separator: "\n").last).split(separator: " ", omittingEmptySubsequences: true)
        let total = try #require(UInt64(fields[0])), exclusive = try #require(UInt64(fields[1]))
        #expect(total >= 64 << 20)
        #expect(exclusive < 1 << 20)

        // Nested subvolumes come along, as subvolumes, with their contents.
        #expect(Self.isSubvolume(clone))
        #expect(Self.isSubvolume(joinPath(clone, "nested")))
        #expect(Self.isSubvolume(joinPath(clone, "nested", "deeper")))
        #expect(try fileStatus(joinPath(clone, "nested", "inner")).size == 4096)
        #expect(try fileStatus(joinPath(clone, "big")).size == 64 << 20)

        // Writable although the source is read-only; the source is untouched.
        #expect(try !backend.image(named: "copy", at: FilePath(clone)).readOnly)
        try Self.writeFile(joinPath(clone, "new"), bytes: 10)
        try Self.writeFile(joinPath(clone, "nested", "new"), bytes: 10)
        #expect(!Self.exists(joinPath(source, "new")))

        let taken = #expect(throws: PoolError.self) { try backend.clone(from: FilePath(source), to: FilePath(clone)) }
        #expect(taken?.code == .imageExists)
    }

    @Test func aSubvolumeWithNoneNestedIsClonedInOneSnapshot() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let source = fs.appending("src"), parent = fs.appending("parent")
        try backend.createEmpty(at: FilePath(source))
        try Self.writeFile(joinPath(source, "data"), bytes: 1 << 20)
        try backend.createEmpty(at: FilePath(parent))
        try backend.createEmpty(at: FilePath(joinPath(parent, "nested")))
        // Nested subvolumes take one snapshot each, which is not atomic: the pool's temp-entry path.
        #expect(!backend.clonesInOneStep(from: FilePath(parent)))
        #expect(!backend.clonesInOneStep(from: FilePath(fs.appending("missing"))))
        #expect(backend.clonesInOneStep(from: FilePath(source)))

        // Read-only from its creation, with the source's contents; the source stays writable.
        let ro = fs.appending("ro")
        try backend.cloneInOneStep(from: FilePath(source), to: FilePath(ro), readOnly: true)
        #expect(Self.isSubvolume(ro))
        #expect(try backend.image(named: "ro", at: FilePath(ro)).readOnly)
        #expect(try fileStatus(joinPath(ro, "data")).size == 1 << 20)
        #expect(try !backend.image(named: "src", at: FilePath(source)).readOnly)
        let refused = #expect(throws: SystemCallError.self) { try Self.writeFile(joinPath(ro, "new"), bytes: 1) }
        #expect(refused?.errno == .EROFS)

        // An existing destination is refused and left as it was.
        let taken = #expect(throws: PoolError.self) { try backend.cloneInOneStep(from: FilePath(source), to: FilePath(parent), readOnly: false) }
        #expect(taken?.code == .imageExists)
        #expect(Self.isSubvolume(joinPath(parent, "nested")) && !Self.exists(joinPath(parent, "data")))
    }

    @Test func cloneToAnotherFilesystemFailsCleanlyWithEXDEV() throws {
        let a = try LoopbackFilesystem(.btrfs), b = try LoopbackFilesystem(.btrfs)
        let ext4 = try LoopbackFilesystem(.ext4, size: 64 << 20)
        try backend.createEmpty(at: FilePath(a.appending("src")))
        try Self.writeFile(a.appending("src/file"), bytes: 4096)

        for target in [b.appending("copy"), ext4.appending("copy")] {
            let error = #expect(throws: PoolError.self) { try backend.clone(from: FilePath(a.appending("src")), to: FilePath(target)) }
            #expect(error?.code == .notSupported)
            #expect(error?.errno == .EXDEV)
            #expect(!Self.exists(target))
        }
    }

    // MARK: - Read-only, rename

    @Test func readOnlyIsEnforcedForRootAndReversible() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let path = fs.appending("img")
        try backend.createEmpty(at: FilePath(path))
        try backend.setReadOnly(true, at: FilePath(path))
        #expect(try backend.image(named: "img", at: FilePath(path)).readOnly)
        #expect(try run(["btrfs", "property", "get", path, "ro"], check: true).stdout.contains("ro=true"))
        let denied = #expect(throws: SystemCallError.self) { try Self.writeFile(joinPath(path, "x"), bytes: 1) }
        #expect(denied?.errno == .EROFS)

        try backend.setReadOnly(false, at: FilePath(path))
        #expect(try !backend.image(named: "img", at: FilePath(path)).readOnly)
        try Self.writeFile(joinPath(path, "x"), bytes: 1)

        // An immutable top directory is read-only too, and writable again lifts it.
        try FileDescriptor.openDirectory(path).setImmutable(true)
        #expect(try backend.image(named: "img", at: FilePath(path)).readOnly)
        try backend.setReadOnly(false, at: FilePath(path))
        #expect(try !backend.image(named: "img", at: FilePath(path)).readOnly)
        try Self.writeFile(joinPath(path, "y"), bytes: 1)
    }

    @Test func limitsCanBeSetOnReadOnlyImages() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let path = fs.appending("img")
        try backend.createEmpty(at: FilePath(path))
        try backend.setReadOnly(true, at: FilePath(path))
        try backend.setLimit(10 << 20, at: FilePath(path))
        let image = try backend.image(named: "img", at: FilePath(path))
        #expect(image.readOnly)
        #expect(image.limit == 10 << 20)
    }

    @Test func renameMovesReadOnlySubvolumesAndRefusesToReplace() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        try backend.createEmpty(at: FilePath(fs.appending("a")))
        try backend.createEmpty(at: FilePath(fs.appending("b")))
        try backend.setReadOnly(true, at: FilePath(fs.appending("a")))

        try backend.rename(from: FilePath(fs.appending("a")), to: FilePath(fs.appending("c")))
        #expect(!Self.exists(fs.appending("a")))
        #expect(try backend.image(named: "c", at: FilePath(fs.appending("c"))).readOnly)

        let taken = #expect(throws: PoolError.self) { try backend.rename(from: FilePath(fs.appending("c")), to: FilePath(fs.appending("b"))) }
        #expect(taken?.code == .imageExists)
        #expect(Self.exists(fs.appending("c")) && Self.isSubvolume(fs.appending("b")))
        let missing = #expect(throws: PoolError.self) { try backend.rename(from: FilePath(fs.appending("zz")), to: FilePath(fs.appending("y"))) }
        #expect(missing?.code == .noSuchImage)
    }

    // MARK: - Remove

    @Test func removeDeletesNestedReadOnlySubvolumesAndTheirQgroups() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let path = fs.appending("img")
        try backend.createEmpty(at: FilePath(path))
        try Self.writeFile(joinPath(path, "data"), bytes: 1 << 20)
        try backend.createEmpty(at: FilePath(joinPath(path, "nested")))
        try backend.createEmpty(at: FilePath(joinPath(path, "nested", "deeper")))
        try Self.writeFile(joinPath(path, "nested", "locked"), bytes: 10)
        try run(["chattr", "+i", joinPath(path, "nested", "locked")], check: true)
        try backend.setReadOnly(true, at: FilePath(joinPath(path, "nested")))
        try backend.setReadOnly(true, at: FilePath(path))
        let ids = try [path, joinPath(path, "nested"), joinPath(path, "nested", "deeper")].map(Self.subvolumeID)
        try backend.setLimit(100 << 20, at: FilePath(fs.appending("img")))  // switches quotas on
        // A subtree qgroup as systemd makes them, holding the image.
        try run(["btrfs", "qgroup", "create", "1/\(ids[0])", fs.mountPoint], check: true)
        try run(["btrfs", "qgroup", "assign", "0/\(ids[0])", "1/\(ids[0])", fs.mountPoint], check: true)
        let before = try Self.qgroups(fs.mountPoint)
        for id in ids { #expect(before["0/\(id)"] != nil) }
        #expect(before["1/\(ids[0])"] != nil)

        try backend.remove(at: FilePath(path))
        #expect(!Self.exists(path))
        let after = try Self.qgroups(fs.mountPoint)
        for id in ids { #expect(after["0/\(id)"] == nil, "qgroup 0/\(id) is left: \(after.keys.sorted())") }
        #expect(after["1/\(ids[0])"] == nil, "subtree qgroup left: \(after.keys.sorted())")
        #expect(try run(["btrfs", "subvolume", "list", fs.mountPoint], check: true).stdout.isEmpty)
    }

    @Test func removeWorksOnAnImageFilledToItsLimit() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let path = fs.appending("img")
        try backend.createEmpty(at: FilePath(path))
        try backend.createEmpty(at: FilePath(joinPath(path, "nested")))
        try backend.setLimit(16 << 20, at: FilePath(path))
        let full = #expect(throws: SystemCallError.self) { try Self.writeFile(joinPath(path, "fill"), bytes: 64 << 20) }
        #expect(full?.errno == .EDQUOT)
        try backend.setReadOnly(true, at: FilePath(path))

        try backend.remove(at: FilePath(path))
        #expect(!Self.exists(path))
        #expect(try run(["btrfs", "subvolume", "list", fs.mountPoint], check: true).stdout.isEmpty)
    }

    @Test func removeWorksWithQuotasOffAndLeavesThemOff() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let path = fs.appending("img")
        try backend.createEmpty(at: FilePath(path))
        try backend.createEmpty(at: FilePath(joinPath(path, "nested")))
        try backend.remove(at: FilePath(path))
        #expect(!Self.exists(path))
        #expect(try !Self.quotasEnabled(fs.mountPoint))
        let missing = #expect(throws: PoolError.self) { try backend.remove(at: FilePath(path)) }
        #expect(missing?.code == .noSuchImage)
    }

    // MARK: - Quotas

    @Test func setLimitSwitchesQuotasOnCountsOldDataAndIsEnforced() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let path = fs.appending("img")
        try backend.createEmpty(at: FilePath(path))
        try Self.writeFile(joinPath(path, "old"), bytes: 8 << 20)  // before quotas exist
        #expect(try backend.image(named: "img", at: FilePath(path)).usage == Image.unknown)
        #expect(try !Self.quotasEnabled(fs.mountPoint))

        try backend.setLimit(32 << 20, at: FilePath(path))
        #expect(try Self.quotasEnabled(fs.mountPoint))
        var image = try backend.image(named: "img", at: FilePath(path))
        #expect(image.limit == 32 << 20)
        #expect(image.limitExclusive == Image.unknown)
        #expect(image.usage >= 8 << 20 && image.usage < 10 << 20, "usage \(image.usage)")
        #expect(image.usageExclusive >= 8 << 20)
        let id = try Self.subvolumeID(path)
        #expect(try Self.qgroups(fs.mountPoint)["0/\(id)"]?.0 == image.usage)

        // Enforced for root: writing well past the limit fails with EDQUOT.
        let over = #expect(throws: SystemCallError.self) { try Self.writeFile(joinPath(path, "new"), bytes: 96 << 20) }
        #expect(over?.errno == .EDQUOT)
        try Self.syncFilesystem(fs.mountPoint)
        image = try backend.image(named: "img", at: FilePath(path))
        #expect(image.usage <= 40 << 20, "usage \(image.usage) far past the 32 MiB limit")

        // UINT64_MAX removes the limit: the same write now succeeds.
        try backend.setLimit(Image.unknown, at: FilePath(path))
        #expect(try backend.image(named: "img", at: FilePath(path)).limit == Image.unknown)
        try Self.writeFile(joinPath(path, "new"), bytes: 96 << 20)
        try Self.syncFilesystem(fs.mountPoint)
        #expect(try backend.image(named: "img", at: FilePath(path)).usage >= 100 << 20)
    }

    @Test func usageOfAFreshImageIsKnownOnceQuotasAreOn() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        try backend.createEmpty(at: FilePath(fs.appending("a")))
        try backend.setLimit(Image.unknown, at: FilePath(fs.appending("a")))  // quotas on, no limit
        try backend.createEmpty(at: FilePath(fs.appending("b")))
        try Self.writeFile(fs.appending("b/f"), bytes: 4 << 20)
        try Self.syncFilesystem(fs.mountPoint)
        let b = try backend.image(named: "b", at: FilePath(fs.appending("b")))
        #expect(b.usage >= 4 << 20 && b.usage < 5 << 20)
        #expect(b.limit == Image.unknown)

        // A snapshot shares everything: referenced like the source, almost nothing exclusive.
        try backend.clone(from: FilePath(fs.appending("b")), to: FilePath(fs.appending("c")))
        try Self.syncFilesystem(fs.mountPoint)
        let c = try backend.image(named: "c", at: FilePath(fs.appending("c")))
        #expect(c.usage >= 4 << 20)
        #expect(c.usageExclusive < 1 << 20)
    }

    // MARK: - Pool

    @Test func poolLimitCoversTheImagesInThePool() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let pool = fs.appending("machines")
        try backend.createEmpty(at: FilePath(pool))
        try makeDirectory(fs.appending("plain"))
        try backend.createEmpty(at: FilePath(joinPath(pool, "a")))
        try Self.writeFile(joinPath(pool, "a", "f"), bytes: 8 << 20)
        try backend.createEmpty(at: FilePath(joinPath(pool, "a", "nested")))
        try Self.writeFile(joinPath(pool, "a", "nested", "f"), bytes: 4096)

        #expect(try backend.poolUsage(of: FilePath(fs.appending("plain"))) == nil)
        let off = try #require(try backend.poolUsage(of: FilePath(pool)))
        #expect(off.usage == Image.unknown && off.limit == Image.unknown)
        #expect(try !Self.quotasEnabled(fs.mountPoint))

        try backend.setPoolLimit(64 << 20, of: FilePath(pool))
        var on = try #require(try backend.poolUsage(of: FilePath(pool)))
        #expect(on.limit == 64 << 20)
        #expect(on.usage >= 8 << 20, "image data written before counts: \(on.usage)")

        // Images made after the limit join the pool's qgroup, by creation and by clone.
        try backend.createEmpty(at: FilePath(joinPath(pool, "b")))
        try backend.clone(from: FilePath(joinPath(pool, "a")), to: FilePath(joinPath(pool, "c")))
        #expect(backend.clonesInOneStep(from: FilePath(joinPath(pool, "b"))))
        try backend.cloneInOneStep(from: FilePath(joinPath(pool, "b")), to: FilePath(joinPath(pool, "d")), readOnly: false)
        let poolID = try Self.subvolumeID(pool)
        #expect(Self.isSubvolume(joinPath(pool, "c", "nested")))
        #expect(try fileStatus(joinPath(pool, "c", "nested", "f")).size == 4096)
        for name in ["a", "b", "c", "d", "a/nested", "c/nested"] {
            let fd = try FileDescriptor.openDirectory(joinPath(pool, name))
            let id = try Self.subvolumeID(joinPath(pool, name))
            #expect(try BtrfsIoctl.parentQgroups(fd, of: BtrfsIoctl.qgroupID(level: 0, id))
                .contains(BtrfsIoctl.qgroupID(level: 1, poolID)), "\(name) is not in the pool qgroup")
        }
        try Self.writeFile(joinPath(pool, "b", "f"), bytes: 8 << 20)
        try Self.syncFilesystem(fs.mountPoint)
        on = try #require(try backend.poolUsage(of: FilePath(pool)))
        #expect(on.usage >= 16 << 20 && on.usage < 20 << 20, "pool usage \(on.usage)")

        // Enforced across images: image b alone cannot take the pool past its limit.
        let over = #expect(throws: SystemCallError.self) { try Self.writeFile(joinPath(pool, "b", "g"), bytes: 128 << 20) }
        #expect(over?.errno == .EDQUOT)

        // Removing an image gives its space back to the pool at once, even from a full pool
        // (where unlinking it needs space the pool limit would refuse).
        try Self.syncFilesystem(fs.mountPoint)
        let full = try #require(try backend.poolUsage(of: FilePath(pool))).usage
        try backend.remove(at: FilePath(joinPath(pool, "b")))
        try Self.syncFilesystem(fs.mountPoint)
        let freed = try #require(try backend.poolUsage(of: FilePath(pool))).usage
        #expect(freed + (8 << 20) <= full, "pool usage \(full) → \(freed) after removing b")

        try backend.setPoolLimit(Image.unknown, of: FilePath(pool))
        #expect(try #require(try backend.poolUsage(of: FilePath(pool))).limit == Image.unknown)
        #expect(throws: PoolError.self) { try backend.setPoolLimit(1 << 30, of: FilePath(fs.appending("plain"))) }
    }

    /// A limit below what is used now is refused, for the pool and for an image, and changes
    /// nothing. A pool or image at or past its limit (an admin's `btrfs qgroup limit`, or data
    /// that grew past it) can always have the limit raised or removed (UInt64.max, as systemd),
    /// after which writes work again: the qgroup ioctls must not need space in the full qgroup.
    @Test func limitsBelowUsageAreRefusedAndFullPoolsCanAlwaysBeRaisedOrFreed() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let pool = fs.appending("machines")
        let image = joinPath(pool, "a")
        try backend.createEmpty(at: FilePath(pool))
        try backend.createEmpty(at: FilePath(image))
        try Self.writeFile(joinPath(image, "f"), bytes: 32 << 20)

        for bytes: UInt64 in [8 << 20, 0] {
            let refused = #expect(throws: PoolError.self) { try backend.setPoolLimit(bytes, of: FilePath(pool)) }
            #expect(refused?.code == .invalidArgument, "pool limit \(bytes): \(String(describing: refused))")
            let refusedImage = #expect(throws: PoolError.self) { try backend.setLimit(bytes, at: FilePath(image)) }
            #expect(refusedImage?.code == .invalidArgument, "image limit \(bytes): \(String(describing: refusedImage))")
        }
        #expect(try #require(try backend.poolUsage(of: FilePath(pool))).limit == Image.unknown)
        #expect(try backend.image(named: "a", at: FilePath(image)).limit == Image.unknown)
        try Self.writeFile(joinPath(image, "g"), bytes: 1 << 20)

        // A pool qgroup over its limit: even a small write fails.
        let poolID = try Self.subvolumeID(pool), imageID = try Self.subvolumeID(image)
        try backend.setPoolLimit(64 << 20, of: FilePath(pool))
        func overLimit(_ qgroup: String) throws {
            try run(["btrfs", "qgroup", "limit", "8M", qgroup, fs.mountPoint], check: true)
            let full = #expect(throws: SystemCallError.self) { try Self.writeFile(joinPath(image, "h"), bytes: 1 << 20) }
            #expect(full?.errno == .EDQUOT)
        }
        try overLimit("1/\(poolID)")
        try backend.setPoolLimit(256 << 20, of: FilePath(pool))
        #expect(try #require(try backend.poolUsage(of: FilePath(pool))).limit == 256 << 20)
        try Self.writeFile(joinPath(image, "h"), bytes: 8 << 20)

        try overLimit("1/\(poolID)")
        try backend.setPoolLimit(Image.unknown, of: FilePath(pool))
        #expect(try #require(try backend.poolUsage(of: FilePath(pool))).limit == Image.unknown)
        try Self.writeFile(joinPath(image, "h"), bytes: 8 << 20)

        // The same for an image's own limit.
        try overLimit("0/\(imageID)")
        try backend.setLimit(128 << 20, at: FilePath(image))
        try Self.writeFile(joinPath(image, "h"), bytes: 8 << 20)
        try overLimit("0/\(imageID)")
        try backend.setLimit(Image.unknown, at: FilePath(image))
        #expect(try backend.image(named: "a", at: FilePath(image)).limit == Image.unknown)
        try Self.writeFile(joinPath(image, "h"), bytes: 8 << 20)
    }

    // MARK: - Inspection

    @Test func inspectionRootIsTheSubvolume() throws {
        let fs = try LoopbackFilesystem(.btrfs)
        let path = fs.appending("img")
        try backend.createEmpty(at: FilePath(path))
        try makeDirectories(joinPath(path, "etc"))
        try Self.writeFile(joinPath(path, "etc", "os-release"), bytes: 5)
        let root = try backend.openForInspection(at: FilePath(path))
        defer { root.close() }
        #expect(try fileStatus(joinPath(root.root.string, "etc", "os-release")).size == 5)
    }
}
