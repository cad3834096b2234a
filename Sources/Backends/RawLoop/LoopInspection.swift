import CLinux
import Glibc
import InspectProtocol
import Linux
import PoolAPI
import struct SystemPackage.FilePath
import Synchronization

/// A raw image's root filesystem as a `berth-inspect` child holds it mounted in its own mount
/// namespace, read by berthd through `/proc/CHILD/root/…` — a path that crosses into the child's
/// namespace without any mount in berthd's. berthd opens the mounted root once, when the child
/// says it is ready, and hands out that open folder (`/proc/self/fd/N`), so what the readers see
/// cannot change under them. `close()` (or deinit) lets the child go: it unmounts, detaches its
/// loop device and exits; berthd reaps it.
final class ChildInspectionRoot: InspectionRoot {
    let root: FilePath
    private struct State {
        var folder: FileDescriptor?
        var child: InspectorChild?
    }
    private let state: Mutex<State>

    fileprivate init(folder: FileDescriptor, child: sending InspectorChild) {
        root = FilePath("/proc/self/fd/\(folder.rawValue)")
        state = Mutex(State(folder: folder, child: child))
    }

    /// Closes the root folder, then releases the child and waits for it to end. Idempotent.
    func close() {
        state.withLock { s in
            s.folder?.close()
            s.folder = nil
            s.child?.release()
            s.child = nil
        }
    }

    deinit { close() }
}

/// A running `berth-inspect` and berthd's ends of its pipes. Used by one owner at a time (the
/// inspection that started it, then the root under its lock).
private final class InspectorChild {
    let pid: pid_t
    let process: FileDescriptor
    private var hold: FileDescriptor?
    let answer: FileDescriptor

    init(pid: pid_t, process: FileDescriptor, hold: FileDescriptor, answer: FileDescriptor) {
        self.pid = pid
        self.process = process
        self.hold = hold
        self.answer = answer
    }

    /// Ends the hold (end of file on the child's side: it unmounts, detaches, exits) and reaps
    /// the child, killing it if it is still there after `grace` seconds.
    func release(grace: Int32 = 10) {
        hold?.close()
        hold = nil
        answer.close()
        if !Self.waitForExit(process, milliseconds: grace * 1000) {
            _ = try? sendSignal(SIGKILL, toProcess: process)
            _ = Self.waitForExit(process, milliseconds: -1)
        }
        process.close()
    }

    /// Kills the child at once and reaps it (its mounts and loop device go with its namespace).
    func kill() {
        hold?.close()
        hold = nil
        answer.close()
        _ = try? sendSignal(SIGKILL, toProcess: process)
        _ = Self.waitForExit(process, milliseconds: -1)
        process.close()
    }

    /// Waits (poll on the pidfd, at most `milliseconds`, -1: no bound) and reaps; true if reaped.
    static func waitForExit(_ process: FileDescriptor, milliseconds: Int32) -> Bool {
        var p = pollfd(fd: process.rawValue, events: Int16(POLLIN), revents: 0)
        var r: Int32
        repeat { r = poll(&p, 1, milliseconds) } while r < 0 && errno == EINTR
        guard r > 0 else { return false }
        return (try? pollExit(processDescriptor: process)) != nil
    }
}

extension RawLoopBackend {
    /// `berth-inspect` in the folder of the running executable: berthd's (installed beside it),
    /// or the test runner's (the build folder holds both).
    public static func inspectorBesideSelf() -> String {
        let exe = (try? readLink("/proc/self/exe")) ?? ""
        return FilePath(exe).removingLastComponent().appending("berth-inspect").string
    }

    /// How long berthd waits for the child's answer before it kills it: probing is quick, but a
    /// hostile filesystem can keep the kernel busy in mount(2).
    static let answerTimeoutMilliseconds: Int32 = 120_000

    /// Before this version, inspections were mounted in berthd's own namespace under
    /// `runtimeDirectory/inspect`, and a crash could leave them there: unmounts and removes what a
    /// previous daemon left. Today's children leave nothing in berthd's namespace, so on a fresh
    /// system this finds nothing. Call once at start-up.
    public func cleanUpStaleInspections() {
        let parent = runtimeDirectory.appending("inspect").string
        let stale = currentMountPoints().filter { $0.hasPrefix(parent + "/") }
        // Deepest first, so that /usr comes off before the root it is mounted on.
        for target in stale.sorted(by: { $0.count > $1.count }) { unmountOrDetach(target) }
        for folder in (try? directoryEntries(parent)) ?? [] {
            let base = joinPath(parent, folder)
            for node in (try? directoryEntries(joinPath(base, "dev"))) ?? [] { unlink(joinPath(base, "dev", node)) }
            for path in [joinPath(base, "root", "usr"), joinPath(base, "root"), joinPath(base, "dev"), base] { rmdir(path) }
        }
    }

