import Dispatch
import Glibc
import Linux
import Synchronization

/// Runs blocking work (copies, removals, usage scans, ioctls) on threads of its own, never on
/// the bus thread and never on Swift's cooperative pool, which has one thread per core and
/// would stall every actor while a multi-GiB clone runs.
///
/// The threads are bounded (`WorkerThreads`): a job beyond the bound waits in a queue rather
/// than starting one more thread, and a few threads are kept for `.interactive` jobs
/// (listings, lookups), so a crowd of long clones and transfers never delays a ListImages.
/// If a thread cannot be started at all, the job fails with that error: it never runs on the
/// caller's thread (the bus thread, for a listing).
public enum Blocking {
    /// Which threads a job may use: `.interactive` for short jobs a client waits on
    /// (ListImages, GetImage, pool usage), which may use the threads kept in reserve; `.bulk`
    /// for everything else, which may be long (clones, removals, transfers).
    public enum Lane: Sendable { case interactive, bulk }

    /// Runs `body` on a worker thread and resumes with its result, on the caller's executor
    /// (`nonisolated(nonsending)`: a call from the bus thread goes to the worker and straight
    /// back, with no stop on the cooperative pool in between). The thread is not interrupted
    /// if the awaiting task is cancelled (blocking syscalls cannot be): use
    /// `run(cancellable:)` for work that can stop between steps. Throws the `pthread_create`
    /// error if no thread could be started for it.
    public nonisolated(nonsending) static func run<T: Sendable>(_ lane: Lane = .bulk,
                                                                _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await WorkerThreads.shared.run(lane, body)
    }

    /// Starts `body` on a worker thread of `lane` and returns at once, for work nobody awaits (a
    /// cache refreshed in the background). If no thread can be started for it, `failed` runs
    /// with the error instead, on the caller's thread: `body` never does.
    public static func detach(_ lane: Lane, _ body: @escaping @Sendable () -> Void,
                              ifNoThread failed: @escaping @Sendable (any Error) -> Void) {
        WorkerThreads.shared.submit(WorkerThreads.Job(lane: lane, run: body, fail: failed))
    }

    /// Like `run`, with a flag that turns true when the awaiting task is cancelled, for `body`
    /// to poll between units of work (TreeCopy checks it between entries).
    public nonisolated(nonsending) static func run<T: Sendable>(cancellable body: @escaping @Sendable (CancellationFlag) throws -> T) async throws -> T {
        let flag = CancellationFlag()
        return try await withTaskCancellationHandler {
            try await run { try body(flag) }
        } onCancel: {
            flag.cancel()
        }
    }
}

/// The bounded threads behind `Blocking`.
///
/// At most `maxThreads` threads run jobs; `.bulk` jobs may occupy at most
/// `maxThreads - reserve` of them, so `reserve` threads are always there for `.interactive`
/// jobs however many clones and transfers run: one lane with a reserve rather than two pools,
/// so idle threads serve either. Jobs beyond the bound wait in a queue (interactive first)
/// and are taken by the next thread that finishes one. A job must not wait for another job
/// (none does: the pool's and the transfers' waits between jobs happen in async code), else a
/// full lane could wait on itself. Up to `maxIdle` finished threads wait for the next job
/// rather than exit, so the short jobs of a busy bus pay a wake-up, not a thread start.
final class WorkerThreads: Sendable {
    static let shared = WorkerThreads(maxThreads: 64, reserve: 8, maxIdle: 4)

    /// A queued job: `run` on a worker thread, or `fail` if no thread could be had for it.
    final class Job: Sendable {
        let lane: Blocking.Lane
        let run: @Sendable () -> Void
        let fail: @Sendable (any Error) -> Void
        init(lane: Blocking.Lane, run: @escaping @Sendable () -> Void, fail: @escaping @Sendable (any Error) -> Void) {
            self.lane = lane
            self.run = run
            self.fail = fail
        }
    }

