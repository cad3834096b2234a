// berth-bench: times the same machine1/import1 work against berthd and against systemd 252's
// daemons, each on its own private bus, back-to-back, and records the figures. scripts/bench.sh
// builds the pools and fixtures, starts the daemons and calls this tool once per item; the
// `table` command then prints every figure for both with the ratio Berth/systemd.
//
// Calls go through Bus's blocking BusClient (one sd-bus connection per daemon, sd_bus_call per
// call, no client-side introspection), so the client's cost is the same for both daemons.
import Bus
import Foundation
import Glibc
import Linux
import Services

// MARK: - Results

/// One measured figure, as written to the results file.
enum Outcome: CustomStringConvertible {
    case seconds(Double)
    case kibibytes(Int)
    case notImplemented
    case failed(String)

    var description: String {
        switch self {
        case .seconds(let s): String(format: "%.3f s", s)
        case .kibibytes(let k): String(format: "%.1f MiB", Double(k) / 1024)
        case .notImplemented: "n/a (not implemented)"
        case .failed(let why): "failed: \(why)"
        }
    }

    /// The machine form for the results file: `s:<seconds>`, `k:<KiB>`, `na`, `err:<text>`.
    var field: String {
        switch self {
        case .seconds(let s): "s:\(s)"
        case .kibibytes(let k): "k:\(k)"
        case .notImplemented: "na"
        case .failed(let why): "err:" + why.replacingOccurrences(of: "\t", with: " ").replacingOccurrences(of: "\n", with: " ")
        }
    }

    init(field: String) {
        if field.hasPrefix("s:"), let v = Double(field.dropFirst(2)) { self = .seconds(v) }
        else if field.hasPrefix("k:"), let v = Int(field.dropFirst(2)) { self = .kibibytes(v) }
        else if field == "na" { self = .notImplemented }
        else { self = .failed(String(field.hasPrefix("err:") ? field.dropFirst(4) : Substring(field))) }
    }

    var value: Double? {
        switch self {
        case .seconds(let s): s
        case .kibibytes(let k): Double(k)
        default: nil
        }
    }
}

/// A failed measurement, in words for the results file.
struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}


// MARK: - Clock, caches, processes

/// CLOCK_MONOTONIC in seconds (Linux's `monotonicSeconds`), under the short name the items use.
func now() -> Double { monotonicSeconds() }

/// VmRSS (or another `field` in kB) of `pid` in KiB, from /proc/<pid>/status.
func residentKiB(_ pid: Int32, field: String = "VmRSS") -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }
    return nil
}

/// One run of berth-bench: where its figures go and which filesystems settle before a timed run.
struct Bench {
    /// The results file (`--results`): one `item \t who \t outcome` line per figure; nil: print only.
    let results: String?
    /// btrfs filesystems (`--settle PATH`) whose deleted subvolumes must be cleaned up before a
    /// timed run: btrfs frees a removed image in the background, which would otherwise compete
    /// with the next import for the disk.
    let settlePaths: [String]

    /// Appends `item \t who \t outcome` to the results file and echoes it.
    func record(item: String, who: String, _ outcome: Outcome) {
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        print("  \(pad(item, 44)) \(pad(who, 12)) \(outcome)")
        fflush(nil)
        guard let results else { return }
        let line = "\(item)\t\(who)\t\(outcome.field)\n"
        if let h = FileHandle(forWritingAtPath: results) {
            h.seekToEndOfFile()
            h.write(Data(line.utf8))
            try? h.close()
        } else {
            _ = FileManager.default.createFile(atPath: results, contents: Data(line.utf8))
        }
    }

    /// Lets the btrfs filesystems settle (`settle()`), then sync(2), then drops the page cache,
    /// dentries and inodes (/proc/sys/vm/drop_caches), so a timed copy reads its source from disk
    /// for either daemon alike.
    func dropCaches() {
        settle()
        sync()
        if let h = FileHandle(forWritingAtPath: "/proc/sys/vm/drop_caches") {
            h.write(Data("3\n".utf8))
            try? h.close()
        }
    }

    /// Lets the btrfs filesystems named by `--settle` finish what earlier runs left them to do in the
    /// background (deleted subvolumes), so it does not land in the next timed run of either daemon.
    func settle() {
        for path in settlePaths {
            // A commit wakes the cleaner at once; without it, `subvolume sync` waits for the
            // next periodic commit (30 s).
            for argv in [["btrfs", "filesystem", "sync", path], ["btrfs", "subvolume", "sync", path]] {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                p.arguments = argv
                p.standardOutput = FileHandle.nullDevice
                if (try? p.run()) != nil { p.waitUntilExit() }
            }
        }
    }

