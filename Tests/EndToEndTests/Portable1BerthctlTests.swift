import Foundation
import Testing
import TestSupport

/// `berthctl portable …` against berthd's portable1 on a private bus, checked on the files it
/// leaves and against the real portablectl 252 on the same daemon and image
/// (`Portable1AttachTests.Host`: Berth's profiles and the image foo_1.0).
@Suite(.serialized, .requires(.privateBus, .commands("portablectl")))
struct Portable1BerthctlTests {
    struct Row: Decodable, Equatable {
        var name: String
        var type: String
        var readOnly: Bool
        var creationTimestamp: UInt64
        var modificationTimestamp: UInt64
        var usage: UInt64?
        var state: String
    }
    struct Report: Decodable { struct Unit: Decodable { var name: String; var contents: String }; var image: String; var osRelease: [String: String]; var units: [Unit] }
    struct Change: Decodable, Equatable { var type: String; var path: String; var source: String }
    struct Reattached: Decodable { var removed: [Change]; var updated: [Change] }

    typealias Host = Portable1AttachTests.Host

    static func berthctl(_ host: Host, _ args: [String]) throws -> CommandResult {
        try run([try BerthdProcess.binaryPath("berthctl"), "portable"] + args + ["--bus-address", host.bus.address])
    }

    /// portablectl in a UTF-8 locale, so that its change lines use the arrow berthctl prints.
    static func portablectl(_ host: Host, _ args: [String]) throws -> CommandResult {
        try run(["portablectl", "--no-pager", "--no-reload"] + args,
                environment: ["DBUS_SYSTEM_BUS_ADDRESS": host.bus.address, "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"])
    }

    static func rows(_ host: Host) throws -> [Row] {
        let r = try berthctl(host, ["list", "--json"])
        #expect(r.succeeded, "\(r.stderr)")
        return try JSONDecoder().decode([Row].self, from: Data(r.stdout.utf8))
    }

