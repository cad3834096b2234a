import Foundation
import Glibc
import Testing
import TestSupport

/// portable1's inspection members against the real portablectl 252, berthd beside
/// systemd-portabled 252 over the same portable image (each on its own private bus).
@Suite(.serialized, .requires(.privateBus, .referenceDaemons, .commands("portablectl")))
struct Portable1Tests {
    /// berthd and portabled, both seeing `<berthd root>/var/lib/portables` as their pool.
    final class Pair: @unchecked Sendable {
        let berthBus: PrivateDBusDaemon
        let referenceBus: PrivateDBusDaemon
        let berthd: BerthdProcess
        let pool: String

        init() throws {
            berthBus = try PrivateDBusDaemon()
            referenceBus = try PrivateDBusDaemon()
            berthd = try BerthdProcess(bus: berthBus, services: ["portable1"])
            pool = berthd.root + "/var/lib/portables"
            try FileManager.default.createDirectory(atPath: pool, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: "/run/systemd/system", withIntermediateDirectories: true)
        }

        /// portabled over the pool, started for each comparison: it exits when idle.
        func reference() throws -> ReferenceDaemon {
            try ReferenceDaemon(.portabled, busAddress: referenceBus.address, poolPath: pool, mountPoint: "/var/lib/portables")
        }

        func portablectl(_ address: String, _ args: [String]) throws -> CommandResult {
            try run(["portablectl", "--no-pager"] + args, environment: ["DBUS_SYSTEM_BUS_ADDRESS": address, "SYSTEMD_COLORS": "0"])
        }

        /// Writes a portable image folder `name` with `files` (path in the image → contents).
        func makeImage(_ name: String, _ files: [String: String]) throws {
            for (path, text) in files {
                let full = "\(pool)/\(name)/\(path)"
                try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent,
                                                        withIntermediateDirectories: true)
                try text.write(toFile: full, atomically: false, encoding: .utf8)
            }
        }

