import CLinux
import Glibc

/// Runs `body` on a new detached thread (pthread_create(3)) and returns at once: for blocking
/// work and waits that must stay off Swift's cooperative pool (one thread per core) and off the
/// bus thread. If no thread can be had (resource limits: EAGAIN), this throws and `body` is
/// not run: running it on the caller's thread instead would park that thread (the bus thread,
/// for a listing) for as long as the job takes.
public func detachThread(_ body: @escaping @Sendable () -> Void) throws(SystemCallError) {
    let box = Unmanaged.passRetained(ThreadWork(body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    var thread = pthread_t()
    let r = pthread_create(&thread, &attributes, { raw in
        guard let raw else { return nil }
        Unmanaged<ThreadWork>.fromOpaque(raw).takeRetainedValue().body()
        return nil
    }, box)
    if r != 0 {
        Unmanaged<ThreadWork>.fromOpaque(box).release()
        // pthread_create returns the error number rather than setting errno.
        throw SystemCallError("pthread_create", Errno(rawValue: r))
    }
}

private final class ThreadWork: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
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
