import Foundation
import Glibc
import TestSupport

// Helpers shared by the end-to-end tests of machine1's machine registry (MachineRegistryTests,
// MachineLifecycleTests, MachineCopyTests, MachineReachTests, Machine1BerthctlMachineTests).

/// The real machinectl against berthd's private bus, without a pager or colours.
func machinectl(_ bus: PrivateDBusDaemon, _ args: [String]) throws -> CommandResult {
    try run(["machinectl", "--no-pager"] + args, environment: ["DBUS_SYSTEM_BUS_ADDRESS": bus.address, "SYSTEMD_COLORS": "0"])
}

/// The real busctl against berthd's private bus.
func busctl(_ bus: PrivateDBusDaemon, _ args: [String]) throws -> CommandResult {
    try run(["busctl", "--address=\(bus.address)"] + args)
}

/// Polls `condition` every 0.1 s until it holds (true) or `timeout` seconds pass (false).
func waitUntil(_ timeout: Double = 20, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(100_000)
    }
    return false
}

/// systemd-nspawn --register=yes running `command` in `root` as machine `name` (or booting the
/// root's init with `-b` when `command` is nil), with extra nspawn `options` (-U, --network-veth,
/// --volatile=overlay…), registering on the bus at `bus`, from a control group of its own in
/// each hierarchy (berth-test-NAME; nspawn makes its groups below its own).
final class NspawnContainer: @unchecked Sendable {
    static let hierarchies = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]
    let pid: pid_t
    let groups: [String]
    let name: String
    let logFile: String
    private var exited = false

    /// nspawn's stderr goes to `logFile` (/tmp/berth-nspawn-NAME.log unless given), and its stdout
    /// too with `logStdout` (a booted container's console), else to /dev/null.
    init(name: String, root: String, bus: String, options: String = "", command: String?,
         logFile: String? = nil, logStdout: Bool = false) throws {
        var made: [String] = []
        for h in Self.hierarchies where FileManager.default.fileExists(atPath: h + "/cgroup.procs") {
            let dir = "\(h)/berth-test-\(name)"
            mkdir(dir, 0o755)
            made.append(dir)
        }
        groups = made
        self.name = name
        let logFile = logFile ?? "/tmp/berth-nspawn-\(name).log"
        self.logFile = logFile
        let enter = made.map { "echo $$ > \($0)/cgroup.procs" }.joined(separator: "; ")
        let payload = command.map { "/bin/sh -c '\($0)'" } ?? "-b"
        let extra = options.isEmpty ? "" : options + " "
        let nspawn = "exec systemd-nspawn -q -D '\(root)' --register=yes \(extra)-M \(name) \(payload)"
        pid = try spawn(["/bin/sh", "-c", "\(enter); \(nspawn)"], stdout: logStdout ? logFile : "/dev/null", stderr: logFile,
                        environment: ["DBUS_SYSTEM_BUS_ADDRESS": bus])
    }

    var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    /// Waits for nspawn to exit (at most `timeout` s), killing it after that.
    func wait(timeout: Double = 30) -> Bool {
        if exited { return true }
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline { kill(pid, SIGKILL); _ = waitpid(pid, &status, 0); exited = true; return false }
            usleep(50_000)
        }
        exited = true
        return true
    }

    /// Ends the container whatever state the test left it in. With `gracePeriod`, nspawn is sent
    /// SIGTERM first and given that long to end (a booted container shutting down), SIGKILL after.
    /// Then every process left in its groups and in the scope berthd made for it is killed (a
    /// container's init outlives nspawn's SIGKILL, and would keep its network namespace and veth),
    /// nspawn is killed and waited for, and the test's groups are removed.
    func stop(gracePeriod: Double? = nil) {
        if let gracePeriod, !exited {
            kill(pid, SIGTERM)
            _ = wait(timeout: gracePeriod)
        }
        let scopes = Self.hierarchies.map { "\($0)/machine.slice/machine-\(name).scope" }
        for dir in groups + scopes {
            let subgroups = ((try? FileManager.default.subpathsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix("cgroup.procs") }
            for procs in ["cgroup.procs"] + subgroups {
                let text = (try? String(contentsOfFile: dir + "/" + procs, encoding: .utf8)) ?? ""
                for line in text.split(separator: "\n") { if let p = pid_t(line) { kill(p, SIGKILL) } }
            }
        }
        // Not once reaped: the pid could be another process's by now.
        if !exited { kill(pid, SIGKILL) }
        _ = wait(timeout: 5)
        for dir in groups {
            for child in ((try? FileManager.default.subpathsOfDirectory(atPath: dir)) ?? []).sorted().reversed() { rmdir(dir + "/" + child) }
            // The container's processes may take a moment to go after nspawn is killed.
            for _ in 0..<50 {
                if rmdir(dir) == 0 || errno == ENOENT { break }
                usleep(100_000)
            }
        }
    }
}
