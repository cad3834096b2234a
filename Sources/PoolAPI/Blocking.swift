import Glibc
import Linux
import Synchronization

/// Runs blocking work (copies, removals, usage scans, ioctls) on a dedicated thread, never on
/// the bus thread and never on Swift's cooperative pool, which has one thread per core and
/// would stall every actor while a multi-GiB clone runs.
public enum Blocking {
    /// Runs `body` on a new thread and resumes with its result. The thread is not interrupted
    /// if the awaiting task is cancelled (blocking syscalls cannot be): use
    /// `run(cancellable:)` for work that can stop between steps.
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            detach { continuation.resume(with: Result(catching: body)) }
        }
    }

    /// Like `run`, with a flag that turns true when the awaiting task is cancelled, for `body`
    /// to poll between units of work (TreeCopy checks it between entries).
    public static func run<T: Sendable>(cancellable body: @escaping @Sendable (CancellationFlag) throws -> T) async throws -> T {
        let flag = CancellationFlag()
        return try await withTaskCancellationHandler {
            try await run { try body(flag) }
        } onCancel: {
            flag.cancel()
        }
    }

    /// Starts `body` on a new detached thread and returns at once (`Linux.detachThread`).
    public static func detach(_ body: @escaping @Sendable () -> Void) {
        detachThread(body)
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
