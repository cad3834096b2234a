import BtrfsBackend
import DirectoryBackend
import Foundation
import Glibc
import Linux
import PoolAPI
import RawLoopBackend
import TestSupport
import Testing
import struct SystemPackage.FilePath
@testable import Transfer

@Suite("image classes and transfer flags: validation, worker arguments, routing by class")
struct ClassAndFlagsTests {
    @Test("flags: importd's bits per transfer type; any other bit is refused with importd's words")
    func flagValidation() throws {
        #expect(TransferFlags.force.rawValue == 1 && TransferFlags.readOnly.rawValue == 2 && TransferFlags.keepDownload.rawValue == 4)
        #expect(try TransferFlags(validating: 3, allowed: .allowed(for: .importTar)) == [.force, .readOnly])
        #expect(try TransferFlags(validating: 7, allowed: .allowed(for: .pullRaw)) == [.force, .readOnly, .keepDownload])
        #expect(try TransferFlags(validating: 0, allowed: .allowed(for: .exportTar)) == [])
        do {
            _ = try TransferFlags(validating: 4, allowed: .allowed(for: .importRaw))
            Issue.record("keep-download accepted by an import")
        } catch { #expect(error.message == "Flags 0x4 invalid") }
        #expect(throws: TransferError.self) { try TransferFlags(validating: 1, allowed: .allowed(for: .exportRaw)) }
        #expect(throws: TransferError.self) { try TransferFlags(validating: 1 << 63, allowed: .allowed(for: .pullTar)) }
        #expect(throws: TransferError.self) { try TransferFlags(validating: 8, allowed: .allowed(for: .pullTar)) }
    }

    @Test("classes: systemd's names and pool folders; nothing else parses")
    func classes() {
        #expect(ImageClass.allCases.map(\.rawValue) == ["machine", "portable", "sysext", "confext"])
        #expect(ImageClass.allCases.map(\.poolFolder) == ["var/lib/machines", "var/lib/portables", "var/lib/extensions", "var/lib/confexts"])
        for bad in ["", "Machine", "machines", "extension", "sysext ", "../x"] { #expect(ImageClass(argument: bad) == nil) }
        let c = ImagePool.Configuration(class: .sysext, root: "/r")
        #expect(c.poolPath == "/r/var/lib/extensions" && !c.hasHostImage && c.searchFolders.contains("var/lib/extensions"))
        #expect(ImagePool.Configuration(class: .machine, root: "/r").hasHostImage)
    }

    @Test("worker arguments carry class, flags, pool and known ETags through the command line")
    func workerArguments() throws {
        var a = TransferWorker.Arguments(type: .pullTar)
        a.url = "http://127.0.0.1:1/x.tar"
        a.imageClass = .confext
        a.flags = [.force, .keepDownload]
        a.poolPath = "/r/var/lib/confexts"
        a.knownETags = ["\"abc\"", "W/\"d e\""]
        #expect(try TransferWorker.Arguments(parsing: a.commandLine) == a)
        #expect(throws: TransferError.self) { try TransferWorker.Arguments(parsing: [TransferWorker.flag, "pull-tar", "--class", "bogus"]) }
        #expect(throws: TransferError.self) { try TransferWorker.Arguments(parsing: [TransferWorker.flag, "pull-tar", "--flags", "-1"]) }
    }

    @Test("the engine imports into the pool of the request's class and refuses flags the type does not take")
    func routing() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let root = tmp.appending("root")
        try run(["mkdir", "-p", root + "/run/berth"], check: true)
        let registry = BackendRegistry([BtrfsBackend(), DirectoryBackend(), RawLoopBackend(runtimeDirectory: FilePath(root).appending("run/berth"))])
        var pools: [ImageClass: ImagePool] = [:]
        for c in ImageClass.allCases { pools[c] = ImagePool(configuration: .init(class: c, root: root), registry: registry) }
        let engine = TransferEngine(pools: pools, workerExecutable: workerExecutable, root: root)
        _ = try sh("mkdir -p '\(tmp.path)/src/usr/lib/extension-release.d' && tar -C '\(tmp.path)/src' -cf '\(tmp.path)/a.tar' .")
        let fd = try openRead(tmp.appending("a.tar"))
        defer { close(fd) }
        let (result, _) = try await runTransfer(engine, .importTar(fd: fd, local: "ext", readOnly: true, imageClass: .sysext))
        #expect(result == .done)
        #expect(exists(root + "/var/lib/extensions/ext/usr/lib/extension-release.d"))
        #expect(!exists(root + "/var/lib/machines/ext"))
        #expect(try await pools[.sysext]?.image(named: "ext").readOnly == true)
        // The same name in another class is another image: not busy, not existing.
        _ = lseek(fd, 0, SEEK_SET)
        let (second, _) = try await runTransfer(engine, .importTar(fd: fd, local: "ext", imageClass: .confext))
        #expect(second == .done && exists(root + "/var/lib/confexts/ext"))
        // keep-download is a pull's flag only.
        let bad = TransferRequest(type: .importTar, local: "y", operation: .importing(fd: fd), flags: .keepDownload)
        await #expect(throws: TransferError.self) { _ = try await engine.start(bad) }
        #expect(!exists(root + "/var/lib/machines/y"))
    }

    @Test("kept downloads: names from URL and ETag are file names under the URL's prefix and give the ETag back")
    func keptNames() {
        let prefix = KeptDownloads.prefix(.pullTar, url: "http://h:1/a\\b/c.tar")
        #expect(prefix == ".tar-http:\\x2f\\x2fh:1\\x2fa\\x5cb\\x2fc.tar\\")
        #expect(KeptDownloads.prefix(.pullRaw, url: "http://h/x").hasPrefix(".raw-"))
        for etag in ["\"v1\"", "W/\"a\\b\"", "é\u{1}x", ""] {
            let name = KeptDownloads.name(prefix: prefix, etag: etag)
            #expect(name != nil && !(name?.contains("/") ?? true), "\(etag)")
            #expect(name.map { KeptDownloads.unescape(String($0.dropFirst(prefix.count))) } == etag, "\(etag)")
        }
        #expect(KeptDownloads.name(prefix: prefix, etag: String(repeating: "e", count: 300)) == nil)
        #expect(KeptDownloads.unescape("a\\x2") == nil && KeptDownloads.unescape("a\\q00") == nil)
    }
}
