import Foundation
import Glibc
import Testing
import TestSupport

/// berthctl's transfer verbs against berthd on a private bus (Import1Site), with the fixtures
/// and HTTP server of the import1 end-to-end tests.
@Suite(.serialized, .requires(import1Requirements))
struct BerthctlTransferTests {
    /// Runs berthctl against `site`'s bus.
    private func berthctl(_ site: Import1Site, _ arguments: [String], input: Data? = nil) throws -> CommandResult {
        let binary = try BerthdProcess.binaryPath("berthctl")
        return try run(["timeout", "120", binary] + arguments + ["--bus-address", site.bus.address], input: input)
    }

    @Test("import-tar from a file (named and name derived) and stdin, list-images shows them; export-tar to files tar -t lists")
    func importAndExport() throws {
        let site = try Import1Site()
        defer { site.close() }
        let c = site.content

        var r = try berthctl(site, ["import-tar", c.tar, "ctltar"])
        #expect(r.succeeded, "\(r.stderr)\n\(site.log)")
        #expect(try String(contentsOfFile: site.poolPath + "/ctltar/etc/hostname", encoding: .utf8) == "imported\n")

        // No name: from the file name, .tar and .gz stripped.
        r = try berthctl(site, ["import-tar", c.dir + "/image.tar.gz", "--json"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stdout.contains("\"local\":\"image\"") && r.stdout.contains("\"result\":\"done\""), "\(r.stdout)")

        r = try berthctl(site, ["import-tar", "-", "fromstdin", "--read-only"], input: try Data(contentsOf: URL(fileURLWithPath: c.tar)))
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("cmp '\(c.tree)/etc/blob' '\(site.poolPath)/fromstdin/etc/blob' && echo same") == "same\n")

        r = try berthctl(site, ["import-fs", c.tree, "ctlfs"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("diff -r '\(c.tree)' '\(site.poolPath)/ctlfs' && echo same") == "same\n")

        // Raw: the name from disk.raw.xz is "disk"; exported back it is the same disk.
        r = try berthctl(site, ["import-raw", c.raw + ".xz"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("cmp '\(c.raw)' '\(site.poolPath)/disk.raw' && echo same") == "same\n")
        let rawOut = site.folder.appending("out.raw")
        r = try berthctl(site, ["export-raw", "disk", rawOut])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("cmp '\(c.raw)' '\(rawOut)' && echo same") == "same\n")

        let listed = try berthctl(site, ["list-images"])
        #expect(listed.succeeded, "\(listed.stderr)")
        for name in ["ctltar", "image", "fromstdin", "ctlfs", "disk"] {
            #expect(listed.stdout.contains(name), "\(name) missing from \(listed.stdout)")
        }

        // An existing name without --force fails with exit 1; with --force it is replaced.
        r = try berthctl(site, ["import-tar", c.tar, "ctltar"])
        #expect(r.status == 1, "\(r)")
        r = try berthctl(site, ["import-tar", "--force", c.tar, "ctltar"])
        #expect(r.succeeded, "\(r.stderr)")

        let out = site.folder.appending("out.tar")
        r = try berthctl(site, ["export-tar", "ctltar", out])
        #expect(r.succeeded, "\(r.stderr)\n\(site.log)")
        let members = try shell("tar -tf '\(out)'")
        #expect(members.contains("etc/hostname") && members.contains("usr/lib/os-release") && members.contains("etc/blob"), "\(members)")

        // The format from the suffix: .xz is xz-compressed.
        let xz = site.folder.appending("out.tar.xz")
        r = try berthctl(site, ["export-tar", "ctltar", xz])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("xz -t '\(xz)' && tar -tJf '\(xz)'").contains("etc/hostname"))

        // To stdout (through a shell pipe: the archive is binary, not text for CommandResult).
        let binary = try BerthdProcess.binaryPath("berthctl")
        let piped = try shell("'\(binary)' export-tar ctltar - --bus-address '\(site.bus.address)' | tar -tf -")
        #expect(piped.contains("etc/hostname"), "\(piped)")
    }

