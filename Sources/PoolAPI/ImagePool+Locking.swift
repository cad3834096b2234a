import Linux
import Synchronization
import struct SystemPackage.FilePath

/// Locking: the in-process per-name serialisation, systemd's image and name lock files, the
/// read-only and in-use refusals, and holds for transfers that read an image.
extension ImagePool {
    // MARK: per-image serialisation

    func acquire(_ requests: [(String, NameLocks.Mode)]) async {
        while !nameLocks.isFree(requests) {
            await withCheckedContinuation { nameLocks.wait($0) }
        }
        nameLocks.grant(requests)
    }

    func release(_ requests: [(String, NameLocks.Mode)]) {
        nameLocks.release(requests)
    }

    /// Runs `body` holding the in-process locks of `requests`.
    func serialised<T: Sendable>(_ requests: [(String, NameLocks.Mode)],
                                         _ body: () async throws -> T) async throws -> T {
        await acquire(requests)
        defer { release(requests) }
        return try await body()
    }

    /// A symlinked image is listed, read, cloned from and inspected through its link, as systemd
    /// does; but a mutation never follows the link out of the pool: rename and remove act on
    /// the link itself, and the read-only flag and limits, which belong to what the link points
    /// to, are refused with ELOOP, as systemd's O_NOFOLLOW opens refuse them.
    static func refuseSymlink(_ f: Found, _ what: String) throws {
        guard f.isSymlink else { return }
        throw PoolError(.system, "cannot \(what) image '\(f.name)': \(f.path) is a symlink",
                        cause: SystemCallError("open", .ELOOP, subject: f.path.string))
    }

    func refuseReadOnlyImage(_ f: Found, _ what: String) throws {
        if f.isHost { throw PoolError(.readOnly, "cannot \(what) the host image") }
        if f.isVendor { throw PoolError(.readOnly, "cannot \(what) vendor image '\(f.name)' in \(f.path)") }
    }

    func lockPath(_ path: FilePath, _ mode: LockFile.Mode, _ name: String) throws -> ImageLocks.Held {
        do { return try locks.lockPath(path, mode) } catch {
            if error.errno == .EBUSY { throw PoolError(.busy, "image '\(name)' is in use", cause: error) }
            throw PoolError.from(error, "cannot lock image '\(name)'")
        }
    }

    /// RemoveImage, RenameImage and a forced import's replacement refuse an image a transfer reads.
    func refuseHeldImage(_ name: String) throws {
        if readHolds[name, default: 0] > 0 {
            throw PoolError(.busy, "image '\(name)' is in use: a transfer is reading it")
        }
    }

    func lockName(_ name: String) throws -> ImageLocks.Held {
        do { return try locks.lockName(name, .exclusive) } catch {
            if error.errno == .EBUSY { throw PoolError(.busy, "image name '\(name)' is in use", cause: error) }
            throw PoolError.from(error, "cannot lock image name '\(name)'")
        }
    }

    // MARK: holding an image for a transfer

    /// Holds the image `name` for reading until `ImageReadHold.release()` (ExportTar/ExportRaw
    /// for the whole life of their worker): RemoveImage and RenameImage of it fail `.busy`
    /// (EBUSY, as machined answers for an image in use), and so does a forced import over it.
    /// Like `systemd-nspawn --read-only`, it also takes the image's path locks shared, so nspawn
    /// and machined see it in use and cannot start it writable meanwhile. A running container
    /// holds those locks exclusively: its image is still exported (systemd exports it too), held
    /// against our own RemoveImage/RenameImage only. `PoolError(.noSuchImage)` if there is none.
    public func holdForReading(_ name: String) async throws -> ImageReadHold {
        try Self.validateName(name)
        return try await serialised([(name, .shared)]) {
            let found = try existing(name)
            let image = try Self.describe(found, discoveryContext)
            let fileLocks = found.isHost ? nil : try? locks.lockPath(found.path, .shared)
            readHolds[name, default: 0] += 1
            return ImageReadHold(image: image, fileLocks: fileLocks, pool: self)
        }
    }

    /// One holder of `name` is done.
    func endHold(_ name: String) {
        readHolds[name, default: 1] -= 1
        if readHolds[name] == 0 { readHolds[name] = nil }
    }
}

/// An image held for reading (`ImagePool.holdForReading`): the image as it was when the hold
/// began, held until `release()`. A hold that is dropped unreleased releases itself.
public final class ImageReadHold: Sendable {
    /// The held image (its path is what a transfer reads).
    public let image: Image
    let fileLocks: ImageLocks.Held?
    let pool: ImagePool
    let released = Mutex(false)

    init(image: Image, fileLocks: ImageLocks.Held?, pool: ImagePool) {
        self.image = image
        self.fileLocks = fileLocks
        self.pool = pool
    }

    /// Ends the hold: the image may be removed or renamed again once this returns. Idempotent.
    public func release() async {
        guard takeRelease() else { return }
        fileLocks?.release()
        await pool.endHold(image.name)
    }

    func takeRelease() -> Bool {
        released.withLock { done in
            defer { done = true }
            return !done
        }
    }

    deinit {
        guard takeRelease() else { return }
        fileLocks?.release()
        let pool = self.pool, name = image.name
        Task { await pool.endHold(name) }
    }
}
