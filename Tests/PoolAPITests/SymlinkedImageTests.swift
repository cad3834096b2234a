import DirectoryBackend
import Foundation
import Glibc
import Linux
import PoolAPI
import TestSupport
import Testing

/// An image that is a symlink in a search path (`/var/lib/machines/linked -> /srv/real`): a
/// mutation never follows the link out of the pool. The target keeps its immutable flag, its
/// change time (a flag lifted and put back changes it) and its content through every operation.
@Suite(.requires(.root))  // FS_IMMUTABLE_FL
struct SymlinkedImageTests {
    /// The target's state: immutable flag, ctime, the content of its file.
    struct TargetState: Equatable {
        var immutable: Bool
        var changeSeconds: Int
        var changeNanoseconds: Int
        var content: String?
    }

    func state(_ path: String) throws -> TargetState {
        let fd = try FileDescriptor.openDirectory(path)
        defer { fd.close() }
        var st = stat()
        guard stat(path, &st) == 0 else { throw TestSupportError("stat \(path)") }
        return TargetState(immutable: try fd.isImmutable(), changeSeconds: st.st_ctim.tv_sec,
                           changeNanoseconds: st.st_ctim.tv_nsec,
                           content: try? String(contentsOfFile: path + "/etc/os-release", encoding: .utf8))
    }

    /// A pool with `var/lib/machines/linked` -> `srv/real` (outside the pool), made immutable.
    func setUp() throws -> (PoolRoot, String) {
        let r = try PoolRoot()
        let target = try r.makeTree("srv/real", files: ["etc/os-release": "ID=linked\n"])
        try r.makeTree("var/lib/machines")
        try FileManager.default.createSymbolicLink(atPath: r.path("var/lib/machines/linked"), withDestinationPath: target)
        let fd = try FileDescriptor.openDirectory(target)
        defer { fd.close() }
        try fd.setImmutable(true)
        return (r, target)
    }

    func tearDown(_ target: String) {
        if let fd = try? FileDescriptor.openDirectory(target) {
            try? fd.setImmutable(false)
            fd.close()
        }
    }

    func isELOOP(_ body: () async throws -> Void) async -> Bool {
        do {
            try await body()
            return false
        } catch let e as PoolError {
            return e.errno == .ELOOP
        } catch {
            return false
        }
    }

    @Test func readOnlyAndLimitAreRefusedWithELOOPAndLeaveTheTargetAlone() async throws {
        let (r, target) = try setUp()
        defer { tearDown(target) }
        let pool = r.pool()
        let before = try state(target)
        #expect(before.immutable)
        // Listed through the link, as systemd does: read-only because the target is immutable.
        #expect(try await pool.image(named: "linked").readOnly)
        #expect(await isELOOP { try await pool.setReadOnly("linked", false) })
        #expect(try state(target) == before)
        #expect(await isELOOP { try await pool.setReadOnly("linked", true) })
        #expect(try state(target) == before)
        // Directories have no quota: NotSupported first, as machined answers.
        #expect(await expectPoolError(.notSupported) { try await pool.setLimit("linked", 1 << 20) })
        #expect(try state(target) == before)
    }

    @Test func renameRenamesTheLinkAndRemoveRemovesTheLinkOnly() async throws {
        let (r, target) = try setUp()
        defer { tearDown(target) }
        let pool = r.pool()
        let before = try state(target)
        try await pool.rename("linked", to: "moved")
        #expect(try readLink(r.path("var/lib/machines/moved")) == target)
        #expect(!r.exists("var/lib/machines/linked"))
        #expect(try state(target) == before)
        _ = try await pool.clone("moved", to: "copy", readOnly: false)
        #expect(try state(target) == before)
        try await pool.remove("moved")
        #expect(!r.exists("var/lib/machines/moved"))
        #expect(try state(target) == before)
        #expect(r.temporaryEntries().isEmpty)
    }

    @Test func aForcedInstallOverASymlinkedImageReplacesTheLinkOnly() async throws {
        let (r, target) = try setUp()
        defer { tearDown(target) }
        let pool = r.pool()
        let before = try state(target)
        _ = try await pool.install("linked", type: .directory, force: true, readOnly: false) { temp in
            try Data("ID=new\n".utf8).write(to: URL(fileURLWithPath: temp + "/marker"))
        }
        #expect(try fileStatus(r.path("var/lib/machines/linked"), followSymlinks: false).isDirectory)
        #expect(r.exists("var/lib/machines/linked/marker"))
        #expect(try state(target) == before)
        #expect(r.temporaryEntries().isEmpty)
    }
}
