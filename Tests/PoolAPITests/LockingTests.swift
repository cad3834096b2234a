import DirectoryBackend
import FileTree
import Foundation
import Glibc
import Linux
import PoolAPI
import TestSupport
import Testing
import struct SystemPackage.FilePath

/// Holds systemd-nspawn's locks on an image the way a running `systemd-nspawn -D` does
/// (observed in /proc/locks: exclusive open-file-description locks on
/// `/run/systemd/nspawn/locks/inode-<dev>:<ino>` and on `.#<name>.lck` beside the image),
/// from another process, until stdin closes.
final class NspawnLockHolder {
    let process = Process()
    let stdin = Pipe()

    init(lockFiles: [String]) throws {
        let script = """
        import fcntl, os, struct, sys
        fds = []
        for p in sys.argv[1:]:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))
            fds.append(fd)
        print('locked', flush=True)
        sys.stdin.read()
        """
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script] + lockFiles
        let out = Pipe()
        process.standardOutput = out
        process.standardInput = stdin
        try process.run()
        let line = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        guard line.contains("locked") else { throw TestSupportError("lock holder failed: \(line)") }
    }

    func stop() {
        try? stdin.fileHandleForWriting.close()
        process.waitUntilExit()
    }
}

func nspawnLockFiles(root: String, image path: String) throws -> (global: String, local: String) {
    var st = stat()
    guard stat(path, &st) == 0 else { throw TestSupportError("stat \(path)") }
    let dir = (path as NSString).deletingLastPathComponent, name = (path as NSString).lastPathComponent
    return ("\(root)/run/systemd/nspawn/locks/inode-\(st.st_dev):\(st.st_ino)", "\(dir)/.#\(name).lck")
}

@Suite struct LockingTests {
    @Test(.requires(.commands("python3")))  // holds locks from another process
    func anImageLockedByNspawnIsBusyAndFreeAgainAfterwards() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/running", files: ["etc/os-release": "ID=x\n"])
        let pool = r.pool()
        let image = try await pool.image(named: "running")
        let files = try nspawnLockFiles(root: URL(fileURLWithPath: r.root).resolvingSymlinksInPath().path, image: image.path)
        let holder = try NspawnLockHolder(lockFiles: [files.global, files.local])
        #expect(await expectPoolError(.busy) { try await pool.remove("running") })
        #expect(await expectPoolError(.busy) { try await pool.rename("running", to: "moved") })
        #expect(await expectPoolError(.busy) { try await pool.setReadOnly("running", true) })
        // Reading and cloning a running container stay possible, as with systemd.
        #expect(try await pool.metadata(of: "running").osRelease == ["ID": "x"])
        _ = try await pool.clone("running", to: "copy", readOnly: false)
        #expect(r.exists("var/lib/machines/running"))
        holder.stop()
        try await pool.remove("running")
        #expect(!r.exists("var/lib/machines/running"))
        // Our exclusive locks are gone with their files: nothing left for the next nspawn.
        #expect(!FileManager.default.fileExists(atPath: files.global))
        #expect(!FileManager.default.fileExists(atPath: files.local))
    }

    @Test(.timeLimit(.minutes(2)))
    func anImageBeingClonedIsLockedForNspawnAndAnswersListingsMeanwhile() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/src", files: ["payload": "data"])
        let gate = DispatchSemaphore(value: 0), started = DispatchSemaphore(value: 0)
        let pool = r.pool([GatedDirectoryBackend(gate: gate, started: started)])
        let source = try await pool.image(named: "src")
        let files = try nspawnLockFiles(root: URL(fileURLWithPath: r.root).resolvingSymlinksInPath().path, image: source.path)
        // More blocked clones than the cooperative pool has threads: if clones ran there (or on
        // the actor), nothing below could answer.
        let count = ProcessInfo.processInfo.activeProcessorCount + 1
        let clones = (0..<count).map { i in
            Task { try await pool.clone("src", to: "copy\(i)", readOnly: false) }
        }
        for _ in 0..<count { await withCheckedContinuation { c in DispatchQueue.global().async { started.wait(); c.resume() } } }
        // All clones are inside the backend now, blocked.
        let listed = try await pool.images().map(\.name)
        #expect(listed.contains("src"))
        #expect(try await pool.image(named: "src").name == "src")
        // The source is locked (shared) for nspawn, which wants it exclusively.
        #expect(!LockFile.isFree(files.global, for: .exclusive))
        #expect(!LockFile.isFree(files.local, for: .exclusive))
        #expect(LockFile.isFree(files.global, for: .shared))
        gate.signal()
        for t in clones { _ = try await t.value }
        #expect(LockFile.isFree(files.global, for: .exclusive))
        #expect(r.temporaryEntries().isEmpty)
    }

    @Test(.timeLimit(.minutes(2)))
    func aRemoveWaitsForACloneOfTheSameImage() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/src", files: ["a/b": "contents"])
        let gate = DispatchSemaphore(value: 0), started = DispatchSemaphore(value: 0)
        let pool = r.pool([GatedDirectoryBackend(gate: gate, started: started)])
        let clone = Task { try await pool.clone("src", to: "copy", readOnly: false) }
        await withCheckedContinuation { c in DispatchQueue.global().async { started.wait(); c.resume() } }
        let remove = Task { try await pool.remove("src") }
        // Give the remove every chance to (wrongly) run while the copy is held.
        for _ in 0..<20 { await Task.yield() }
        try await Task.sleep(for: .milliseconds(300))
        #expect(r.exists("var/lib/machines/src/a/b"), "the remove must wait for the clone")
        gate.signal()
        _ = try await clone.value
        try await remove.value
        #expect(!r.exists("var/lib/machines/src"))
        #expect(try String(contentsOfFile: r.path("var/lib/machines/copy/a/b"), encoding: .utf8) == "contents")
    }

    @Test func staleTemporaryEntriesAndUnheldLockFilesAreRemovedAtStart() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/.#stale0123456789abcdef/etc", files: ["x": "y"])
        try r.makeTree("var/lib/machines/keep")
        let pool = r.pool()
        let held = try LockFile.acquire(r.path("var/lib/machines/.#keep.lck"), .exclusive)
        #expect(FileManager.default.createFile(atPath: r.path("var/lib/machines/.#gone.lck"), contents: nil))
        #expect(FileManager.default.createFile(atPath: r.path("var/lib/machines/.#stale.raw0123"), contents: Data("x".utf8)))
        await pool.removeStaleTemporaryEntries()
        #expect(r.temporaryEntries() == [".#keep.lck"])
        #expect(r.exists("var/lib/machines/keep"))
        held.release()
    }
}