    @Test("pull-tar --verify=no succeeds; a 404 exits 1 with the error printed and leaves nothing")
    func pulls() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }

        var r = try berthctl(site, ["pull-tar", "--verify=no", server.url("image.tar.xz")])
        #expect(r.succeeded, "\(r.stderr)\n\(site.log)")
        #expect(try String(contentsOfFile: site.poolPath + "/image/etc/hostname", encoding: .utf8) == "imported\n")

        r = try berthctl(site, ["pull-tar", "--verify=no", server.url("missing.tar.xz"), "gone"])
        #expect(r.status == 1, "\(r)")
        #expect(r.stderr.contains("404") && r.stderr.contains("Transfer failed."), "\(r.stderr)")
        #expect(try site.poolEntries() == ["image"])
    }

    @Test("pull-raw --verify=checksum makes NAME.raw identical, with a progress bar on a terminal; a checksum mismatch exits 1 and leaves nothing",
          .requires(.commands("script")))  // a terminal
    func pullRawWithProgressBar() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }
        let binary = try BerthdProcess.binaryPath("berthctl")

        // script(1) gives berthctl a terminal; the download trickles (slow/), so the bar is drawn.
        let command = [binary, "pull-raw", "--verify=checksum", server.url("slow/disk.raw.xz"), "disk",
                       "--bus-address", site.bus.address].map { "'\($0)'" }.joined(separator: " ")
        let r = try run(["timeout", "120", "script", "-qefc", command, "/dev/null"])
        #expect(r.succeeded, "\(r.stdout)\n\(r.stderr)\n\(site.log)")
        #expect(r.stdout.contains("\r\u{1B}[Kdisk ["), "no bar redrawn in place: \(r.stdout.debugDescription)")
        #expect(r.stdout.contains("] 100%") || r.stdout.contains("#] "), "the bar never filled: \(r.stdout.debugDescription)")
        #expect(try run(["cmp", site.content.raw, site.poolPath + "/disk.raw"]).succeeded)

        let bad = try berthctl(site, ["pull-raw", "--verify=checksum", server.url("mismatch/disk.raw.xz"), "bad"])
        #expect(bad.status == 1, "\(bad)")
        #expect(bad.stderr.contains("Transfer failed."), "\(bad.stderr)")
        #expect(try site.poolEntries() == ["disk.raw"])
    }

    @Test("--no-block returns the id while a slow pull runs and cancel-transfer cancels it; SIGINT cancels a followed pull")
    func noBlockAndCancel() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }

        let r = try berthctl(site, ["pull-tar", "--verify=no", "--no-block", server.url("slow/big.tar"), "slowctl"])
        #expect(r.succeeded, "\(r.stderr)")
        let fields = r.stdout.split(whereSeparator: \.isWhitespace)
        let id = try #require(fields.first.flatMap { UInt32($0) }, "\(r.stdout)")
        #expect(fields.count == 2 && fields[1].hasPrefix("/org/freedesktop/import1/transfer/"), "\(r.stdout)")
        #expect(try site.transfers().contains { $0.id == id && $0.line.contains("slowctl") })
        let cancel = try berthctl(site, ["cancel-transfer", String(id)])
        #expect(cancel.succeeded, "\(cancel.stderr)")
        #expect(try eventually { try site.transfers().isEmpty })
        #expect(try eventually(timeout: 10) { try site.poolEntries().isEmpty })

        // Followed, then interrupted: berthctl cancels the transfer and exits 1.
        let binary = try BerthdProcess.binaryPath("berthctl")
        let follower = try Background([binary, "pull-tar", "--verify=no", server.url("slow/big.tar"), "slowint",
                                       "--bus-address", site.bus.address],
                                      environment: [:], output: site.folder.appending("follower.out"))
        #expect(try eventually { try site.transfers().contains { $0.line.contains("slowint") } })
        // Progress lines show the follower is in its loop with the signal handler installed.
        #expect(eventually { follower.output.contains("%") }, "\(follower.output)")
        kill(follower.process.processIdentifier, SIGINT)
        #expect(follower.wait() == 1, "\(follower.output)")
        #expect(follower.output.contains("Transfer canceled."), "\(follower.output)")
        #expect(try eventually { try site.transfers().isEmpty })
        #expect(try eventually(timeout: 10) { try site.poolEntries().isEmpty })
    }

    @Test("a followed transfer whose berthd dies ends with exit 1 instead of waiting forever")
    func daemonGoesAway() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }
        let binary = try BerthdProcess.binaryPath("berthctl")
        let follower = try Background([binary, "pull-tar", "--verify=no", server.url("slow/big.tar"), "orphan",
                                       "--bus-address", site.bus.address],
                                      environment: [:], output: site.folder.appending("follower.out"))
        #expect(try eventually { try site.transfers().contains { $0.line.contains("orphan") } })
        site.killBerthd()
        #expect(follower.wait() == 1, "\(follower.output)")
        #expect(follower.output.contains("org.freedesktop.import1 went away"), "\(follower.output)")
    }
}
