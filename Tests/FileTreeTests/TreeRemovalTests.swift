import Glibc
import Testing
import struct SystemPackage.FilePath
import TestSupport
@testable import FileTree
import Linux

/// TreeRemoval on real trees: everything goes, whatever its modes and inode flags; nothing
/// outside the tree is touched, through a symlink or a mount.
@Suite(.requires(.root, .commands("chattr")))
struct TreeRemovalTests {
    /// tree/{ro/ (0500) {file (0400)}, deep/a/b/c/file, link -> outside}
    private func makeTree(_ dir: TemporaryDirectory) throws -> String {
        let tree = dir.appending("tree")
        try makeDirectories(tree + "/ro")
        try makeDirectories(tree + "/deep/a/b/c")
        try Files.write(tree + "/ro/file", "r", mode: 0o400)
        try Files.write(tree + "/deep/a/b/c/file", "d")
        try sys("chmod") { chmod(tree + "/ro", 0o500) }
        try makeDirectory(dir.appending("outside"))
        try Files.write(dir.appending("outside/keep"), "keep")
        try makeSymbolicLink(tree + "/link", pointingTo: dir.appending("outside"))
        return tree
    }

    @Test func readOnlyModesDoNotStopRemovalAndSymlinkTargetsStay() throws {
        try withTemporaryDirectory { dir in
            let tree = try makeTree(dir)
            try TreeRemoval.remove(at: FilePath(tree))
            #expect(access(tree, F_OK) != 0)
            #expect(try Files.read(dir.appending("outside/keep")) == Array("keep".utf8))
        }
    }

    @Test func immutableAndAppendOnlyInodesAreLiftedEverywhere() throws {
        try withTemporaryDirectory { dir in
            let tree = try makeTree(dir)
            try Files.write(tree + "/deep/a/append", "log")
            try Files.chattr("+a", tree + "/deep/a/append")
            try Files.chattr("+i", tree + "/deep/a/b/c/file")
            try Files.chattr("+i", tree + "/deep/a/b")
            try Files.chattr("+i", tree)
            // Even root cannot remove them as they are.
            #expect(unlink(tree + "/deep/a/b/c/file") != 0)
            try TreeRemoval.remove(at: FilePath(tree))
            #expect(access(tree, F_OK) != 0)
        }
    }

    @Test func removingASymlinkRemovesOnlyTheLink() throws {
        try withTemporaryDirectory { dir in
            let tree = try makeTree(dir)
            try TreeRemoval.remove(at: FilePath(tree + "/link"))
            #expect(access(tree + "/link", F_OK) != 0)
            #expect(try Files.read(dir.appending("outside/keep")) == Array("keep".utf8))
            // A symlink to a directory, given as the thing to remove, is not followed either.
            try makeSymbolicLink(dir.appending("image"), pointingTo: tree)
            try TreeRemoval.remove(at: FilePath(dir.appending("image")))
            #expect(try Files.status(tree).isDirectory)
        }
    }

    @Test func aMissingPathIsAlreadyRemoved() throws {
        try withTemporaryDirectory { dir in
            try TreeRemoval.remove(at: FilePath(dir.appending("never-was")))
            let parent = try FileDescriptor.openDirectory(dir.path)
            try TreeRemoval.remove("never-was", in: parent)
        }
    }

    @Test func aMountInsideTheTreeIsRefusedAndLeftAlone() throws {
        try withTemporaryDirectory { dir in
            let tree = try makeTree(dir)
            try makeDirectory(tree + "/mnt")
            try mountFilesystem("tmpfs", at: tree + "/mnt", type: "tmpfs", flags: [], options: "size=1m")
            defer { _ = unmountOrDetach(tree + "/mnt") }
            try Files.write(tree + "/mnt/mounted", "m")
            let error = #expect(throws: SystemCallError.self) { try TreeRemoval.remove(at: FilePath(tree)) }
            #expect(error?.errno == .EBUSY)
            #expect(try Files.read(tree + "/mnt/mounted") == Array("m".utf8))
        }
    }

    @Test func diskUsageCountsAHardlinkedFileOnce() throws {
        try withTemporaryDirectory { dir in
            let tree = dir.appending("tree")
            try makeDirectory(tree)
            try Files.write(tree + "/big", [UInt8](repeating: 1, count: 1 << 20))
            let alone = try DiskUsage.allocatedBytes(of: FilePath(tree))
            try sys("link") { link(tree + "/big", tree + "/again") }
            #expect(try DiskUsage.allocatedBytes(of: FilePath(tree)) == alone)
            #expect(alone >= 1 << 20)
        }
    }
}
