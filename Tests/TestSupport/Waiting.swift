import Foundation
import Glibc

/// Polls `condition` every `interval` seconds until it holds (true) or `seconds` pass (false):
/// the way a test waits for something to happen, instead of sleeping a fixed time and hoping.
/// The bound is generous (a loaded CI machine); it is a limit, never a timing assertion.
public func waitFor(seconds: Double = 30, interval: Double = 0.02, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .seconds(interval))
    }
    return try await condition()
}

/// `waitFor` for synchronous callers.
public func waitForSync(seconds: Double = 30, interval: Double = 0.02, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        usleep(UInt32(interval * 1_000_000))
    }
    return try condition()
}

/// Starts `busctl monitor` on the bus at `address` for `match`, its output in `log`, and returns
/// once it is a monitor: busctl says "Monitoring bus message stream." only after BecomeMonitor
/// succeeded, so no signal sent after this returns can be missed.
public func startBusMonitor(address: String, match: String, log: String) throws -> pid_t {
    let errors = log + ".stderr"
    let pid = try spawn(["/usr/bin/busctl", "--address=\(address)", "monitor", "--match", match], stdout: log, stderr: errors)
    let ready = waitForSync(seconds: 30) {
        ((try? String(contentsOfFile: errors, encoding: .utf8)) ?? "").contains("Monitoring bus message stream.")
    }
    guard ready else {
        kill(pid, SIGKILL)
        _ = waitpid(pid, nil, 0)
        throw TestSupportError("busctl monitor did not start: \((try? String(contentsOfFile: errors, encoding: .utf8)) ?? "")")
    }
    return pid
}
