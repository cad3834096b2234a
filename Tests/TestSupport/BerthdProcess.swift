import Foundation
import Glibc

/// berthd running under `--root` on a private bus, for end-to-end tests.
public final class BerthdProcess: @unchecked Sendable {
    /// berthd's pid (a new one after `restart`).
    public private(set) var pid: pid_t
    private var exitStatus: Int32?  // wait status once reaped
    public let root: String
    private let stderrFile: String
    private let folder: TemporaryDirectory
    /// What `restart` starts berthd with again.
    private let command: [String]
    private let environment: [String: String]
    private let busAddress: String
    private let names: [String]

    /// A built product of this package (berthd, berthctl): next to the test bundle in
    /// `.build/<config>/`, or in `swift build --show-bin-path`.
    public static func binaryPath(_ name: String = "berthd") throws -> String {
        var candidates: [String] = []
        let bundle = Bundle.main.bundleURL.deletingLastPathComponent().path
        candidates.append((bundle as NSString).appendingPathComponent(name))
        if let exe = CommandLine.arguments.first {
            let dir = ((exe as NSString).deletingLastPathComponent as NSString)
            candidates.append(dir.appendingPathComponent(name))
            candidates.append((dir.deletingLastPathComponent as NSString).appendingPathComponent(name))
        }
        if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) { return found }
        let r = try run(["swift", "build", "--show-bin-path"], check: true)
        let path = (r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) as NSString).appendingPathComponent(name)
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw TestSupportError("\(name) is not built (looked in \(candidates) and \(path)); run swift build first")
        }
        return path
    }

    /// Starts berthd with `--root` in a fresh temp folder on `bus` and waits until it owns the bus
    /// names of `services` (default all three).
    ///   `environment` is added to this process's environment for berthd (e.g. NOTIFY_SOCKET).
    ///   `prepare` is called with the new root folder before berthd starts (to write configuration
    ///   such as `etc/berth/backends.d/*.conf`).
    public init(bus: PrivateDBusDaemon, services: [String] = ["machine1", "import1", "portable1"], extraArguments: [String] = [],
                environment: [String: String] = [:], prepare: ((String) throws -> Void)? = nil) throws {
        let made = try TemporaryDirectory(prefix: "berth-root")
        if let prepare {
            do { try prepare(made.path) } catch { made.remove(); throw error }
        }
        folder = made
        root = made.path
        stderrFile = folder.appending("berthd.log")
        FileManager.default.createFile(atPath: stderrFile, contents: nil)
        let arguments = ["--root", root, "--bus-address", bus.address, "--services", services.joined(separator: ",")] + extraArguments
        command = [try BerthdProcess.binaryPath()] + arguments
        self.environment = environment
        busAddress = bus.address
        names = services.map { "org.freedesktop.\($0)" }
        pid = 0
        try start()
    }

    /// Starts berthd (posix_spawn and waitpid rather than Foundation's Process, whose exit
    /// detection needs threads that blocked test threads may be holding) and waits until it owns
    /// its bus names.
    private func start() throws {
        exitStatus = nil
        pid = try spawn(command, stdout: "/dev/null", stderr: stderrFile, environment: environment)
        for _ in 0..<500 {
            let listed = try run(["busctl", "--address=\(busAddress)", "list", "--acquired", "--no-legend"])
            if names.allSatisfy({ listed.stdout.contains($0) }) { return }
            if !isRunning { throw TestSupportError("berthd exited (wait status \(exitStatus ?? -1)): \(log)") }
            usleep(20_000)
        }
        stop()
        throw TestSupportError("berthd did not take its bus names within 10 s: \(log)")
    }

    /// Stops berthd (SIGTERM) and starts a new berthd over the same root, on the same bus with
    /// the same arguments, as after a restart of the service; its log goes on in the same file.
    /// Returns the first berthd's exit status (nil if it had to be killed).
    @discardableResult
    public func restart() throws -> Int32? {
        let status = terminate()
        // Wait for the bus to drop the first berthd's names, so the new one can take them.
        for _ in 0..<500 {
            let listed = try run(["busctl", "--address=\(busAddress)", "list", "--acquired", "--no-legend"])
            if !names.contains(where: { listed.stdout.contains($0) }) { break }
            usleep(20_000)
        }
        try start()
        return status
    }

    /// What berthd wrote to stderr.
    public var log: String { (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? "" }

    /// Whether berthd still runs (reaping it with waitpid(WNOHANG) once it has ended).
    public var isRunning: Bool {
        if exitStatus != nil { return false }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid || (r < 0 && errno == ECHILD) {
            exitStatus = r == pid ? status : -1
            return false
        }
        return true
    }

    /// Sends SIGTERM and waits up to `timeout` seconds; returns the exit status, or nil if berthd
    /// died of a signal or had to be killed because it did not exit.
    @discardableResult
    public func terminate(timeout: Double = 10) -> Int32? {
        if isRunning {
            kill(pid, SIGTERM)
            let deadline = Date().addingTimeInterval(timeout)
            while isRunning && Date() < deadline { usleep(10_000) }
            if isRunning {
                kill(pid, SIGKILL)
                while isRunning { usleep(10_000) }
                return nil
            }
        }
        guard let status = exitStatus, status & 0x7f == 0 else { return nil }  // WIFEXITED
        return (status >> 8) & 0xff  // WEXITSTATUS
    }

    /// SIGKILL, as if berthd crashed; reaped. `restart()` then starts a new one over the same root.
    public func crash() {
        guard isRunning else { return }
        kill(pid, SIGKILL)
        while isRunning { usleep(10_000) }
    }

    /// Stops berthd if it still runs and removes the root folder.
    public func stop() {
        _ = terminate()
        folder.remove()
    }

    deinit { stop() }
}
