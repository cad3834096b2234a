import Glibc
import Testing
import TestSupport
@testable import Linux

/// openat2(2)'s RESOLVE_* constraints, as image inspection and BindMountMachine rely on them: a
/// path inside an image never reaches outside it.
@Suite struct Openat2Tests {
    /// root/{sub/file, up -> ../secret, abs -> /secret, link -> sub/file, secret} and dir/secret outside.
    private func makeTree() throws -> (TemporaryDirectory, root: FileDescriptor) {
        let dir = try TemporaryDirectory()
        for (path, text) in [("secret", "outside"), ("root/secret", "inside"), ("root/sub/file", "file")] {
            try makeDirectories(dir.appending((path as String).split(separator: "/").dropLast().joined(separator: "/")))
            let fd = try FileDescriptor.open(dir.appending(path), flags: O_CREAT | O_WRONLY, mode: 0o644)
            try Array(text.utf8).withUnsafeBytes { try fd.writeAll($0) }
            fd.close()
        }
        try makeSymbolicLink(dir.appending("root/up"), pointingTo: "../secret")
        try makeSymbolicLink(dir.appending("root/abs"), pointingTo: "/secret")
        try makeSymbolicLink(dir.appending("root/link"), pointingTo: "sub/file")
        return (dir, try FileDescriptor.openDirectory(dir.appending("root")))
    }

    private func text(_ fd: FileDescriptor) throws -> String { String(decoding: try fd.readToEnd(), as: UTF8.self) }

    @Test func beneathRefusesEverythingThatLeavesTheDirectory() throws {
        let (dir, root) = try makeTree()
        defer { dir.remove() }
        #expect(try text(FileDescriptor.open("sub/file", flags: O_RDONLY, relativeTo: root, resolve: .beneath)) == "file")
        for path in ["../secret", "up", "abs", "/secret", "sub/../../secret"] {
            let error = #expect(throws: SystemCallError.self, "\(path)") {
                try FileDescriptor.open(path, flags: O_RDONLY, relativeTo: root, resolve: .beneath)
            }
            #expect(error?.errno == .EXDEV, "\(path)")
            #expect(error?.call == "openat2")
        }
    }

    @Test func inRootTreatsTheDirectoryAsSlash() throws {
        let (dir, root) = try makeTree()
        defer { dir.remove() }
        // Absolute links, absolute paths and `..` above the top all stay in the image.
        for path in ["abs", "/secret", "../secret", "up", "sub/../../../secret"] {
            #expect(try text(FileDescriptor.open(path, flags: O_RDONLY, relativeTo: root, resolve: .inRoot)) == "inside", "\(path)")
        }
    }

    @Test func noSymlinksRefusesAnyLinkOnTheWay() throws {
        let (dir, root) = try makeTree()
        defer { dir.remove() }
        let error = #expect(throws: SystemCallError.self) {
            try FileDescriptor.open("link", flags: O_RDONLY, relativeTo: root, resolve: [.inRoot, .noSymlinks])
        }
        #expect(error?.errno == .ELOOP)
        #expect(try text(FileDescriptor.open("sub/file", flags: O_RDONLY, relativeTo: root, resolve: .noSymlinks)) == "file")
    }

    @Test func noMagicLinksRefusesProcFdLinks() throws {
        let (dir, root) = try makeTree()
        defer { dir.remove() }
        let proc = try FileDescriptor.openDirectory("/proc/self/fd")
        let error = #expect(throws: SystemCallError.self) {
            try FileDescriptor.open(String(root.rawValue), flags: O_RDONLY, relativeTo: proc, resolve: .noMagicLinks)
        }
        #expect(error?.errno == .ELOOP)
    }

    @Test func createsBeneathWithTheModeAsked() throws {
        let (dir, root) = try makeTree()
        defer { dir.remove() }
        let fd = try FileDescriptor.open("sub/new", flags: O_CREAT | O_EXCL | O_WRONLY, mode: 0o640, relativeTo: root, resolve: .beneath)
        #expect(try fd.stat().mode & 0o777 == 0o640 & ~UInt32(umask(umask(0))))
    }
}
