import CLinux
import Glibc
import Linux
import PoolAPI
import Synchronization

/// One worker child process (berthd in `TransferWorker` mode), parent side: spawned with
/// posix_spawn, its status pipe read line by line, reaped through its pidfd, and killed on
/// `cancel()` (SIGTERM, SIGKILL after the grace period). The thread that spawns the worker is
/// the one that waits for it, so the worker's PR_SET_PDEATHSIG (which follows the spawning
/// *thread*) fires only when berthd itself dies.
///
/// That thread sleeps in poll(2) on the status pipe, the worker's pidfd and a wake-up eventfd
/// for `cancel()`: no timer while nothing happens, and a wait that fails (the pid reaped by
/// someone else) ends the run instead of being retried. What the worker writes is bounded:
/// lines over `StatusLineSplitter.maxLineLength` fail the transfer (the worker is killed),
/// progress is coalesced to its latest value per read, log lines are rate-limited.
public final class WorkerProcess: Sendable {
    /// How the worker ended.
    public struct Outcome: Sendable, Equatable {
        /// waitpid's verdict; nil if the worker could not be started or waited for.
        public var exit: ProcessExit?
        /// The worker's own reason (its `E` line), if it gave one, or why berthd gave up on it.
        public var error: String?
        /// `cancel()` was called before the worker ended.
        public var canceled: Bool
        /// The worker broke the status protocol (a line too long) and was killed: failed
        /// whatever its exit status, with `error` saying why.
        public var brokeProtocol = false
        /// A pull's download as the server described it (its last `D` line), if it said.
        public var download: DownloadNote?

        /// Exited 0, was not cancelled and kept to the protocol.
        public var succeeded: Bool { exit == .exited(0) && !canceled && !brokeProtocol }

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
        /// The eventfd the waiting thread polls; `cancel()` writes to it.
        var wake: Int32?
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

    /// Cancels: SIGTERM now, SIGKILL after the grace period (sent by the waiting thread,
    /// through the pidfd, so a signal never hits a recycled pid). Before start: it never starts.
    public func cancel() {
        state.withLock { s in
            s.canceled = true
            if let wake = s.wake {
                var one: UInt64 = 1
                _ = Glibc.write(wake, &one, 8)
            }
        }
    }

    /// Runs `executable arguments…` to its end with the status pipe as fd 3 and `data` (if
    /// any) as fd 4, calling `onMessage` for each progress or log line (on the waiting thread).
    public func run(arguments: [String], data: Int32?, onMessage: @escaping @Sendable (TransferEvent) -> Void) async -> Outcome {
        (try? await Blocking.run { self.runBlocking(arguments: arguments, data: data, onMessage: onMessage) })
            ?? Outcome(exit: nil, error: "cannot run the worker thread", canceled: false)
    }

