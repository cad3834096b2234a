import Foundation
import Glibc
import Testing
import TestSupport

/// An export holds its image: RemoveImage and RenameImage of an image being exported are refused
/// (EBUSY, as machined answers for an image in use) and the export ends with all of it.
@Suite(.serialized, .requires(import1Requirements))
struct ExportHoldTests {
    @Test("RemoveImage and RenameImage during ExportTar of the image are refused with EBUSY; the export completes with the whole image")
    func removeDuringExportIsRefused() throws {
        let site = try Import1Site()
        defer { site.close() }
        // 48 MiB of non-zero data: far more than a pipe holds, so the export waits on us.
        _ = try shell("""
        mkdir -p '\(site.poolPath)/held/etc'
        echo held > '\(site.poolPath)/held/etc/hostname'
        head -c 50331648 /dev/urandom > '\(site.poolPath)/held/blob'
        """)
        let fifo = site.folder.appending("export.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        // Our read end first (non-blocking open of a FIFO's reader succeeds at once), so
        // machinectl's open for writing does not block; then we don't read: the export stalls.
        let reader = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        #expect(reader >= 0)
        defer { close(reader) }
        let export = try Background(["machinectl", "export-tar", "held", fifo],
                                    environment: site.bus.environment, output: site.folder.appending("export.out"))
        defer { export.wait(timeout: 0) }
        #expect(try eventually { try site.transfers().contains { $0.line.contains("held") } }, "\(export.output)\n\(site.log)")

        func callMachine1(_ method: String, _ arguments: [String]) throws -> CommandResult {
            try run(["gdbus", "call", "--address", site.bus.address, "--dest", "org.freedesktop.machine1",
                     "--object-path", "/org/freedesktop/machine1", "--method", "org.freedesktop.machine1.Manager.\(method)"] + arguments)
        }
        let removed = try callMachine1("RemoveImage", ["held"])
        #expect(!removed.succeeded, "RemoveImage of an image being exported was accepted")
        #expect(removed.stderr.contains("System.Error.EBUSY"), "\(removed.stderr)")
        let renamed = try callMachine1("RenameImage", ["held", "moved"])
        #expect(!renamed.succeeded, "RenameImage of an image being exported was accepted")
        #expect(renamed.stderr.contains("System.Error.EBUSY"), "\(renamed.stderr)")
        #expect(FileManager.default.fileExists(atPath: site.poolPath + "/held/blob"))

        // Now drain: the export must end done with every byte.
        _ = fcntl(reader, F_SETFL, 0)
        let out = site.folder.appending("export.tar")
        let sink = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(sink) }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            _ = buffer.withUnsafeBytes { write(sink, $0.baseAddress, n) }
        }
        #expect(export.wait() == 0, "\(export.output)\n\(site.log)")
        _ = try shell("mkdir '\(site.folder.appending("x"))' && tar -C '\(site.folder.appending("x"))' -xf '\(out)'")
        #expect(try shell("cmp '\(site.poolPath)/held/blob' '\(site.folder.appending("x"))/blob' && echo same") == "same\n")
        // Once the export is over, the image is free again.
        let after = try callMachine1("RemoveImage", ["held"])
        #expect(after.succeeded, "\(after.stderr)")
        #expect(try site.poolEntries().isEmpty)
    }
}
