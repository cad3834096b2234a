import FileTree
import Glibc
import Linux
import PoolAPI
import Synchronization
import struct SystemPackage.FilePath

/// Disk usage of directory images, computed by a background scan and cached: walking a tree is
/// far too slow for ListImages, so `image(named:at:)` reports what is known (`Image.unknown`
/// until the first scan ends) and starts a scan when the value is missing or stale.
///
/// An entry is keyed by path and remembers the top directory's inode and mtime: a different
/// inode (another tree renamed into place) or mtime (entries added or removed at the top)
/// triggers a rescan, and so does age, as writes deeper in the tree change no top-level stamp.
/// The stale value is served while the rescan runs.
final class UsageCache: Sendable {
    private struct Entry {
        var inode: UInt64
        var mtime: UInt64
        var bytes: UInt64
        var computedAt: Double
    }

    private struct Scan {
        var path: String
        var inode: UInt64
        var mtime: UInt64
    }

    /// A scan of the tree at a path failed: not retried before `retryAt` while the top
    /// directory is the same (inode, mtime), with the wait doubling on each failure.
    private struct Failure {
        var inode: UInt64
        var mtime: UInt64
        var retryAt: Double
        var backoff: Double
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var failures: [String: Failure] = [:]
        /// Scans started, for tests: a failing tree must not be walked on every listing.
        var scansStarted = 0
        /// Paths queued or being scanned.
        var scanning: Set<String> = []
        var queue: [Scan] = []
        var workerRunning = false
    }

    private let state = Mutex(State())
    private let lifetime: Double
    private let scan: @Sendable (String) throws -> UInt64
    private let report: @Sendable (String) -> Void
    /// Seconds before a failed scan is retried, doubled per failure up to an hour.
    private let firstRetry: Double

    /// - Parameters:
    ///   - scan: what computes a tree's usage (`DiskUsage.allocatedBytes`; tests pass others).
    ///   - report: told once per failing path (until it scans again fine), for the daemon's log.
    ///   - firstRetry: seconds before a failed scan is retried, doubled per failure up to an hour.
    init(lifetime: Double, scan: @escaping @Sendable (String) throws -> UInt64 = { try DiskUsage.allocatedBytes(of: FilePath($0)) },
         report: @escaping @Sendable (String) -> Void = { _ in }, firstRetry: Double = 60) {
        self.lifetime = lifetime
        self.firstRetry = firstRetry
        self.scan = scan
        self.report = report
    }

    /// Scans started so far (for tests).
    var scansStarted: Int { state.withLock { $0.scansStarted } }

    /// The cached usage of `path` (or `Image.unknown`), starting a scan if it is stale.
    func lookup(path: String, inode: UInt64, modification: UInt64) -> UInt64 {
        let now = monotonicSeconds()
        let lifetime = self.lifetime
        let (value, scan): (UInt64, Bool) = state.withLock { s in
            var result = Image.unknown
            var stale = true
            if let entry = s.entries[path], entry.inode == inode {
                result = entry.bytes
                stale = entry.mtime != modification || now - entry.computedAt > lifetime
            }
            guard stale, !s.scanning.contains(path) else { return (result, false) }
            // A tree whose scan failed (an unreadable subtree, I/O errors) is not walked again on
            // every listing: only after its backoff, or once its top directory changed.
            if let failure = s.failures[path], failure.inode == inode, failure.mtime == modification,
               now < failure.retryAt {
                return (result, false)
            }
            s.scanning.insert(path)
            s.scansStarted += 1
            return (result, true)
        }
        if scan { start(path: path, inode: inode, modification: modification) }
        return value
    }

    /// Drops what is known about `path` (removed or renamed away).
    func forget(path: String) {
        state.withLock {
            _ = $0.entries.removeValue(forKey: path)
            _ = $0.failures.removeValue(forKey: path)
        }
    }

    /// Queues a scan of `path`. Scans run one at a time on a single idle-priority thread, started
    /// when the first is queued and ended when none is left: listing a pool of a thousand new
    /// images queues a thousand scans, not a thousand threads competing with the daemon.
    private func start(path: String, inode: UInt64, modification: UInt64) {
        let startWorker = state.withLock { s -> Bool in
            s.queue.append(Scan(path: path, inode: inode, mtime: modification))
            if s.workerRunning { return false }
            s.workerRunning = true
            return true
        }
        guard startWorker else { return }
        do {
            try detachThread { [self] in work() }
        } catch {
            // No thread now (resource limits): the scans stay queued and the next lookup tries
            // again; they never run on the caller's thread, which is the bus thread.
            state.withLock { $0.workerRunning = false }
        }
    }

    private func work() {
        // Its own thread, at idle CPU and I/O priority: usage is bookkeeping, and on a busy
        // host it must never take time from the calls berthd answers.
        lowerCurrentThreadToIdle()
        while let scan = state.withLock({ s -> Scan? in
            if s.queue.isEmpty {
                s.workerRunning = false
                return nil
            }
            return s.queue.popLast()
        }) {
            let result = Result { try self.scan(scan.path) }
            let firstFailure = state.withLock { s -> Bool in
                s.scanning.remove(scan.path)
                switch result {
                case .success(let bytes):
                    s.entries[scan.path] = Entry(inode: scan.inode, mtime: scan.mtime, bytes: bytes, computedAt: monotonicSeconds())
                    s.failures[scan.path] = nil
                    return false
                case .failure:
                    let previous = s.failures[scan.path]
                    let backoff = min((previous?.backoff ?? firstRetry / 2) * 2, 3600)
                    s.failures[scan.path] = Failure(inode: scan.inode, mtime: scan.mtime, retryAt: monotonicSeconds() + backoff, backoff: backoff)
                    return previous == nil
                }
            }
            if firstFailure, case .failure(let error) = result {
                report("cannot compute the disk usage of \(scan.path) (retried with backoff, reported once): \(error)")
            }
        }
    }
}
