import Foundation
import Glibc
import Linux
import Synchronization
import TestSupport
import Testing
@testable import Transfer
@testable import TransferJobs

/// Runs `body` on a thread of its own and waits at most `seconds` for it; nil if it did not
/// finish by then (a hang is a failure, not a timing: the limit is far above any real run).
private func finishes<T: Sendable>(within seconds: Double, _ body: @escaping @Sendable () -> T) -> T? {
    let box = Mutex<T?>(nil)
    let thread = Thread { box.withLock { $0 = body() } }
    thread.start()
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if let value = box.withLock({ $0 }) { return value }
        usleep(10_000)
    }
    return nil
}

@Suite("import pipeline: decompression on its own thread, block pipe, prefetch")
struct PipelineTests {
    @Test("hostile archives, gzipped and read from a pipe through the decompressing thread, fail and touch nothing (no chroot)",
          arguments: hostileKinds)
    func hostileThroughPipeline(_ kind: String) throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let outside = tmp.appending("outside")
        _ = try sh("mkdir -p '\(outside)' '\(tmp.path)/image' && echo secret > '\(outside)/victim'")
        try makeHostileArchive(kind, at: tmp.appending("evil.tar"), outside: outside)
        _ = try sh("gzip -1 '\(tmp.path)/evil.tar'")
        let (fd, cat) = try pipeFrom(tmp.appending("evil.tar.gz"))
        defer { close(fd); cat.waitUntilExit() }
        let error = #expect(throws: (any Error).self) {
            try TarImport.extract(from: fd, into: tmp.appending("image"), reporter: .silent, confine: false)
        }
        // The gzip kinds are gzipped twice here: what the pipeline inflates is gzip, not a tar.
        let reason = kind.contains("gzip") ? "Unrecognized archive format" : hostileReason(kind)
        #expect("\(error.map { "\($0)" } ?? "")".contains(reason), "\(kind): \(String(describing: error))")
        #expect(try directoryEntries(outside).sorted() == ["victim"])
        #expect(try String(contentsOfFile: outside + "/victim", encoding: .utf8) == "secret\n")
        #expect(try fileStatus(outside + "/victim").linkCount == 1)
    }

    @Test("a gzip stream cut short after its last member fails, from a file and from a pipe",
          arguments: [false, true])
    func truncatedTailFails(_ fromPipe: Bool) throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        // The last 12 bytes gone: the trailer and the end of the deflate data, which holds
        // only tar's end-of-archive blocks. Every member still extracts; only reading the
        // compressed stream to its real end notices. (libarchive does not check gzip's CRC-32,
        // so a stream must be cut, not just have its CRC flipped, to fail.)
        _ = try sh("""
            mkdir -p '\(tmp.path)/src/etc' '\(tmp.path)/image' && head -c 300000 /dev/urandom > '\(tmp.path)/src/etc/data'
            tar -C '\(tmp.path)/src' -czf '\(tmp.path)/a.tgz' .
            truncate -s -12 '\(tmp.path)/a.tgz'
            """)
        let fd: Int32
        var cat: Process?
        if fromPipe { (fd, cat) = try pipeFrom(tmp.appending("a.tgz")) } else { fd = try openRead(tmp.appending("a.tgz")) }
        defer { close(fd); cat?.waitUntilExit() }
        let error = #expect(throws: (any Error).self) {
            try TarImport.extract(from: fd, into: tmp.appending("image"), reporter: .silent, confine: false)
        }
        #expect("\(error.map { "\($0)" } ?? "")".contains("the gzip data is truncated"), "\(String(describing: error))")
    }

    @Test("a plain and a gzipped tar from a pipe import the same tree as from a file")
    func plainAndGzipFromPipe() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let src = tmp.appending("src")
        _ = try sh("""
            mkdir -p '\(src)/etc' '\(src)/usr/d' && echo ID=x > '\(src)/etc/os-release'
            for i in $(seq 1 300); do head -c $((i * 97)) /dev/urandom > '\(src)/usr/d/f'$i; done
            head -c 5000000 /dev/urandom > '\(src)/usr/big'
            tar --numeric-owner -C '\(src)' -cf '\(tmp.path)/a.tar' . && gzip -k '\(tmp.path)/a.tar'
            mkdir '\(tmp.path)/plain' '\(tmp.path)/gz'
            """)
        for (archive, image) in [("a.tar", "plain"), ("a.tar.gz", "gz")] {
            let (fd, cat) = try pipeFrom(tmp.appending(archive))
            defer { close(fd); cat.waitUntilExit() }
            try TarImport.extract(from: fd, into: tmp.appending(image), reporter: .silent, confine: false)
            let (got, want) = (try treeSnapshot(tmp.appending(image)), try treeSnapshot(src))
            #expect(got == want, "\(archive): \(difference(got, want))")
        }
    }

    @Test("a hostile archive on a pipe its writer keeps open fails at once: the decompressor stops too")
    func failsWithoutWaitingForTheWriter() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let outside = tmp.appending("outside")
        _ = try sh("mkdir -p '\(outside)' '\(tmp.path)/image'")
        try makeHostileArchive("dotdot", at: tmp.appending("evil.tar"), outside: outside)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: tmp.appending("evil.tar"))))
        let stalled = try StalledPipe()
        defer { stalled.closeAll() }
        stalled.send(bytes)  // and the write end stays open: no EOF
        let image = tmp.appending("image")
        let readFD = stalled.read
        let outcome = finishes(within: 60) { () -> String in
            do {
                try TarImport.extract(from: readFD, into: image, reporter: .silent, confine: false)
                return "imported"
            } catch {
                return "\(error)"
            }
        }
        if outcome == nil { close(stalled.write) }  // let the stuck import end, then report
        // The extraction's reason, not the stopped decompressor's.
        #expect(outcome?.hasPrefix("refusing archive entry") == true, "\(outcome ?? "hung")")
    }

    @Test("block pipe: data in order, a waiting consumer takes a partial block, a producer error is a failed read")
    func blockPipeStream() throws {
        let pipe = BlockPipe(blockSize: 8, blocks: 2)
        let producer = try WorkerThread { () -> Bool in
            var ok = true
            for i in 0..<50 {
                var chunk = [UInt8](repeating: UInt8(i), count: i % 13 + 1)
                ok = ok && chunk.withUnsafeMutableBytes { pipe.write(UnsafeRawBufferPointer($0)) }
            }
            pipe.finish(TransferError("source broke"))
            return ok
        }
        var received: [UInt8] = []
        var last: String?
        loop: while true {
            switch pipe.next() {
            case .data(let bytes): received += bytes
            case .end: last = "end"; break loop
            case .failed: last = "failed"; break loop
            }
        }
        #expect(try producer.join().get())
        let expected = (0..<50).flatMap { i in [UInt8](repeating: UInt8(i), count: i % 13 + 1) }
        #expect(received == expected)
        #expect(last == "failed", "a failed producer must not look like a clean end")
        #expect((pipe.producerError as? TransferError)?.message == "source broke")

        // A consumer waiting on a producer that wrote less than a block gets it at once.
        let partial = BlockPipe(blockSize: 1 << 16, blocks: 2)
        let three: [UInt8] = [1, 2, 3]
        #expect(three.withUnsafeBytes { partial.write($0) })
        if case .data(let bytes) = partial.next() { #expect(Array(bytes) == three) } else { Issue.record("no partial block") }
        partial.finish(nil)
        if case .end = partial.next() {} else { Issue.record("a clean finish must end the stream") }
    }

    @Test("block pipe: cancel releases a producer blocked on a full pipe, and its writes fail from then on")
    func blockPipeCancel() throws {
        let pipe = BlockPipe(blockSize: 4, blocks: 2)
        let done = Atomic<Bool>(false)
        let producer = try WorkerThread { () -> Int in
            var written = 0
            let chunk: [UInt8] = [0, 1, 2, 3]
            while written < 1000, chunk.withUnsafeBytes({ pipe.write($0) }) { written += 1 }
            done.store(true, ordering: .relaxed)
            return written
        }
        usleep(50_000)  // let it fill both blocks and block
        pipe.cancel()
        for _ in 0..<6000 where !done.load(ordering: .relaxed) { usleep(10_000) }
        guard done.load(ordering: .relaxed) else {
            Issue.record("the producer stayed blocked after cancel")
            return
        }
        let written = try producer.join().get()
        #expect(written < 1000)
    }
}

