import DirectoryBackend
import Foundation
import Glibc
import Linux
import PoolAPI
import Synchronization
import TestSupport
import Testing

/// Lock files do not outlive their holders: shared holders releasing together remove the file
/// (one of them always finds it free), and files a killed process left are removed at start
/// unless someone still holds them.
@Suite struct LockFileRaceTests {
    @Test(.timeLimit(.minutes(2)))
    func sharedHoldersReleasingTogetherLeaveNoLockFile() throws {
        let dir = try TemporaryDirectory(prefix: "berth-lockrace")
        defer { dir.remove() }
        let path = dir.appending(".#src.lck")
        let holders = 8
        for round in 0..<200 {
            let locks = Mutex<[LockFile]>([])
            DispatchQueue.concurrentPerform(iterations: holders) { _ in
                if let l = try? LockFile.acquire(path, .shared) { locks.withLock { $0.append(l) } }
            }
            let held = locks.withLock { l -> [LockFile] in defer { l = [] }; return l }
            #expect(held.count == holders)
            // All release at once, as concurrent clones of one image ending together do: one
            // thread each (not concurrentPerform, whose few threads would wait on each other).
            let start = DispatchSemaphore(value: 0), done = DispatchGroup()
            for lock in held {
                done.enter()
                Thread {
                    start.wait()
                    lock.release()
                    done.leave()
                }.start()
            }
            for _ in held { start.signal() }
            done.wait()
            var st = stat()
            let left = lstat(path, &st) == 0
            #expect(!left, "round \(round): the lock file was left behind")
            if left { return }
        }
    }

    /// Two pools over one root stand for two processes sharing the lock files (berthd and
    /// machined or nspawn): within one pool the actor releases locks one after the other, across
    /// them releases really meet.
    @Test(.timeLimit(.minutes(3)))
    func manyConcurrentClonesOfOneImageLeaveNoLockFiles() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/src", files: ["etc/os-release": "ID=x\n", "payload": "data"])
        let pools = [r.pool(), r.pool()]
        let locks = URL(fileURLWithPath: r.root).resolvingSymlinksInPath().path + "/run/systemd/nspawn/locks"
        for round in 0..<40 {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<16 {
                    group.addTask { _ = try await pools[i % 2].clone("src", to: "copy\(round)-\(i)", readOnly: false) }
                }
                try await group.waitForAll()
            }
            let lockFiles = (try? FileManager.default.contentsOfDirectory(atPath: locks)) ?? []
            #expect(r.temporaryEntries().isEmpty && lockFiles.isEmpty, "round \(round): \(r.temporaryEntries()) \(lockFiles)")
            if !r.temporaryEntries().isEmpty || !lockFiles.isEmpty { return }
        }
    }

    @Test(.requires(.commands("python3")))  // holds a lock from another process
    func lockFilesOfAKilledDaemonAreRemovedAtStartAndHeldOnesKept() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/keep")
        let locks = try r.makeTree("run/systemd/nspawn/locks")
        for stale in ["name-x", "inode-1:2", "block-7:0"] {
            #expect(FileManager.default.createFile(atPath: locks + "/" + stale, contents: nil))
        }
        let holder = try NspawnLockHolder(lockFiles: [locks + "/name-held", locks + "/inode-3:4"])
        defer { holder.stop() }
        await r.pool().removeStaleTemporaryEntries()
        let left = try FileManager.default.contentsOfDirectory(atPath: locks).sorted()
        #expect(left == ["inode-3:4", "name-held"])
        #expect(r.exists("var/lib/machines/keep"))
    }

    @Test func startupCleanupReportsWhatItRemoved() async throws {
        let r = try PoolRoot()
        let locks = try r.makeTree("run/systemd/nspawn/locks")
        try r.makeTree("var/lib/machines/.#stale0123456789abcdef")
        #expect(FileManager.default.createFile(atPath: locks + "/name-x", contents: nil))
        let report = await r.pool().removeStaleTemporaryEntries()
        let removed = report.removed.map { ($0 as NSString).lastPathComponent }.sorted()
        #expect(removed == [".#stale0123456789abcdef", "name-x"])
        #expect(report.failed.isEmpty)
    }
}
