import CLinux
import Glibc

/// A lock file held with an open file description lock (fcntl F_OFD_SETLK), the lock kind
/// systemd 252's `make_lock_file()` takes, so berthd and systemd-nspawn/machined see each other's
/// image locks. Released by `release()` or on deinit.
///
/// `@unchecked Sendable`: owns one fd and a path; `release()` is idempotent and only the owner
/// calls it.
public final class LockFile: @unchecked Sendable {
    /// Shared (F_RDLCK) or exclusive (F_WRLCK) over the whole file.
    public enum Mode: Sendable { case shared, exclusive }

    /// The lock file (removed again on release by an exclusive owner).
    public let path: String
    private var fd: FileDescriptor?
    private var mode: Mode

    private init(path: String, fd: FileDescriptor, mode: Mode) {
        self.path = path
        self.fd = fd
        self.mode = mode
    }

    /// Opens (creating, 0600) and locks `path`. With `wait: false` a held conflicting lock fails
    /// with EBUSY at once (F_OFD_SETLK), as systemd maps EAGAIN to EBUSY.
    ///
    /// A lock acquired on a file its previous exclusive owner already unlinked is worthless, so
    /// that case retries on a fresh file, as systemd does.
    public static func acquire(_ path: String, _ mode: Mode, wait: Bool = false) throws(SystemCallError) -> LockFile {
        while true {
            let fd = try FileDescriptor.open(path, flags: O_CREAT | O_RDWR | O_NOFOLLOW | O_NOCTTY, mode: 0o600)
            do throws(SystemCallError) {
                try fcntlLock(fd, mode == .exclusive ? Int16(F_WRLCK) : Int16(F_RDLCK), wait: wait)
            } catch {
                if error.errno == .EAGAIN || error.errno == .EACCES {
                    throw SystemCallError(error.call, .EBUSY, subject: path)
                }
                throw error
            }
            if try fd.stat().linkCount > 0 {
                return LockFile(path: path, fd: fd, mode: mode)
            }
        }
    }

    /// Whether a lock of `mode` on `path` could be taken now (F_OFD_GETLK), without taking it.
    /// A missing file is free.
    public static func isFree(_ path: String, for mode: Mode) -> Bool {
        guard let fd = try? FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW | O_NOCTTY) else { return true }
        var fl = flock()
        fl.l_type = mode == .exclusive ? Int16(F_WRLCK) : Int16(F_RDLCK)
        fl.l_whence = Int16(SEEK_SET)
        guard berth_fcntl_lock(fd.rawValue, BERTH_F_OFD_GETLK, &fl) == 0 else { return true }
        return fl.l_type == Int16(F_UNLCK)
    }

    /// Unlocks, removes the file if no one else holds it, and closes.
    ///
    /// The file may only go while it is held exclusively (an acquirer that opened it meanwhile
    /// then finds it unlinked after locking, and retries on a fresh file). A shared owner first
    /// drops its lock, then tries for an exclusive one: systemd's `release_lock_file()` tries
    /// the upgrade while still holding its shared lock, so two shared owners releasing together
    /// each see the other and both leave the file behind (the `.#src.lck` left after concurrent
    /// clones of one image). Dropping first, whichever of them tries last finds the file free,
    /// or finds another's exclusive attempt, which then removes it.
    public func release() {
        guard let fd else { return }
        self.fd = nil
        if mode == .shared {
            try? LockFile.fcntlLock(fd, Int16(F_UNLCK), wait: false)
            if (try? LockFile.fcntlLock(fd, Int16(F_WRLCK), wait: false)) != nil { mode = .exclusive }
        }
        if mode == .exclusive { LockFile.unlinkHeld(fd, path) }
        fd.close()
    }

    /// What `removeIfUnheld` did with a lock file.
    public enum Cleanup: Sendable, Equatable {
        /// No one held it: removed.
        case removed
        /// Someone holds it (or the file is gone already): kept.
        case held
    }

    /// Removes the lock file `path` if no one holds it: takes it exclusively without waiting
    /// (never creating it), unlinks it while holding it, and closes. For stale lock files a
    /// killed process left behind; a file in use is kept. Throws if it cannot be opened or
    /// removed for another reason than being held or gone.
    public static func removeIfUnheld(_ path: String) throws(SystemCallError) -> Cleanup {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, flags: O_RDWR | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK)
        } catch where error.errno == .ENOENT {
            return .held
        }
        defer { fd.close() }
        do { try fcntlLock(fd, Int16(F_WRLCK), wait: false) } catch {
            if error.errno == .EAGAIN || error.errno == .EACCES { return .held }
            throw error
        }
        guard try fd.stat().linkCount > 0 else { return .held }
        try sys("unlinkat", path) { unlinkat(AT_FDCWD, path, 0) }
        return .removed
    }

    /// Unlinks `path`, which `fd` holds exclusively, unless it was unlinked already: then the
    /// name may belong to a fresh file of another owner, which must stay.
    private static func unlinkHeld(_ fd: FileDescriptor, _ path: String) {
        guard let st = try? fd.stat(), st.linkCount > 0 else { return }
        _ = unlink(path)
    }

    deinit { release() }

    private static func fcntlLock(_ fd: FileDescriptor, _ type: Int16, wait: Bool) throws(SystemCallError) {
        var fl = flock()
        fl.l_type = type
        fl.l_whence = Int16(SEEK_SET)
        fl.l_start = 0
        fl.l_len = 0
        let cmd = wait ? BERTH_F_OFD_SETLKW : BERTH_F_OFD_SETLK
        try sys(wait ? "fcntl(F_OFD_SETLKW)" : "fcntl(F_OFD_SETLK)") { berth_fcntl_lock(fd.rawValue, cmd, &fl) }
    }
}
