import Glibc
import Linux
import struct SystemPackage.FilePath

/// systemd's image locks, so berthd, systemd-nspawn and machined see each other:
/// systemd 252's `image_path_lock()` takes a "local" lock file next to the image,
/// `DIR/.#NAME.lck`, and a "global" one in /run/systemd/nspawn/locks named by what the path is:
/// `inode-<st_dev>:<st_ino>` (decimal, as unsigned long) for directories and regular files,
/// `block-<major>:<minor>` for block devices (no local lock under /dev); `image_name_lock()`
/// locks `name-<NAME>` there. All are open file description locks (`LockFile`). A running
/// nspawn holds the path locks exclusively (shared with --read-only), so exclusive requests
/// from us fail with EBUSY while it runs, and ours keep it from starting.
struct ImageLocks: Sendable {
    /// `ROOT/run/systemd/nspawn/locks`.
    let directory: FilePath
    /// The real path of the root: `/`-equivalent paths are the host image.
    let root: FilePath

    /// The locks of one image path, released together.
    final class Held: Sendable {
        private let locks: [LockFile]
        init(_ locks: [LockFile]) { self.locks = locks }
        func release() { for l in locks.reversed() { l.release() } }
    }

    /// Locks the image at `path` (`image_path_lock`). The host root cannot be locked
    /// exclusively (EBUSY, as in systemd) and is not locked shared.
    func lockPath(_ path: FilePath, _ mode: LockFile.Mode) throws(SystemCallError) -> Held {
        if !Self.enabled { return Held([]) }
        // An external backend's image (rbd://…) has no file to lock: its backend's own locks,
        // which other hosts see, stand for these.
        if isImageLocator(path) { return Held([]) }
        if path == root || path == "/" {
            if mode == .exclusive { throw SystemCallError("image_path_lock", .EBUSY, subject: path.string) }
            return Held([])
        }
        var global: FilePath?
        if let st = try? fileStatus(path.string) {
            if st.isBlockDevice {
                global = directory.appending("block-\(major(st.rdev)):\(minor(st.rdev))")
            } else if st.isDirectory || st.isRegular {
                global = directory.appending("inode-\(st.device):\(st.inode)")
            } else {
                throw SystemCallError("image_path_lock", .ENOTTY, subject: path.string)
            }
        }
        var taken: [LockFile] = []
        if !path.starts(with: "/dev"), let file = path.lastComponent {
            do {
                taken.append(try LockFile.acquire(path.removingLastComponent().appending(".#\(file).lck").string, mode))
            } catch where !(mode == .shared && error.errno == .EROFS) {
                throw error
            } catch {
                // A shared lock on a read-only folder (vendor images in /usr) is skipped, as systemd does.
            }
        }
        if let global {
            prepareDirectory()
            do {
                taken.append(try LockFile.acquire(global.string, mode))
            } catch {
                for l in taken { l.release() }
                throw error
            }
        }
        return Held(taken)
    }

    /// Locks an image name regardless of its path (`image_name_lock`); `.host` is never free.
    func lockName(_ name: String, _ mode: LockFile.Mode) throws(SystemCallError) -> Held {
        if name == ".host" { throw SystemCallError("image_name_lock", .EBUSY, subject: name) }
        if !Self.enabled { return Held([]) }
        prepareDirectory()
        return Held([try LockFile.acquire(directory.appending("name-\(name)").string, mode)])
    }

    /// systemd honours `SYSTEMD_NSPAWN_LOCK=0` (a boolean) to switch image locks off; so do we,
    /// so a setup that disabled them for nspawn does not find berthd taking them.
    static var enabled: Bool {
        guard let raw = getenv("SYSTEMD_NSPAWN_LOCK") else { return true }
        let value = String(cString: raw).lowercased()
        return !["0", "no", "n", "false", "f", "off"].contains(value)
    }

    private func prepareDirectory() {
        // One statx in the usual case where the folder exists; mkdir -p walks every component.
        if (try? entryStatus(directory.string, followSymlinks: true))?.isDirectory == true { return }
        try? makeDirectories(directory.removingLastComponent().string, mode: 0o755)
        _ = mkdir(directory.string, 0o700)
    }

    private func major(_ dev: UInt64) -> UInt32 { UInt32(((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfff)) }
    private func minor(_ dev: UInt64) -> UInt32 { UInt32((dev & 0xff) | ((dev >> 12) & ~0xff)) }
}

/// In-process serialisation of pool operations per image name: shared holders (clones reading a
/// source) coexist, an exclusive holder (remove, rename, the target of a clone) waits for all
/// others. A request takes all its names at once or waits, so two requests cannot deadlock.
/// Lives inside the pool actor; waiting suspends, so other requests keep being answered.
struct NameLocks {
    enum Mode { case shared, exclusive }
    private var readers: [String: Int] = [:]
    private var writers: Set<String> = []
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func isFree(_ requests: [(String, Mode)]) -> Bool {
        requests.allSatisfy { name, mode in
            !writers.contains(name) && (mode == .shared || readers[name, default: 0] == 0)
        }
    }

    mutating func grant(_ requests: [(String, Mode)]) {
        for (name, mode) in requests {
            if mode == .exclusive { writers.insert(name) } else { readers[name, default: 0] += 1 }
        }
    }

    mutating func wait(_ c: CheckedContinuation<Void, Never>) { waiting.append(c) }

    /// Releases and wakes every waiter to re-check (few waiters; simplicity over fairness).
    mutating func release(_ requests: [(String, Mode)]) {
        for (name, mode) in requests {
            if mode == .exclusive { writers.remove(name) } else {
                readers[name, default: 1] -= 1
                if readers[name] == 0 { readers[name] = nil }
            }
        }
        let wake = waiting
        waiting = []
        for c in wake { c.resume() }
    }
}
