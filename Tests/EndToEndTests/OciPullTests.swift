import Foundation
import Glibc
import Testing
import TestSupport

/// import1's PullOci against a real registry (Debian's docker-registry on 127.0.0.1, images
/// pushed with skopeo), driven by berthctl pull-oci and busctl.
@Suite(.serialized, .requires(ociRequirements))
struct OciPullTests {
    /// A registry holding the fixtures, and berthd on its own bus and root.
    final class Host: @unchecked Sendable {
        let registry: OciRegistry
        let site: Import1Site
        let fixtures: OciFixtures

        init(tls: Bool = false) throws {
            fixtures = try OciFixtures.shared.get()
            registry = try OciRegistry(tls: tls)
            do {
                for name in ["base", "base2", "multi", "lonely"] {
                    try registry.push(layout: fixtures.layout(name), tag: "v1", as: "berth/\(name)")
                }
                site = try Import1Site()
            } catch {
                registry.stop()
                throw error
            }
        }

        /// `berthctl pull-oci ARGS…` against berthd; its result (stderr has the log lines).
        func pull(_ arguments: [String]) throws -> CommandResult {
            try run(["timeout", "300", try BerthdProcess.binaryPath("berthctl"), "pull-oci", "--bus-address", site.bus.address] + arguments)
        }

        var pool: String { site.poolPath }

        /// Nothing of a failed pull of `name` is in the pool: no image, no settings file, no
        /// temp entry, no blob in the cache that is not what its name says.
        func expectNothingLeft(of name: String, _ context: String) throws {
            let entries = try site.poolEntries()
            #expect(!entries.contains(name) && !entries.contains(name + ".nspawn"), "\(context): \(entries)")
            #expect(entries.filter { $0.hasPrefix(".#") && $0 != ".#berth-oci-cache" }.isEmpty, "\(context): \(entries)")
            #expect(try corruptCacheEntries(pool: pool).isEmpty, "\(context)")
        }

        func close() {
            site.close()
            registry.stop()
        }
    }

    @Test("pull-oci by tag applies three layers (gzip, zstd, plain) with a deleted file and an opaque directory, keeps the config, and systemd-nspawn runs the image as its config says")
    func pullsByTagWithWhiteoutsAndNspawnRunsIt() throws {
        let host = try Host()
        defer { host.close() }
        let r = try host.pull(["\(host.registry.address)/berth/base:v1", "web"])
        #expect(r.succeeded, "\(r.stderr)\n\(host.site.log)")
        let image = host.pool + "/web"
        let files = FileManager.default
        // Layer 1, then layer 2's whiteouts: etc/gone deleted, opt/dir emptied of layer 1's entries.
        #expect(try String(contentsOfFile: image + "/etc/os-release", encoding: .utf8) == "ID=ocitest\n")
        #expect(!files.fileExists(atPath: image + "/etc/gone"))
        #expect(try files.contentsOfDirectory(atPath: image + "/opt/dir").sorted() == ["new"])
        #expect(try String(contentsOfFile: image + "/etc/added", encoding: .utf8) == "added\n")
        #expect(try String(contentsOfFile: image + "/etc/motd", encoding: .utf8) == "layer three\n")
        #expect(try files.destinationOfSymbolicLink(atPath: image + "/bin/sh") == "busybox")
        let config = try String(contentsOfFile: image + "/.oci-config.json", encoding: .utf8)
        #expect(config.contains("GREETING=hello from oci"))
        let settings = try String(contentsOfFile: host.pool + "/web.nspawn", encoding: .utf8)
        #expect(settings.contains("Parameters=\"/bin/sh\" \"-c\" \"env; pwd\""), "\(settings)")
        #expect(settings.contains("Environment=\"GREETING=hello from oci\"") && settings.contains("WorkingDirectory=/work"), "\(settings)")
        // A normal image of the pool: machinectl lists it; the layer cache is not an image.
        let listed = try host.site.machinectl(["list-images", "--all", "--no-legend"]).stdout
        #expect(listed.contains("web") && !listed.contains("berth-oci-cache"), "\(listed)")
        #expect(try host.site.tempEntries() == [".#berth-oci-cache"])

        // systemd-nspawn reads web.nspawn beside the image and runs `env; pwd` in /work.
        let group = "berth-test-oci-\(getpid())"
        var enter: [String] = []
        for h in ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"] where files.fileExists(atPath: h + "/cgroup.procs") {
            mkdir("\(h)/\(group)", 0o755)
            enter.append("echo $$ > \(h)/\(group)/cgroup.procs")
        }
        defer { for h in ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"] { rmdir("\(h)/\(group)") } }
        let nspawn = try run(["sh", "-c", (enter + ["exec timeout 60 systemd-nspawn -q --register=no --keep-unit -D '\(image)' </dev/null"])
                                .joined(separator: "; ")], environment: host.site.bus.environment)
        #expect(nspawn.stdout.contains("GREETING=hello from oci") && nspawn.stdout.contains("/work"), "\(nspawn.stdout)\n\(nspawn.stderr)")
    }