    private func runBlocking(arguments: [String], data: Int32?, onMessage: @escaping @Sendable (TransferEvent) -> Void) -> Outcome {
        if state.withLock({ $0.canceled }) { return Outcome(exit: nil, error: nil, canceled: true) }
        let wake = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard wake >= 0 else { return Outcome(exit: nil, error: "cannot make an eventfd: \(Errno.current)", canceled: false) }
        state.withLock { $0.wake = wake }
        defer {
            state.withLock { $0.wake = nil }
            _ = close(wake)
        }
        let statusPipe: (read: FileDescriptor, write: FileDescriptor)
        do { statusPipe = try makePipe() } catch {
            return Outcome(exit: nil, error: "cannot make the status pipe: \(error)", canceled: false)
        }
        defer { statusPipe.read.close() }
        let statusRead = statusPipe.read.rawValue
        let pid: pid_t
        do {
            pid = try spawnProcess(executable, arguments: arguments, descriptors: [statusPipe.write.rawValue] + (data.map { [$0] } ?? []))
        } catch {
            statusPipe.write.close()
            return Outcome(exit: nil, error: "cannot start the transfer worker \(executable): \(error)", canceled: false)
        }
        // The worker holds its own copy: EOF on ours comes when it has exited.
        statusPipe.write.close()
        let process: FileDescriptor
        do {
            process = try openProcessDescriptor(pid)
        } catch {
            // Cannot happen on Linux ≥ 5.3 for our own child; never leave it running unwaited.
            kill(pid, SIGKILL)
            _ = try? waitForExit(pid)
            return Outcome(exit: nil, error: "cannot follow the transfer worker: \(error)", canceled: false)
        }
        defer { process.close() }
        state.withLock { $0.pid = pid }
        defer { state.withLock { $0.pid = nil } }

        var reader = StatusReader(onMessage: onMessage)
        var termSentAt: Double?
        var killed = false
        var exit: ProcessExit?
        var waitError: String?
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
        defer { buffer.deallocate() }
        var pipeOpen = true

        func killNow() {
            if !killed { _ = try? sendSignal(SIGKILL, toProcess: process) }
            killed = true
        }

        while exit == nil {
            // Cancellation: SIGTERM once, SIGKILL after the grace period.
            var timeout: Int32 = -1
            if state.withLock({ $0.canceled }) && !killed {
                let now = monotonicSeconds()
                if termSentAt == nil {
                    _ = try? sendSignal(SIGTERM, toProcess: process)
                    termSentAt = now
                }
                let left = gracePeriod - (now - (termSentAt ?? now))
                if left <= 0 { killNow() } else { timeout = Int32(min(left * 1000 + 1, 60_000)) }
            }
            var polled = [pollfd(fd: process.rawValue, events: Int16(POLLIN), revents: 0),
                          pollfd(fd: wake, events: Int16(POLLIN), revents: 0),
                          pollfd(fd: pipeOpen ? statusRead : -1, events: Int16(POLLIN), revents: 0)]
            let r = poll(&polled, nfds_t(polled.count), timeout)
            if r < 0 {
                if errno == EINTR { continue }
                // Cannot happen with valid descriptors; stop the worker rather than loop.
                waitError = "cannot wait for the transfer worker: poll: \(Errno.current)"
                killNow()
                exit = try? waitForExit(pid)
                break
            }
            if polled[1].revents != 0 {
                var count: UInt64 = 0
                _ = Glibc.read(wake, &count, 8)
            }
            if pipeOpen && polled[2].revents != 0 {
                let n = read(statusRead, buffer.baseAddress, buffer.count)
                if n > 0 {
                    if !reader.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<n])) {
                        // A misbehaving worker: stop listening and stop it.
                        pipeOpen = false
                        killNow()
                    }
                } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                    pipeOpen = false
                }
            }
            if polled[0].revents != 0 {
                // The worker exited (the pipe may stay open in a grandchild: the pid decides).
                do {
                    exit = try pollExit(processDescriptor: process)
                } catch {
                    // Reaped by someone else (or not our child): nothing left to wait for.
                    waitError = "cannot wait for the transfer worker: \(error)"
                    break
                }
            }
        }
        // Lines written just before exit: what the pipe holds now, bounded by its size.
        if pipeOpen {
            var p = pollfd(fd: statusRead, events: Int16(POLLIN), revents: 0)
            var budget = 1 << 20
            while budget > 0, poll(&p, 1, 0) > 0 {
                let n = read(statusRead, buffer.baseAddress, buffer.count)
                if n <= 0 || !reader.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<n])) { break }
                budget -= n
            }
        }
        reader.finish()
        let canceled = state.withLock { $0.canceled }
        var outcome = Outcome(exit: exit, error: reader.protocolError ?? waitError ?? reader.lastError, canceled: canceled)
        outcome.brokeProtocol = reader.protocolError != nil
        outcome.download = reader.download
        return outcome
    }

    /// Turns the bytes of the status pipe into events, within bounds: one unfinished line at
    /// most, progress passed on once per read (its latest value), log lines rate-limited.
    package struct StatusReader {
        let onMessage: @Sendable (TransferEvent) -> Void
        var splitter = StatusLineSplitter()
        var limiter = LogRateLimiter()
        var lastError: String?
        /// The last error line was suppressed by the rate limit: it is sent at the end.
        var lastErrorUnsent = false
        var protocolError: String?
        var download: DownloadNote?

        package init(onMessage: @escaping @Sendable (TransferEvent) -> Void) { self.onMessage = onMessage }

        /// false once the worker broke the protocol (then `protocolError` says how).
        package mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
            var progress: Double?
            var logs: [(Int32, String)] = []
            var errorLine: String?
            do {
                try splitter.feed(bytes) { line in
                    switch StatusLine(decoding: line) {
                    case .progress(let p): progress = p
                    case .log(let priority, let text): logs.append((priority, text))
                    case .error(let text):
                        errorLine = text
                        logs.append((LogPriority.error, text))
                    case .download(let note): download = note
                    case nil: break
                    }
                }
            } catch {
                protocolError = "the transfer worker broke the status protocol: a status line over \(StatusLineSplitter.maxLineLength) bytes"
            }
            if let progress { onMessage(.progress(progress)) }
            if let errorLine {
                lastError = errorLine
                lastErrorUnsent = true
            }
            let now = monotonicSeconds()
            for (priority, text) in logs {
                for (p, t) in limiter.admit(priority, text, now: now) {
                    if p == LogPriority.error && t == lastError { lastErrorUnsent = false }
                    onMessage(.log(priority: p, message: t))
                }
            }
            return protocolError == nil
        }

        /// The suppression note and a suppressed error line, then the protocol error.
        package mutating func finish() {
            for (p, t) in limiter.flush() { onMessage(.log(priority: p, message: t)) }
            if lastErrorUnsent, let lastError { onMessage(.log(priority: LogPriority.error, message: lastError)) }
            if let protocolError { onMessage(.log(priority: LogPriority.error, message: protocolError)) }
        }
    }
}
