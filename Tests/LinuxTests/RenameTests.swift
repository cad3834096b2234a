import Glibc
import Testing
import TestSupport
@testable import Linux

/// renameat2(2): RENAME_NOREPLACE never replaces, RENAME_EXCHANGE swaps two entries whatever they are.
@Suite struct RenameTests {
    private func write(_ path: String, _ text: String) throws {
        let fd = try FileDescriptor.open(path, flags: O_CREAT | O_WRONLY | O_TRUNC, mode: 0o644)
        defer { fd.close() }
        try Array(text.utf8).withUnsafeBytes { try fd.writeAll($0) }
    }

    private func read(_ path: String) throws -> String {
        let fd = try FileDescriptor.open(path, flags: O_RDONLY)
        defer { fd.close() }
        return String(decoding: try fd.readToEnd(), as: UTF8.self)
    }

    @Test func noReplaceRefusesAnExistingTargetAndChangesNothing() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try write(dir.appending("a"), "A")
        try write(dir.appending("b"), "B")
        let error = #expect(throws: SystemCallError.self) { try renameNoReplace(dir.appending("a"), dir.appending("b")) }
        #expect(error?.errno == .EEXIST)
        #expect(error?.call == "renameat2")
        #expect(try read(dir.appending("a")) == "A")
        #expect(try read(dir.appending("b")) == "B")
        try renameNoReplace(dir.appending("a"), dir.appending("c"))
        #expect(try read(dir.appending("c")) == "A")
        #expect(access(dir.appending("a"), F_OK) != 0)
    }

    @Test func noReplaceRelativeToDirectories() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try makeDirectory(dir.appending("x"))
        try makeDirectory(dir.appending("y"))
        try write(dir.appending("x/f"), "F")
        let x = try FileDescriptor.openDirectory(dir.appending("x")), y = try FileDescriptor.openDirectory(dir.appending("y"))
        try renameNoReplace("f", "g", fromDirectory: x, toDirectory: y)
        #expect(try read(dir.appending("y/g")) == "F")
        #expect(try directoryEntries(of: x).isEmpty)
    }

    @Test func exchangeSwapsAFileAndADirectoryAtomically() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try write(dir.appending("file"), "F")
        try makeDirectory(dir.appending("tree"))
        try write(dir.appending("tree/inside"), "I")
        try renameExchange(dir.appending("file"), dir.appending("tree"))
        #expect(try read(dir.appending("tree")) == "F")
        #expect(try read(dir.appending("file/inside")) == "I")
        let d = try FileDescriptor.openDirectory(dir.path)
        try renameExchange("file", in: d, with: "tree", in: d)
        #expect(try read(dir.appending("file")) == "F")
        #expect(try read(dir.appending("tree/inside")) == "I")
    }

    @Test func exchangeNeedsBothEntries() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try write(dir.appending("a"), "A")
        let error = #expect(throws: SystemCallError.self) { try renameExchange(dir.appending("a"), dir.appending("missing")) }
        #expect(error?.errno == .ENOENT)
        #expect(try read(dir.appending("a")) == "A")
    }
}
