import Glibc
import Testing
import struct SystemPackage.FilePath
import TestSupport
@testable import FileTree
import Linux

/// TreeCopy on real files: what a clone of a directory image must keep.
// Root: files of other owners, trusted.* xattrs, device nodes, setuid bits.
@Suite(.requires(.root, .commands("setfacl", "getfacl", "setcap", "getcap")))
struct TreeCopyTests {
    /// makedev(1, 3): /dev/null's device number.
    static let devNull: dev_t = 0x103

    @Test func ownershipModesAndTimesAreKeptForEveryKindOfEntry() throws {
        try withTemporaryDirectory { dir in
            let src = dir.appending("src")
            try makeDirectory(src)
            try makeDirectory(src + "/sticky", mode: 0o1777)
            try Files.write(src + "/setuid", "#!/bin/sh\n", mode: 0o4755)
            try Files.write(src + "/secret", "s", mode: 0o600)
            try sys("mkfifo") { mkfifo(src + "/fifo", 0o640) }
            try sys("mknod") { mknod(src + "/null", S_IFCHR | 0o666, Self.devNull) }
            try makeSymbolicLink(src + "/link", pointingTo: "secret")
            try sys("chown") { chown(src + "/secret", 1234, 5678) }
            try sys("chown") { chown(src + "/sticky", 4321, 8765) }
            try sys("lchown") { lchown(src + "/link", 1111, 2222) }
            // chown cleared setuid: set it again, as an image would have it.
            try sys("chmod") { chmod(src + "/setuid", 0o4755) }
            var old = [timespec(tv_sec: 1_000_000_000, tv_nsec: 123_456_789), timespec(tv_sec: 1_100_000_000, tv_nsec: 987_654_321)]
            try sys("utimensat") { utimensat(AT_FDCWD, src + "/secret", &old, 0) }
            try sys("utimensat") { utimensat(AT_FDCWD, src + "/sticky", &old, 0) }

            let stats = try TreeCopy.copy(from: FilePath(src), to: FilePath(dir.appending("dst")), options: .init(allowReflink: false))
            #expect(stats.files == 2)
            #expect(stats.symlinks == 1)
            #expect(stats.specialFiles == 2)
            for name in ["sticky", "setuid", "secret", "fifo", "null", "link"] {
                let a = try Files.status(src + "/" + name), b = try Files.status(dir.appending("dst/") + name)
                #expect(a.mode == b.mode, "\(name): mode \(String(a.mode, radix: 8)) → \(String(b.mode, radix: 8))")
                #expect(a.uid == b.uid && a.gid == b.gid, "\(name): owner")
                if name != "link" {
                    #expect(a.modificationTime.tv_sec == b.modificationTime.tv_sec
                            && a.modificationTime.tv_nsec == b.modificationTime.tv_nsec, "\(name): mtime")
                }
            }
            #expect(try Files.status(dir.appending("dst/null")).rdev == UInt64(Self.devNull))
            #expect(try readLink(dir.appending("dst/link")) == "secret")
        }
    }

    @Test func extendedAttributesAndACLsAreCopied() throws {
        try withTemporaryDirectory { dir in
            let src = dir.appending("src")
            try makeDirectory(src)
            try Files.write(src + "/file", "x")
            try makeDirectory(src + "/sub")
            let file = try FileDescriptor.open(src + "/file", flags: O_RDONLY)
            defer { file.close() }
            try setExtendedAttributes([("user.note", Array("hello".utf8)), ("trusted.overlay.opaque", Array("y".utf8))], on: .fd(file))
            try run(["setfacl", "-m", "u:1234:r", src + "/file"], check: true)
            try run(["setfacl", "-d", "-m", "g:99:rx", src + "/sub"], check: true)
            try TreeCopy.copy(from: FilePath(src), to: FilePath(dir.appending("dst")))
            let copied = try FileDescriptor.open(dir.appending("dst/file"), flags: O_RDONLY)
            defer { copied.close() }
            let attrs = Dictionary(uniqueKeysWithValues: try extendedAttributes(of: .fd(copied)).map { ($0.name, $0.value) })
            #expect(attrs["user.note"] == Array("hello".utf8))
            #expect(attrs["trusted.overlay.opaque"] == Array("y".utf8))
            #expect(attrs["system.posix_acl_access"] != nil)
            let acl = try run(["getfacl", "-cp", dir.appending("dst/file")], check: true).stdout
            #expect(acl.contains("user:1234:r--"))
            let defaults = try run(["getfacl", "-cpd", dir.appending("dst/sub")], check: true).stdout
            #expect(defaults.contains("group:99:r-x"))
        }
    }

    @Test func fileCapabilitiesSurviveTheChownOfTheCopy() throws {
        try withTemporaryDirectory { dir in
            let src = dir.appending("src")
            try makeDirectory(src)
            try Files.write(src + "/ping", "#!/bin/sh\n", mode: 0o755)
            try run(["setcap", "cap_net_raw+ep", src + "/ping"], check: true)
            try TreeCopy.copy(from: FilePath(src), to: FilePath(dir.appending("dst")))
            let caps = try run(["getcap", dir.appending("dst/ping")], check: true).stdout
            #expect(caps.contains("cap_net_raw"))
        }
    }

    @Test func hardlinksStayOneInode() throws {
        try withTemporaryDirectory { dir in
            let src = dir.appending("src")
            try makeDirectories(src + "/a/b")
            try Files.write(src + "/one", "same")
            try sys("link") { link(src + "/one", src + "/a/b/two") }
            try sys("link") { link(src + "/one", src + "/a/three") }
            let stats = try TreeCopy.copy(from: FilePath(src), to: FilePath(dir.appending("dst")), options: .init(allowReflink: false))
            #expect(stats.hardlinks == 2)
            #expect(stats.files == 1)
            let one = try Files.status(dir.appending("dst/one")), two = try Files.status(dir.appending("dst/a/b/two"))
            #expect(one.inode == two.inode)
            #expect(one.linkCount == 3)
            #expect(one.inode != (try Files.status(src + "/one")).inode)
        }
    }

    @Test func sparseFilesStaySparse() throws {
        try withTemporaryDirectory { dir in
            let src = dir.appending("src")
            try makeDirectory(src)
            let block = [UInt8](repeating: 0xA5, count: 4096)
            try Files.sparse(src + "/disk", size: 256 << 20, data: block, at: [0, 100 << 20, (256 << 20) - 4096])
            try TreeCopy.copy(from: FilePath(src), to: FilePath(dir.appending("dst")), options: .init(allowReflink: false))
            let copy = try Files.status(dir.appending("dst/disk"))
            #expect(copy.size == 256 << 20)
            #expect(copy.allocatedBytes < 1 << 20, "allocated \(copy.allocatedBytes) bytes for 12 KiB of data")
            let fd = try FileDescriptor.open(dir.appending("dst/disk"), flags: O_RDONLY)
            defer { fd.close() }
            var back = [UInt8](repeating: 0, count: 4096)
            for offset: Int64 in [0, 100 << 20, (256 << 20) - 4096] {
                _ = try back.withUnsafeMutableBytes { try fd.read(into: $0, at: offset) }
                #expect(back == block)
            }
            _ = try back.withUnsafeMutableBytes { try fd.read(into: $0, at: 50 << 20) }
            #expect(back.allSatisfy { $0 == 0 })
        }
    }

    @Test func symlinksAreCopiedVerbatimAndNeverFollowed() throws {
        try withTemporaryDirectory { dir in
            let src = dir.appending("src"), outside = dir.appending("outside")
            try makeDirectory(src)
            try makeDirectory(outside)
            try Files.write(outside + "/private", "not for the copy")
            try makeSymbolicLink(src + "/abs", pointingTo: outside)
            try makeSymbolicLink(src + "/rel", pointingTo: "../outside/private")
            try makeSymbolicLink(src + "/dangling", pointingTo: "/nonexistent")
            try TreeCopy.copy(from: FilePath(src), to: FilePath(dir.appending("dst")))
            #expect(try readLink(dir.appending("dst/abs")) == outside)
            #expect(try readLink(dir.appending("dst/rel")) == "../outside/private")
            #expect(try readLink(dir.appending("dst/dangling")) == "/nonexistent")
            #expect(Set(try directoryEntries(dir.appending("dst"))) == ["abs", "rel", "dangling"])
            #expect(try Files.status(dir.appending("dst/abs")).isSymlink)
        }
    }

    @Test func aTopLevelSymlinkIsFollowedButNothingBelowIt() throws {
        try withTemporaryDirectory { dir in
            try makeDirectories(dir.appending("real/inner"))
            try Files.write(dir.appending("real/inner/f"), "f")
            try makeSymbolicLink(dir.appending("image"), pointingTo: "real")
            try TreeCopy.copy(from: FilePath(dir.appending("image")), to: FilePath(dir.appending("dst")))
            #expect(try Files.read(dir.appending("dst/inner/f")) == Array("f".utf8))
            #expect(try Files.status(dir.appending("dst")).isDirectory)
        }
    }

    @Test func anExistingDestinationIsRefused() throws {
        try withTemporaryDirectory { dir in
            try makeDirectory(dir.appending("src"))
            try makeDirectory(dir.appending("dst"))
            let error = #expect(throws: SystemCallError.self) { try TreeCopy.copy(from: FilePath(dir.appending("src")), to: FilePath(dir.appending("dst"))) }
            #expect(error?.errno == .EEXIST)
        }
    }

    @Test func ownershipCanBeMappedOnTheWay() throws {
        try withTemporaryDirectory { dir in
            let src = dir.appending("src")
            try makeDirectory(src)
            try Files.write(src + "/f", "f")
            try sys("chown") { chown(src + "/f", 1000, 1000) }
            let options = TreeCopy.Options(ownership: { uid, gid in (uid + 100_000, gid + 100_000) })
            try TreeCopy.copy(from: FilePath(src), to: FilePath(dir.appending("dst")), options: options)
            let st = try Files.status(dir.appending("dst/f"))
            #expect(st.uid == 101_000 && st.gid == 101_000)
        }
    }

    @Test func aCancelledCopyStopsWithECANCELED() throws {
        try withTemporaryDirectory { dir in
            let src = dir.appending("src")
            try makeDirectory(src)
            for i in 0..<20 { try Files.write(src + "/f\(i)", "x") }
            let error = #expect(throws: SystemCallError.self) {
                try TreeCopy.copy(from: FilePath(src), to: FilePath(dir.appending("dst")), options: .init(isCancelled: { true }))
            }
            #expect(error?.errno == .ECANCELED)
        }
    }
}