@Suite("export pipeline: compression on its own thread")
struct ExportPipelineTests {
    @Test("export-tar compressed to a pipe whose reader went away fails with the write error, and ends",
          arguments: ["gzip", "zstd"])
    func compressedExportToClosedPipe(_ format: String) async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        _ = try sh("mkdir -p '\(tmp.path)/image/etc' && head -c 3000000 /dev/urandom > '\(tmp.path)/image/etc/data'")
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        close(fds[0])  // nobody reads
        defer { close(fds[1]) }
        let outcome = await WorkerProcess(executable: workerExecutable).run(
            arguments: [TransferWorker.flag, "export-tar", "--source", tmp.appending("image"), "--format", format],
            data: fds[1]) { _ in }
        #expect(outcome.exit == .exited(1))
        #expect(outcome.failureMessage.contains("Broken pipe"), "\(outcome.failureMessage)")
    }

    @Test("export-tar in each compression from a tree bigger than the pipe's blocks re-imports identically",
          arguments: ["gzip", "zstd", "xz", "bzip2"])
    func compressedRoundTrip(_ format: String) throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let src = tmp.appending("src")
        _ = try sh("""
            mkdir -p '\(src)/etc' '\(src)/usr/d' '\(tmp.path)/back' && echo ID=x > '\(src)/etc/os-release'
            for i in $(seq 1 200); do head -c $((i * 301)) /dev/urandom > '\(src)/usr/d/f'$i; done
            head -c 3000000 /dev/urandom > '\(src)/usr/big'
            """)
        let out = tmp.appending("out")
        let fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        try TarExport.run(directory: src, to: fd, format: try #require(ExportFormat(argument: format)))
        close(fd)
        let input = try openRead(out)
        defer { close(input) }
        try TarImport.extract(from: input, into: tmp.appending("back"), reporter: .silent, confine: false)
        let (got, want) = (try treeSnapshot(tmp.appending("back")), try treeSnapshot(src))
        #expect(got == want, "\(difference(got, want))")
    }
}
