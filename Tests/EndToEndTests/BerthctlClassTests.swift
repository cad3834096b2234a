import Foundation
import Glibc
import Testing
import TestSupport

/// berthctl's `--class`, `--force`, `--read-only`, `--keep-download` on the transfer verbs and
/// `list-images --class`, against berthd on a private bus (Import1Site).
@Suite(.serialized, .requires(import1Requirements))
struct BerthctlClassTests {
    private func berthctl(_ site: Import1Site, _ arguments: [String]) throws -> CommandResult {
        let binary = try BerthdProcess.binaryPath("berthctl")
        return try run(["timeout", "120", binary] + arguments + ["--bus-address", site.bus.address])
    }

    @Test("imports, exports and pulls with --class land in and read from that class's pool; --read-only, --force and --keep-download act; list-images --class lists by class; a bad class fails with importd's words")
    func classesAndFlags() throws {
        let site = try Import1Site()
        defer { site.close() }
        let c = site.content
        let extensions = site.root + "/var/lib/extensions", confexts = site.root + "/var/lib/confexts"

        var r = try berthctl(site, ["import-tar", "--class", "sysext", "--read-only", c.tar, "ext"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: extensions + "/ext/etc/hostname"))
        #expect(try run(["lsattr", "-d", extensions + "/ext"], check: true).stdout.split(separator: " ").first?.contains("i") == true)
        r = try berthctl(site, ["import-raw", "--class", "confext", c.raw, "disk"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try run(["cmp", c.raw, confexts + "/disk.raw"]).succeeded)
        r = try berthctl(site, ["import-fs", "--class", "portable", c.tree, "tree"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: site.root + "/var/lib/portables/tree/usr/lib/os-release"))
        // --force with a class replaces; without it the name is taken.
        r = try berthctl(site, ["import-fs", "--class", "portable", c.tree, "tree"])
        #expect(r.status == 1 && r.stderr.contains("exists"), "\(r)")
        r = try berthctl(site, ["import-fs", "--class", "portable", "--force", c.tree, "tree"])
        #expect(r.succeeded, "\(r.stderr)")

        let out = site.folder.appending("ext.tar")
        r = try berthctl(site, ["export-tar", "--class", "sysext", "ext", out])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try run(["tar", "-tf", out], check: true).stdout.contains("etc/hostname"))
        // Not a machine image: the plain verb (machine class) does not find it.
        r = try berthctl(site, ["export-tar", "ext", out])
        #expect(r.status == 1, "\(r)")

        let server = try LoopbackHTTPServer(directory: c.www)
        defer { server.stop() }
        r = try berthctl(site, ["pull-tar", "--class", "confext", "--verify", "no", "--read-only", "--keep-download",
                                server.url("image.tar.xz"), "pulled"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: confexts + "/pulled/etc/hostname"))

        r = try berthctl(site, ["list-images", "--class", "confext"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stdout.contains("CLASS") && r.stdout.contains("disk") && r.stdout.contains("pulled") && !r.stdout.contains("sysext"), "\(r.stdout)")
        r = try berthctl(site, ["list-images", "--class", "all", "--json"])
        #expect(r.succeeded, "\(r.stderr)")
        for (cls, name) in [("sysext", "ext"), ("confext", "disk"), ("portable", "tree"), ("confext", "pulled"), ("machine", ".host")] where name != ".host" {
            #expect(r.stdout.contains("\"imageClass\":\"\(cls)\"") && r.stdout.contains("\"name\":\"\(name)\""), "\(cls) \(name): \(r.stdout)")
        }
        r = try berthctl(site, ["list-images", "--class", "bogus"])
        #expect(r.status != 0 && r.stderr.contains("Image class 'bogus' not known"), "\(r)")
        r = try berthctl(site, ["import-tar", "--class", "bogus", c.tar, "x"])
        #expect(r.status == 1 && r.stderr.contains("Image class 'bogus' not known"), "\(r)")
        #expect(!FileManager.default.fileExists(atPath: site.poolPath + "/x"))
    }
}
