import Foundation
import Glibc
import Linux
import PoolAPI
import TestSupport
import Synchronization
import Testing
@testable import Transfer
@testable import TransferJobs

/// A pipe read to its end on a thread of its own, so a test decides when the writer may go on.
private final class Drain: @unchecked Sendable {
    let read: Int32
    let write: Int32
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)

    init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw TestSupportError("pipe") }
        // Not inherited by children of other tests, which would keep the pipe open.
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        read = fds[0]
        write = fds[1]
    }

    /// Reads one chunk (blocking): the writer has started.
    func awaitFirstBytes() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        _ = buffer.withUnsafeMutableBytes { Glibc.read(read, $0.baseAddress, $0.count) }
    }

    /// Reads everything else until the write end is closed.
    func start() {
        let fd = read, done = self.done
        let t = Thread {
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while buffer.withUnsafeMutableBytes({ Glibc.read(fd, $0.baseAddress, $0.count) }) > 0 {}
            done.signal()
        }
        t.start()
        thread = t
    }

    func finish() {
        close(write)
        done.wait()
        close(read)
    }
}

@Suite("an export whose source changes under it fails")
struct ExportChangeTests {
    /// Runs `export` writing into a drain, truncating `file` once the first bytes came out.
    /// Plain threads only: nothing here waits for Swift's cooperative pool, which these
    /// blocking reads occupy.
    private func exportTruncating(_ file: String, _ export: @escaping @Sendable (Int32) throws -> Void) throws -> Result<Void, any Error> {
        let drain = try Drain()
        let output = drain.write
        let result = Mutex<Result<Void, any Error>?>(nil)
        let ended = DispatchSemaphore(value: 0)
        Thread {
            let r = Result { try export(output) }
            result.withLock { $0 = r }
            ended.signal()
        }.start()
        drain.awaitFirstBytes()
        // The writer is stuck on the full pipe with most of the file unread.
        #expect(truncate(file, 4096) == 0)
        drain.start()
        ended.wait()
        drain.finish()
        return result.withLock { $0 } ?? .success(())
    }

    @Test("export-tar of a tree whose big file is truncated mid-export fails, naming the file")
    func tarExportOfATruncatedFileFails() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let tree = tmp.appending("tree")
        _ = try sh("mkdir -p '\(tree)' && head -c 33554432 /dev/urandom > '\(tree)/blob'")
        let result = try exportTruncating(tree + "/blob") { fd in
            try TarExport.run(directory: tree, to: fd, format: .uncompressed)
        }
        switch result {
        case .success: Issue.record("the export of a file truncated under it reported success")
        case .failure(let error): #expect("\(error)".contains("blob"), "\(error)")
        }
    }

    @Test("export-raw of an image truncated mid-export fails")
    func rawExportOfATruncatedImageFails() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let image = tmp.appending("disk.raw")
        _ = try sh("head -c 33554432 /dev/urandom > '\(image)'")
        let result = try exportTruncating(image) { fd in
            try RawExport.run(path: image, to: fd, format: .uncompressed)
        }
        switch result {
        case .success: Issue.record("the export of an image truncated under it reported success")
        case .failure(let error): #expect("\(error)".contains("shrank"), "\(error)")
        }
    }

    @Test("the image an export holds is busy for remove and rename until the export is cancelled, then free")
    func holdEndsWithACancelledExport() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        _ = try sh("mkdir -p '\(setup.poolPath)/img' && head -c 16777216 /dev/urandom > '\(setup.poolPath)/img/blob'")
        // An output no one reads: the export stalls once the pipe is full.
        let output = try StalledPipe()
        defer { output.closeAll() }
        let handle = try await setup.engine.start(.exportTar(local: "img", fd: output.write, format: .uncompressed))
        for op in ["remove", "rename"] {
            do {
                if op == "remove" { try await setup.pool.remove("img") } else { try await setup.pool.rename("img", to: "other") }
                Issue.record("\(op) of an image being exported was accepted")
            } catch let e as PoolError {
                #expect(e.code == .busy, "\(op): \(e)")
            }
        }
        handle.cancel()
        #expect(await handle.wait() == .canceled)
        try await setup.pool.rename("img", to: "other")
        try await setup.pool.remove("other")
        #expect(try setup.poolEntries().filter { !$0.hasSuffix(".lck") } == [])
    }
}