    private final class Idle: Sendable {
        let wake = DispatchSemaphore(value: 0)
    }

    private struct State {
        var interactive: [Job] = []
        var bulk: [Job] = []
        /// Threads alive (running a job, looking for one, or idle).
        var threads = 0
        var runningBulk = 0
        var idle: [Idle] = []
    }

    private let state = Mutex(State())
    let maxThreads: Int
    let reserve: Int
    private let maxIdle: Int
    private let startThread: @Sendable (@escaping @Sendable () -> Void) throws -> Void

    /// - Parameter startThread: starts a thread running its argument (`detachThread`); tests
    ///   pass one that fails.
    init(maxThreads: Int, reserve: Int, maxIdle: Int,
         startThread: @escaping @Sendable (@escaping @Sendable () -> Void) throws -> Void = { try detachThread($0) }) {
        self.maxThreads = max(1, maxThreads)
        self.reserve = min(max(0, reserve), self.maxThreads - 1)
        self.maxIdle = maxIdle
        self.startThread = startThread
    }

    /// Runs `body` on one of the threads and resumes with its result.
    nonisolated(nonsending) func run<T: Sendable>(_ lane: Blocking.Lane, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            submit(Job(lane: lane, run: { continuation.resume(with: Result(catching: body)) },
                       fail: { continuation.resume(throwing: $0) }))
        }
    }

    /// Queues `job` and wakes an idle thread, or starts one while fewer than `maxThreads` live.
    /// If that start fails and no thread took the job meanwhile, the job fails with the error.
    func submit(_ job: Job) {
        let (wake, start) = state.withLock { s -> (Idle?, Bool) in
            if job.lane == .interactive { s.interactive.append(job) } else { s.bulk.append(job) }
            if let idle = s.idle.popLast() { return (idle, false) }
            guard s.threads < maxThreads else { return (nil, false) }
            s.threads += 1
            return (nil, true)
        }
        wake?.wake.signal()
        guard start else { return }
        do {
            try startThread { [self] in work() }
        } catch {
            let unclaimed = state.withLock { s -> Bool in
                s.threads -= 1
                if let i = s.interactive.firstIndex(where: { $0 === job }) { s.interactive.remove(at: i); return true }
                if let i = s.bulk.firstIndex(where: { $0 === job }) { s.bulk.remove(at: i); return true }
                return false
            }
            if unclaimed { job.fail(error) }
        }
    }

    /// The next job this thread may run: interactive first, bulk while under its share.
    private func next(_ s: inout State) -> Job? {
        if !s.interactive.isEmpty { return s.interactive.removeFirst() }
        if !s.bulk.isEmpty, s.runningBulk < maxThreads - reserve {
            s.runningBulk += 1
            return s.bulk.removeFirst()
        }
        return nil
    }

    private enum Step { case run(Job), park, exit }

    private func work() {
        let me = Idle()
        var finished: Job?
        while true {
            let step = state.withLock { s -> Step in
                if finished?.lane == .bulk { s.runningBulk -= 1 }
                if let job = next(&s) { return .run(job) }
                guard s.idle.count < maxIdle else {
                    s.threads -= 1
                    return .exit
                }
                s.idle.append(me)
                return .park
            }
            finished = nil
            switch step {
            case .run(let job):
                job.run()
                finished = job
            case .park:
                // A submit takes `me` off the idle list before signalling, then queues a job.
                me.wake.wait()
            case .exit:
                return
            }
        }
    }
}

/// A flag a blocking job polls to stop early when its caller was cancelled.
public final class CancellationFlag: Sendable {
    private let state = Atomic<Bool>(false)
    /// A flag not yet set.
    public init() {}
    /// Whether the caller was cancelled.
    public var isCancelled: Bool { state.load(ordering: .relaxed) }
    /// Sets the flag (from the task cancellation handler).
    public func cancel() { state.store(true, ordering: .relaxed) }
}
