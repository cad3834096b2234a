import Foundation
import Glibc
import Linux
import TestSupport
import Testing
@testable import Transfer
@testable import TransferJobs

@Suite("OCI pull pieces: references, bearer challenges, nspawn settings, layer application")
struct OciTests {
    @Test("references: registry, repository, tag, digest, Docker Hub defaults; malformed ones refused")
    func references() throws {
        let r = try #require(OciReference("127.0.0.1:5000/team/app:1.0"))
        #expect(r.registry == "127.0.0.1:5000" && r.repository == "team/app" && r.tag == "1.0" && r.digest == nil)
        #expect(r.isLoopback && r.defaultImageName == "app" && r.manifestReference == "1.0")
        let digest = "sha256:" + String(repeating: "0f", count: 32)
        let d = try #require(OciReference("quay.io/a/b@\(digest)"))
        #expect(d.registry == "quay.io" && d.digest == digest && d.tag == nil && d.manifestReference == digest && !d.isLoopback)
        let hub = try #require(OciReference("debian"))
        #expect(hub.registry == "registry-1.docker.io" && hub.repository == "library/debian" && hub.tag == "latest")
        #expect(OciReference("localhost/x")?.registry == "localhost")
        for bad in ["", "Upper/case", "a/../b", "a//b", "reg.io/a:b:c", "reg.io/a@sha256:12", "reg.io/a@md5:" + String(repeating: "0", count: 32),
                    "reg.io/a b", "reg.io/-a", "reg.io/a:-tag", "reg.io/a\n", String(repeating: "a", count: 2000)] {
            #expect(OciReference(bad) == nil, "\(bad)")
        }
    }

    @Test("WWW-Authenticate Bearer challenges parse; other schemes do not")
    func bearerChallenges() {
        let c = BearerChallenge(#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#)
        #expect(c?.realm == "https://auth.example/token" && c?.service == "registry.example" && c?.scope == "repository:a/b:pull")
        #expect(BearerChallenge(#"Basic realm="x""#) == nil)
        #expect(BearerChallenge("Bearer service=x") == nil)
    }

    @Test("nspawn settings quote values so none can end its line; control characters are left out")
    func settings() throws {
        var config = OciImageConfig()
        config.config = .init(Env: ["A=1", "Q=say \"hi\" \\o/", "BAD=x\ny=[Files]"], Entrypoint: ["/bin/sh", "-c"],
                              Cmd: ["echo \"$A\""], WorkingDir: "/srv", User: "1000:1000")
        let (text, warnings) = OciSettings.nspawn(config, reference: "r/x:1")
        #expect(text.contains("Boot=no\n"))
        #expect(text.contains(#"Parameters="/bin/sh" "-c" "echo \"$A\"""#), "\(text)")
        #expect(text.contains(#"Environment="Q=say \"hi\" \\o/""#), "\(text)")
        #expect(!text.contains("[Files]") && !text.contains("User="), "\(text)")
        #expect(text.contains("WorkingDirectory=/srv\n"))
        #expect(warnings.count == 2, "\(warnings)")
    }

    /// A tar layer written by Python's tarfile from (name, kind, data/link) entries.
    static func layer(_ path: String, _ entries: [(String, String, String)]) throws {
        let spec = entries.map { "(\(pyString($0.0)), \(pyString($0.1)), \(pyString($0.2)))" }.joined(separator: ", ")
        _ = try run(["/usr/bin/python3", "-c", """
            import io, sys, tarfile
            with tarfile.open(sys.argv[1], 'w') as t:
                for name, kind, data in [\(spec)]:
                    i = tarfile.TarInfo(name)
                    if kind == 'dir': i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
                    elif kind == 'link': i.type = tarfile.SYMTYPE; i.linkname = data; t.addfile(i)
                    else: b = data.encode(); i.size = len(b); t.addfile(i, io.BytesIO(b))
            """, path], check: true)
    }

    private static func pyString(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "\\'") + "'" }

    private func apply(_ tar: String, into tree: String) throws {
        let dir = try FileDescriptor.openDirectory(tree, followSymlinks: false)
        defer { dir.close() }
        let blob = try FileDescriptor.open(tar, flags: O_RDONLY)
        defer { blob.close() }
        try OciLayers.applyUnconfined(blob: blob, into: dir)
    }

    @Test("layers: whiteouts and opaque directories touch only lower layers; a file replaces a directory; nothing escapes through a symlink or ..")
    func layerApplication() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let tree = tmp.appending("tree"), outside = tmp.appending("outside")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        try "keep".write(toFile: outside + "/victim", atomically: true, encoding: .utf8)
        try Self.layer(tmp.appending("1.tar"), [("a", "dir", ""), ("a/old", "file", "1"), ("a/sub", "dir", ""), ("a/sub/deep", "file", "1"),
                                                ("b", "dir", ""), ("b/x", "file", "1"), ("c", "dir", ""), ("c/inner", "file", "1"),
                                                ("out", "link", outside)])
        try apply(tmp.appending("1.tar"), into: tree)
        // The opaque marker after this layer's own a/new: a/new stays, the lower entries go.
        try Self.layer(tmp.appending("2.tar"), [("a/new", "file", "2"), ("a/.wh..wh..opq", "file", ""), ("b/.wh.x", "file", ""),
                                                ("c", "file", "now a file")])
        try apply(tmp.appending("2.tar"), into: tree)
        #expect(try FileManager.default.contentsOfDirectory(atPath: tree + "/a") == ["new"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: tree + "/b").isEmpty)
        #expect(try String(contentsOfFile: tree + "/c", encoding: .utf8) == "now a file")

        // Hostile layers: a whiteout through the symlink, a `..` path, a file through the symlink.
        for (i, entries) in [[("out/.wh.victim", "file", "")], [("../outside/.wh.victim", "file", "")],
                             [("out/victim", "file", "overwritten")]].enumerated() {
            let tar = tmp.appending("hostile\(i).tar")
            try Self.layer(tar, entries)
            #expect(throws: (any Error).self, "\(entries)") { try apply(tar, into: tree) }
            #expect(try String(contentsOfFile: outside + "/victim", encoding: .utf8) == "keep", "\(entries)")
        }
    }
}

extension OciImageConfig {
    init() { self.init(architecture: nil, os: nil, config: nil) }
}