/// FileCopy: one regular file's contents, never denser than the source.
@Suite struct FileCopyTests {
    @Test func aSparseCopyCopiesOnlyTheDataExtents() throws {
        try withTemporaryDirectory { dir in
            let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            try Files.sparse(dir.appending("src"), size: 64 << 20, data: data, at: [4096, 32 << 20])
            let src = try FileDescriptor.open(dir.appending("src"), flags: O_RDONLY)
            let dst = try FileDescriptor.open(dir.appending("dst"), flags: O_CREAT | O_EXCL | O_WRONLY, mode: 0o600)
            defer { src.close(); dst.close() }
            #expect(try FileCopy.copyContents(from: src, to: dst, allowReflink: false) == .sparseCopy)
            let st = try dst.stat()
            #expect(st.size == 64 << 20)
            #expect(st.allocatedBytes < 1 << 20)
            #expect(try Files.read(dir.appending("dst")) == (try Files.read(dir.appending("src"))))
        }
    }

    @Test func aFileWithATrailingHoleKeepsItsSize() throws {
        try withTemporaryDirectory { dir in
            try Files.sparse(dir.appending("src"), size: 10 << 20, data: [1, 2, 3], at: [0])
            let src = try FileDescriptor.open(dir.appending("src"), flags: O_RDONLY)
            let dst = try FileDescriptor.open(dir.appending("dst"), flags: O_CREAT | O_EXCL | O_WRONLY, mode: 0o600)
            defer { src.close(); dst.close() }
            try FileCopy.copyContents(from: src, to: dst)
            #expect(try dst.stat().size == 10 << 20)
            #expect(try Files.read(dir.appending("dst")).prefix(4) == [1, 2, 3, 0])
        }
    }

