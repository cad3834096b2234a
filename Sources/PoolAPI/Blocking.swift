import Dispatch
import Glibc
import Linux
import Synchronization

/// Runs blocking work (copies, removals, usage scans, ioctls) on threads of its own, never on
/// the bus thread and never on Swift's cooperative pool, which has one thread per core and
/// would stall every actor while a multi-GiB clone runs.
///
/// Every job gets a thread at once: an idle one if there is one, else a new one, so a long clone
/// never delays a listing. Up to `WorkerThreads.maxIdle` finished threads wait for the next job
/// rather than exit, so the short jobs of a busy bus (ListImages) pay a wake-up, not a thread start.
public enum Blocking {
    /// Runs `body` on a worker thread and resumes with its result, on the caller's executor
    /// (`nonisolated(nonsending)`: a call from the bus thread goes to the worker and straight
    /// back, with no stop on the cooperative pool in between). The thread is not interrupted
    /// if the awaiting task is cancelled (blocking syscalls cannot be): use
    /// `run(cancellable:)` for work that can stop between steps.
    public nonisolated(nonsending) static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            detach { continuation.resume(with: Result(catching: body)) }
        }
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

    /// Starts `body` on a worker thread (idle or new) and returns at once.
    public static func detach(_ body: @escaping @Sendable () -> Void) {
        WorkerThreads.shared.submit(body)
    }
}

/// The threads behind `Blocking`: a job goes to an idle thread if one waits, else to a new
/// thread; a thread that finishes a job waits for the next one while fewer than `maxIdle` do,
/// else it ends.
final class WorkerThreads: Sendable {
    static let shared = WorkerThreads(maxIdle: 4)

    /// One waiting thread: its semaphore is signalled once its `job` is set.
    private final class Idle: Sendable {
        let wake = DispatchSemaphore(value: 0)
        let job = Mutex<(@Sendable () -> Void)?>(nil)
    }

    private let idle = Mutex<[Idle]>([])
    private let maxIdle: Int

    init(maxIdle: Int) { self.maxIdle = maxIdle }

    func submit(_ job: @escaping @Sendable () -> Void) {
        if let waiting = idle.withLock({ $0.popLast() }) {
            waiting.job.withLock { $0 = job }
            waiting.wake.signal()
        } else {
            detachThread { [self] in work(first: job) }
        }
    }

    private func work(first: @escaping @Sendable () -> Void) {
        var job = first
        let me = Idle()
        while true {
            job()
            let parked = idle.withLock { list -> Bool in
                guard list.count < maxIdle else { return false }
                list.append(me)
                return true
            }
            guard parked else { return }
            me.wake.wait()
            guard let next = me.job.withLock({ j -> (@Sendable () -> Void)? in defer { j = nil }; return j }) else { return }
            job = next
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
