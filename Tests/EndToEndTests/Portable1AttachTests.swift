import Foundation
import Glibc
import Testing
import TestSupport

/// portable1's attach, detach and reattach with the real portablectl 252 against berthd on a
/// private bus without systemd (`--no-reload`), checked file by file against what
/// systemd-portabled 252 wrote for the same image in a booted system
/// (Tests/Fixtures/portable252/attach-reference.txt).
@Suite(.serialized, .requires(.privateBus, .commands("portablectl")))
struct Portable1AttachTests {
    /// berthd serving portable1 over a root with Berth's profiles in ROOT/usr/lib/… and one image.
    final class Host: @unchecked Sendable {
        let bus: PrivateDBusDaemon
        let berthd: BerthdProcess
        var root: String { berthd.root }
        var image: String { root + "/var/lib/portables/foo_1.0" }

        init() throws {
            bus = try PrivateDBusDaemon()
            berthd = try BerthdProcess(bus: bus, services: ["portable1"])
            let profiles = BootedSystemd.packageRoot().appendingPathComponent("dist/portable-profiles").path
            try FileManager.default.createDirectory(atPath: root + "/usr/lib/systemd/portable", withIntermediateDirectories: true)
            try run(["cp", "-a", profiles, root + "/usr/lib/systemd/portable/profile"], check: true)
            try FileManager.default.createDirectory(atPath: "/run/systemd/system", withIntermediateDirectories: true)
            try write([
                "usr/lib/os-release": "ID=debian\nVERSION_ID=12\nPRETTY_NAME=\"Foo OS\"\nPORTABLE_PREFIXES=foo\n",
                "usr/lib/systemd/system/foo.service": "[Unit]\nDescription=Foo\n[Service]\nExecStart=/usr/bin/sleep infinity\n",
                "usr/lib/systemd/system/foo.socket": "[Socket]\nListenStream=/run/foo.sock\n",
                "usr/lib/systemd/system/bar.service": "[Service]\nExecStart=/bin/true\n",
            ], in: image)
            // A known modification time, for the copy mode that keeps it.
            try run(["touch", "-h", "-d", "2020-01-02 03:04:05 UTC", image + "/usr/lib/systemd/system/foo.service"], check: true)
        }

        func write(_ files: [String: String], in folder: String) throws {
            for (path, text) in files {
                let full = folder + "/" + path
                try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try text.write(toFile: full, atomically: false, encoding: .utf8)
            }
        }

        func portablectl(_ args: [String]) throws -> CommandResult {
            try run(["portablectl", "--no-pager", "--no-reload"] + args,
                    environment: ["DBUS_SYSTEM_BUS_ADDRESS": bus.address, "SYSTEMD_COLORS": "0"])
        }

        /// Everything under ROOT/etc and ROOT/run that attach may touch: "path" for folders,
        /// "path -> target" for links, "path: contents" for files; paths relative to the root.
        func attachedTree() -> [String] {
            var result: [String] = []
            for top in ["etc/systemd/system.attached", "etc/portables", "run/systemd/system.attached", "run/portables"] {
                guard FileManager.default.fileExists(atPath: root + "/" + top),
                      let walker = FileManager.default.enumerator(atPath: root + "/" + top) else { continue }
                result.append(top)
                for case let relative as String in walker {
                    let path = root + "/" + top + "/" + relative
                    let shown = top + "/" + relative
                    if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path) {
                        result.append("\(shown) -> \(target.replacingOccurrences(of: root, with: ""))")
                    } else if let text = try? String(contentsOfFile: path, encoding: .utf8) {
                        result.append("\(shown): \(text.replacingOccurrences(of: root, with: ""))")
                    } else {
                        result.append(shown)
                    }
                }
            }
            return result.sorted()
        }

