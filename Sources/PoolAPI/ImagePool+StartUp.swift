import FileTree
import Linux

/// Start-up: what berthd checks and cleans in the pool when it starts.
extension ImagePool {
    /// At daemon start: a warning when the pool folder exists and its group or other users
    /// have any access to it (mode bits 0077), nil otherwise. Such a folder lets local users
    /// reach the images' device nodes and setuid files; berthd makes it 0700 and leaves an
    /// existing one as the admin set it, but says so.
    public nonisolated func poolAccessWarning() -> String? {
        guard let st = try? fileStatus(realPoolPath.string), st.isDirectory, st.mode & 0o077 != 0 else { return nil }
        let mode = String(st.mode & 0o7777, radix: 8)
        return "the image pool \(realPoolPath) is mode \(mode): other users can reach the images' device nodes "
            + "and setuid files; make it 0700 (chmod 0700 \(realPoolPath)) as systemd does"
    }


    /// What `removeStaleTemporaryEntries` did, for the daemon to log.
    public struct CleanupReport: Sendable {
        /// One entry that could not be removed, and why.
        public struct Failure: Sendable {
            public var path: String
            public var reason: String
        }
        /// The paths removed.
        public var removed: [String] = []
        /// The paths that should have gone and did not.
        public var failed: [Failure] = []
    }

    /// Removes what a previous run left behind: in the pool folder, temp entries `.#…` (with
    /// their immutable flags, subvolumes through the backend that claims them) and lock files
    /// `.#….lck`; in the locks folder, `name-…`, `inode-…` and `block-…` lock files (a hard
    /// kill skips the releases that remove them). A lock file someone holds (a running nspawn,
    /// another process) is kept: it is removed only while taken exclusively. On external storage
    /// (RBD), the temp images this instance left (`staleTemporaryImages`). Called at daemon
    /// start; returns what went and what could not go.
    @discardableResult
    public func removeStaleTemporaryEntries() async -> CleanupReport {
        let pool = realPoolPath, registry = self.registry, lockDirectory = locks.directory
        let report = try? await Blocking.run { () -> CleanupReport in
            var report = CleanupReport()
            func removeLockFile(_ path: String) {
                do {
                    if try LockFile.removeIfUnheld(path) == .removed { report.removed.append(path) }
                } catch {
                    report.failed.append(.init(path: path, reason: "\(error)"))
                }
            }
            for file in (try? directoryEntries(pool.string)) ?? [] where file.hasPrefix(".#") && file != ImagePool.layerCacheEntry {
                let path = pool.appending(file)
                guard let st = try? fileStatus(path.string, followSymlinks: false) else { continue }
                if st.isRegular && file.hasSuffix(".lck") {
                    removeLockFile(path.string)
                    continue
                }
                if st.isDirectory || st.isRegular, let (backend, _) = registry.claim(PoolEntry(directory: pool, fileName: file)),
                   (try? backend.remove(at: path)) != nil {
                    report.removed.append(path.string)
                    continue
                }
                do {
                    try TreeRemoval.remove(at: path)
                    report.removed.append(path.string)
                } catch {
                    report.failed.append(.init(path: path.string, reason: "\(error)"))
                }
            }
            // External storage (RBD): the temp images this instance made (shared storage holds
            // other hosts' too, which their own berthd cleans).
            for backend in registry.externalBackends {
                let stale = backend.removeStaleTemporaryImages()
                report.removed += stale.removed
                report.failed += stale.failed.map { .init(path: $0.path, reason: $0.reason) }
            }
            for file in (try? directoryEntries(lockDirectory.string)) ?? []
            where ["name-", "inode-", "block-"].contains(where: { file.hasPrefix($0) }) {
                removeLockFile(lockDirectory.appending(file).string)
            }
            return report
        }
        return report ?? CleanupReport()
    }
}