    @Test("pull-oci by digest, a multi-arch index picks the host's image, and a second pull downloads only the layers the cache lacks")
    func pullsByDigestAndIndexAndReusesCachedLayers() throws {
        let host = try Host()
        defer { host.close() }
        let digest = try host.registry.manifestDigest("berth/base", "v1")
        var r = try host.pull(["\(host.registry.address)/berth/base@\(digest)", "bydigest"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: host.pool + "/bydigest/etc/motd"))
        #expect(r.stderr.contains("Downloading layer") && r.stderr.components(separatedBy: "Downloading layer").count == 4, "\(r.stderr)")

        // base2 shares base's first two layers: only its third is downloaded.
        r = try host.pull(["\(host.registry.address)/berth/base2:v1"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stderr.components(separatedBy: "Downloading layer").count == 2, "\(r.stderr)")
        #expect(r.stderr.contains("2 layer(s) found in the layer cache"), "\(r.stderr)")
        #expect(try String(contentsOfFile: host.pool + "/base2/etc/motd", encoding: .utf8) == "another layer three\n")
        #expect(!FileManager.default.fileExists(atPath: host.pool + "/base2/etc/gone"))

        // The index holds arm64 first and amd64 second: the host's architecture wins.
        r = try host.pull(["\(host.registry.address)/berth/multi:v1", "multi"])
        #expect(r.succeeded, "\(r.stderr)")
        let machine = try run(["uname", "-m"], check: true).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let arch = machine == "aarch64" ? "arm64" : "amd64"
        #expect(try String(contentsOfFile: host.pool + "/multi/arch", encoding: .utf8) == arch + "\n")

        // A digest the registry does not have: 404, nothing left.
        let unknown = "sha256:" + String(repeating: "ab", count: 32)
        r = try host.pull(["\(host.registry.address)/berth/base@\(unknown)", "nosuch"])
        #expect(!r.succeeded && r.stderr.contains("404"), "\(r.stderr)")
        try host.expectNothingLeft(of: "nosuch", "unknown digest")
        #expect(try corruptCacheEntries(pool: host.pool).isEmpty)

        // The cache outlives a berthd restart (its start-up clean-up removes other `.#` entries)…
        let cache = host.pool + "/.#berth-oci-cache/blobs"
        let cached = try FileManager.default.contentsOfDirectory(atPath: cache)
        host.site.killBerthd()
        try host.site.startBerthd()
        #expect(try FileManager.default.contentsOfDirectory(atPath: cache) == cached)
        // …and CleanPool removes it, leaving the images.
        let clean = try host.site.machinectl(["clean"])
        #expect(clean.succeeded, "\(clean.stderr)")
        #expect(!FileManager.default.fileExists(atPath: host.pool + "/.#berth-oci-cache"))
        #expect(try host.site.poolEntries().filter { !$0.hasPrefix(".") }.sorted() == ["base2", "base2.nspawn", "bydigest", "bydigest.nspawn", "multi", "multi.nspawn"])
    }

    @Test("a tampered blob, a missing tag and an unreachable registry each fail with a clear error and leave nothing in the pool; bad arguments are InvalidArgs")
    func failuresLeaveNothing() throws {
        let host = try Host()
        defer { host.close() }
        // Corrupt the layer blob in the registry's own storage: the registry serves it as is.
        let manifest = try run(["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://\(host.registry.address)/berth/lonely:v1"],
                               check: true).stdout
        let json = try #require(try JSONSerialization.jsonObject(with: Data(manifest.utf8)) as? [String: Any])
        let layers = try #require(json["layers"] as? [[String: Any]])
        let layerDigest = try #require(layers.first?["digest"] as? String)
        let blob = host.registry.blobFile(layerDigest)
        var bytes = try #require(FileManager.default.contents(atPath: blob))
        bytes[bytes.count / 2] ^= 0xff
        try bytes.write(to: URL(fileURLWithPath: blob))
        var r = try host.pull(["\(host.registry.address)/berth/lonely:v1", "tampered"])
        #expect(!r.succeeded && r.stderr.contains("digest mismatch"), "\(r.stderr)")
        try host.expectNothingLeft(of: "tampered", "tampered blob")
        #expect(!FileManager.default.fileExists(atPath: host.pool + "/.#berth-oci-cache/blobs/sha256-" + layerDigest.dropFirst(7)))

        r = try host.pull(["\(host.registry.address)/berth/base:nosuchtag", "missing"])
        #expect(!r.succeeded && r.stderr.contains("not found") && r.stderr.contains("404"), "\(r.stderr)")
        try host.expectNothingLeft(of: "missing", "missing tag")

        let closed = try freeLoopbackPort()
        r = try host.pull(["127.0.0.1:\(closed)/berth/base:v1", "unreachable"])
        #expect(!r.succeeded && r.stderr.contains("cannot reach"), "\(r.stderr)")
        try host.expectNothingLeft(of: "unreachable", "unreachable registry")

        // Refused before any transfer starts.
        func call(_ ref: String, _ name: String, _ imageClass: String, _ flags: String) throws -> CommandResult {
            try host.site.callManager("PullOci", ["'\(ref)'", "'\(name)'", "'\(imageClass)'", "uint64 \(flags)"])
        }
        for (ref, name, imageClass, flags) in [("Upper/Case:v1", "x", "machine", "0"), ("127.0.0.1:1/a/../b:v1", "x", "machine", "0"),
                                               ("127.0.0.1:1/a:v1", "../x", "machine", "0"), ("127.0.0.1:1/a:v1", "x", "machine", "8"),
                                               ("127.0.0.1:1/a:v1", "x", "nosuchclass", "0")] {
            let refused = try call(ref, name, imageClass, flags)
            #expect(!refused.succeeded && refused.stderr.contains("org.freedesktop.DBus.Error.InvalidArgs"),
                    "\(ref) \(name) \(imageClass) \(flags): \(refused.stderr)")
        }
        #expect(try host.site.poolEntries().filter { !$0.hasPrefix(".#") }.isEmpty)
        #expect(host.site.answers)
    }

