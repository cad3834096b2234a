import CLinux
import Glibc
import Linux
import PoolAPI
import Synchronization

/// One worker child process (berthd in `TransferWorker` mode), parent side: spawned with
/// posix_spawn, its status pipe read line by line, reaped, and killed on `cancel()` (SIGTERM,
/// SIGKILL after the grace period). The thread that spawns the worker is the one that waits
/// for it, so the worker's PR_SET_PDEATHSIG (which follows the spawning *thread*) fires only
/// when berthd itself dies.
public final class WorkerProcess: Sendable {
    /// How the worker ended.
    public struct Outcome: Sendable, Equatable {
        /// waitpid's verdict; nil if the worker could not be started.
        public var exit: ProcessExit?
        /// The worker's own reason (its `E` line), if it gave one.
        public var error: String?
        /// `cancel()` was called before the worker ended.
        public var canceled: Bool

        /// Exited 0 and was not cancelled.
        public var succeeded: Bool { exit == .exited(0) && !canceled }

        /// Why it failed, for the transfer's log and error: the worker's reason, else how it
        /// died (a crash on hostile input shows up here as "killed by signal 11").
        public var failureMessage: String {
            if canceled { return "transfer canceled" }
            if let error { return error }
            guard let exit else { return "the worker could not be started" }
            return "transfer worker \(exit)"
        }
    }

    private struct State {
        var canceled = false
        var pid: pid_t?
    }

    private let state = Mutex(State())
    private let executable: String
    private let gracePeriod: Double

    /// A worker of `executable`, not yet started; `gracePeriod` seconds pass between SIGTERM
    /// and SIGKILL on cancel.
    public init(executable: String, gracePeriod: Double = 5) {
        self.executable = executable
        self.gracePeriod = gracePeriod
    }

    /// The worker's pid while it runs.
    public var pid: pid_t? { state.withLock { $0.pid } }

    /// Cancels: SIGTERM now, SIGKILL after the grace period (sent by the waiting thread, which
    /// alone reaps the pid, so a signal never hits a recycled pid). Before start: it never starts.
    public func cancel() {
        state.withLock { $0.canceled = true }
    }

    /// Runs `executable arguments…` to its end with the status pipe as fd 3 and `data` (if
    /// any) as fd 4, calling `onMessage` for each progress or log line (on the waiting thread).
    public func run(arguments: [String], data: Int32?, onMessage: @escaping @Sendable (TransferEvent) -> Void) async -> Outcome {
        (try? await Blocking.run { self.runBlocking(arguments: arguments, data: data, onMessage: onMessage) })
            ?? Outcome(exit: nil, error: "cannot run the worker thread", canceled: false)
    }

    private func runBlocking(arguments: [String], data: Int32?, onMessage: @escaping @Sendable (TransferEvent) -> Void) -> Outcome {
        if state.withLock({ $0.canceled }) { return Outcome(exit: nil, error: nil, canceled: true) }
        var fds: [Int32] = [0, 0]
        guard pipe2(&fds, O_CLOEXEC) == 0 else {
            return Outcome(exit: nil, error: "cannot make the status pipe: \(Errno.current)", canceled: false)
        }
        let statusRead = fds[0]
        defer { _ = close(statusRead) }
        let pid: pid_t
        do {
            pid = try spawnProcess(executable, arguments: arguments, descriptors: [fds[1]] + (data.map { [$0] } ?? []))
        } catch {
            _ = close(fds[1])
            return Outcome(exit: nil, error: "cannot start the transfer worker \(executable): \(error)", canceled: false)
        }
        _ = close(fds[1])
        state.withLock { $0.pid = pid }

        var pending: [UInt8] = []
        var lastError: String?
        var termSentAt: Double?
        var killed = false
        var exit: ProcessExit?
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
        defer { buffer.deallocate() }
        var pipeOpen = true

        func handle(_ bytes: UnsafeRawBufferPointer) {
            pending.append(contentsOf: bytes)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                switch StatusLine(decoding: Substring(line)) {
                case .progress(let p): onMessage(.progress(p))
                case .log(let priority, let text): onMessage(.log(priority: priority, message: text))
                case .error(let text):
                    lastError = text
                    onMessage(.log(priority: LogPriority.error, message: text))
                case nil: break
                }
            }
        }

        while exit == nil {
            // Cancellation: SIGTERM once, SIGKILL after the grace period.
            if state.withLock({ $0.canceled }) {
                let now = Self.monotonicSeconds()
                if termSentAt == nil {
                    kill(pid, SIGTERM)
                    termSentAt = now
                } else if let t = termSentAt, !killed, now - t >= gracePeriod {
                    kill(pid, SIGKILL)
                    killed = true
                }
            }
            if pipeOpen {
                var p = pollfd(fd: statusRead, events: Int16(POLLIN), revents: 0)
                let r = poll(&p, 1, 100)
                if r > 0 {
                    let n = read(statusRead, buffer.baseAddress, buffer.count)
                    if n > 0 {
                        handle(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                        continue
                    }
                    if n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN) { pipeOpen = false }
                }
            } else {
                usleep(50_000)
            }
            // The pipe may stay open in a grandchild: the pid's own end decides.
            exit = (try? pollExit(pid)) ?? nil
        }
        // Lines written just before exit.
        var p = pollfd(fd: statusRead, events: Int16(POLLIN), revents: 0)
        while pipeOpen, poll(&p, 1, 0) > 0 {
            let n = read(statusRead, buffer.baseAddress, buffer.count)
            if n <= 0 { break }
            handle(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        state.withLock { $0.pid = nil }
        let canceled = state.withLock { $0.canceled }
        return Outcome(exit: exit, error: lastError, canceled: canceled)
    }

    private static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
