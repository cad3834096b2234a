import Glibc
import Synchronization
import Testing
import TestSupport
@testable import Linux

/// The one-per-job helpers of the Linux module: thread start-up, directory listing, xattrs.
@Suite struct ThreadTests {
    @Test func aWorkerThreadRunsElsewhereAndIsJoinedForItsResult() throws {
        let caller = pthread_self()
        let thread = try WorkerThread { () -> Bool in pthread_equal(pthread_self(), caller) == 0 }
        #expect(try thread.join().get())
        #expect(try thread.join().get(), "joining again returns the same result")
    }

    @Test func aWorkerThreadHandsBackWhatItsBodyThrew() throws {
        let thread = try WorkerThread { () -> Int in throw SystemCallError("test", .EINVAL) }
        let error = #expect(throws: SystemCallError.self) { try thread.join().get() }
        #expect(error?.errno == .EINVAL)
    }

    @Test func runOnNewThreadKeepsTheTypedError() throws {
        let result = try runOnNewThread { () throws(SystemCallError) -> Int in throw SystemCallError("setns", .EPERM) }
        #expect(throws: SystemCallError.self) { try result.get() }
        #expect(try runOnNewThread { () throws(SystemCallError) -> Int in 42 }.get() == 42)
    }

    @Test func aDetachedThreadRunsItsBody() async throws {
        let ran = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            do { try detachThread { c.resume(returning: true) } } catch { c.resume(returning: false) }
        }
        #expect(ran)
    }

    @Test func aJoinableThreadIsTheOneThatRuns() throws {
        let seen = Mutex<pthread_t?>(nil)
        let thread = try startJoinableThread { seen.withLock { $0 = pthread_self() } }
        pthread_join(thread, nil)
        #expect(seen.withLock { $0.map { pthread_equal($0, thread) != 0 } } == true)
    }
}

@Suite struct DirectoryListingTests {
    @Test func listsNamesWithTheirTypesAndNeverDotEntries() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try makeDirectory(dir.appending("sub"))
        FileDescriptor(owning: try sys("creat") { creat(dir.appending("file"), 0o644) }).close()
        try makeSymbolicLink(dir.appending("link"), pointingTo: "sub")
        let fd = try FileDescriptor.openDirectory(dir.path)
        defer { fd.close() }
        let entries = try directoryListing(of: fd).sorted { $0.name < $1.name }
        #expect(entries.map(\.name) == ["file", "link", "sub"])
        // ext4 and tmpfs report d_type; where a filesystem does not, the type is nil, never wrong.
        for (entry, type) in zip(entries, [S_IFREG, S_IFLNK, S_IFDIR]) where entry.fileType != nil {
            #expect(entry.fileType == UInt32(type), "\(entry.name)")
        }
    }

    @Test func theDescriptorStaysUsableAndListsAgainFromTheStart() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        for i in 0..<300 { try makeDirectory(dir.appending("d\(i)")) }
        let fd = try FileDescriptor.openDirectory(dir.path)
        defer { fd.close() }
        let first = try directoryEntries(of: fd)
        #expect(first.count == 300)
        #expect(Set(try directoryEntries(of: fd)) == Set(first))
        #expect(try fileStatus("d7", relativeTo: fd).isDirectory)
        #expect(Set(try directoryEntries(dir.path)) == Set(first))
    }

    @Test func aFileIsNotADirectoryToList() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = FileDescriptor(owning: try sys("creat") { creat(dir.appending("file"), 0o644) })
        defer { file.close() }
        let error = #expect(throws: SystemCallError.self) { try directoryListing(of: file) }
        #expect(error?.call == "fdopendir")
        #expect(error?.errno == .ENOTDIR)
        let byPath = #expect(throws: SystemCallError.self) { try directoryEntries(dir.appending("file")) }
        #expect(byPath?.errno == .ENOTDIR)
    }
}

@Suite struct ExtendedAttributeTests {
    @Test func copiesEveryAttributeOfAFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let a = FileDescriptor(owning: try sys("creat") { creat(dir.appending("a"), 0o644) })
        let b = FileDescriptor(owning: try sys("creat") { creat(dir.appending("b"), 0o644) })
        defer { a.close(); b.close() }
        let big = [UInt8](repeating: 7, count: 3000)
        try setExtendedAttributes([("user.one", Array("1".utf8)), ("user.empty", []), ("user.big", big)], on: .fd(a))
        try copyExtendedAttributes(from: .fd(a), to: .fd(b))
        let copied = Dictionary(uniqueKeysWithValues: try extendedAttributes(of: .fd(b)).map { ($0.name, $0.value) })
        #expect(copied["user.one"] == Array("1".utf8))
        #expect(copied["user.empty"] == [])
        #expect(copied["user.big"] == big)
    }

    @Test func aSymlinkIsReadByPathAndUserAttributesRefusedThereAreSkipped() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try makeSymbolicLink(dir.appending("link"), pointingTo: "nowhere")
        #expect(try extendedAttributes(of: .path(dir.appending("link"))).isEmpty)
        // The kernel refuses user.* on a symlink (EPERM): skipped for a path, as a copy must go on.
        try setExtendedAttributes([("user.x", [1])], on: .path(dir.appending("link")))
        let file = FileDescriptor(owning: try sys("creat") { creat(dir.appending("f"), 0o644) })
        defer { file.close() }
        // A namespace the kernel does not know is "not supported": skipped like a filesystem without xattrs.
        try setExtendedAttributes([("bogus.namespace", [1])], on: .fd(file))
        // A value beyond XATTR_SIZE_MAX is a real failure, named.
        let error = #expect(throws: SystemCallError.self) {
            try setExtendedAttributes([("user.huge", [UInt8](repeating: 1, count: 70_000))], on: .fd(file))
        }
        #expect(error?.call == "fsetxattr")
        #expect(error?.errno == Errno(E2BIG))
        #expect(error?.subject == "user.huge")
    }
}