    @Test("a TLS registry with a self-made certificate: refused until its CA is in ROOT/etc/berth/certs.d/HOST:PORT/ca.crt (no fall-back to plain HTTP), then pulled")
    func tlsRegistryNeedsItsCA() throws {
        let host = try Host(tls: true)
        defer { host.close() }
        var r = try host.pull(["\(host.registry.address)/berth/base:v1", "secure"])
        #expect(!r.succeeded && r.stderr.lowercased().contains("certificate"), "\(r.stderr)")
        try host.expectNothingLeft(of: "secure", "untrusted certificate")

        let certs = host.site.root + "/etc/berth/certs.d/\(host.registry.address)"
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: host.registry.caFile, toPath: certs + "/ca.crt")
        r = try host.pull(["\(host.registry.address)/berth/base:v1", "secure"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: host.pool + "/secure/etc/motd"))
    }

    @Test("a registry that wants a bearer token: the token is fetched from the realm for the challenge's scope and sent with every request; blobs follow a redirect")
    func pullsWithTokenAuth() throws {
        let host = try Host()
        defer { host.close() }
        let registry = try TokenRegistry(layout: host.fixtures.layout("base"), name: "base")
        defer { registry.stop() }
        let r = try host.pull(["\(registry.address)/berth/base:v1", "tokened"])
        #expect(r.succeeded, "\(r.stderr)\n\(registry.log)")
        #expect(try String(contentsOfFile: host.pool + "/tokened/etc/motd", encoding: .utf8) == "layer three\n")
        let log = registry.log
        #expect(log.contains("GET /token?service=berth-test&scope=repository%3Aberth%2Fbase%3Apull"), "\(log)")
        #expect(log.contains("/manifests/v1 Bearer berth-test-token") && log.contains("/blobs/sha256:"), "\(log)")
    }

    @Test("on a btrfs pool, a pull sharing its first two layers with an earlier one starts from a snapshot of the tree after them; CleanPool removes the snapshots with the cache",
          .requires(.loopFilesystems))
    func btrfsPullStartsFromTheSharedLayersSnapshot() throws {
        let host = try Host()
        defer { host.close() }
        let fs = try LoopbackFilesystem(.btrfs, size: 512 << 20)
        defer { fs.remove() }
        _ = try run(["mount", "--bind", fs.mountPoint, host.pool], check: true)
        defer { _ = try? run(["umount", "-l", host.pool]) }
        var r = try host.pull(["\(host.registry.address)/berth/base:v1", "first"])
        #expect(r.succeeded, "\(r.stderr)")
        r = try host.pull(["\(host.registry.address)/berth/base2:v1", "second"])
        #expect(r.succeeded && r.stderr.contains("Starting from a snapshot of the tree after 2 layer(s)"), "\(r.stderr)")
        #expect(!r.stderr.contains("Applying layer 1/3") && r.stderr.contains("Applying layer 3/3"), "\(r.stderr)")
        let second = host.pool + "/second"
        #expect(try String(contentsOfFile: second + "/etc/motd", encoding: .utf8) == "another layer three\n")
        #expect(!FileManager.default.fileExists(atPath: second + "/etc/gone"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: second + "/opt/dir") == ["new"])
        #expect(FileManager.default.fileExists(atPath: second + "/bin/busybox"))
        #expect(try String(contentsOfFile: host.pool + "/first/etc/motd", encoding: .utf8) == "layer three\n")
        #expect(try run(["btrfs", "subvolume", "show", second]).succeeded)
        let clean = try host.site.machinectl(["clean"])
        #expect(clean.succeeded, "\(clean.stderr)")
        #expect(!FileManager.default.fileExists(atPath: host.pool + "/.#berth-oci-cache"))
        #expect(FileManager.default.fileExists(atPath: second + "/etc/motd"))
    }
}
