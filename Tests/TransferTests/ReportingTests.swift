import Foundation
import Glibc
import Linux
import PoolAPI
import TestSupport
import Testing
@testable import Transfer
@testable import TransferJobs

@Suite("failures users need to see are reported, not swallowed")
struct ReportingTests {
    @Test("a forced import whose old image cannot be removed succeeds with a warning naming the leftover, which the next start removes",
          .requires(.root, .commands("mount")))
    func forcedImportReportsItsLeftover() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        // A mount inside the old image: it cannot be removed while that is mounted.
        let mountPoint = setup.poolPath + "/taken/mnt"
        _ = try sh("mkdir -p '\(mountPoint)' '\(tmp.path)/src/new' && mount -t tmpfs none '\(mountPoint)' && tar -C '\(tmp.path)/src' -cf '\(tmp.path)/a.tar' .")
        var mounted = true
        defer { if mounted { _ = try? sh("umount -l \"$(find '\(setup.poolPath)' -name mnt -type d | head -1)\"") } }
        let fd = try openRead(tmp.appending("a.tar"))
        defer { close(fd) }
        let (result, events) = try await runTransfer(setup.engine, .importTar(fd: fd, local: "taken", force: true))
        #expect(result == .done, "\(events)")
        #expect(exists(setup.poolPath + "/taken/new"), "the new image is installed")
        let leftover = try setup.poolEntries().first { $0.hasPrefix(".#taken") }
        let name = try #require(leftover, "the old image could not go: it is left at a temp name")
        let warnings = events.compactMap { e -> String? in
            if case .log(let p, let m) = e, p == LogPriority.warning { return m }
            return nil
        }
        #expect(warnings.contains { $0.contains(name) && $0.contains("next start") }, "\(warnings)")
        // Once nothing holds it, the next start's cleanup removes it.
        _ = try sh("umount '\(setup.poolPath)/\(name)/mnt'")
        mounted = false
        await setup.pool.removeStaleTemporaryEntries()
        #expect(try setup.poolEntries().filter { !$0.hasSuffix(".lck") } == ["taken"])
    }

    @Test("a worker whose parent is already gone when it starts exits at once, touching nothing")
    func workerOfADeadParentExits() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        try makeDirectory(tmp.appending("target"))
        // --parent names a process that is not our parent: as if berthd died before the worker
        // set PR_SET_PDEATHSIG and the worker was reparented.
        let r = try run(["timeout", "20", workerExecutable, TransferWorker.flag, "import-tar", "--parent", "1",
                         "--target", tmp.appending("target")])
        #expect(r.status == 3, "\(r)")
        #expect(try directoryEntries(tmp.appending("target")).isEmpty)
    }
}
