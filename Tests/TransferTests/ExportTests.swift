import Foundation
import Glibc
import Linux
import PoolAPI
import TestSupport
import Testing
@testable import Transfer
@testable import TransferJobs

@Suite("export-tar and export-raw")
struct ExportTests {
    @Test("export-tar in every format, re-imported, gives the same tree (owners, modes, xattrs, ACLs, links, devices, sparse)",
          .requires(.root),  // owners and device nodes
          arguments: ["", "uncompressed", "gzip", "bzip2", "xz", "zstd"])
    func exportTarRoundTrip(_ formatName: String) async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        try makeFidelityTree(setup.poolPath + "/source")
        let format = try #require(ExportFormat(argument: formatName))
        let out = tmp.appending("export.tar")
        let fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let (result, events) = try await runTransfer(setup.engine, .exportTar(local: "source", fd: fd, format: format))
        close(fd)
        #expect(result == .done, "\(events)")
        let magic = try sh("head -c 6 '\(out)' | od -An -tx1 | tr -d ' \\n'")
        switch format {
        case .gzip: #expect(magic.hasPrefix("1f8b"))
        case .bzip2: #expect(magic.hasPrefix("425a68"))
        case .xz: #expect(magic.hasPrefix("fd377a585a00"))
        case .zstd: #expect(magic.hasPrefix("28b52ffd"))
        case .uncompressed: #expect(try sh("tar -tf '\(out)' | grep -c hostname-link") == "1\n")
        }
        let input = try openRead(out)
        defer { close(input) }
        let (back, backEvents) = try await runTransfer(setup.engine, .importTar(fd: input, local: "again"))
        #expect(back == .done, "\(backEvents)")
        let (got, want) = (try treeSnapshot(setup.poolPath + "/again"), try treeSnapshot(setup.poolPath + "/source"))
        #expect(got == want, "\(difference(got, want))")
        #expect(try allocatedBytes(setup.poolPath + "/again/sparse") < 1 << 20)
        if format == .uncompressed {
            #expect(try fileStatus(out).size < 1 << 20, "the sparse file is stored sparse in the tar")
        }
    }

    @Test("export-raw in every format to a file and to a pipe gives the image back", arguments: ["", "gzip", "bzip2", "xz", "zstd"])
    func exportRaw(_ formatName: String) async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        let image = setup.poolPath + "/disk.raw"
        _ = try sh("""
        truncate -s 32M '\(image)'
        head -c 200000 /dev/urandom | dd of='\(image)' bs=4096 seek=100 conv=notrunc status=none
        """)
        let format = try #require(ExportFormat(argument: formatName))
        let decompress = ["": "cat", "gzip": "gzip -dc", "bzip2": "bzip2 -dc", "xz": "xz -dc", "zstd": "zstd -qdc"][formatName] ?? "cat"
        // To a file.
        let out = tmp.appending("out")
        let fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let (result, events) = try await runTransfer(setup.engine, .exportRaw(local: "disk", fd: fd, format: format))
        close(fd)
        #expect(result == .done, "\(events)")
        #expect(try sh("\(decompress) < '\(out)' | cmp - '\(image)' && echo same") == "same\n")
        if format == .uncompressed { #expect(try allocatedBytes(out) < 2 << 20, "holes stay holes in a file") }
        // To a pipe.
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let reader = Process()
        reader.executableURL = URL(fileURLWithPath: "/bin/sh")
        reader.arguments = ["-c", "\(decompress) | cmp - '\(image)'"]
        reader.standardInput = FileHandle(fileDescriptor: fds[0], closeOnDealloc: true)
        try reader.run()
        let (pipeResult, _) = try await runTransfer(setup.engine, .exportRaw(local: "disk", fd: fds[1], format: format))
        close(fds[1])
        reader.waitUntilExit()
        #expect(pipeResult == .done)
        #expect(reader.terminationStatus == 0)
    }

    @Test("export-tar of a raw image and export-raw of a tree are not supported; a missing image is NoSuchImage")
    func exportMismatch() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        _ = try sh("truncate -s 1M '\(setup.poolPath)/disk.raw' && mkdir '\(setup.poolPath)/tree'")
        let fd = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(fd) }
        let tarOfRaw = await #expect(throws: PoolError.self) { _ = try await setup.engine.start(.exportTar(local: "disk", fd: fd, format: .xz)) }
        #expect(tarOfRaw?.code == .notSupported)
        #expect("\(tarOfRaw.map { "\($0)" } ?? "")".contains("cannot export-tar a raw image"))
        let rawOfTree = await #expect(throws: PoolError.self) { _ = try await setup.engine.start(.exportRaw(local: "tree", fd: fd, format: .xz)) }
        #expect(rawOfTree?.code == .notSupported)
        #expect("\(rawOfTree.map { "\($0)" } ?? "")".contains("cannot export-raw a directory image"))
        do {
            _ = try await setup.engine.start(.exportRaw(local: "missing", fd: fd, format: .xz))
            Issue.record("export of a missing image started")
        } catch let e as PoolError {
            #expect(e.code == .noSuchImage)
        }
    }
}
