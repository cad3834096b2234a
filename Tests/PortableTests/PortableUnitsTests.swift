import Foundation
import Linux
import Portable
import Testing
import TestSupport

/// The unit files of a portable image and the attached state, on image trees made here, with
/// what systemd-portabled 252 answered for the same trees (measured on a private bus).
struct PortableUnitsTests {
    /// Writes `files` (path in the image → contents) and `links` (path → target) under a new root.
    private func image(_ files: [String: String], links: [String: String] = [:]) throws -> TemporaryDirectory {
        let root = try TemporaryDirectory(prefix: "portable-image")
        for (path, text) in files {
            let full = root.appending(path)
            try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: full, atomically: false, encoding: .utf8)
        }
        for (path, target) in links {
            let full = root.appending(path)
            try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: full, withDestinationPath: target)
        }
        return root
    }

    @Test func aMatchIsTheNameOrItsPrefixBeforeDotDashOrAt() {
        #expect(PortableUnits.unit("foo.service", matches: "foo"))
        #expect(PortableUnits.unit("foo-web.socket", matches: "foo"))
        #expect(PortableUnits.unit("foo@.service", matches: "foo"))
        #expect(PortableUnits.unit("foo.service", matches: "foo.service"))
        #expect(PortableUnits.unit("foo-etc.service", matches: "foo-etc"))
        #expect(!PortableUnits.unit("foobar.service", matches: "foo"))
        #expect(!PortableUnits.unit("foo.service", matches: "fo"))
        #expect(!PortableUnits.unit("foo-etc.service", matches: "foo-"))
        #expect(PortableUnits.unit("anything.service", matchesAny: []))
    }

    @Test func unitNamesAreSystemdsPlainTemplateAndInstanceNames() {
        for good in ["foo.service", "foo@.service", "foo@bar.timer", "a-b_c:d\\x2d.socket", "x.target"] {
            #expect(PortableUnits.isValidUnitName(good), "\(good)")
        }
        for bad in ["foo", "foo.conf", ".service", "@x.service", "a@b@c.service", "foo readme.service", "foo/x.service",
                    String(repeating: "a", count: 250) + ".service"] {
            #expect(!PortableUnits.isValidUnitName(bad), "\(bad)")
        }
    }

    @Test func theFirstFolderOfSystemdsOrderWinsAndOnlyRegularFilesCount() throws {
        let root = try image([
            "etc/systemd/system/foo.service": "etc",
            "usr/lib/systemd/system/foo.service": "usr",
            "lib/systemd/system/foo.socket": "lib",
            "usr/lib/systemd/system/foo.socket": "usr",
            "run/systemd/system/foo-run.service": "run",
            "usr/local/lib/systemd/system/foo-local.service": "local",
            "usr/lib/systemd/system/foo-readme": "not a unit",
            "usr/lib/systemd/system/foolib.service": "other prefix",
            "usr/lib/systemd/system/foo-dir.service/x": "a folder is no unit",
        ], links: ["usr/lib/systemd/system/foo-link.service": "foo.socket"])
        defer { root.remove() }
        let units = try PortableUnits.read(imageRoot: root.path, matches: ["foo"])
        let byName = Dictionary(uniqueKeysWithValues: units.map { ($0.name, String(decoding: $0.contents, as: UTF8.self)) })
        // As portabled 252 answered for the same tree: /etc first, /lib before /usr/lib.
        #expect(byName == ["foo.service": "etc", "foo.socket": "lib", "foo-run.service": "run",
                           "foo-local.service": "local", "foo-link.service": "usr"])
        #expect(units.map(\.name) == units.map(\.name).sorted())
    }

    @Test func aUnitSymlinkResolvesInsideTheImageNeverOnTheHost() throws {
        // portabled 252 returns the host's /etc/passwd for such a link; Berth reads the image's.
        let root = try image(["etc/passwd": "the image's own\n"],
                             links: ["usr/lib/systemd/system/foo-abs.service": "/etc/passwd",
                                     "usr/lib/systemd/system/foo-up.service": "../../../../../../../etc/shadow"])
        defer { root.remove() }
        let units = try PortableUnits.read(imageRoot: root.path, matches: [])
        #expect(units.map(\.name) == ["foo-abs.service"])
        #expect(String(decoding: units.first?.contents ?? [], as: UTF8.self) == "the image's own\n")
    }

    @Test func metadataCarriesTheOSReleaseFileAsItIs() throws {
        let text = "ID=debian\nPRETTY_NAME=\"Foo OS\"\nPORTABLE_PREFIXES=foo\n"
        let root = try image(["usr/lib/os-release": text, "usr/lib/systemd/system/foo.service": "[Service]\n"],
                             links: ["etc/os-release": "../usr/lib/os-release"])
        defer { root.remove() }
        let metadata = try PortableMetadata.read(imageRoot: root.path, matches: ["foo"])
        #expect(String(decoding: metadata.osRelease, as: UTF8.self) == text)
        #expect(metadata.units.map(\.name) == ["foo.service"])
    }

    @Test func theStateComesFromTheMarkersOfAttachedDropIns() throws {
        let marker = { (image: String) in "# Drop-in created for image '\(image)', do not edit.\n[Service]\n" }
        let root = try image([
            "etc/systemd/system.attached/foo.service": "[Service]\n",
            "etc/systemd/system.attached/foo.service.d/20-portable.conf": marker("/var/lib/portables/foo_1.0"),
            "run/systemd/system.attached/bar.service": "[Service]\n",
            "run/systemd/system.attached/bar.service.d/20-portable.conf": marker("/somewhere/bar.raw"),
            "etc/systemd/system.attached/baz.service": "[Service]\n",
            "etc/systemd/system.attached/baz.service.d/20-portable.conf": "[Service]\n# no marker\n",
        ])
        defer { root.remove() }
        #expect(PortableState.fileState(of: "foo_1.0", root: root.path) == .attached)
        // A path is compared by its file name, as 252 does.
        #expect(PortableState.fileState(of: "/elsewhere/foo_1.0", root: root.path) == .attached)
        #expect(PortableState.fileState(of: "bar", root: root.path) == .attachedRuntime)
        #expect(PortableState.fileState(of: "baz", root: root.path) == .detached)
        #expect(PortableState.fileState(of: "foo", root: root.path) == .detached)
        #expect(PortableState.attachedUnits(of: "foo_1.0", root: root.path).persistent == ["foo.service"])
    }
}
