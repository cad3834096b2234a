import Foundation
import Glibc

/// A real systemd 252 booted as PID 1 of a container (`systemd-nspawn -b`), for the tests that need
/// what only a booted systemd has: units, `systemctl`, D-Bus activation, berthd.service under
/// Type=notify, `portablectl attach --now`.
///
/// The root is a Debian 12 made by `scripts/systemd-root.sh` and cached outside the clone; each boot
/// runs it with `--volatile=overlay`, so whatever a test changes lands in a tmpfs and the cached
/// root stays as it was. The host's Swift toolchain is bind-mounted read-only at the same path (the
/// debug binaries link its runtime), and so are the folders a test asks for.
public final class BootedSystemd: @unchecked Sendable {
    /// The `systemd-nspawn` process.
    public let nspawnPID: pid_t
    /// The container's PID 1 (systemd), for `nsenter`.
    public private(set) var initPID: pid_t = 0
    /// The machine name given to nspawn.
    public let name: String
    private let cgroups: [String]
    private let log: String
    private var stopped = false

    /// Why a systemd cannot be booted here, or nil if it can.
    public static var skipReason: String? {
        if !Privileges.isRoot { return "needs root to boot a container with systemd-nspawn" }
        for tool in ["systemd-nspawn", "nsenter", "debootstrap"] where !commandExists(tool) {
            return "\(tool) is not installed (scripts/install-packages.sh)"
        }
        return nil
    }

    /// The cached root (made on first use: about a minute), from `scripts/systemd-root.sh`.
    public static func preparedRoot() throws -> String {
        let script = packageRoot().appendingPathComponent("scripts/systemd-root.sh").path
        let r = try run([script])
        guard r.succeeded else { throw TestSupportError("systemd-root.sh failed (\(r.status)): \(r.stderr.suffix(2000))") }
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Boots the cached root as machine `name`, with `readOnlyBinds` (host paths, mounted at the same
    /// path inside) and `binds` (host path → container path, writable), and waits until systemd says
    /// the system is up (`running` or `degraded`), at most `timeout` seconds (a boot takes 2–4 s
    /// here, but was seen to take 116 s while the rest of the suite loaded both cores).
    public init(name: String, readOnlyBinds: [String] = [], binds: [(String, String)] = [], timeout: Double = 180) throws {
        self.name = name
        let root = try Self.preparedRoot()
        log = "/tmp/berth-booted-\(name).log"
        // nspawn's payload cgroup goes under the cgroup of the process that runs it: a cgroup of its
        // own in every named hierarchy (hybrid here: name=systemd v1 and cgroup2 "unified"), not the
        // root, or --keep-unit creates its cgroups at the host's top level.
        var made: [String] = []
        for hierarchy in ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let marker = hierarchy == "/sys/fs/cgroup" ? "cgroup.controllers" : "cgroup.procs"
            guard FileManager.default.fileExists(atPath: "\(hierarchy)/\(marker)") else { continue }
            let dir = "\(hierarchy)/berth-test-\(name)"
            mkdir(dir, 0o755)
            made.append(dir)
        }
        cgroups = made
        var nspawn = ["systemd-nspawn", "-D", root, "--volatile=overlay", "-b", "--keep-unit", "--register=no",
                      "-M", name, "--console=read-only", "--bind-ro=/opt/swift"]
        nspawn += readOnlyBinds.map { "--bind-ro=\($0)" }
        nspawn += binds.map { "--bind=\($0.0):\($0.1)" }
        let enter = made.map { "echo $$ > \($0)/cgroup.procs" }.joined(separator: "; ")
        let script = "\(enter); exec \(nspawn.map(Self.quote).joined(separator: " "))"
        nspawnPID = try spawn(["/bin/sh", "-c", script], stdout: log, stderr: log)

        let deadline = Date().addingTimeInterval(timeout)
        while initPID == 0 {
            guard Date() < deadline, Self.isAlive(nspawnPID) else {
                let why = "nspawn did not start a container: \(bootLog)"
                stop()
                throw TestSupportError(why)
            }
            initPID = Self.containerInit(of: nspawnPID) ?? 0
            if initPID == 0 { usleep(50_000) }
        }
        while true {
            let answer = try? shell("systemctl is-system-running")
            let state = answer?.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            if state == "running" || state == "degraded" { break }
            guard Date() < deadline, Self.isAlive(nspawnPID) else {
                let why = "systemd did not finish booting (state \(state ?? "?"), \(answer?.stderr ?? "")): \(bootLog)"
                stop()
                throw TestSupportError(why)
            }
            usleep(200_000)
        }
    }

    /// What nspawn and the container's console printed.
    public var bootLog: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// Runs `command` with /bin/sh inside the container, in all of its namespaces. A process
    /// entered this way is not in a unit: start what must be one with `systemd-run`.
    @discardableResult
    public func shell(_ command: String, environment: [String: String] = [:]) throws -> CommandResult {
        var argv = ["nsenter", "-t", String(initPID), "-a", "--", "/usr/bin/env", "-i",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]
        argv += environment.map { "\($0.key)=\($0.value)" }
        argv += ["/bin/sh", "-c", command]
        return try run(argv)
    }

    /// Powers the container off (SIGTERM to nspawn), waits for it, and removes its cgroups.
    public func stop() {
        if stopped { return }
        stopped = true
        kill(nspawnPID, SIGTERM)
        let deadline = Date().addingTimeInterval(30)
        var status: Int32 = 0
        while waitpid(nspawnPID, &status, WNOHANG) == 0 {
            if Date() > deadline { kill(nspawnPID, SIGKILL); _ = waitpid(nspawnPID, &status, 0); break }
            usleep(50_000)
        }
        for dir in cgroups { Self.removeCgroup(dir) }
    }

    deinit { stop() }

    private static func isAlive(_ pid: pid_t) -> Bool {
        var status: Int32 = 0
        return waitpid(pid, &status, WNOHANG) == 0
    }

    /// The container's init among nspawn's children: the one that is PID 1 in a namespace of its own
    /// (the last field of its `NSpid:` line). nspawn's first child is its short-lived outer child,
    /// and a busy machine can show it long enough to be taken for the init, so the first child will not do.
    private static func containerInit(of pid: pid_t) -> pid_t? {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { pid_t($0) }.first { child in
            let status = (try? String(contentsOfFile: "/proc/\(child)/status", encoding: .utf8)) ?? ""
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") }) else { return false }
            let ids = line.dropFirst("NSpid:".count).split(whereSeparator: { $0 == " " || $0 == "\t" })
            return ids.count > 1 && ids.last == "1"
        }
    }

    /// Removes an empty cgroup and the empty ones below it, depth first.
    private static func removeCgroup(_ dir: String) {
        let children = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        for child in children {
            var isDirectory: ObjCBool = false
            let path = "\(dir)/\(child)"
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
                removeCgroup(path)
            }
        }
        rmdir(dir)
    }

    private static func quote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// The package's folder (where Package.swift is), found from this source file's path.
    public static func packageRoot(file: String = #filePath) -> URL {
        var url = URL(fileURLWithPath: file)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
        }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
    }
}
