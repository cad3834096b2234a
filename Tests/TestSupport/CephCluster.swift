import Foundation
import Glibc
import Linux
import Synchronization

/// A one-node Ceph cluster (one mon, one mgr, one OSD with bluestore on a sparse file) run as
/// plain processes from Debian's packages, everything under one short private folder, for the
/// RBD tests (facts: /work/shared/notes/ceph-one-node.md, docs/rbd.md).
///
/// - Monitors listen on a free port of 127.0.0.1 (msgr2 only), cephx on, keyrings made with
///   ceph-authtool and seeded into the mon's mkfs keyring, so no `ceph auth` calls are needed.
/// - `clientConf` + `clientKeyring` are what a test hands to berthd (`id=berth`, `profile rbd`
///   caps on every pool): berthd never sees the admin key.
/// - Memory is capped (mon 128 MB target, OSD 64 MB bluestore cache); health may be HEALTH_WARN
///   (a transient SLOW_OPS was seen on this machine when idle): the cluster is "up" when one OSD
///   is up and the pool's placement groups answer, never when health says OK.
/// - `stop()` tears down in the only safe order: mounts on loop devices, loop devices backed by
///   files under the folder, rbd-fuse mounts, then the daemons, then the folder — a recursive
///   delete through a live rbd-fuse mount would delete the RBD images themselves, so the folder
///   is never deleted while anything is still mounted below it.
public final class CephCluster: @unchecked Sendable {
    /// The cluster's private folder (`/tmp/bc.XXXXXX`: admin socket paths must stay under 108 bytes).
    public let directory: String
    /// The monitor's port on 127.0.0.1.
    public let port: UInt16
    /// The cluster's fsid.
    public let fsid: String
    /// The RBD pool made and `rbd pool init`ed at start.
    public let pool: String
    /// The admin's ceph.conf (client.admin keyring), for the `ceph` and `rbd` CLIs of the test.
    public let adminConf: String
    /// A client ceph.conf for `clientID` only (monitor address and keyring path): hand it to berthd.
    public let clientConf: String
    /// The cephx id of the client berthd uses (`client.berth`, caps `profile rbd`).
    public let clientID = "berth"
    /// The keyring of `client.<clientID>`.
    public let clientKeyring: String
    private let stopped = Mutex(false)

