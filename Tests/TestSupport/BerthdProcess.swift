import Foundation
import Glibc

/// berthd running under `--root` on a private bus, for end-to-end tests.
public final class BerthdProcess: @unchecked Sendable {
    public let process: Process
    public let root: String
    private let stderrFile: String
    private let folder: TemporaryDirectory

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
    public init(bus: PrivateDBusDaemon, services: [String] = ["machine1", "import1", "portable1"], extraArguments: [String] = []) throws {
        folder = try TemporaryDirectory(prefix: "berth-root")
        root = folder.path
        stderrFile = folder.appending("berthd.log")
        FileManager.default.createFile(atPath: stderrFile, contents: nil)
        process = Process()
        process.executableURL = URL(fileURLWithPath: try BerthdProcess.binaryPath())
        process.arguments = ["--root", root, "--bus-address", bus.address, "--services", services.joined(separator: ",")] + extraArguments
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrFile))
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let names = services.map { "org.freedesktop.\($0)" }
        for _ in 0..<500 {
            let listed = try run(["busctl", "--address=\(bus.address)", "list", "--acquired", "--no-legend"])
            if names.allSatisfy({ listed.stdout.contains($0) }) { return }
            if !process.isRunning { throw TestSupportError("berthd exited \(process.terminationStatus): \(log)") }
            usleep(20_000)
        }
        stop()
        throw TestSupportError("berthd did not take its bus names within 10 s: \(log)")
    }

    /// What berthd wrote to stderr.
    public var log: String { (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? "" }

    /// Sends SIGTERM and waits up to `timeout` seconds; returns the exit status, or nil if berthd
    /// had to be killed because it did not exit.
    @discardableResult
    public func terminate(timeout: Double = 10) -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        process.waitUntilExit()
        return process.terminationReason == .exit ? process.terminationStatus : nil
    }

    /// Stops berthd if it still runs and removes the root folder.
    public func stop() {
        _ = terminate()
        folder.remove()
    }

    deinit { stop() }
}
