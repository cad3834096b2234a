import BackendConformance
import DirectoryBackend
import FileTree
import Foundation
import Glibc
import Linux
import PoolAPI
import Synchronization
import TestSupport
import Testing
import struct SystemPackage.FilePath

private func chattr(_ flags: String, _ path: String) throws {
    try run(["chattr", flags, path], check: true)
}

@Suite(.serialized, .requires(.loopFilesystems))
struct DirectoryBackendTests {
    @Test func treeCopyReflinksOnBtrfsCopiesSparselyOnExt4AndIsFaithfulOnBoth() throws {
        for kind in LoopbackFilesystem.Kind.allCases {
            let fs = try LoopbackFilesystem(kind)
            defer { fs.remove() }
            try makeDirectory(fs.appending("src"))
            try Fixture.fillTree(at: fs.appending("src"))
            let before = try TreeSnapshot(of: fs.appending("src"))
            let stats = try TreeCopy.copy(from: FilePath(fs.appending("src")), to: FilePath(fs.appending("dst")))
            let diff = try TreeSnapshot(of: fs.appending("dst")).differences(from: before)
            #expect(diff.isEmpty, "\(kind): \(diff)")
            #expect(stats.hardlinks == 1 && stats.specialFiles == 4 && stats.symlinks == 3)
            if kind == .btrfs {
                #expect(stats.reflinkedFiles == stats.files, "every file is reflinked on btrfs")
            } else {
                #expect(stats.reflinkedFiles == 0)
                let sparse = try fileStatus(fs.appending("dst/sparse"))
                #expect(sparse.allocatedBytes < 1 << 20, "ext4 copy of the sparse file allocated \(sparse.allocatedBytes)")
            }
        }
    }

    @Test func treeCopyAndRemovalHandleTreesDeeperThanPathMax() throws {
        let fs = try LoopbackFilesystem(.ext4)
        defer { fs.remove() }
        try makeDirectory(fs.appending("deep"))
        var dir = try FileDescriptor.openDirectory(fs.appending("deep"))
        let name = String(repeating: "d", count: 200)
        for _ in 0..<300 {  // 300 × 201 bytes: far beyond PATH_MAX (4096), and deeper than the open levels
            try makeDirectory(name, relativeTo: dir)
            dir = try FileDescriptor.openDirectory(name, relativeTo: dir, followSymlinks: false)
        }
        let leaf = try FileDescriptor.open("leaf", flags: O_WRONLY | O_CREAT, relativeTo: dir)
        try Array("bottom".utf8).withUnsafeBytes { try leaf.writeAll($0) }
        let stats = try TreeCopy.copy(from: FilePath(fs.appending("deep")), to: FilePath(fs.appending("copy")))
        #expect(stats.directories == 300 && stats.files == 1)
        let usage = try DiskUsage.allocatedBytes(of: FilePath(fs.appending("copy")))
        #expect(usage >= 300 * 4096, "every level's directory block is counted: \(usage)")
        try TreeRemoval.remove(at: FilePath(fs.appending("copy")))
        try TreeRemoval.remove(at: FilePath(fs.appending("deep")))
        #expect(try directoryEntries(fs.mountPoint).filter { $0 != "lost+found" }.isEmpty)
    }

    /// A usage scan and a copy read the tree without touching it: directory access times stay
    /// as they were (relatime would move an access time two days old on the first listing).
    @Test func usageScansAndCopiesLeaveAccessTimesAlone() throws {
        let fs = try LoopbackFilesystem(.ext4)
        defer { fs.remove() }
        let top = fs.appending("img")
        try makeDirectories(top + "/etc/sub")
        try Data("x".utf8).write(to: URL(fileURLWithPath: top + "/etc/hostname"))
        let old = timespec(tv_sec: time(nil) - 2 * 86_400, tv_nsec: 0)
        for dir in [top, top + "/etc", top + "/etc/sub"] {
            var times = [old, old]
            #expect(utimensat(AT_FDCWD, dir, &times, 0) == 0)
        }
        _ = try DiskUsage.allocatedBytes(of: FilePath(top))
        try TreeCopy.copy(from: FilePath(top), to: FilePath(fs.appending("copy")))
        for dir in [top, top + "/etc", top + "/etc/sub"] {
            #expect(try fileStatus(dir).accessTime.tv_sec == old.tv_sec, "\(dir) was read with its access time moved")
        }
    }