        func stop() {
            berthd.stop()
            bus.stop()
        }
        deinit { stop() }
    }

    static let serviceDropIn = """
        # Drop-in created for image '/var/lib/portables/foo_1.0', do not edit.

        [Service]
        RootDirectory=/var/lib/portables/foo_1.0
        Environment=PORTABLE=foo_1.0
        BindReadOnlyPaths=/etc/os-release:/run/host/os-release
        LogExtraFields=PORTABLE=foo_1.0

        """
    static let socketDropIn = "# Drop-in created for image '/var/lib/portables/foo_1.0', do not edit.\n"

    @Test func attachWritesWhatPortabled252WritesAndDetachRemovesIt() throws {
        let host = try Host()
        defer { host.stop() }
        let attached = try host.portablectl(["attach", "foo_1.0"])
        #expect(attached.succeeded, "\(attached.stderr)")
        // As 252 laid it out for `attach foo_1.0` (the prefix foo: foo.service and foo.socket).
        #expect(host.attachedTree() == [
            "etc/portables",
            "etc/portables/foo_1.0 -> /var/lib/portables/foo_1.0",
            "etc/systemd/system.attached",
            "etc/systemd/system.attached/foo.service: [Unit]\nDescription=Foo\n[Service]\nExecStart=/usr/bin/sleep infinity\n",
            "etc/systemd/system.attached/foo.service.d",
            "etc/systemd/system.attached/foo.service.d/10-profile.conf -> /usr/lib/systemd/portable/profile/default/service.conf",
            "etc/systemd/system.attached/foo.service.d/20-portable.conf: " + Self.serviceDropIn,
            "etc/systemd/system.attached/foo.socket: [Socket]\nListenStream=/run/foo.sock\n",
            "etc/systemd/system.attached/foo.socket.d",
            "etc/systemd/system.attached/foo.socket.d/20-portable.conf: " + Self.socketDropIn,
        ].sorted())
        // portablectl prints the change list in 252's order and words.
        #expect(attached.stderr.contains("Created directory /\(host.root.dropFirst())/etc/systemd/system.attached.\n"
                                         + "Created directory /\(host.root.dropFirst())/etc/systemd/system.attached/foo.service.d.\n"))
        #expect(try host.portablectl(["is-attached", "foo_1.0"]).stdout == "attached\n")
        let listed = try host.portablectl(["list"]).stdout
        #expect(listed.contains("attached"), "\(listed)")

        // Attached means in use: no second attach, no remove, no read-only.
        let again = try host.portablectl(["attach", "foo_1.0"])
        #expect(!again.succeeded && again.stderr.contains("Unit file 'foo.service' exists on the host already, refusing."))
        #expect(!(try host.portablectl(["remove", "foo_1.0"])).succeeded)
        #expect(!(try host.portablectl(["read-only", "foo_1.0"])).succeeded)
        #expect(FileManager.default.fileExists(atPath: host.image + "/usr/lib/os-release"))

        let detached = try host.portablectl(["detach", "foo_1.0"])
        #expect(detached.succeeded, "\(detached.stderr)")
        #expect(host.attachedTree() == ["etc/portables"])
        #expect(try host.portablectl(["is-attached", "foo_1.0"]).stdout == "detached\n")
        let nothing = try host.portablectl(["detach", "foo_1.0"])
        #expect(!nothing.succeeded && nothing.stderr.contains("No unit files associated with 'foo_1.0' found attached to the system"))
    }

    @Test func copyModesLinkOrCopyAsAskedAndCopyKeepsModificationTimes() throws {
        let host = try Host()
        defer { host.stop() }
        let copied = try host.portablectl(["attach", "--copy=copy", "foo_1.0"])
        #expect(copied.succeeded, "\(copied.stderr)")
        let tree = host.attachedTree()
        #expect(tree.contains { $0.hasPrefix("etc/systemd/system.attached/foo.service.d/10-profile.conf: # Berth's \"default\"") })
        var st = stat()
        #expect(lstat(host.root + "/etc/systemd/system.attached/foo.service", &st) == 0)
        #expect(st.st_mtim.tv_sec == 1_577_934_245)  // 2020-01-02 03:04:05 UTC, kept (252 does not keep it)
        #expect(try host.portablectl(["detach", "foo_1.0"]).succeeded)

        #expect(try host.portablectl(["attach", "--copy=symlink", "--runtime", "foo_1.0"]).succeeded)
        #expect(host.attachedTree().contains(
            "run/systemd/system.attached/foo.service -> /var/lib/portables/foo_1.0/usr/lib/systemd/system/foo.service"))
        #expect(host.attachedTree().contains("run/portables/foo_1.0 -> /var/lib/portables/foo_1.0"))
        #expect(try host.portablectl(["is-attached", "foo_1.0"]).stdout == "attached-runtime\n")
        #expect(!(try host.portablectl(["detach", "foo_1.0"])).succeeded)  // not attached persistently
        #expect(try host.portablectl(["detach", "--runtime", "foo_1.0"]).succeeded)
        #expect(host.attachedTree() == ["etc/portables", "run/portables"])
    }

    @Test func refusalsLeaveNothingBehind() throws {
        let host = try Host()
        defer { host.stop() }
        func refused(_ args: [String], _ message: String) throws {
            let r = try host.portablectl(args)
            #expect(!r.succeeded, "\(args) succeeded")
            #expect(r.stderr.contains(message), "\(args): \(r.stderr)")
            #expect(host.attachedTree().isEmpty, "\(args) left \(host.attachedTree())")
        }
        // An unknown profile is refused with the list (252 attaches without any sandbox).
        try refused(["attach", "--profile=nosuch", "foo_1.0"],
                    "Unknown portable profile 'nosuch' (available: default, nonetwork, strict, trusted).")
        try refused(["attach", "foo_1.0", "bar"], "Selected matches 'bar' are not compatible with portable service image")
        // portablectl checks --copy itself; the call as another client would make it.
        let weird = try run(["busctl", "--address=\(host.bus.address)", "call", "org.freedesktop.portable1", "/org/freedesktop/portable1",
                             "org.freedesktop.portable1.Manager", "AttachImage", "sassbs", "foo_1.0", "0", "default", "false", "weird"])
        #expect(!weird.succeeded && weird.stderr.contains("Unknown copy mode 'weird'"), "\(weird.stderr)")
        #expect(host.attachedTree().isEmpty)
        // A unit of the same name on the host: nothing of the image is attached.
        try host.write(["foo.socket": "[Socket]\n"], in: host.root + "/etc/systemd/system")
        try refused(["attach", "foo_1.0"], "Unit file 'foo.socket' exists on the host already, refusing.")
        try FileManager.default.removeItem(atPath: host.root + "/etc/systemd/system/foo.socket")
        // A failure after the unit files are written (the link folder cannot be made): all undone.
        try "not a folder".write(toFile: host.root + "/etc/portables", atomically: false, encoding: .utf8)
        let late = try host.portablectl(["attach", "foo_1.0"])
        #expect(!late.succeeded)
        #expect(!FileManager.default.fileExists(atPath: host.root + "/etc/systemd/system.attached"), "\(host.attachedTree())")
        try FileManager.default.removeItem(atPath: host.root + "/etc/portables")
        #expect(try host.portablectl(["attach", "foo_1.0"]).succeeded)
    }

    @Test func reattachByNameKeepsTheImageAndPicksUpNewUnits() throws {
        let host = try Host()
        defer { host.stop() }
        #expect(try host.portablectl(["attach", "foo_1.0"]).succeeded)
        // The image changes while attached: a new unit, a changed one.
        try host.write(["usr/lib/systemd/system/foo-web.service": "[Service]\nExecStart=/usr/bin/web\n",
                        "usr/lib/systemd/system/foo.socket": "[Socket]\nListenStream=/run/foo2.sock\n"], in: host.image)
        let r = try host.portablectl(["reattach", "foo_1.0"])
        #expect(r.succeeded, "\(r.stderr)")
        let tree = host.attachedTree()
        #expect(tree.contains("etc/systemd/system.attached/foo.socket: [Socket]\nListenStream=/run/foo2.sock\n"))
        #expect(tree.contains { $0.hasPrefix("etc/systemd/system.attached/foo-web.service: ") })
        #expect(tree.contains("etc/portables/foo_1.0 -> /var/lib/portables/foo_1.0"))
        #expect(FileManager.default.fileExists(atPath: host.image + "/usr/lib/os-release"))
        #expect(try host.portablectl(["is-attached", "foo_1.0"]).stdout == "attached\n")
    }

    @Test func anUpgradeIsAReattachToTheNewerVersion() throws {
        let host = try Host()
        defer { host.stop() }
        #expect(try host.portablectl(["attach", "foo_1.0"]).succeeded)
        let newer = host.root + "/var/lib/portables/foo_2.0"
        try host.write([
            "usr/lib/os-release": "ID=debian\nVERSION_ID=12\nPORTABLE_PREFIXES=foo\n",
            "usr/lib/systemd/system/foo.service": "[Service]\nExecStart=/usr/bin/foo --version=2\n",
        ], in: newer)
        let r = try host.portablectl(["reattach", "foo_2.0"])
        #expect(r.succeeded, "\(r.stderr)")
        let tree = host.attachedTree()
        #expect(tree.contains("etc/systemd/system.attached/foo.service: [Service]\nExecStart=/usr/bin/foo --version=2\n"), "\(tree)")
        #expect(tree.contains { $0.contains("20-portable.conf") && $0.contains("RootDirectory=/var/lib/portables/foo_2.0\n") })
        #expect(!tree.contains { $0.contains("foo_1.0") }, "\(tree)")
        // foo.socket came from 1.0 only: gone with it.
        #expect(!tree.contains { $0.hasPrefix("etc/systemd/system.attached/foo.socket") }, "\(tree)")
        #expect(try host.portablectl(["is-attached", "foo_1.0"]).stdout == "detached\n")
        #expect(try host.portablectl(["is-attached", "foo_2.0"]).stdout == "attached\n")
        // A reattach of an image nothing of which is attached is refused, and changes nothing.
        try host.write(["usr/lib/systemd/system/baz.service": "[Service]\n", "usr/lib/os-release": "ID=x\n"],
                       in: host.root + "/var/lib/portables/baz_1.0")
        let none = try host.portablectl(["reattach", "baz_1.0"])
        #expect(!none.succeeded)
        #expect(host.attachedTree() == tree)
    }

    /// Writes an extension folder `name` under the pool: a unit `unit` and, unless nil, the
    /// extension-release file `releaseName` with `release`.
    private func makeExtension(_ host: Host, _ name: String, unit: String, releaseName: String?, release: String) throws {
        var files = ["usr/lib/systemd/system/\(unit)": "[Service]\nExecStart=/usr/bin/\(unit)\n"]
        if let releaseName { files["usr/lib/extension-release.d/extension-release.\(releaseName)"] = release }
        try host.write(files, in: host.root + "/var/lib/portables/\(name)")
    }

    @Test func extensionsAddTheirUnitsOverlaidAndMustMatchTheImage() throws {
        let host = try Host()
        defer { host.stop() }
        // A versioned extension: foo-ext_1 carries extension-release.foo-ext.
        try makeExtension(host, "foo-ext_1", unit: "foo-ext.service", releaseName: "foo-ext", release: "ID=debian\nVERSION_ID=12\n")
        let attached = try host.portablectl(["attach", "--extension", "foo-ext_1", "foo_1.0"])
        #expect(attached.succeeded, "\(attached.stderr)")
        let tree = host.attachedTree()
        let extensionDropIn = try #require(tree.first { $0.hasPrefix("etc/systemd/system.attached/foo-ext.service.d/20-portable.conf: ") })
        #expect(extensionDropIn.contains("RootDirectory=/var/lib/portables/foo_1.0\nExtensionDirectories=/var/lib/portables/foo-ext_1\n"),
                "\(extensionDropIn)")
        // The image's own units run without the extension.
        let ownDropIn = try #require(tree.first { $0.hasPrefix("etc/systemd/system.attached/foo.service.d/20-portable.conf: ") })
        #expect(!ownDropIn.contains("Extension"))
        #expect(tree.contains("etc/portables/foo-ext_1 -> /var/lib/portables/foo-ext_1"), "\(tree)")
        #expect(tree.contains("etc/portables/foo_1.0 -> /var/lib/portables/foo_1.0"))

        // The metadata lists each extension's release file by its path.
        let metadata = try run(["busctl", "--address=\(host.bus.address)", "--json=short", "call", "org.freedesktop.portable1",
                                "/org/freedesktop/portable1", "org.freedesktop.portable1.Manager", "GetImageMetadataWithExtensions",
                                "sasast", "foo_1.0", "1", "foo-ext_1", "0", "0"], check: true)
        let reply = try #require(try JSONSerialization.jsonObject(with: Data(metadata.stdout.utf8)) as? [String: Any])
        let data = try #require(reply["data"] as? [Any])
        let extensions = try #require(data[2] as? [String: [Int]])
        #expect(extensions["\(host.root)/var/lib/portables/foo-ext_1"].map { String(decoding: $0.map(UInt8.init), as: UTF8.self) }
                == "ID=debian\nVERSION_ID=12\n")
        // No matches: every unit of the image and of the extension.
        #expect((data[3] as? [String: Any])?.keys.sorted() == ["bar.service", "foo-ext.service", "foo.service", "foo.socket"])

        let detached = try host.portablectl(["detach", "--extension", "foo-ext_1", "foo_1.0"])
        #expect(detached.succeeded, "\(detached.stderr)")
        #expect(host.attachedTree() == ["etc/portables"])
    }

    @Test func extensionsForAnotherImageOrWithoutAReleaseAreRefused() throws {
        let host = try Host()
        defer { host.stop() }
        try makeExtension(host, "foo-other", unit: "foo-other.service", releaseName: "foo-other", release: "ID=fedora\n")
        try makeExtension(host, "foo-old", unit: "foo-old.service", releaseName: "foo-old", release: "ID=debian\nVERSION_ID=11\n")
        try makeExtension(host, "foo-any", unit: "foo-any.service", releaseName: "foo-any", release: "ID=_any\n")
        try makeExtension(host, "foo-none", unit: "foo-none.service", releaseName: nil, release: "")
        try makeExtension(host, "foo-misnamed", unit: "foo-misnamed.service", releaseName: "elsewhere", release: "ID=debian\n")
        for (name, message) in [("foo-other", "is for ID=fedora"), ("foo-old", "is for VERSION_ID=11"),
                                ("foo-none", "has no usr/lib/extension-release.d/extension-release.foo-none"),
                                ("foo-misnamed", "has no usr/lib/extension-release.d/extension-release.foo-misnamed")] {
            let r = try host.portablectl(["attach", "--extension", name, "foo_1.0"])
            #expect(!r.succeeded && r.stderr.contains(message), "\(name): \(r.stderr)")
            #expect(host.attachedTree().isEmpty, "\(name) left \(host.attachedTree())")
        }
        // _any extends every image.
        #expect(try host.portablectl(["attach", "--extension", "foo-any", "foo_1.0"]).succeeded)
        #expect(try host.portablectl(["detach", "--extension", "foo-any", "foo_1.0"]).succeeded)
        // FORCE_EXTENSION (portablectl --force) accepts a release file of another name and does not
        // compare it; none at all is still refused.
        #expect(try host.portablectl(["attach", "--force", "--extension", "foo-misnamed", "foo_1.0"]).succeeded)
        #expect(try host.portablectl(["detach", "--force", "--extension", "foo-misnamed", "foo_1.0"]).succeeded)
        #expect(!(try host.portablectl(["attach", "--force", "--extension", "foo-none", "foo_1.0"])).succeeded)
        #expect(host.attachedTree() == ["etc/portables"])
    }

    /// A disk image made by `tool` from a folder with the image's files; nil where the tool is missing.
    private func diskImage(_ host: Host, _ name: String, _ make: (String, String) -> [String]) throws -> String {
        let tree = host.root + "/tree-" + name
        try host.write([
            "usr/lib/os-release": "ID=debian\nVERSION_ID=12\nPORTABLE_PREFIXES=\(name)\n",
            "usr/lib/systemd/system/\(name).service": "[Service]\nExecStart=/usr/bin/\(name)\n",
        ], in: tree)
        try FileManager.default.createDirectory(atPath: tree + "/etc", withIntermediateDirectories: true)
        let file = host.root + "/var/lib/portables/\(name)_1.0.raw"
        try run(make(tree, file), check: true)
        try FileManager.default.removeItem(atPath: tree)
        return file
    }

    @Test(arguments: ["ext4", "squashfs", "erofs"])
    func rawImagesAttachWithRootImage(_ kind: String) throws {
        let host = try Host()
        defer { host.stop() }
        let name = "raw" + kind
        let file = try diskImage(host, name) { tree, file in
            switch kind {
            case "ext4": ["mkfs.ext4", "-q", "-F", "-d", tree, file, "16M"]
            case "squashfs": ["mksquashfs", tree, file, "-quiet", "-noappend", "-all-root"]
            default: ["mkfs.erofs", "--all-root", file, tree]
            }
        }
        let inspected = try host.portablectl(["inspect", "\(name)_1.0"])
        #expect(inspected.succeeded && inspected.stdout.contains("\(name).service"), "\(inspected.stdout)\(inspected.stderr)")
        let attached = try host.portablectl(["attach", "--copy=symlink", "\(name)_1.0"])
        #expect(attached.succeeded, "\(attached.stderr)")
        let tree = host.attachedTree()
        // The unit is copied out of the disk image (there is nothing to link to), and runs with RootImage=.
        #expect(tree.contains("etc/systemd/system.attached/\(name).service: [Service]\nExecStart=/usr/bin/\(name)\n"), "\(tree)")
        #expect(tree.contains { $0.hasPrefix("etc/systemd/system.attached/\(name).service.d/20-portable.conf: ")
                               && $0.contains("RootImage=/var/lib/portables/\(name)_1.0.raw\n") }, "\(tree)")
        #expect(tree.contains("etc/portables/\(name)_1.0.raw -> /var/lib/portables/\(name)_1.0.raw"), "\(tree)")
        #expect(try host.portablectl(["is-attached", "\(name)_1.0"]).stdout == "attached\n")
        #expect(try host.portablectl(["detach", "\(name)_1.0"]).succeeded)
        #expect(host.attachedTree() == ["etc/portables"])
        #expect(FileManager.default.fileExists(atPath: file))
    }
}