    /// Runs `body` for one daemon and records its wall-clock time; `body` gets a `start` closure to
    /// call once its untimed preparation is done (default: timing starts at once).
    /// With `cpu`, also records the CPU time the daemon's own process used meanwhile, as item
    /// "<item>, daemon CPU": for ListImages and GetImage only, which both daemons answer in their
    /// own process (machined clones and removes in forked children, importd transfers in
    /// systemd-import/-export/-pull, berthd in berth-transfer: their CPU is not the daemon's).
    @discardableResult
    func timed(item: String, _ d: Daemon, cpu: Bool = false,
               _ body: (_ start: () -> Void) throws -> Void) -> Outcome {
        var t0 = now()
        var c0 = cpu ? d.cpuSeconds() : nil
        let outcome: Outcome
        do {
            try body {
                t0 = now()
                if cpu { c0 = d.cpuSeconds() }
            }
            outcome = .seconds(now() - t0)
        } catch {
            outcome = isNotImplemented(error) ? .notImplemented : .failed("\(error)")
        }
        record(item: item, who: d.who, outcome)
        if case .seconds = outcome, let c0, let c1 = d.cpuSeconds() {
            record(item: item + cpuSuffix, who: d.who, .seconds(c1 - c0))
        }
        return outcome
    }
}

// MARK: - The two daemons

/// machine1 and import1 as the interface tables name them (Sources/Services/Interfaces).
let machine1 = ServiceKind.machine1
let import1 = ServiceKind.import1
/// Long calls (a 1 GiB clone) must not hit sd-bus's default 25 s reply timeout.
let longCall: UInt64 = 600_000_000

/// One daemon under test: its label and a connection to its bus.
struct Daemon {
    let who: String
    let client: BusClient
    /// The machine1 daemon's pid (berthd, systemd-machined), for its CPU time; nil: not measured.
    var pid: Int32? = nil

    /// CPU time the daemon's threads have used, in seconds (the sum of /proc/PID/task/*/schedstat).
    func cpuSeconds() -> Double? {
        guard let pid, let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return nil }
        var total: UInt64 = 0
        for t in tasks {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/schedstat", encoding: .utf8),
                  let ns = text.split(separator: " ").first.flatMap({ UInt64($0) }) else { continue }
            total += ns
        }
        return Double(total) / 1e9
    }

    /// Calls `member` of org.freedesktop.machine1.Manager.
    func manager(_ member: Machine1Manager.Method, _ args: [BusValue] = []) throws(BusError) -> [BusValue] {
        try client.call(destination: machine1.busName, path: machine1.managerPath, interface: Machine1Manager.name,
                        member: member.rawValue, args, timeoutMicroseconds: longCall)
    }

    /// Calls `member` of org.freedesktop.import1.Manager.
    func importer(_ member: Import1Manager.Method, _ args: [BusValue] = []) throws(BusError) -> [BusValue] {
        try client.call(destination: import1.busName, path: import1.managerPath, interface: Import1Manager.name,
                        member: member.rawValue, args, timeoutMicroseconds: longCall)
    }

    /// Waits until transfer `id` is no longer listed (import1.Manager.ListTransfers), polling.
    func waitForTransfer(_ id: UInt32) throws {
        while true {
            let reply = try importer(.listTransfers)
            let ids = (reply.first?.arrayValue ?? []).compactMap { v -> UInt32? in
                if case .uint32(let u)? = v.structureValue?.first { return u }
                return nil
            }
            if !ids.contains(id) { return }
            usleep(5_000)
        }
    }

    func imageExists(_ name: String) -> Bool {
        (try? manager(.getImage, [.string(name)])) != nil
    }

    /// RemoveImage, ignoring a missing image: cleanup between runs, never timed.
    func removeQuietly(_ name: String) {
        _ = try? manager(.removeImage, [.string(name)])
    }
}

/// Whether `error` is berthd saying a member is not written yet (Harness.notImplemented), or a
/// daemon not knowing the member at all.
func isNotImplemented(_ error: Error) -> Bool {
    guard let e = error as? BusError else { return false }
    return (e.name == BusError.Name.notSupported && e.message.contains("not implemented"))
        || e.name == BusError.Name.unknownMethod
}

/// The suffix of the CPU-time rows `timed(cpu: true)` adds; they have no target.
let cpuSuffix = ", daemon CPU"

