import Foundation
import Testing
import TestSupport

/// berthd links no Ceph library and maps none while no RBD pool is configured: the Rbd module
/// dlopens librbd/librados only at first use, so a berthd without RBD keeps its idle memory.
@Suite(.requires(.root, .privateBus))
struct CephNotLoadedTests {
    @Test func berthdLinksNoCephLibrary() throws {
        let berthd = try BerthdProcess.binaryPath()
        let result = try run(["readelf", "-d", berthd], check: true)
        let needed = result.stdout.split(separator: "\n").filter { $0.contains("(NEEDED)") }
        #expect(!needed.isEmpty)
        #expect(!needed.contains { $0.contains("librados") || $0.contains("librbd") }, "\(needed)")
    }

    @Test func runningBerthdWithoutRbdPoolMapsNoCephLibrary() throws {
        let bus = try PrivateDBusDaemon()
        let berthd = try BerthdProcess(bus: bus)
        // cat, not Foundation: /proc files have size 0 and Foundation may read only a first chunk.
        let maps = try run(["cat", "/proc/\(berthd.pid)/maps"], check: true).stdout
        #expect(maps.contains("libsystemd"), "the maps are berthd's")
        #expect(!maps.contains("librados"))
        #expect(!maps.contains("librbd"))
    }
}
