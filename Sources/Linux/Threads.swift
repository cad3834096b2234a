import CLinux
import Glibc

/// The one place a thread starts (pthread_create(3)): runs `body` on a new thread, detached or
/// joinable, and returns its handle. pthread_create returns the error number rather than
/// setting errno; on failure `body` is not run and nothing is leaked.
///
/// `body` is not `@Sendable`: `WorkerThread` hands non-Sendable work to a thread it joins
/// before the caller touches that work's state again. Public entry points decide what they accept.
func startThread(detached: Bool, _ body: @escaping () -> Void) throws(SystemCallError) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadStart(body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(detached ? PTHREAD_CREATE_DETACHED : PTHREAD_CREATE_JOINABLE))
    var thread = pthread_t()
    let r = pthread_create(&thread, &attributes, { raw in
        guard let raw else { return nil }
        Unmanaged<ThreadStart>.fromOpaque(raw).takeRetainedValue().body()
        return nil
    }, box)
    if r != 0 {
        Unmanaged<ThreadStart>.fromOpaque(box).release()
        throw SystemCallError("pthread_create", Errno(rawValue: r))
    }
    return thread
}

/// What a new thread runs; retained across pthread_create and released by the thread.
private final class ThreadStart {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Runs `body` on a new detached thread (pthread_create(3)) and returns at once: for blocking
/// work and waits that must stay off Swift's cooperative pool (one thread per core) and off the
/// bus thread. If no thread can be had (resource limits: EAGAIN), this throws and `body` is
/// not run: running it on the caller's thread instead would park that thread (the bus thread,
/// for a listing) for as long as the job takes.
public func detachThread(_ body: @escaping @Sendable () -> Void) throws(SystemCallError) {
    _ = try startThread(detached: true, body)
}

/// Runs `body` on a new joinable thread (pthread_create(3)) and returns its pthread handle, for
/// a thread that lives as long as its owner and is joined by it (pthread_join(3)): an event
/// loop's thread, whose identity the owner compares with pthread_self.
public func startJoinableThread(_ body: @escaping @Sendable () -> Void) throws(SystemCallError) -> pthread_t {
    try startThread(detached: false, body)
}

/// A thread of its own running `body`, joined for its result (pthread_create(3)/pthread_join(3)):
/// the stages of a transfer (download, decompression, compression), a confined extraction,
/// a namespace entered for one call.
///
/// `body` need not be `@Sendable`: it runs on the new thread while the caller goes on, so the
/// caller hands it only state it does not touch until `join()` (or state that is itself
/// synchronised: a `BlockPipe`, atomics). Not `Sendable` itself: one owner joins it.
public final class WorkerThread<T> {
    private let job: Job
    private let thread: pthread_t
    private var joined = false

    /// Starts `body` on a new thread; throws the `pthread_create` error if none can be had.
    public init(_ body: @escaping () throws -> T) throws(SystemCallError) {
        let job = Job(body: body)
        thread = try startThread(detached: false) { job.run() }
        self.job = job
    }

    /// Waits for the thread (pthread_join(3), once) and returns what `body` returned or threw.
    public func join() -> Result<T, any Error> {
        if !joined {
            pthread_join(thread, nil)
            joined = true
        }
        return job.result ?? .failure(SystemCallError("pthread_join", .EIO, subject: "the thread produced no result"))
    }

    /// `result` is written by the thread before it ends and read only after pthread_join,
    /// which orders the two.
    private final class Job {
        var body: (() throws -> T)?
        var result: Result<T, any Error>?

        init(body: @escaping () throws -> T) { self.body = body }

        func run() {
            guard let body else { return }
            result = Result { try body() }
            self.body = nil  // what it captured goes now, not when the WorkerThread goes
        }
    }
}

/// Runs `body` on a new thread and waits for it: for work that changes the calling thread's
/// state for good (a namespace entered with setns), so no thread of a pool is ever left
/// changed. Throws only if no thread could be made.
public func runOnNewThread<T: Sendable>(_ body: @escaping @Sendable () throws(SystemCallError) -> T) throws(SystemCallError) -> Result<T, SystemCallError> {
    let thread = try WorkerThread<T> { () throws(SystemCallError) -> T in try body() }
    return thread.join().mapError { $0 as? SystemCallError ?? SystemCallError("pthread_join", .EIO) }
}

/// Makes the calling thread a background one: CPU only when nothing else wants it (SCHED_IDLE)
/// and disk only when idle (IOPRIO_CLASS_IDLE), for bookkeeping such as usage scans that must
/// never slow down the calls the daemon answers. Best effort: a failure leaves the thread as it was.
public func lowerCurrentThreadToIdle() {
    var param = sched_param()
    param.sched_priority = 0
    _ = pthread_setschedparam(pthread_self(), 5 /* SCHED_IDLE, hidden by glibc without _GNU_SOURCE */, &param)
    _ = berth_ioprio_set_idle()
}

/// Caps glibc's malloc arenas at `count` for the whole process (mallopt M_ARENA_MAX). By default
/// glibc gives threads up to 8 arenas per core, and each keeps the pages freed into it resident;
/// a daemon whose threads mostly wait is better served by a few. Call before threads start.
public func limitMallocArenas(to count: Int32) {
    _ = mallopt(M_ARENA_MAX, count)
}

/// Returns the free memory at the top of glibc's heaps and in whole free pages inside them to the
/// kernel (malloc_trim(0)). glibc keeps what a burst of small allocations freed resident (its trim
/// threshold rises with the largest block it has seen), so after freeing much at once — a large
/// message decoded and dropped — a long-running daemon calls this to give it back. Costs a walk
/// of the heaps and madvise calls: only after large frees, never per request.
public func releaseFreeMemory() {
    _ = malloc_trim(0)
}
