import CSystemd
import Dispatch
import Glibc
import Linux
import Synchronization

/// One thread running an sd-event loop, and a Swift `SerialExecutor` on that same thread.
///
/// sd-bus and sd-event are not thread-safe, so everything that touches a bus runs here: actors
/// pinned to this executor (`nonisolated var unownedExecutor`) and the C callbacks sd-bus makes,
/// which enter those actors with `assumeIsolated`. Jobs from other threads are queued under a mutex
/// and an eventfd registered with `sd_event_add_io` wakes the loop to run them.
///
/// `@unchecked Sendable`: the `sd_event` handle is only touched on the loop thread (it is created
/// there); everything shared across threads (the job queue, the eventfd number) sits in the mutex
/// or is immutable.
public final class EventLoop: SerialExecutor, @unchecked Sendable {
    private struct Shared {
        var jobs: [UnownedJob] = []
        var thread: pthread_t?
        var exitCode: Int32?
        /// Set by `requestExit()` from another thread; the loop exits after running queued jobs.
        var exitRequested = false
    }
    private let shared = Mutex(Shared())
    /// The loop's sd_event; only touched on the loop thread.
    private var loopEvent: OpaquePointer?
    private let wakeFD: Int32
    private let started = Mutex<Bool>(false)
    private let name: String
    /// Signals the loop turns into callbacks (sd_event_add_signal); they must be blocked in every
    /// thread before the loop starts, which `blockSignals(_:)` does.
    private let signalHandlers: [(Int32, @Sendable (Int32) -> Void)]
    private var signalBoxes: [Unmanaged<SignalBox>] = []
    private let ready = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)

    /// Starts the loop thread. `signals` are delivered through sd-event to `handler` on the loop
    /// thread; block them first with `EventLoop.blockSignals`.
    public init(name: String = "berth-bus", signals: [(Int32, @Sendable (Int32) -> Void)] = []) throws {
        let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw SystemCallError("eventfd", .current) }
        wakeFD = fd
        self.name = name
        signalHandlers = signals
        // The thread keeps the loop alive until threadMain returns. On failure the loop is
        // released here and its deinit closes the eventfd.
        let thread = try startJoinableThread { [self] in threadMain() }
        shared.withLock { $0.thread = thread }
        ready.wait()
        if let code = shared.withLock({ $0.exitCode }), code < 0 {
            throw SystemCallError("sd_event_new", Errno(-code))
        }
    }

    /// Blocks `signals` in the calling thread (and so in threads it starts later), as sd-event's
    /// signal sources need; call it first thing in a synchronous `main`.
    public static func blockSignals(_ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    private func threadMain() {
        var event: OpaquePointer?
        var r = sd_event_new(&event)
        if r >= 0 {
            r = sd_event_add_io(event, nil, wakeFD, UInt32(EPOLLIN.rawValue), { _, fd, _, userdata in
                var value: UInt64 = 0
                _ = Glibc.read(fd, &value, 8)
                guard let userdata else { return 0 }
                Unmanaged<EventLoop>.fromOpaque(userdata).takeUnretainedValue().drain()
                return 0
            }, Unmanaged.passUnretained(self).toOpaque())
        }
        if r >= 0 {
            for (signal, handler) in signalHandlers {
                let box = Unmanaged.passRetained(SignalBox(handler))
                signalBoxes.append(box)
                r = sd_event_add_signal(event, nil, signal, { _, info, userdata in
                    guard let userdata, let info else { return 0 }
                    Unmanaged<SignalBox>.fromOpaque(userdata).takeUnretainedValue().handler(Int32(info.pointee.ssi_signo))
                    return 0
                }, box.toOpaque())
                if r < 0 { break }
            }
        }
        if r < 0 {
            shared.withLock { $0.exitCode = r }
            sd_event_unref(event)
            ready.signal()
            finished.signal()
            return
        }
        loopEvent = event
        ready.signal()
        let code = sd_event_loop(event)
        // Run what was queued before the exit request, so no continuation is lost.
        drain()
        shared.withLock { $0.exitCode = code }
        loopEvent = nil
        sd_event_unref(event)
        for box in signalBoxes { box.release() }
        signalBoxes = []
        finished.signal()
    }

    private func drain() {
        while true {
            let (jobs, exit) = shared.withLock { s -> ([UnownedJob], Bool) in
                let j = s.jobs
                s.jobs = []
                return (j, s.exitRequested)
            }
            if jobs.isEmpty {
                if exit, let e = loopEvent { sd_event_exit(e, 0) }
                return
            }
            for job in jobs { job.runSynchronously(on: asUnownedSerialExecutor()) }
        }
    }

    /// The loop's `sd_event`, for attaching a bus (`sd_bus_attach_event`); only valid on the loop thread.
    var event: OpaquePointer? {
        checkIsolated()
        return loopEvent
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        shared.withLock { $0.jobs.append(unowned) }
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// Whether the calling thread is the loop thread.
    public var isCurrent: Bool {
        guard let t = shared.withLock({ $0.thread }) else { return false }
        return pthread_equal(pthread_self(), t) != 0
    }

    public func isIsolatingCurrentContext() -> Bool? { isCurrent }

    public func checkIsolated() {
        precondition(isCurrent, "\(name): not on the bus loop thread")
    }

    /// A file descriptor the loop watches (`watchReadable`); `cancel()` stops watching.
    public final class Watch: @unchecked Sendable {
        // Touched on the loop thread only (made, fired and cancelled there).
        fileprivate var source: OpaquePointer?
        fileprivate let onReadable: () -> Void
        fileprivate init(_ onReadable: @escaping () -> Void) { self.onReadable = onReadable }

        /// Stops watching (sd_event_source_disable_unref); on the loop thread.
        public func cancel() {
            if let source { sd_event_source_disable_unref(source) }
            source = nil
        }
    }

    /// Calls `onReadable` on the loop thread when `fd` becomes readable (sd_event_add_io), for
    /// until the returned watch is cancelled (it keeps itself alive until then): a pidfd of a process that exits,
    /// for one. The caller keeps `fd` open meanwhile. Only on the loop thread.
    public func watchReadable(_ fd: Int32, _ onReadable: @escaping () -> Void) throws(SystemCallError) -> Watch {
        checkIsolated()
        let watch = Watch(onReadable)
        let box = Unmanaged.passRetained(watch)
        var source: OpaquePointer? = nil
        let r = sd_event_add_io(loopEvent, &source, fd, UInt32(EPOLLIN.rawValue), { _, _, _, userdata in
            guard let userdata else { return 0 }
            Unmanaged<Watch>.fromOpaque(userdata).takeUnretainedValue().onReadable()
            return 0
        }, box.toOpaque())
        guard r >= 0, let source else {
            box.release()
            throw SystemCallError("sd_event_add_io", Errno(-r))
        }
        // The source owns one reference to the watch, released when the source goes.
        sd_event_source_set_destroy_callback(source) { userdata in
            if let userdata { Unmanaged<Watch>.fromOpaque(userdata).release() }
        }
        watch.source = source
        return watch
    }

    /// Runs `body` on the loop thread and returns its result (for setup code outside any actor).
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await LoopRunner(loop: self).run(body)
    }

    /// Ends the loop (sd_event_exit) once the jobs queued before have run; `join()` waits for it.
    public func requestExit() {
        if isCurrent {
            if let e = loopEvent { sd_event_exit(e, 0) }
            return
        }
        // No Task here: the cooperative pool may be busy or blocked (a synchronous join()),
        // so the request goes straight through the queue's flag and the wake-up eventfd.
        shared.withLock { $0.exitRequested = true }
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    /// Waits until the loop thread has ended; returns sd_event_loop's result.
    @discardableResult
    public func join() -> Int32 {
        finished.wait()
        finished.signal()
        if let t = shared.withLock({ $0.thread }) { pthread_join(t, nil) }
        shared.withLock { $0.thread = nil }
        return shared.withLock { $0.exitCode } ?? 0
    }

    /// Waits until the loop thread has ended, from async code: the wait happens on a thread of
    /// its own, never blocking one of the cooperative pool's few threads (which would starve the
    /// very tasks the loop's shutdown may need).
    @discardableResult
    public func joined() async -> Int32 {
        await withCheckedContinuation { (c: CheckedContinuation<Int32, Never>) in
            // Without a thread to spare (resource limits), the join happens here: this is
            // shutdown, and waiting is what the caller asked for.
            do { try detachThread { c.resume(returning: self.join()) } } catch { c.resume(returning: self.join()) }
        }
    }

    deinit { Glibc.close(wakeFD) }
}

/// A handler for one signal, kept alive while the loop runs.
private final class SignalBox {
    let handler: @Sendable (Int32) -> Void
    init(_ handler: @escaping @Sendable (Int32) -> Void) { self.handler = handler }
}

/// An actor on the loop's executor, to run setup code there.
private actor LoopRunner {
    let loop: EventLoop
    init(loop: EventLoop) { self.loop = loop }
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    func run<T: Sendable>(_ body: @Sendable () throws -> T) throws -> T { try body() }
}