        func stop() {
            berthd.stop()
            berthBus.stop()
            referenceBus.stop()
        }
        deinit { stop() }
    }

    static let image: [String: String] = [
        "usr/lib/os-release": "ID=debian\nVERSION_ID=12\nPRETTY_NAME=\"Foo OS\"\nPORTABLE_PREFIXES=foo\n",
        "usr/lib/systemd/system/foo.service": "[Service]\nExecStart=/usr/bin/foo\n",
        "usr/lib/systemd/system/foo.socket": "[Socket]\nListenStream=/run/foo.sock\n",
        "usr/lib/systemd/system/bar.service": "[Service]\nExecStart=/usr/bin/bar\n",
        "etc/systemd/system/foo-web.service": "[Service]\nExecStart=/usr/bin/web\n",
        "usr/lib/systemd/system/README": "not a unit\n",
    ]

    @Test func portablectlInspectAndListShowWhatPortabled252Shows() throws {
        let pair = try Pair()
        defer { pair.stop() }
        try pair.makeImage("foo_1.0", Self.image)
        let reference = try pair.reference()
        defer { reference.stop() }
        for args in [["inspect", "foo_1.0"], ["inspect", "--cat", "foo_1.0"], ["is-attached", "foo_1.0"]] {
            let ours = try pair.portablectl(pair.berthBus.address, args)
            let theirs = try pair.portablectl(pair.referenceBus.address, args)
            #expect(ours.status == theirs.status, "\(args): \(ours.stderr) vs \(theirs.stderr)")
            // The image path is the one difference: portabled's pool is at /var/lib/portables.
            #expect(ours.stdout.replacingOccurrences(of: pair.pool, with: "/var/lib/portables") == theirs.stdout, "\(args)")
            #expect(ours.stderr == theirs.stderr, "\(args)")
        }
        // `list`: the same images, types, read-only flags and states.
        let columns = { (r: CommandResult) in
            r.stdout.split(separator: "\n").filter { $0.hasPrefix("foo") }.map { line in
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                return [f[0], f[1], f[2], f[f.count - 1]].joined(separator: " ")
            }
        }
        let ours = try pair.portablectl(pair.berthBus.address, ["list"])
        let theirs = try pair.portablectl(pair.referenceBus.address, ["list"])
        #expect(columns(ours) == ["foo_1.0 directory no detached"])
        #expect(columns(ours) == columns(theirs))
    }

    @Test func managerMembersAnswerWithPortabled252sNamesAndErrors() throws {
        let pair = try Pair()
        defer { pair.stop() }
        try pair.makeImage("foo_1.0", Self.image)
        let reference = try pair.reference()
        defer { reference.stop() }
        let calls: [[String]] = [
            ["GetImage", "s", "foo_1.0"],
            ["GetImage", "s", "nope"],
            ["GetImage", "s", "/var/lib/portables/foo_1.0"],
            ["GetImageMetadata", "sas", "foo_1.0", "1", "fo"],
            ["GetImageMetadata", "sas", "foo_1.0", "1", "foo-web"],
            ["GetImageMetadata", "sas", "nope", "0"],
            ["GetImageMetadata", "sas", "../x", "0"],
            ["GetImageState", "s", "foo_1.0"],
            ["GetImageState", "s", "nope"],
        ]
        for call in calls {
            let ours = try run(["busctl", "--address=\(pair.berthBus.address)", "call", "org.freedesktop.portable1",
                                "/org/freedesktop/portable1", "org.freedesktop.portable1.Manager"] + call)
            let theirs = try run(["busctl", "--address=\(pair.referenceBus.address)", "call", "org.freedesktop.portable1",
                                  "/org/freedesktop/portable1", "org.freedesktop.portable1.Manager"] + call)
            #expect(ours.status == theirs.status, "\(call): \(ours.stdout)\(ours.stderr) vs \(theirs.stdout)\(theirs.stderr)")
            #expect(ours.stdout.replacingOccurrences(of: pair.pool, with: "/var/lib/portables") == theirs.stdout, "\(call)")
            #expect(ours.stderr.replacingOccurrences(of: pair.pool, with: "/var/lib/portables") == theirs.stderr, "\(call)")
        }
        // os-release as a dictionary (a{ss} has no order; 252 sends the file's, Berth sorts keys).
        let osRelease = try [pair.berthBus.address, pair.referenceBus.address].map { address in
            let r = try run(["busctl", "--address=\(address)", "--json=short", "call", "org.freedesktop.portable1",
                             "/org/freedesktop/portable1", "org.freedesktop.portable1.Manager", "GetImageOSRelease", "s", "foo_1.0"],
                            check: true)
            return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? NSDictionary
        }
        #expect(osRelease[0] != nil && osRelease[0] == osRelease[1])
        // The image object and its properties.
        let path = try run(["busctl", "--address=\(pair.berthBus.address)", "get-property", "org.freedesktop.portable1",
                            "/org/freedesktop/portable1/image/foo_5f1_2e0", "org.freedesktop.portable1.Image", "Name", "Type"])
        #expect(path.stdout == "s \"foo_1.0\"\ns \"directory\"\n")
    }

    @Test func aUnitFileLinkedOutOfTheImageIsReadInsideIt() throws {
        // portabled 252 follows such a link on the host and returns the host's file.
        let pair = try Pair()
        defer { pair.stop() }
        try pair.makeImage("foo", Self.image.merging(["etc/passwd": "image-only\n"]) { $1 })
        try FileManager.default.createSymbolicLink(atPath: "\(pair.pool)/foo/usr/lib/systemd/system/foo-abs.service",
                                                   withDestinationPath: "/etc/passwd")
        let r = try pair.portablectl(pair.berthBus.address, ["inspect", "--cat", "foo", "foo-abs"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stdout.contains("image-only"))
        #expect(!r.stdout.contains("root:x:0:0"))
    }
}
