import Glibc
import Linux
import PoolAPI
import Synchronization

/// Where a host reaches an RBD image's bytes (docs/rbd.md): this kernel has no `rbd` or `nbd`
/// module, but FUSE and loop devices, so an image is exposed as a file by `rbd-fuse` and that
/// file goes through a loop device like a raw image (inspection, `systemd-nspawn --image`).
///
/// Each mount exposes one image only (`rbd-fuse -r IMAGE`) in its own folder
/// `<runtime>/rbd/<cluster>.<pool>/XXXXXX/` (0700, under berthd's `ROOT/run/berth`): a stray
/// recursive delete can reach one image, never the pool, and only root can open it (rbd-fuse
/// makes its files 0666). Berth never deletes recursively below `<runtime>/rbd`: a recursive
/// delete through a live rbd-fuse mount deletes the RBD image itself. Folders go with rmdir(2),
/// which fails on a mount point, after fusermount(1) has unmounted them.
public final class RbdFuseMount: Sendable {
    /// The folder rbd-fuse is mounted on.
    public let mountPoint: String
    /// The image as a file: `mountPoint/<image>`.
    public let imageFile: String
    private let closed = Mutex(false)

    init(mountPoint: String, image: String) {
        self.mountPoint = mountPoint
        imageFile = joinPath(mountPoint, image)
    }

    /// Unmounts (lazily if a loop device or an open file still holds it: the rbd-fuse process
    /// then ends when the last user lets go) and removes the empty folder. Idempotent.
    public func close() {
        let first = closed.withLock { c -> Bool in
            defer { c = true }
            return !c
        }
        guard first else { return }
        RbdFuse.unmount(mountPoint)
        rmdir(mountPoint)
    }

    deinit { close() }
}

/// Mounting RBD images as files with rbd-fuse (Ceph's `rbd-fuse` package).
public enum RbdFuse {
    /// The rbd-fuse executable.
    public static let executable = "/usr/bin/rbd-fuse"
    /// fusermount(1), which unmounts FUSE filesystems.
    static let fusermount = "/usr/bin/fusermount"

    /// What to reach: a pool of a cluster as a client.
    public struct Client: Sendable, Hashable {
        /// The cluster name (`ceph`): names the mount folder.
        public var cluster: String
        /// The Ceph pool.
        public var pool: String
        /// The ceph.conf to read (monitors, keyring).
        public var confPath: String
        /// The cephx client id, without `client.`.
        public var clientID: String
        /// Bound on reaching the monitors, in seconds.
        public var timeoutSeconds: Int

        public init(cluster: String = "ceph", pool: String, confPath: String, clientID: String, timeoutSeconds: Int = 30) {
            self.cluster = cluster
            self.pool = pool
            self.confPath = confPath
            self.clientID = clientID
            self.timeoutSeconds = timeoutSeconds
        }
    }

    /// Whether rbd-fuse and /dev/fuse are there.
    public static var isAvailable: Bool { access(executable, X_OK) == 0 && access("/dev/fuse", F_OK) == 0 }

    /// `<runtime>/rbd`: the parent of every rbd-fuse mount of berthd.
    public static func folder(runtimeDirectory: String) -> String { joinPath(runtimeDirectory, "rbd") }