    /// The destination inside the source (the host's root cloned into a pool on its own
    /// filesystem, an import of the pool's parent): the copy ends, holding no trace of itself.
    /// Bounded: the copy is cancelled after far more entries than the tree has, so a copy that
    /// walks into itself fails with ECANCELED instead of growing until it is killed.
    @Test func treeCopyIntoAFolderInsideItsSourceLeavesTheDestinationOut() throws {
        let t = try TemporaryDirectory()
        defer { t.remove() }
        let src = t.appending("src")
        try makeDirectories(src + "/etc")
        try makeDirectories(src + "/var/lib/machines/other/etc")
        try Data("host\n".utf8).write(to: URL(fileURLWithPath: src + "/etc/hostname"))
        try Data("img\n".utf8).write(to: URL(fileURLWithPath: src + "/var/lib/machines/other/etc/hostname"))
        let dest = src + "/var/lib/machines/.#copy0123456789abcdef"
        try makeDirectory(dest, mode: 0o700)
        let entries = Atomic<Int>(0)
        let options = TreeCopy.Options(isCancelled: { entries.add(1, ordering: .relaxed).newValue > 10_000 })
        let stats = try TreeCopy.copyContents(of: try TreeCopy.openSource(FilePath(src)),
                                              into: try FileDescriptor.openDirectory(dest), options: options)
        #expect(stats.files == 2 && stats.directories == 6, "\(stats)")
        #expect(try String(contentsOfFile: dest + "/etc/hostname", encoding: .utf8) == "host\n")
        #expect(try String(contentsOfFile: dest + "/var/lib/machines/other/etc/hostname", encoding: .utf8) == "img\n")
        #expect(try directoryEntries(dest + "/var/lib/machines") == ["other"], "the copy holds itself")

        // What the caller names is copied as an empty folder, as a mount point is.
        let pool = TreeCopy.DirectoryIdentity(try fileStatus(src + "/var/lib/machines"))
        try makeDirectory(t.appending("dst"), mode: 0o700)
        try TreeCopy.copyContents(of: try TreeCopy.openSource(FilePath(src)), into: try FileDescriptor.openDirectory(t.appending("dst")),
                                  options: TreeCopy.Options(leftEmpty: [pool]))
        #expect(try directoryEntries(t.appending("dst/var/lib/machines")).isEmpty)
        #expect(try String(contentsOfFile: t.appending("dst/etc/hostname"), encoding: .utf8) == "host\n")
    }

    @Test func treeCopyNeverFollowsSymlinksOfTheSource() throws {
        let t = try TemporaryDirectory()
        defer { t.remove() }
        try FileManager.default.createDirectory(atPath: t.appending("src"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: t.appending("src/etc"), withDestinationPath: "/etc")
        try TreeCopy.copy(from: FilePath(t.appending("src")), to: FilePath(t.appending("dst")))
        #expect(try readLink(t.appending("dst/etc")) == "/etc")
        #expect(try fileStatus(t.appending("dst/etc"), followSymlinks: false).isSymlink)
    }

    @Test func readOnlyIsTheImmutableFlagEnforcedAgainstRootAndSurvivesRename() async throws {
        let fs = try LoopbackFilesystem(.ext4)
        defer { fs.remove() }
        let backend = DirectoryBackend()
        try makeDirectories(fs.appending("pool"))
        try backend.createEmpty(at: FilePath(fs.appending("pool/img")))
        try backend.setReadOnly(true, at: FilePath(fs.appending("pool/img")))
        #expect(try backend.image(named: "img", at: FilePath(fs.appending("pool/img"))).readOnly)
        #expect(open(fs.appending("pool/img/new"), O_WRONLY | O_CREAT, 0o644) == -1 && errno == EPERM)
        try backend.rename(from: FilePath(fs.appending("pool/img")), to: FilePath(fs.appending("pool/moved")))
        #expect(try FileDescriptor.openDirectory(fs.appending("pool/moved")).isImmutable())
        try backend.setReadOnly(false, at: FilePath(fs.appending("pool/moved")))
        #expect(try !backend.image(named: "moved", at: FilePath(fs.appending("pool/moved"))).readOnly)
    }

    @Test func removeLiftsImmutableAndAppendOnlyFlagsEverywhere() throws {
        let fs = try LoopbackFilesystem(.ext4)
        defer { fs.remove() }
        let img = fs.appending("img")
        try makeDirectories(img + "/a/b")
        #expect(FileManager.default.createFile(atPath: img + "/a/b/locked", contents: Data("x".utf8)))
        #expect(FileManager.default.createFile(atPath: img + "/a/appending", contents: Data("x".utf8)))
        try chattr("+i", img + "/a/b/locked")
        try chattr("+i", img + "/a/b")
        try chattr("+a", img + "/a/appending")
        try chattr("+i", img)
        try DirectoryBackend().remove(at: FilePath(img))
        #expect((try? fileStatus(img)) == nil)
    }

    @Test func usageIsComputedInTheBackgroundCountingHardlinksOnce() async throws {
        let fs = try LoopbackFilesystem(.ext4)
        defer { fs.remove() }
        let img = fs.appending("img")
        try makeDirectories(img)
        let data = Data(repeating: 0x61, count: 4 << 20)
        try data.write(to: URL(fileURLWithPath: img + "/big"))
        try FileManager.default.linkItem(atPath: img + "/big", toPath: img + "/big-again")
        let backend = DirectoryBackend()
        let first = try backend.image(named: "img", at: FilePath(img))
        #expect(first.usage == Image.unknown, "the first look never waits for a scan")
        var usage = Image.unknown
        for _ in 0..<400 where usage == Image.unknown {
            try await Task.sleep(for: .milliseconds(50))
            usage = try backend.image(named: "img", at: FilePath(img)).usage
        }
        #expect(usage >= 4 << 20 && usage < 6 << 20, "usage \(usage) must count the 4 MiB inode once")
    }
}
