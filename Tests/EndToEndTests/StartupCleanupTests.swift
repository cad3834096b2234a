import Foundation
import Glibc
import Testing
import TestSupport

/// Lock files a hard-killed berthd left are removed when berthd starts again, and it says so.
@Suite(.serialized, .requires(import1Requirements))
struct StartupCleanupTests {
    @Test("name-* and .#*.lck lock files nobody holds are removed at start and logged")
    func staleLockFilesAreRemovedAtStartAndLogged() throws {
        let site = try Import1Site()
        defer { site.close() }
        site.killBerthd()
        let locks = site.root + "/run/systemd/nspawn/locks"
        try FileManager.default.createDirectory(atPath: locks, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: locks + "/name-x", contents: nil))
        #expect(FileManager.default.createFile(atPath: site.poolPath + "/.#x.lck", contents: nil))
        try site.startBerthd()
        #expect(!FileManager.default.fileExists(atPath: locks + "/name-x"))
        #expect(!FileManager.default.fileExists(atPath: site.poolPath + "/.#x.lck"))
        #expect(site.log.contains("removed stale") && site.log.contains("name-x"), "\(site.log)")
    }
}