    /// Mounts `image` of `client.pool` as a file, read-only unless `writable`.
    /// - Throws: `PoolError(.notSupported)` without rbd-fuse; `.noSuchImage` when the pool has no
    ///   such image; `.system` when rbd-fuse fails (cluster unreachable within the timeout).
    public static func mount(image: String, client: Client, runtimeDirectory: String, writable: Bool = false) throws -> RbdFuseMount {
        guard isAvailable else {
            throw PoolError(.notSupported, "reaching an RBD image's bytes needs rbd-fuse and /dev/fuse (apt-get install rbd-fuse fuse)")
        }
        // Names reach rbd-fuse's command line and a path: no '/', no leading '-' or '.'.
        guard !image.isEmpty, !image.contains("/"), !image.hasPrefix("-"), image != ".", image != ".." else {
            throw PoolError(.invalidName, "'\(image)' cannot be mounted with rbd-fuse")
        }
        let parent = joinPath(folder(runtimeDirectory: runtimeDirectory), "\(client.cluster).\(client.pool)")
        try wrap("cannot make \(parent)") { () throws(SystemCallError) in try makeDirectories(parent, mode: 0o700) }
        var template = Array(joinPath(parent, "XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw PoolError.from(SystemCallError("mkdtemp", .current, subject: parent), "cannot make an rbd-fuse mount point")
        }
        let mountPoint = String(cString: made)
        var arguments = ["-c", client.confPath, "-p", client.pool, "-r", image, mountPoint,
                         "--id", client.clientID, "--client_mount_timeout", String(client.timeoutSeconds),
                         "--rados_mon_op_timeout", String(client.timeoutSeconds),
                         "--log_file", "/dev/null", "-o", "default_permissions",
                         // berth-inspect's libblkid probe reads the image as uid 65534 through the fd it
                         // inherits; FUSE refuses every uid but the mounter's without allow_other. The
                         // mount point sits in a 0700 folder, so no other user reaches it by path.
                         "-o", "allow_other"]
        if !writable { arguments += ["-o", "ro"] }
        do {
            let exit = try runBounded(executable, arguments, seconds: client.timeoutSeconds + 10)
            guard exit == .exited(0) else {
                throw PoolError(.system, "rbd-fuse could not mount image '\(image)' of pool '\(client.pool)' (\(exit)): is the cluster reachable?")
            }
        } catch {
            // A mount half made by a killed rbd-fuse goes too; then the (empty) folder.
            unmount(mountPoint)
            rmdir(mountPoint)
            throw error
        }
        let mount = RbdFuseMount(mountPoint: mountPoint, image: image)
        // rbd-fuse mounts an empty folder when the image does not exist.
        if access(mount.imageFile, F_OK) != 0 {
            mount.close()
            throw PoolError(.noSuchImage, "no RBD image '\(image)' in pool '\(client.pool)'")
        }
        return mount
    }

    /// Unmounts what a previous run of berthd left mounted under `<runtime>/rbd` (it was killed
    /// with an inspection open) and removes the empty folders, deepest first, with rmdir only.
    /// Call once at start-up.
    public static func cleanUpStaleMounts(runtimeDirectory: String) {
        let parent = folder(runtimeDirectory: runtimeDirectory)
        for target in currentMountPoints().filter({ $0.hasPrefix(parent + "/") }).sorted(by: { $0.count > $1.count }) {
            unmount(target)
        }
        for pool in (try? directoryEntries(parent)) ?? [] {
            let poolFolder = joinPath(parent, pool)
            for mount in (try? directoryEntries(poolFolder)) ?? [] { rmdir(joinPath(poolFolder, mount)) }
            rmdir(poolFolder)
        }
    }

    /// fusermount -u (-z if busy) of `target`; falls back to umount2 for a mount fusermount
    /// does not know.
    static func unmount(_ target: String) {
        guard currentMountPoints().contains(target) else { return }
        if (try? runBounded(fusermount, ["-u", "-q", target], seconds: 30)) == .exited(0) { return }
        if (try? runBounded(fusermount, ["-u", "-q", "-z", target], seconds: 30)) == .exited(0) { return }
        unmountOrDetach(target)
    }

    /// Runs `executable` to completion (stdout and stderr to /dev/null), killed after `seconds`.
    static func runBounded(_ executable: String, _ arguments: [String], seconds: Int) throws -> ProcessExit {
        let pid = try wrap("cannot run \(executable)") { () throws(SystemCallError) in
            try spawnProcess(executable, arguments: arguments, descriptors: [])
        }
        var waited = 0
        while true {
            if let exit = try? pollExit(pid) { return exit }
            if waited >= seconds * 20 {
                kill(pid, SIGKILL)
                _ = try? waitForExit(pid)
                throw PoolError(.system, "\(executable) did not finish within \(seconds) s")
            }
            usleep(50_000)
            waited += 1
        }
    }

    private static func wrap<T>(_ message: String, _ body: () throws(SystemCallError) -> T) throws -> T {
        do {
            return try body()
        } catch {
            throw PoolError.from(error, message)
        }
    }
}
