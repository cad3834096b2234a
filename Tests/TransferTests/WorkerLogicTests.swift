import Foundation
import Glibc
import Linux
import TestSupport
import Testing
@testable import Transfer
@testable import TransferJobs

@Suite("worker logic in-process: extraction, status lines, checksum files, arguments")
struct WorkerLogicTests {
    @Test("TarImport runs in-process on a confined thread: the process's cwd is untouched, progress moves in steps to 1")
    func inProcessExtraction() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        // 64 files of 64 KiB of random bytes (gzip cannot shrink them): progress follows the
        // compressed bytes read, so it must report many 0.5 % steps on the way.
        _ = try sh("""
            mkdir -p '\(tmp.path)/src/sub/etc' '\(tmp.path)/out' && echo x > '\(tmp.path)/src/sub/etc/os-release'
            for i in $(seq 1 64); do head -c 65536 /dev/urandom > '\(tmp.path)/src/sub/etc/f'$i; done
            tar -C '\(tmp.path)/src' -czf '\(tmp.path)/a.tgz' sub
            """)
        let before = FileManager.default.currentDirectoryPath
        let fd = try openRead(tmp.appending("a.tgz"))
        defer { close(fd) }
        let seen = ProgressLog()
        try TarImport.extract(from: fd, into: tmp.appending("out"), reporter: .callbacks(progress: { seen.add($0) }))
        #expect(FileManager.default.currentDirectoryPath == before)
        #expect(exists(tmp.appending("out/etc/os-release")), "single OS-tree directory stripped")
        let values = seen.values
        #expect(values.count >= 2 && values == values.sorted() && values.last == 1, "\(values)")
        #expect(values.contains { $0 > 0 && $0 < 1 }, "a step between start and end: \(values)")
    }

    @Test("without the chroot, libarchive's secure flags alone refuse every hostile archive", arguments: hostileKinds)
    func hostileWithoutChroot(_ kind: String) throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let outside = tmp.appending("outside")
        _ = try sh("mkdir -p '\(outside)' '\(tmp.path)/image' && echo secret > '\(outside)/victim'")
        try makeHostileArchive(kind, at: tmp.appending("evil.tar"), outside: outside)
        let fd = try openRead(tmp.appending("evil.tar"))
        defer { close(fd) }
        let error = #expect(throws: (any Error).self) {
            try TarImport.extract(from: fd, into: tmp.appending("image"), reporter: .silent, confine: false)
        }
        #expect("\(error.map { "\($0)" } ?? "")".contains(hostileReason(kind)), "\(kind): \(String(describing: error))")
        #expect(try directoryEntries(outside).sorted() == ["victim"])
        #expect(try String(contentsOfFile: outside + "/victim", encoding: .utf8) == "secret\n")
        #expect(try fileStatus(outside + "/victim").linkCount == 1)
    }

    @Test("RawImport writes holes for zero blocks and sets the size")
    func inProcessRawImport() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        _ = try sh("truncate -s 8M '\(tmp.path)/in' && printf 'x' | dd of='\(tmp.path)/in' bs=1 seek=5000000 conv=notrunc status=none && gzip -k '\(tmp.path)/in' && touch '\(tmp.path)/out'")
        let fd = try openRead(tmp.appending("in.gz"))
        defer { close(fd) }
        try RawImport.run(from: fd, to: tmp.appending("out"))
        #expect(try sh("cmp '\(tmp.path)/in' '\(tmp.path)/out' && echo same") == "same\n")
        #expect(try allocatedBytes(tmp.appending("out")) <= 64 << 10)
    }

    @Test("status lines survive the pipe encoding; junk is ignored")
    func statusLines() {
        for line in [StatusLine.progress(0.25), .log(4, "a\nb"), .error("failed: x")] {
            let encoded = line.encoded
            #expect(encoded.hasSuffix("\n") && encoded.dropLast().allSatisfy { $0 != "\n" })
            let decoded = StatusLine(decoding: Substring(encoded.dropLast()))
            if case .log(let p, let t) = line { #expect(decoded == .log(p, t.replacingOccurrences(of: "\n", with: " "))) } else { #expect(decoded == line) }
        }
        #expect(StatusLine(decoding: "P nan") == nil)
        #expect(StatusLine(decoding: "P 7") == .progress(1))
        #expect(StatusLine(decoding: "X whatever") == nil)
        #expect(StatusLine(decoding: "L 99 text") == .log(7, "text"))
    }

    @Test("SHA256SUMS lines in both forms, .sha256 files, URL splitting")
    func checksumFiles() throws {
        let a = String(repeating: "a", count: 64), b = String(repeating: "B", count: 64)
        let sums = Array("\(a) *image.tar.xz\n\(b)  disk.raw.xz\r\nnonsense\n".utf8)
        #expect(try Pull.checksum(for: "image.tar.xz", in: sums) == a)
        #expect(try Pull.checksum(for: "disk.raw.xz", in: sums) == b.lowercased())
        #expect(throws: TransferError.self) { try Pull.checksum(for: "other", in: sums) }
        #expect(try Pull.parseSingleChecksum(Array("\(a)  image.tar.xz\n".utf8)) == a)
        #expect(throws: TransferError.self) { try Pull.parseSingleChecksum(Array("xyz".utf8)) }
        #expect(Pull.split("https://h/d/image.tar.xz?x=1") == ("https://h/d/", "image.tar.xz"))
        #expect(Pull.isValidURL("http://127.0.0.1:8000/a"))
        #expect(!Pull.isValidURL("file:///etc/passwd"))
    }

    @Test("worker arguments round-trip through the command line")
    func workerArguments() throws {
        var a = TransferWorker.Arguments(type: .pullRaw)
        a.parent = 42
        a.url = "https://example.invalid/x.raw.xz"
        a.verify = .signature
        a.target = "/pool/.#x.raw0123"
        a.root = "/r"
        #expect(try TransferWorker.Arguments(parsing: a.commandLine) == a)
        #expect(throws: TransferError.self) { try TransferWorker.Arguments(parsing: [TransferWorker.flag, "import-tar", "--bogus", "1"]) }
        #expect(ExportFormat(argument: "") == .uncompressed)
        #expect(ExportFormat(argument: "lz4") == nil)
    }
}

/// Progress values collected from a reporter's thread.
final class ProgressLog: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [Double] = []
    func add(_ p: Double) { lock.withLock { stored.append(p) } }
    var values: [Double] { lock.withLock { stored } }
}