    @Test func anEmptyFileCopiesToAnEmptyFile() throws {
        try withTemporaryDirectory { dir in
            try Files.write(dir.appending("src"), [])
            let src = try FileDescriptor.open(dir.appending("src"), flags: O_RDONLY)
            let dst = try FileDescriptor.open(dir.appending("dst"), flags: O_CREAT | O_EXCL | O_WRONLY, mode: 0o600)
            defer { src.close(); dst.close() }
            try FileCopy.copyContents(from: src, to: dst)
            #expect(try dst.stat().size == 0)
        }
    }
}

/// SparseWriter: zero blocks become holes, data lands where the stream says.
@Suite struct SparseWriterTests {
    @Test func zeroBlocksAreHolesAndTheFileEndsWhereTheStreamDid() throws {
        try withTemporaryDirectory { dir in
            let fd = try FileDescriptor.open(dir.appending("out"), flags: O_CREAT | O_EXCL | O_RDWR, mode: 0o600)
            defer { fd.close() }
            let writer = SparseWriter(fd: fd.rawValue)
            var stream = [UInt8](repeating: 0, count: 1 << 20)
            stream[0] = 1                      // first block: data
            stream[(512 << 10) + 100] = 2      // a block in the middle
            try stream.withUnsafeBytes { try writer.write($0) }
            writer.advance(by: 8 << 20)        // a hole the source already knew
            try [UInt8](repeating: 0, count: 1 << 20).withUnsafeBytes { try writer.write($0) }  // trailing zeros
            try writer.finish()
            let st = try fd.stat()
            #expect(st.size == 10 << 20)
            #expect(st.allocatedBytes <= 64 << 10, "two data blocks, allocated \(st.allocatedBytes)")
            let back = try Files.read(dir.appending("out"))
            #expect(back.count == 10 << 20)
            #expect(back[0] == 1 && back[(512 << 10) + 100] == 2)
            #expect(back.filter { $0 != 0 }.count == 2)
        }
    }

    @Test func writesAtAnOffsetKeepWhatIsAroundThem() throws {
        try withTemporaryDirectory { dir in
            let fd = try FileDescriptor.open(dir.appending("out"), flags: O_CREAT | O_EXCL | O_RDWR, mode: 0o600)
            defer { fd.close() }
            try fd.truncate(to: 1 << 20)
            let data = [UInt8](repeating: 9, count: 6000)  // a block and a partial one
            try data.withUnsafeBytes { try SparseWriter.write($0, to: fd.rawValue, at: 8192 + 10) }
            let back = try Files.read(dir.appending("out"))
            #expect(Array(back[(8192 + 10)..<(8192 + 6010)]) == data)
            #expect(back[8191 + 10] == 0 && back[8192 + 6010] == 0)
            #expect(SparseWriter.isZero(UnsafeRawBufferPointer(start: nil, count: 0)))
            #expect([UInt8](repeating: 0, count: 4095).withUnsafeBytes { SparseWriter.isZero($0) })
            #expect(!([0, 0, 0, 0, 0, 0, 0, 0, 0, 1] as [UInt8]).withUnsafeBytes { SparseWriter.isZero($0) })
        }
    }
}