    /// The work behind `openForInspection`: opens the image (never through a symlink), starts
    /// `berth-inspect` on it, and waits for its one-line answer, which is parsed strictly. Any
    /// failure kills and reaps the child, whose namespace takes its mounts and loop device along.
    func inspect(path: String) throws -> any InspectionRoot {
        let file = try io("cannot open \(path)") { () throws(SystemCallError) in
            try FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW | O_NOCTTY)
        }
        defer { file.close() }
        let status = try io("cannot stat \(path)") { () throws(SystemCallError) in try file.stat() }
        guard status.isRegular else { throw PoolError(.invalidImage, "\(path) is not a regular file") }
        if Qcow2Image.isQcow2(file) {
            throw PoolError(.notSupported, "\(path) is a qcow2 image; only raw images can be inspected")
        }
        // The child mounts a private tmpfs over this folder in its own namespace; berthd's sees
        // an empty folder.
        let base = runtimeDirectory.appending("inspect").string
        try io("cannot make \(base)") { () throws(SystemCallError) in try makeDirectories(base, mode: 0o700) }

        let child = try spawnInspector(file: file, base: base)
        let bytes: [UInt8]
        do {
            bytes = try readAnswer(child.answer)
        } catch {
            child.kill()
            throw error
        }
        switch InspectorAnswer.parse(bytes) {
        case .ready:
            let mounted = "/proc/\(child.pid)/root\(base)/\(InspectorAnswer.rootFolder)"
            let folder: FileDescriptor
            do {
                folder = try FileDescriptor.open(mounted, flags: FileDescriptor.pathOnly | O_DIRECTORY)
            } catch {
                child.kill()
                throw PoolError.from(error, "cannot open the root of \(path) that the image inspector mounted")
            }
            return ChildInspectionRoot(folder: folder, child: child)
        case .failed(let failure):
            child.release()
            throw Self.poolError(failure, image: path)
        case nil:
            child.kill()
            let what = bytes.isEmpty ? "ended without an answer" : "answered something malformed"
            throw PoolError(.system, "the image inspector (\(inspectorExecutable)) \(what) while inspecting \(path)")
        }
    }

    /// Starts the child with the image as fd 3, the hold pipe's read end as fd 4 and the
    /// answer pipe's write end as fd 5; berthd keeps the other ends (close-on-exec, so no other
    /// child inherits the hold pipe's write end and keeps the inspection alive).
    private func spawnInspector(file: FileDescriptor, base: String) throws -> InspectorChild {
        let hold = try io("cannot make a pipe") { () throws(SystemCallError) in try makePipe() }
        let answer = try io("cannot make a pipe") { () throws(SystemCallError) in try makePipe() }
        defer {
            hold.read.close()
            answer.write.close()
        }
        let pid = try io("cannot start the image inspector \(inspectorExecutable)") { () throws(SystemCallError) in
            try spawnProcess(inspectorExecutable, arguments: [InspectorAnswer.mountBaseOption, base],
                             descriptors: [file.rawValue, hold.read.rawValue, answer.write.rawValue])
        }
        do {
            let process = try openProcessDescriptor(pid)
            return InspectorChild(pid: pid, process: process, hold: hold.write, answer: answer.read)
        } catch {
            // Cannot happen for our own unreaped child short of running out of fds: end it.
            Glibc.kill(pid, SIGKILL)
            _ = try? waitForExit(pid)
            throw PoolError.from(error, "cannot watch the image inspector")
        }
    }

    /// Reads the child's answer: up to the first newline, the end of the pipe, or one byte
    /// more than an answer may have; at most `answerTimeoutMilliseconds` in all.
    private func readAnswer(_ pipe: FileDescriptor) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 256)
        let deadline = monotonicSeconds() + Double(Self.answerTimeoutMilliseconds) / 1000
        while !bytes.contains(UInt8(ascii: "\n")), bytes.count <= InspectorAnswer.maximumLength {
            let left = Int64((deadline - monotonicSeconds()) * 1000)
            guard left > 0 else {
                throw PoolError(.system, "the image inspector did not answer within \(Self.answerTimeoutMilliseconds / 1000) seconds")
            }
            var p = pollfd(fd: pipe.rawValue, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(left))
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { continue }
            let n: Int
            do {
                n = try chunk.withUnsafeMutableBytes { b in try pipe.read(into: b) }
            } catch let error as SystemCallError {
                throw PoolError.from(error, "cannot read the image inspector's answer")
            }
            if n == 0 { break }
            bytes += chunk[0..<n]
        }
        return bytes
    }

    /// The child's failure as the pool's error: its kind, and its system call (if any) as cause.
    static func poolError(_ f: InspectorAnswer.Failure, image: String) -> PoolError {
        let message = "cannot inspect \(image): \(f.message)"
        let cause = f.call.map { SystemCallError($0, Errno(f.errno)) }
        switch f.kind {
        case .invalidImage: return PoolError(.invalidImage, message, cause: cause)
        case .notSupported: return PoolError(.notSupported, message, cause: cause)
        case .system:
            if let cause { return PoolError.from(cause, message) }
            return PoolError(.system, message)
        }
    }
}
