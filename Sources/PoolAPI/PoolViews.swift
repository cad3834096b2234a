import Dispatch
import Synchronization

// What sd-bus's synchronous callbacks (property getters, the node enumerator) need to know of
// the pool, answered without file-system work on the calling thread: one slow or hung mount
// must not stall the bus thread, and with it all three services. The work runs on `Blocking`'s
// worker threads; these hold its last result.

/// PoolUsage and PoolLimit for the manager's property getters: measured on a worker thread
/// (btrfs quota ioctls, a statfs), and served from the last measurement, which is at most
/// `maxAge` old when the pool answers promptly. A read that finds it older starts a new
/// measurement and answers with the old value meanwhile; a measurement that hangs leaves the
/// last value in place and starts no other.
public final class PoolUsageCache: Sendable {
    private struct State {
        var value: (usage: UInt64, limit: UInt64)?
        /// When `value` was measured; nil: stale (never measured, or the pool changed since).
        var measuredAt: ContinuousClock.Instant?
        /// Bumped by `invalidate()`: a measurement begun before a change does not count as fresh.
        var generation: UInt64 = 0
        var measuring = false
    }

    private let pool: ImagePool
    private let maxAge: Duration
    private let state = Mutex(State())

    /// A cache of `pool`'s usage and limit, measured again when older than `maxAge`.
    public init(pool: ImagePool, maxAge: Duration = .seconds(1)) {
        self.pool = pool
        self.maxAge = maxAge
    }

    /// The last measured usage and limit (`Image.unknown` each until the first measurement
    /// ends); starts a measurement on a worker thread when it is stale and none runs.
    public func current() -> (usage: UInt64, limit: UInt64) {
        let now = ContinuousClock.now
        let (value, start) = state.withLock { s in
            let fresh = s.measuredAt.map { now - $0 < maxAge } ?? false
            let start = !fresh && !s.measuring
            if start { s.measuring = true }
            return (s.value, start ? s.generation : nil)
        }
        if let generation = start {
            Blocking.detach(.interactive, { [self] in
                let measured = pool.poolUsageNow()
                store(measured, at: now, generation: generation, endsMeasuring: true)
            }, ifNoThread: { [self] _ in
                // Measured again on the next read.
                state.withLock { $0.measuring = false }
            })
        }
        return value ?? (Image.unknown, Image.unknown)
    }

    /// Measures now and waits for it (on a worker thread): after SetPoolLimit, so that the
    /// next read shows the new limit.
    public func refresh() async {
        let now = ContinuousClock.now
        let generation = state.withLock { $0.generation }
        guard let measured = try? await Blocking.run(.interactive, { [pool] () -> [UInt64] in
            let v = pool.poolUsageNow()
            return [v.usage, v.limit]
        }), measured.count == 2 else { return }
        store((measured[0], measured[1]), at: now, generation: generation, endsMeasuring: false)
    }

    /// Marks the value stale after a change of the pool (clone, removal, a limit): the next
    /// read measures again.
    public func invalidate() {
        state.withLock { s in
            s.generation &+= 1
            s.measuredAt = nil
        }
    }

    private func store(_ value: (usage: UInt64, limit: UInt64), at start: ContinuousClock.Instant, generation: UInt64,
                       endsMeasuring: Bool) {
        state.withLock { s in
            if endsMeasuring { s.measuring = false }
            // An older measurement never replaces a newer one.
            if let measuredAt = s.measuredAt, measuredAt > start { return }
            s.value = value
            // Begun before the last change: kept (better than nothing) but still stale.
            s.measuredAt = generation == s.generation ? start : nil
        }
    }
}

/// The image names for sd-bus's node enumerator (introspection of the image subtree): listed
/// on a worker thread, which the calling (bus) thread waits for at most `maxWait`. A listing
/// that takes longer — a hung or very slow search path — is answered with the last complete
/// listing, and later calls do not wait for it again until it has ended.
///
/// Removed means gone: a name passed to `forget` (after RemoveImage, RenameImage, CleanPool
/// returned) is left out of every answer until a listing begun after that is complete.
/// Images that appeared meanwhile show up with the next listing that completes in time.
public final class ImageNameListing: Sendable {
    private final class Job: Sendable {
        let done = DispatchSemaphore(value: 0)
        /// The `forget` sequence number when the listing began.
        let sequence: UInt64
        init(sequence: UInt64) { self.sequence = sequence }
    }

    private struct State {
        var last: [String] = []
        /// The sequence number the listing in `last` began at.
        var lastSequence: UInt64 = 0
        var sequence: UInt64 = 0
        /// Names forgotten, with their sequence numbers; pruned as listings complete.
        var forgotten: [(name: String, sequence: UInt64)] = []
        var running: Job?
        /// The running listing already overran a wait: answer without waiting again.
        var runningIsSlow = false
    }

    private let pool: ImagePool
    private let maxWait: Duration
    private let state = Mutex(State())

    /// Listings of `pool`, each waited for at most `maxWait` by `names()`.
    public init(pool: ImagePool, maxWait: Duration = .milliseconds(200)) {
        self.pool = pool
        self.maxWait = maxWait
    }

    /// The names of every image (as `ImagePool.images()` lists them): a new listing if it
    /// completes within `maxWait`, else the last one.
    public func names() -> [String] {
        let (job, start, wait) = state.withLock { s -> (Job, Bool, Bool) in
            if let running = s.running { return (running, false, !s.runningIsSlow) }
            let job = Job(sequence: s.sequence)
            s.running = job
            return (job, true, true)
        }
        if start {
            Blocking.detach(.interactive, { [self, pool] in
                let names = pool.imageNamesNow()
                state.withLock { s in
                    s.last = names
                    s.lastSequence = job.sequence
                    s.forgotten.removeAll { $0.sequence <= job.sequence }
                    if s.running === job {
                        s.running = nil
                        s.runningIsSlow = false
                    }
                }
                job.done.signal()
            }, ifNoThread: { [self] _ in
                // No listing this time: the last one is served, and the next call tries again.
                state.withLock { s in if s.running === job { s.running = nil } }
                job.done.signal()
            })
        }
        var waitedInTime = false
        if wait {
            let nanoseconds = maxWait.components.seconds * 1_000_000_000 + maxWait.components.attoseconds / 1_000_000_000
            waitedInTime = job.done.wait(timeout: .now() + .nanoseconds(Int(nanoseconds))) == .success
            // Leave it signalled for whoever else waits on the same listing.
            if waitedInTime { job.done.signal() }
        }
        return state.withLock { s in
            if !waitedInTime, s.running === job { s.runningIsSlow = true }
            let since = s.lastSequence
            let gone = Set(s.forgotten.filter { $0.sequence > since }.map(\.name))
            return gone.isEmpty ? s.last : s.last.filter { !gone.contains($0) }
        }
    }

    /// Leaves `name` out of the answers until a listing begun after now completes: the image is
    /// gone (removed, renamed away).
    public func forget(_ name: String) {
        state.withLock { s in
            s.sequence &+= 1
            s.forgotten.append((name, s.sequence))
        }
    }
}
