import Foundation
import Glibc
import Testing
import TestSupport

/// berthd and `ROOT/etc/berth/backends.d/*.conf`: a bad file stops it at start naming the file
/// and line; without one it runs as before with no Ceph library loaded.
@Suite(.requires(.privateBus))
struct BackendConfigTests {
    @Test func aBadBackendFileStopsBerthdNamingFileAndLine() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        var root = ""
        do {
            let berthd = try BerthdProcess(bus: bus, services: ["machine1"]) { r in
                root = r
                let folder = r + "/etc/berth/backends.d"
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                try "[rbd]\npool=berth\npol=typo\n".write(toFile: folder + "/rbd.conf", atomically: false, encoding: .utf8)
            }
            berthd.stop()
            Issue.record("berthd started with a bad backends.d file")
        } catch {
            let text = "\(error)"
            #expect(text.contains("\(root)/etc/berth/backends.d/rbd.conf:3: unknown key 'pol'"), "\(text)")
        }
    }

    @Test func withoutBackendFilesBerthdLoadsNoCephLibrary() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["machine1"]) { r in
            // An empty folder and a non-.conf file: still nothing configured.
            let folder = r + "/etc/berth/backends.d"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try "[rbd]\npool=x\n".write(toFile: folder + "/rbd.conf.disabled", atomically: false, encoding: .utf8)
        }
        defer { berthd.stop() }
        // A call that lists images, so the pool has run.
        let listed = try run(["busctl", "--address=\(bus.address)", "call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                              "org.freedesktop.machine1.Manager", "ListImages"], check: true)
        #expect(listed.stdout.hasPrefix("a(ssbttto)"))
        let maps = try String(contentsOfFile: "/proc/\(berthd.pid)/maps", encoding: .utf8)
        #expect(!maps.contains("librados") && !maps.contains("librbd"))
    }
}