/// The real thing: systemd 252's nspawn against the pool at root `/`, on a throwaway image in
/// the host's /var/lib/machines (removed afterwards).
@Suite(.serialized, .requires(.root, .commands("systemd-nspawn", "sleep")))
struct NspawnInteropTests {
    static func startContainer(_ dir: String, errors: Pipe? = nil) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        var args = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", dir]
        for host in ["/usr", "/bin", "/lib", "/lib64"] where FileManager.default.fileExists(atPath: host) {
            args.append("--bind-ro=\(host)")
        }
        p.arguments = args + ["/usr/bin/sleep", "120"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = errors ?? FileHandle.nullDevice
        try p.run()
        return p
    }

    @Test(.timeLimit(.minutes(2)))
    func aRunningNspawnMakesTheImageBusyAndOurCloneKeepsNspawnOut() async throws {
        let name = "berth-lock-test-\(UInt32.random(in: 0...UInt32.max))"
        let dir = "/var/lib/machines/\(name)"
        try FileManager.default.createDirectory(atPath: "/var/lib/machines", withIntermediateDirectories: true)
        for sub in ["etc", "usr", "bin", "lib", "lib64", "proc", "sys", "dev", "tmp", "run"] {
            try FileManager.default.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true)
        }
        try Data("ID=berthtest\n".utf8).write(to: URL(fileURLWithPath: dir + "/etc/os-release"))
        defer {
            try? TreeRemoval.remove(at: FilePath(dir))
            try? TreeRemoval.remove(at: FilePath(dir + "-copy"))
        }
        let global = try nspawnLockFiles(root: "", image: dir).global
        #expect(global.hasPrefix("/run/systemd/nspawn/locks/inode-"))

        let container = try Self.startContainer(dir)
        var waited = 0
        while LockFile.isFree(global, for: .exclusive) && container.isRunning && waited < 300 {
            try await Task.sleep(for: .milliseconds(100))
            waited += 1
        }
        try #require(container.isRunning && !LockFile.isFree(global, for: .exclusive), "nspawn did not lock its image")
        let pool = ImagePool(configuration: .init(root: "/"), registry: BackendRegistry([DirectoryBackend()]))
        #expect(await expectPoolError(.busy) { try await pool.remove(name) })
        #expect(await expectPoolError(.busy) { try await pool.setReadOnly(name, true) })
        #expect(await expectPoolError(.busy) { try await pool.rename(name, to: name + "-renamed") })
        container.terminate()
        container.waitUntilExit()

        // Now our clone holds the image: nspawn must refuse to start on it.
        let gate = DispatchSemaphore(value: 0), started = DispatchSemaphore(value: 0)
        let gated = ImagePool(configuration: .init(root: "/"),
                              registry: BackendRegistry([GatedDirectoryBackend(gate: gate, started: started)]))
        let clone = Task { try await gated.clone(name, to: name + "-copy", readOnly: false) }
        await withCheckedContinuation { c in DispatchQueue.global().async { started.wait(); c.resume() } }
        let errors = Pipe()
        let refused = try Self.startContainer(dir, errors: errors)
        refused.waitUntilExit()
        let message = String(decoding: errors.fileHandleForReading.availableData, as: UTF8.self)
        #expect(refused.terminationStatus != 0, "nspawn started on an image berthd was cloning")
        #expect(message.localizedCaseInsensitiveContains("busy"), "nspawn said: \(message)")
        gate.signal()
        _ = try await clone.value
        try await pool.remove(name + "-copy")
        try await pool.remove(name)
        #expect(!FileManager.default.fileExists(atPath: dir))
    }
}