    /// Why the cluster cannot start on this machine, or nil if it can.
    public static var skipReason: String? {
        if !Privileges.isRoot { return "needs root (rbd-fuse, loop devices)" }
        for tool in ["ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "rbd", "ceph-authtool", "monmaptool", "rbd-fuse", "fusermount"]
        where !commandExists(tool) {
            return "\(tool) is not installed (apt-get install ceph-mon ceph-mgr ceph-osd ceph-common rbd-fuse fuse)"
        }
        if !FileManager.default.fileExists(atPath: "/dev/fuse") { return "no /dev/fuse on this machine" }
        return nil
    }

    /// Whether a cluster can be started here.
    public static var isAvailable: Bool { skipReason == nil }

    /// One cluster per test process, started at first use and torn down when the process exits
    /// (by an atexit handler, and by a watchdog shell should the process die without running it).
    /// Suites share it so CI starts one cluster, not one per test; a test that disturbs the
    /// cluster (stops its OSD) starts its own with `init` instead.
    public static func shared() throws -> CephCluster {
        try sharedCluster.get()
    }

    private static let sharedCluster: Result<CephCluster, TestSupportError> = {
        do {
            let cluster = try CephCluster()
            atexit { try? CephCluster.sharedCluster.get().stop() }
            return .success(cluster)
        } catch let error as TestSupportError {
            return .failure(error)
        } catch {
            return .failure(TestSupportError("\(error)"))
        }
    }()

    /// Makes and starts a cluster, with the pool `pool` created and initialised for RBD.
    /// - Parameter blockSize: the OSD's sparse bluestore file (space is used only as data is written).
    public init(pool: String = "berth", blockSize: Int64 = 12 << 30) throws {
        if let reason = CephCluster.skipReason { throw TestSupportError("cannot start a Ceph cluster: \(reason)") }
        directory = try TemporaryDirectory(prefix: "bc", in: "/tmp").path
        port = try CephCluster.freePort()
        fsid = UUID().uuidString.lowercased()
        self.pool = pool
        adminConf = directory + "/ceph.conf"
        clientConf = directory + "/client.conf"
        clientKeyring = directory + "/client.berth.keyring"
        do {
            try startWatchdog()
            try bootstrap(blockSize: blockSize)
        } catch {
            let logs = ["mon.a", "mgr.x", "osd.0"].map { name in
                "\(name): " + ((try? String(contentsOfFile: "\(directory)/log/\(name).log", encoding: .utf8))?
                    .split(separator: "\n").suffix(5).joined(separator: "\n") ?? "")
            }.joined(separator: "\n")
            stop()
            throw TestSupportError("starting the Ceph cluster failed: \(error)\n\(logs)")
        }
    }

    deinit { stop() }

    private var monitorAddress: String { "[v2:127.0.0.1:\(port)]" }

    private func bootstrap(blockSize: Int64) throws {
        let d = directory
        for sub in ["mon", "mgr", "osd", "run", "log", "mnt"] {
            try FileManager.default.createDirectory(atPath: "\(d)/\(sub)", withIntermediateDirectories: true)
        }
        let conf = """
            [global]
            fsid = \(fsid)
            mon host = \(monitorAddress)
            mon initial members = a
            public addr = 127.0.0.1
            cluster addr = 127.0.0.1
            ms bind msgr1 = false
            auth cluster required = cephx
            auth service required = cephx
            auth client required = cephx
            auth allow insecure global id reclaim = false
            osd pool default size = 1
            osd pool default min size = 1
            mon allow pool size one = true
            mon warn on pool no redundancy = false
            mon allow pool delete = true
            osd crush chooseleaf type = 0
            osd pool default pg autoscale mode = off
            mon data avail warn = 2
            mon data avail crit = 1
            mgr initial modules = iostat
            run dir = \(d)/run
            pid file = \(d)/run/$name.pid
            log file = \(d)/log/$name.log
            admin socket = \(d)/run/$name.asok
            keyring = \(d)/$name.keyring
            client mount timeout = 30
            rados mon op timeout = 60
            [mon]
            mon data = \(d)/mon
            mon memory autotune = false
            mon memory target = 134217728
            [mgr]
            mgr data = \(d)/mgr
            [osd]
            osd data = \(d)/osd
            osd objectstore = bluestore
            bluestore block create = true
            bluestore block size = \(blockSize)
            bluestore cache autotune = false
            bluestore cache size = 67108864
            osd memory target = 939524096

            """
        try conf.write(toFile: adminConf, atomically: true, encoding: .utf8)
        // What berthd gets: the monitor and its own keyring, nothing of the admin's.
        let client = """
            [global]
            fsid = \(fsid)
            mon host = \(monitorAddress)
            ms bind msgr1 = false
            keyring = \(clientKeyring)
            log file = /dev/null

            """
        try client.write(toFile: clientConf, atomically: true, encoding: .utf8)

        let keys: [(String, [String])] = [
            ("mon.", ["--cap", "mon", "allow *"]),
            ("client.admin", ["--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *", "--cap", "mds", "allow *"]),
            ("mgr.x", ["--cap", "mon", "allow profile mgr", "--cap", "osd", "allow *", "--cap", "mds", "allow *"]),
            ("osd.0", ["--cap", "mon", "allow profile osd", "--cap", "mgr", "allow profile osd", "--cap", "osd", "allow *"]),
            ("client.\(clientID)", ["--cap", "mon", "profile rbd", "--cap", "osd", "profile rbd", "--cap", "mgr", "profile rbd"]),
        ]
        for (name, caps) in keys {
            let file = name == "mon." ? "\(d)/mon.keyring" : "\(d)/\(name).keyring"
            try run(["ceph-authtool", "--create-keyring", file, "--gen-key", "-n", name] + caps, check: true)
        }
        try FileManager.default.copyItem(atPath: "\(d)/mon.keyring", toPath: "\(d)/mkfs.keyring")
        for (name, _) in keys where name != "mon." {
            try run(["ceph-authtool", "\(d)/mkfs.keyring", "--import-keyring", "\(d)/\(name).keyring"], check: true)
        }
        chmod(clientKeyring, 0o600)
        try run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", monitorAddress, "\(d)/monmap"], check: true)
        try run(["ceph-mon", "-c", adminConf, "--mkfs", "-i", "a", "--monmap", "\(d)/monmap", "--keyring", "\(d)/mkfs.keyring"],
                check: true)
        try startDaemon(["/usr/bin/ceph-mon", "-c", adminConf, "-i", "a"])
        try startDaemon(["/usr/bin/ceph-mgr", "-c", adminConf, "-i", "x"])
        let osdUUID = UUID().uuidString.lowercased()
        try ceph(["osd", "new", osdUUID, "0"])
        try run(["ceph-osd", "-c", adminConf, "-i", "0", "--mkfs", "--osd-uuid", osdUUID], check: true)
        try startOSD()
        try ceph(["osd", "pool", "create", pool, "8", "8"])
        try createPoolForRBD(pool, create: false)
    }

    /// Creates another pool (unless `create` is false) and `rbd pool init`s it: for a test that
    /// needs a pool no other suite writes to.
    public func createPoolForRBD(_ name: String, create: Bool = true) throws {
        if create { try ceph(["osd", "pool", "create", name, "8", "8"]) }
        // Blocks until the pool's placement groups are active, so it also waits for the OSD.
        try run(["timeout", "180", "rbd", "-c", adminConf, "pool", "init", name], check: true)
    }

    /// A detached shell that tears the cluster down in the same safe order should this test
    /// process die without running `stop()` (killed by a CI timeout): Ceph daemons must not
    /// outlive the run. It ends by itself once the folder is gone.
    private func startWatchdog() throws {
        let d = directory
        let script = """
            ( while kill -0 \(getpid()) 2>/dev/null && [ -d '\(d)' ]; do sleep 2; done
              [ -d '\(d)' ] || exit 0
              for l in $(losetup -nO NAME,BACK-FILE | awk -v p='\(d)/' 'index($2,p)==1{print $1}'); do
                for m in $(findmnt -rno TARGET -S "$l"); do umount -l "$m"; done; losetup -d "$l"; done
              for m in $(findmnt -rno TARGET | grep '^\(d)/' | sort -r); do fusermount -u -z "$m" || umount -l "$m"; done
              for n in osd.0 mgr.x mon.a; do p=$(cat '\(d)'/run/$n.pid 2>/dev/null) && grep -q '\(d)/' /proc/$p/cmdline && kill $p; done
              sleep 10
              findmnt -rno TARGET | grep -q '^\(d)/' || rm -rf '\(d)'
            ) >/dev/null 2>&1 </dev/null &
            """
        try spawnAndWait(["/bin/sh", "-c", script], stdout: "/dev/null")
    }

    /// Runs a daemon; it forks into the background and its first process exits 0 once it runs.
    private func startDaemon(_ argv: [String]) throws {
        let name = (argv[0] as NSString).lastPathComponent
        try spawnAndWait(argv, stdout: "\(directory)/log/\(name).out")
    }

    /// Runs the `ceph` CLI as client.admin (bounded: a lost cluster fails the test, never hangs it).
    @discardableResult
    public func ceph(_ arguments: [String]) throws -> CommandResult {
        try run(["timeout", "120", "ceph", "-c", adminConf, "--connect-timeout", "60"] + arguments, check: true)
    }

    /// Runs the `rbd` CLI, as client.admin or (`asClient`) as berthd's client, on `pool` by default.
    @discardableResult
    public func rbd(pool: String? = nil, _ arguments: [String], asClient: Bool = false, check: Bool = true) throws -> CommandResult {
        let identity = asClient ? ["-c", clientConf, "--id", clientID] : ["-c", adminConf]
        return try run(["timeout", "120", "rbd"] + identity + ["-p", pool ?? self.pool] + arguments, check: check)
    }

    /// The names of the RBD images in `pool` (default: the cluster's pool).
    public func images(in pool: String? = nil) throws -> [String] {
        try run(["timeout", "120", "rbd", "-c", adminConf, "-p", pool ?? self.pool, "ls"], check: true).stdout
            .split(separator: "\n").map(String.init)
    }

    /// Configures berthd under `root` for `pool` of this cluster as its client: the client
    /// conf copied to `ROOT/etc/ceph/ceph.conf` (berthd resolves `conf=` under its root; the
    /// keyring path inside stays absolute) and `ROOT/etc/berth/backends.d/rbd.conf`.
    public func configureBerthd(root: String, pool: String? = nil, extra: String = "required=yes\ntimeout=20\n") throws {
        try FileManager.default.createDirectory(atPath: root + "/etc/ceph", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/etc/berth/backends.d", withIntermediateDirectories: true)
        _ = try? FileManager.default.removeItem(atPath: root + "/etc/ceph/ceph.conf")
        try FileManager.default.copyItem(atPath: clientConf, toPath: root + "/etc/ceph/ceph.conf")
        try backendConfig(pool: pool, extra: extra).write(toFile: root + "/etc/berth/backends.d/rbd.conf", atomically: true, encoding: .utf8)
    }

    /// The text of berthd's `backends.d/rbd.conf` for `pool` (default: the cluster's pool) with
    /// the conf at `/etc/ceph/ceph.conf` under berthd's root (`configureBerthd` puts it there).
    public func backendConfig(pool: String? = nil, extra: String = "") -> String {
        "[rbd]\npool=\(pool ?? self.pool)\ncluster=ceph\nconf=/etc/ceph/ceph.conf\nid=\(clientID)\n" + extra
    }

    /// The pid of a daemon (`mon.a`, `mgr.x`, `osd.0`) from its pid file, if it runs.
    public func pid(of daemon: String) -> pid_t? {
        guard let text = try? String(contentsOfFile: "\(directory)/run/\(daemon).pid", encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), kill(pid, 0) == 0 else { return nil }
        return pid
    }

    /// Stops the OSD (SIGKILL: as a crashed or unreachable OSD; I/O to it then waits) and waits
    /// until its process is gone.
    public func stopOSD() {
        guard let pid = pid(of: "osd.0") else { return }
        kill(pid, SIGKILL)
        CephCluster.waitGone(pid, seconds: 30)
    }

    /// Starts the OSD and waits until the monitor reports it up.
    public func startOSD() throws {
        try startDaemon(["/usr/bin/ceph-osd", "-c", adminConf, "-i", "0"])
        for _ in 0..<240 {
            let r = try run(["timeout", "30", "ceph", "-c", adminConf, "osd", "stat", "--format", "json"])
            if r.succeeded, let data = r.stdout.data(using: .utf8),
               let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
               (json["num_up_osds"] as? Int) == 1 {
                return
            }
            usleep(250_000)
        }
        throw TestSupportError("the OSD did not come up within 60 s")
    }

    /// Maps one image of `pool` as a file with rbd-fuse (as berthd's client) at a new folder
    /// under the cluster's folder; `unmountFuse` or `stop` unmounts it. Returns the image file.
    public func mountFuse(image: String, pool: String? = nil) throws -> String {
        let mountPoint = "\(directory)/mnt/\(image)"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        // rbd-fuse daemonizes holding its stdout: spawned with output to a file, not through a
        // pipe whose end never comes.
        try spawnAndWait(["/usr/bin/rbd-fuse", "-c", clientConf, "-p", pool ?? self.pool, "-r", image, mountPoint,
                          "--id", clientID], stdout: "\(directory)/log/rbd-fuse.out")
        return "\(mountPoint)/\(image)"
    }

    /// Unmounts what `mountFuse(image:)` mounted.
    public func unmountFuse(image: String) throws {
        try run(["fusermount", "-u", "\(directory)/mnt/\(image)"], check: true)
    }

    /// Tears the cluster down: mounts under the folder (deepest first), loop devices backed by
    /// files under it, then the daemons (mon last), then the folder — only if nothing is
    /// mounted below it any more.
    public func stop() {
        let first = stopped.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        CephCluster.teardown(directory)
    }

    /// The teardown of `stop()`, usable on a folder alone (a cluster left by a dead test process).
    static func teardown(_ directory: String) {
        let prefix = directory.hasSuffix("/") ? directory : directory + "/"
        // 1. Filesystems mounted from loop devices whose backing file lies under the folder (an
        //    image reached through rbd-fuse + loop), wherever they are mounted.
        let loops = backingLoops(under: prefix)
        for mount in mounts().reversed() where loops.contains(mount.source) {
            if (try? run(["umount", mount.target]))?.succeeded != true { _ = try? run(["umount", "-l", mount.target]) }
        }
        // 2. The loop devices themselves.
        for loop in loops { _ = try? run(["losetup", "-d", loop]) }
        // The kernel lets go of a detached loop device's file shortly after, not at once.
        for loop in loops {
            let backing = "/sys/block/\((loop as NSString).lastPathComponent)/loop/backing_file"
            for _ in 0..<200 where FileManager.default.fileExists(atPath: backing) { usleep(50_000) }
        }
        // 3. Whatever is mounted below the folder (rbd-fuse mounts), deepest first.
        for mount in mounts().reversed() where mount.target.hasPrefix(prefix) {
            if mount.type.hasPrefix("fuse") {
                _ = try? run(["fusermount", "-u", "-z", mount.target])
            } else {
                _ = try? run(["umount", "-l", mount.target])
            }
        }
        // 4. The daemons: OSD and mgr before the mon they report to.
        for daemon in ["osd.0", "mgr.x", "mon.a"] {
            guard let text = try? String(contentsOfFile: "\(prefix)run/\(daemon).pid", encoding: .utf8),
                  let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else { continue }
            // Only a Ceph daemon of this folder: a reused pid must not be killed.
            guard let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                  cmdline.contains(prefix) else { continue }
            kill(pid, SIGTERM)
            if !waitGone(pid, seconds: 15) {
                kill(pid, SIGKILL)
                waitGone(pid, seconds: 15)
            }
        }
        // 5. The folder, never through a mount.
        if mounts().contains(where: { $0.target.hasPrefix(prefix) }) {
            FileHandle.standardError.write(Data("CephCluster: \(directory) still has mounts below it; left in place\n".utf8))
            return
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    @discardableResult
    private static func waitGone(_ pid: pid_t, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if kill(pid, 0) != 0 { return true }
            // A child of this process (the OSD restarted by startOSD is not: it daemonized) is reaped here.
            _ = waitpid(pid, nil, WNOHANG)
            usleep(50_000)
        }
        return kill(pid, 0) != 0
    }

    /// /proc/self/mountinfo, in mount order.
    private static func mounts() -> [MountInfoEntry] { currentMounts() }

    /// Loop devices (/dev/loopN) whose backing file lies under `prefix`.
    private static func backingLoops(under prefix: String) -> [String] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/sys/block") else { return [] }
        return entries.filter { $0.hasPrefix("loop") }.compactMap { name in
            guard let backing = try? String(contentsOfFile: "/sys/block/\(name)/loop/backing_file", encoding: .utf8) else { return nil }
            return backing.trimmingCharacters(in: .whitespacesAndNewlines).hasPrefix(prefix) ? "/dev/\(name)" : nil
        }
    }

    /// A TCP port of 127.0.0.1 free now (bound to port 0 and closed).
    private static func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> Bool in
                bind(fd, sa, length) == 0 && getsockname(fd, sa, &length) == 0
            }
        }
        guard bound else { throw TestSupportError("bind 127.0.0.1:0: errno \(errno)") }
        return UInt16(bigEndian: address.sin_port)
    }
}
