import Glibc
import Testing
import TestSupport
@testable import Linux

/// LockFile: open file description locks as systemd's make_lock_file takes them. OFD locks belong
/// to the open file, so two acquisitions in one process conflict as two processes' would.
@Suite struct LockFileTests {
    @Test func anExclusiveLockRefusesEveryOtherLockWithEBUSYAtOnce() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.appending("image.lck")
        let held = try LockFile.acquire(path, .exclusive)
        for mode in [LockFile.Mode.exclusive, .shared] {
            let error = #expect(throws: SystemCallError.self) { try LockFile.acquire(path, mode) }
            #expect(error?.errno == .EBUSY)
            #expect(error?.call == "fcntl(F_OFD_SETLK)")
            #expect(error?.subject == path)
        }
        #expect(!LockFile.isFree(path, for: .shared))
        #expect(!LockFile.isFree(path, for: .exclusive))
        held.release()
        #expect(LockFile.isFree(path, for: .exclusive))
        // An exclusive owner removes the file when it lets go.
        #expect(access(path, F_OK) != 0)
    }

    @Test func sharedLocksCoexistAndTheLastOneOutRemovesTheFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.appending("image.lck")
        let a = try LockFile.acquire(path, .shared)
        let b = try LockFile.acquire(path, .shared)
        #expect(LockFile.isFree(path, for: .shared))
        #expect(!LockFile.isFree(path, for: .exclusive))
        #expect(throws: SystemCallError.self) { try LockFile.acquire(path, .exclusive) }
        a.release()
        #expect(access(path, F_OK) == 0, "b still holds it")
        b.release()
        #expect(access(path, F_OK) != 0, "released by both: no lock file left behind")
        a.release()  // twice is harmless
    }

    @Test func aMissingLockFileIsFree() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        #expect(LockFile.isFree(dir.appending("none.lck"), for: .exclusive))
    }

    @Test func removeIfUnheldRemovesOnlyStaleFiles() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let stale = dir.appending("stale.lck"), held = dir.appending("held.lck")
        let fd = try FileDescriptor.open(stale, flags: O_CREAT | O_WRONLY, mode: 0o600)
        fd.close()
        #expect(try LockFile.removeIfUnheld(stale) == .removed)
        #expect(access(stale, F_OK) != 0)
        let lock = try LockFile.acquire(held, .shared)
        #expect(try LockFile.removeIfUnheld(held) == .held)
        #expect(access(held, F_OK) == 0)
        lock.release()
        #expect(try LockFile.removeIfUnheld(dir.appending("missing.lck")) == .held)
    }

    @Test func aLockFileIsNeverASymlink() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let target = dir.appending("elsewhere"), path = dir.appending("image.lck")
        try makeSymbolicLink(path, pointingTo: target)
        let error = #expect(throws: SystemCallError.self) { try LockFile.acquire(path, .exclusive) }
        #expect(error?.errno == .ELOOP)
        #expect(access(target, F_OK) != 0, "nothing created through the link")
    }
}