    /// What portablectl logs besides the change list (the match note), dropped for comparing.
    static func changeLines(_ text: String) -> [String] {
        text.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("(Matching") }
    }

    @Test func listAndInspectPrintWhatPortablectlPrints() throws {
        let host = try Host()
        defer { host.stop() }
        // An image whose PORTABLE_PREFIXES is not its name: without a prefix both clients send the
        // name up to its first '_' (bar), which its units do not match.
        try host.write(["usr/lib/os-release": "ID=debian\nPORTABLE_PRETTY_NAME=\"Baz service\"\nPORTABLE_PREFIXES=baz\n",
                        "usr/lib/systemd/system/baz.service": "[Service]\nExecStart=/bin/true\n"],
                       in: host.root + "/var/lib/portables/bar_2")

        let rows = try Self.rows(host)
        #expect(rows.map(\.name) == ["bar_2", "foo_1.0"])
        #expect(rows.allSatisfy { $0.type == "directory" && !$0.readOnly && $0.state == "detached" && $0.creationTimestamp > 0 })
        let table = try Self.berthctl(host, ["list"])
        #expect(table.succeeded)
        #expect(table.stdout.hasPrefix("NAME    TYPE      RO CRTIME"), "\(table.stdout)")
        #expect(table.stdout.contains(" USAGE STATE\n") && table.stdout.hasSuffix("\n2 images listed.\n"), "\(table.stdout)")

        // inspect and inspect --cat: portablectl's output byte for byte, the match note on stderr.
        for args in [["inspect", "--cat", "foo_1.0"], ["inspect", "foo_1.0"], ["inspect", "--cat", "foo_1.0", "-"],
                     ["inspect", host.image, "foo.service"], ["inspect", "bar_2", "baz"]] {
            let ours = try Self.berthctl(host, args), theirs = try Self.portablectl(host, args)
            #expect(ours.succeeded && theirs.succeeded, "\(args): \(ours.stderr) \(theirs.stderr)")
            #expect(ours.stdout == theirs.stdout, "\(args)")
            #expect(ours.stderr == theirs.stderr, "\(args)")
        }
        #expect(try Self.berthctl(host, ["inspect", "--cat", "foo_1.0"]).stdout.hasPrefix("-- OS Release: --\nID=debian\n"))
        let refusedByBoth = try Self.berthctl(host, ["inspect", "bar_2"])
        #expect(refusedByBoth.status == 1 && refusedByBoth.stderr.contains("(Matching unit files with prefix 'bar'.)")
                && refusedByBoth.stderr.contains("Couldn't find any matching unit files"), "\(refusedByBoth.stderr)")
        #expect(!(try Self.portablectl(host, ["inspect", "bar_2"])).succeeded)

        let json = try Self.berthctl(host, ["inspect", "--json", "foo_1.0"])
        let report = try JSONDecoder().decode(Report.self, from: Data(json.stdout.utf8))
        #expect(report.image == host.image)
        #expect(report.osRelease["PRETTY_NAME"] == "Foo OS" && report.osRelease["PORTABLE_PREFIXES"] == "foo")
        #expect(report.units.map(\.name) == ["foo.service", "foo.socket"])
        #expect(report.units.first?.contents == "[Unit]\nDescription=Foo\n[Service]\nExecStart=/usr/bin/sleep infinity\n")
    }

    @Test func attachReattachAndDetachChangeTheFilesAsPortablectlWould() throws {
        let host = try Host()
        defer { host.stop() }
        // attach: the same files and the same change lines as portablectl's attach.
        let attached = try Self.berthctl(host, ["attach", "foo_1.0"])
        #expect(attached.succeeded, "\(attached.stderr)")
        #expect(attached.stderr == "(Matching unit files with prefix 'foo'.)\n")
        let tree = host.attachedTree()
        #expect(tree.contains("etc/portables/foo_1.0 -> /var/lib/portables/foo_1.0"))
        #expect(tree.contains("etc/systemd/system.attached/foo.service.d/10-profile.conf -> "
                              + "/usr/lib/systemd/portable/profile/default/service.conf"))
        #expect(attached.stdout.contains("Created symlink \(host.root)/etc/portables/foo_1.0 → \(host.image).\n"))
        #expect(try Self.berthctl(host, ["detach", "foo_1.0"]).succeeded)
        #expect(host.attachedTree() == ["etc/portables"])
        let reference = try Self.portablectl(host, ["attach", "foo_1.0"])
        #expect(reference.succeeded, "\(reference.stderr)")
        #expect(host.attachedTree() == tree)
        #expect(Self.changeLines(attached.stdout) == Self.changeLines(reference.stderr))
        #expect(try Self.portablectl(host, ["detach", "foo_1.0"]).succeeded)

        #expect(try Self.berthctl(host, ["attach", "foo_1.0"]).succeeded)
        let state = try Self.berthctl(host, ["is-attached", "foo_1.0"])
        #expect(state.status == 0 && state.stdout == "attached\n")
        #expect(try Self.rows(host).first { $0.name == "foo_1.0" }?.state == "attached")
        // Attached means in use: berthd's refusals come back on stderr with exit status 1.
        let again = try Self.berthctl(host, ["attach", "foo_1.0"])
        #expect(again.status == 1 && again.stderr.contains("Unit file 'foo.service' exists on the host already, refusing."))
        let busy = try Self.berthctl(host, ["remove", "foo_1.0"])
        #expect(busy.status == 1 && busy.stderr.contains("is not detached, refusing.") && busy.stderr.contains("(System.Error.EBUSY)"), "\(busy.stderr)")
        #expect(try Self.berthctl(host, ["read-only", "foo_1.0"]).status == 1)

        // reattach picks up the image as it is now. What it removed and made again is an update,
        // not a removal (as 252 normalizes the two lists), so only made lines come here.
        try host.write(["usr/lib/systemd/system/foo-web.service": "[Service]\nExecStart=/usr/bin/web\n"], in: host.image)
        let reattached = try Self.berthctl(host, ["reattach", "--copy", "copy", "foo_1.0"])
        #expect(reattached.succeeded, "\(reattached.stderr)")
        let lines = Self.changeLines(reattached.stdout)
        #expect(lines.first == "Created directory \(host.root)/etc/systemd/system.attached.", "\(lines)")
        #expect(!lines.contains { $0.hasPrefix("Removed") }, "\(lines)")
        #expect(lines.last == "Created symlink \(host.root)/etc/portables/foo_1.0 → \(host.image).", "\(lines)")
        #expect(lines.contains("Copied \(host.image)/usr/lib/systemd/system/foo-web.service → "
                               + "\(host.root)/etc/systemd/system.attached/foo-web.service."))
        #expect(host.attachedTree().contains { $0.hasPrefix("etc/systemd/system.attached/foo.service.d/10-profile.conf: ") })
        try FileManager.default.removeItem(atPath: host.image + "/usr/lib/systemd/system/foo-web.service")
        let json = try Self.berthctl(host, ["reattach", "--json", "foo_1.0"])
        let changes = try JSONDecoder().decode(Reattached.self, from: Data(json.stdout.utf8))
        #expect(changes.removed.contains(Change(type: "unlink", path: host.root + "/etc/systemd/system.attached/foo-web.service",
                                                source: "")))
        #expect(!changes.updated.contains { $0.path.hasSuffix("foo-web.service") } && changes.updated.contains { $0.type == "mkdir" })

        // detach: everything attached goes; is-attached then says so and exits 1.
        let detached = try Self.berthctl(host, ["detach", "--json", "foo_1.0"])
        let removed = try JSONDecoder().decode([Change].self, from: Data(detached.stdout.utf8))
        #expect(!removed.isEmpty && removed.allSatisfy { $0.type == "unlink" })
        #expect(host.attachedTree() == ["etc/portables"])
        let gone = try Self.berthctl(host, ["is-attached", "foo_1.0"])
        #expect(gone.status == 1 && gone.stdout == "detached\n")
        let nothing = try Self.berthctl(host, ["detach", "foo_1.0"])
        #expect(nothing.status == 1 && nothing.stderr.contains("No unit files associated with 'foo_1.0' found attached"))

        // --runtime, --copy=symlink and --force: the …WithExtensions member, below /run.
        let runtime = try Self.berthctl(host, ["attach", "--runtime", "--copy", "symlink", "--force", "foo_1.0"])
        #expect(runtime.succeeded, "\(runtime.stderr)")
        #expect(host.attachedTree().contains(
            "run/systemd/system.attached/foo.service -> /var/lib/portables/foo_1.0/usr/lib/systemd/system/foo.service"))
        #expect(try Self.berthctl(host, ["is-attached", "foo_1.0"]).stdout == "attached-runtime\n")
        #expect(try Self.portablectl(host, ["is-attached", "foo_1.0"]).stdout == "attached-runtime\n")
        #expect(try Self.berthctl(host, ["detach", "--runtime", "--force", "foo_1.0"]).succeeded)
        #expect(host.attachedTree() == ["etc/portables", "run/portables"])

        // An extension berthd refuses (no extension-release): its error printed as it comes; nothing attached.
        let ext = try Self.berthctl(host, ["attach", "--extension", host.root + "/var/lib/portables", "foo_1.0"])
        #expect(ext.status == 1 && ext.stderr.contains("has no usr/lib/extension-release.d/extension-release.portables")
                && ext.stderr.contains("(org.freedesktop.DBus.Error.InvalidArgs)"), "\(ext.stderr)")
        #expect(host.attachedTree() == ["etc/portables", "run/portables"])
        // Arguments berthctl refuses itself, as portablectl does.
        #expect(try Self.berthctl(host, ["attach", "foo_1.0", "-"]).stderr.contains("Refusing all unit file match."))
        #expect(try Self.berthctl(host, ["attach", "--copy", "weird", "foo_1.0"]).status != 0)
    }

    @Test func readOnlyLimitAndRemoveManageTheImage() throws {
        let host = try Host()
        defer { host.stop() }
        #expect(try Self.berthctl(host, ["read-only", "foo_1.0"]).succeeded)
        #expect(try Self.rows(host).first?.readOnly == true)
        #expect(try Self.portablectl(host, ["list", "--no-legend"]).stdout.contains("foo_1.0 directory yes"))
        #expect(try Self.berthctl(host, ["read-only", "foo_1.0", "no"]).succeeded)
        #expect(try Self.rows(host).first?.readOnly == false)
        #expect(try Self.berthctl(host, ["read-only", "foo_1.0", "maybe"]).status != 0)

        // set-limit succeeds or fails as portablectl's does (quota depends on the filesystem).
        let limit = try Self.berthctl(host, ["set-limit", "foo_1.0", "10M"])
        let reference = try Self.portablectl(host, ["set-limit", "foo_1.0", "10M"])
        #expect(limit.succeeded == reference.succeeded, "\(limit.stderr) \(reference.stderr)")
        if !limit.succeeded { #expect(limit.status == 1 && limit.stderr.hasPrefix("berthctl: "), "\(limit.stderr)") }

        let missing = try Self.berthctl(host, ["remove", "nope"])
        #expect(missing.status == 1 && missing.stderr == "berthctl: No image 'nope' found. (org.freedesktop.portable1.NoSuchImage)\n")
        #expect(try Self.berthctl(host, ["remove", "foo_1.0"]).succeeded)
        #expect(!FileManager.default.fileExists(atPath: host.image))
        #expect(try Self.rows(host).isEmpty)
        #expect(try Self.berthctl(host, ["list"]).stdout == "No images.\n")
    }
}
