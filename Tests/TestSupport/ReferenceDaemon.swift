import Foundation
import Glibc

/// One of systemd 252's own daemons (`systemd-machined`, `systemd-importd`, `systemd-portabled`)
/// running on a private bus beside berthd, so a test can make the same call on both and compare.
///
/// systemd's daemons have no `--root`: the reference daemon runs in a private mount namespace
/// (`unshare -m`) where the test's pool folder is bind-mounted over /var/lib/machines, so it sees
/// the same images berthd sees under its root without touching the host's pool.
public final class ReferenceDaemon: @unchecked Sendable {
    public enum Daemon: String, Sendable {
        case machined = "systemd-machined"
        case importd = "systemd-importd"
        case portabled = "systemd-portabled"
        public var busName: String {
            switch self {
            case .machined: "org.freedesktop.machine1"
            case .importd: "org.freedesktop.import1"
            case .portabled: "org.freedesktop.portable1"
            }
        }
    }

    public static let libexec = "/lib/systemd"

    /// Why the reference daemons cannot run here, or nil if they can.
    public static var skipReason: String? {
        if geteuid() != 0 { return "needs root for a private mount namespace" }
        if !FileManager.default.isExecutableFile(atPath: "\(libexec)/systemd-machined") {
            return "systemd-container is not installed (apt-get install systemd-container)"
        }
        if !commandExists("unshare") { return "unshare (util-linux) is not installed" }
        return nil
    }

    public let daemon: Daemon
    private var pid: pid_t = 0
    private let script: String

    /// Starts `daemon` on the bus at `busAddress` with `poolPath` bind-mounted at `mountPoint`
    /// (its pool folder, /var/lib/machines by default; /var/lib/portables for portabled), and
    /// waits until it owns its bus name.
    public init(_ daemon: Daemon, busAddress: String, poolPath: String, mountPoint: String = "/var/lib/machines",
                timeout: TimeInterval = 10) throws {
        if let why = Self.skipReason { throw TestSupportError("cannot run \(daemon.rawValue): \(why)") }
        self.daemon = daemon
        // machinectl and portablectl refuse to run unless this exists.
        try FileManager.default.createDirectory(atPath: "/run/systemd/system", withIntermediateDirectories: true)
        script = NSTemporaryDirectory() + "berth-ref-\(UUID().uuidString).sh"
        let body = """
            #!/bin/sh
            set -e
            mkdir -p '\(mountPoint)'
            mount --bind '\(poolPath)' '\(mountPoint)'
            exec \(Self.libexec)/\(daemon.rawValue)
            """
        try body.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        // posix_spawn with every other fd closed: no pipe of the test process may leak into
        // a long-lived daemon (see `spawn`).
        pid = try spawn(["/usr/bin/unshare", "-m", "--propagation", "private", script],
                        stdout: "/dev/null", stderr: "/dev/null",
                        environment: ["DBUS_SYSTEM_BUS_ADDRESS": busAddress])
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let r = try run(["busctl", "--address=\(busAddress)", "status", daemon.busName])
            if r.succeeded { return }
            if waitpid(pid, nil, WNOHANG) == pid { pid = 0; break }
            usleep(50_000)
        }
        stop()
        throw TestSupportError("\(daemon.rawValue) did not take \(daemon.busName) on \(busAddress)")
    }

    /// SIGTERM, then wait for it.
    public func stop() {
        if pid > 0 {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            pid = 0
        }
        try? FileManager.default.removeItem(atPath: script)
    }

    deinit { stop() }
}
