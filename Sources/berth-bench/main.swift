// berth-bench: times the same machine1/import1 work against berthd and against systemd 252's
// daemons, each on its own private bus, back-to-back, and records the figures. scripts/bench.sh
// builds the pools and fixtures, starts the daemons and calls this tool once per item; the
// `table` command then prints every figure for both with the ratio Berth/systemd.
//
// Calls go through Bus's blocking BusClient (one sd-bus connection per daemon, sd_bus_call per
// call, no client-side introspection), so the client's cost is the same for both daemons.
import Bus
import CBtrfsUtil
import CSystemd
import Foundation
import Glibc
import Linux

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

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Appends `item \t who \t outcome` to the results file and echoes it.
func record(_ file: String?, item: String, who: String, _ outcome: Outcome) {
    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
    print("  \(pad(item, 44)) \(pad(who, 12)) \(outcome)")
    fflush(nil)
    guard let file else { return }
    let line = "\(item)\t\(who)\t\(outcome.field)\n"
    if let h = FileHandle(forWritingAtPath: file) {
        h.seekToEndOfFile()
        h.write(Data(line.utf8))
        try? h.close()
    } else {
        _ = FileManager.default.createFile(atPath: file, contents: Data(line.utf8))
    }
}

// MARK: - Clock, caches, processes

/// CLOCK_MONOTONIC in seconds.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// btrfs filesystems (`--settle PATH`) whose deleted subvolumes must be cleaned up before a
/// timed run: btrfs frees a removed image in the background, which would otherwise compete with
/// the next import for the disk.
nonisolated(unsafe) var settlePaths: [String] = []

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

/// VmRSS (or another `field` in kB) of `pid` in KiB, from /proc/<pid>/status.
func residentKiB(_ pid: Int32, field: String = "VmRSS") -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }
    return nil
}

// MARK: - The two daemons

let machine1 = "org.freedesktop.machine1"
let machine1Path = ObjectPath("/org/freedesktop/machine1")
let machine1Manager = "org.freedesktop.machine1.Manager"
let import1 = "org.freedesktop.import1"
let import1Path = ObjectPath("/org/freedesktop/import1")
let import1Manager = "org.freedesktop.import1.Manager"
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

    func manager(_ member: String, _ args: [BusValue] = []) throws(BusError) -> [BusValue] {
        try client.call(destination: machine1, path: machine1Path, interface: machine1Manager, member: member, args,
                        timeoutMicroseconds: longCall)
    }

    func importer(_ member: String, _ args: [BusValue] = []) throws(BusError) -> [BusValue] {
        try client.call(destination: import1, path: import1Path, interface: import1Manager, member: member, args,
                        timeoutMicroseconds: longCall)
    }

    /// Waits until transfer `id` is no longer listed (import1.Manager.ListTransfers), polling.
    func waitForTransfer(_ id: UInt32) throws {
        while true {
            let reply = try importer("ListTransfers")
            let ids = (reply.first?.arrayValue ?? []).compactMap { v -> UInt32? in
                if case .uint32(let u)? = v.structureValue?.first { return u }
                return nil
            }
            if !ids.contains(id) { return }
            usleep(5_000)
        }
    }

    func imageExists(_ name: String) -> Bool {
        (try? manager("GetImage", [.string(name)])) != nil
    }

    /// RemoveImage, ignoring a missing image: cleanup between runs, never timed.
    func removeQuietly(_ name: String) {
        _ = try? manager("RemoveImage", [.string(name)])
    }
}

/// Whether `error` is berthd saying a member is not written yet (Harness.notImplemented), or a
/// daemon not knowing the member at all.
func isNotImplemented(_ error: Error) -> Bool {
    guard let e = error as? BusError else { return false }
    return (e.name == BusError.Name.notSupported && e.message.contains("not implemented"))
        || e.name == BusError.Name.unknownMethod
}

/// Runs `body` for one daemon and records its wall-clock time; `body` gets a `start` closure to
/// call once its untimed preparation is done (default: timing starts at once).
/// With `cpu`, also records the CPU time the daemon's own process used meanwhile, as item
/// "<item>, daemon CPU": for ListImages and GetImage only, which both daemons answer in their
/// own process (machined clones and removes in forked children, importd transfers in
/// systemd-import/-export/-pull, berthd in berth-transfer: their CPU is not the daemon's).
@discardableResult
func timed(_ file: String?, item: String, _ d: Daemon, cpu: Bool = false,
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
    record(file, item: item, who: d.who, outcome)
    if case .seconds = outcome, let c0, let c1 = d.cpuSeconds() {
        record(file, item: item + cpuSuffix, who: d.who, .seconds(c1 - c0))
    }
    return outcome
}

/// The suffix of the CPU-time rows `timed(cpu: true)` adds; they have no target.
let cpuSuffix = ", daemon CPU"

// MARK: - Items

func uint32Of(_ v: BusValue?) -> UInt32? {
    if case .uint32(let u)? = v { return u }
    return nil
}

/// The number of `(ssbttto)` entries of a ListImages reply, each parsed by sd-bus
/// (sd_bus_message_skip), as a C client such as machinectl reads it: the client's share of the
/// time stays small, and the same for both daemons.
func countImageEntries(_ reply: OpaquePointer) throws(BusError) -> Int {
    guard sd_bus_message_enter_container(reply, CChar(UInt8(ascii: "a")), "(ssbttto)") > 0 else {
        throw BusError.failed("ListImages: the reply is not a(ssbttto)")
    }
    var n = 0
    while true {
        let r = sd_bus_message_skip(reply, "(ssbttto)")
        if r == 0 { break }
        guard r > 0 else { throw BusError.failed("ListImages: a malformed entry") }
        n += 1
    }
    return n
}

/// The number of entries of a Properties.GetAll reply (`a{sv}`), parsed by sd-bus.
func countProperties(_ reply: OpaquePointer) throws(BusError) -> Int {
    guard sd_bus_message_enter_container(reply, CChar(UInt8(ascii: "a")), "{sv}") > 0 else {
        throw BusError.failed("GetAll: the reply is not a{sv}")
    }
    var n = 0
    while true {
        let r = sd_bus_message_skip(reply, "{sv}")
        if r == 0 { break }
        guard r > 0 else { throw BusError.failed("GetAll: a malformed entry") }
        n += 1
    }
    return n
}

/// ListImages `calls` times over one connection; every reply must list at least `expect` images.
func benchList(_ ds: [Daemon], file: String?, calls: Int, expect: Int) {
    for d in ds {
        timed(file, item: "ListImages ×\(calls) (\(expect) images)", d, cpu: true) { _ in
            for _ in 0..<calls {
                let n = try d.client.call(destination: machine1, path: machine1Path, interface: machine1Manager,
                                          member: "ListImages", timeoutMicroseconds: longCall, read: countImageEntries)
                if n < expect { throw BenchError("listed \(n) images, expected \(expect)") }
            }
        }
    }
}

/// GetImage then Properties.GetAll of the image object for `count` images named by `pattern`
/// (the properties parsed by sd-bus, as for ListImages).
func benchGet(_ ds: [Daemon], file: String?, names: [String]) {
    for (i, d) in ds.enumerated() {
        if i % 2 == 0 { benchRoundTrips(d, file: file, item: "GetImage + GetAll ×\(names.count)", count: names.count) }
        timed(file, item: "GetImage + GetAll ×\(names.count)", d, cpu: true) { _ in
            for name in names {
                let reply = try d.manager("GetImage", [.string(name)])
                guard case .objectPath(let path)? = reply.first else { throw BenchError("GetImage \(name): no path") }
                let count = try d.client.call(destination: machine1, path: path, interface: "org.freedesktop.DBus.Properties",
                                              member: "GetAll", [.string("org.freedesktop.machine1.Image")],
                                              read: countProperties)
                guard count >= 5 else { throw BenchError("GetAll \(name): too few properties") }
            }
        }
    }
}

/// The floor under GetImage + GetAll: as many round trips (two per image) of
/// org.freedesktop.DBus.Peer.Ping, which sd-bus answers inside either daemon without calling
/// it, so what is left is the bus's own cost. Recorded as the item's reference, once per run.
func benchRoundTrips(_ d: Daemon, file: String?, item: String, count: Int) {
    let t0 = now()
    do {
        for _ in 0..<(2 * count) {
            _ = try d.client.call(destination: machine1, path: machine1Path, interface: "org.freedesktop.DBus.Peer", member: "Ping")
        }
        record(file, item: item, who: "ref:\(2 * count) Peer.Ping", .seconds(now() - t0))
    } catch {
        record(file, item: item, who: "ref:\(2 * count) Peer.Ping", .failed("\(error)"))
    }
}

/// CloneImage of each of `names` to `<name>-c`, then RemoveImage of every clone: two figures.
func benchCloneRemove(_ ds: [Daemon], file: String?, names: [String], label: String) {
    for d in ds {
        for n in names { d.removeQuietly(n + "-c") }
        settle()
        let cloned = timed(file, item: "CloneImage ×\(names.count) \(label)", d) { _ in
            for n in names { _ = try d.manager("CloneImage", [.string(n), .string(n + "-c"), .boolean(false)]) }
        }
        if case .notImplemented = cloned {
            record(file, item: "RemoveImage ×\(names.count) \(label) clones", who: d.who, .notImplemented)
            continue
        }
        timed(file, item: "RemoveImage ×\(names.count) \(label) clones", d) { start in
            for n in names {
                guard d.imageExists(n + "-c") else { throw BenchError("clone \(n)-c is missing") }
            }
            settle()
            start()
            for n in names { _ = try d.manager("RemoveImage", [.string(n + "-c")]) }
        }
    }
}

/// The floor under the subvolume clones: the same snapshots made straight with libbtrfsutil
/// (BTRFS_UTIL_CREATE_SNAPSHOT_RECURSIVE, as berthd asks for) in `pool`, then deleted, with no
/// daemon and no bus. Each snapshot ioctl commits a btrfs transaction, which no daemon can
/// skip. Recorded as the references of both clone items, `rounds` times.
func benchSnapshotReference(file: String?, pool: String, names: [String], label: String, rounds: Int) {
    let cloneItem = "CloneImage ×\(names.count) \(label)", removeItem = "RemoveImage ×\(names.count) \(label) clones"
    func attempt(_ item: String, _ who: String, _ body: () throws -> Void) {
        settle()
        let t0 = now()
        do {
            try body()
            record(file, item: item, who: who, .seconds(now() - t0))
        } catch {
            record(file, item: item, who: who, .failed("\(error)"))
        }
    }
    func check(_ what: String, _ name: String, _ e: btrfs_util_error) throws {
        guard e == BTRFS_UTIL_OK else { throw BenchError("\(what) \(name): \(String(cString: btrfs_util_strerror(e)))") }
    }
    do {
        let poolFD = try FileDescriptor.openDirectory(pool)
        defer { poolFD.close() }
        let sources = try names.map { n throws(SystemCallError) in try FileDescriptor.openDirectory(n, relativeTo: poolFD) }
        defer { sources.forEach { $0.close() } }
        for _ in 0..<max(rounds, 1) {
            attempt(cloneItem, "ref:snapshot ioctl") {
                for (n, fd) in zip(names, sources) {
                    try check("snapshot", n, btrfs_util_create_snapshot_fd2(fd.rawValue, poolFD.rawValue, n + "-r",
                                                                           Int32(BTRFS_UTIL_CREATE_SNAPSHOT_RECURSIVE), nil, nil))
                }
            }
            attempt(removeItem, "ref:delete ioctl") {
                for n in names {
                    try check("delete", n + "-r", btrfs_util_delete_subvolume_fd(poolFD.rawValue, n + "-r", 0))
                }
            }
        }
    } catch {
        record(file, item: cloneItem, who: "ref:snapshot ioctl", .failed("\(error)"))
    }
}

/// CloneImage of one big image with cold caches.
func benchCloneOne(_ ds: [Daemon], file: String?, name: String, label: String) {
    for d in ds {
        d.removeQuietly(name + "-c")
        timed(file, item: "CloneImage \(label)", d) { start in
            dropCaches()
            start()
            _ = try d.manager("CloneImage", [.string(name), .string(name + "-c"), .boolean(false)])
        }
        d.removeQuietly(name + "-c")
        dropCaches()
    }
}

/// ImportTar of `archive` as `name`, until its transfer ends; the image must then exist.
func benchImport(_ ds: [Daemon], file: String?, archive: String, name: String, label: String) {
    for d in ds {
        d.removeQuietly(name)
        timed(file, item: "ImportTar \(label)", d) { start in
            let fd = try FileDescriptor.open(archive, flags: O_RDONLY | O_CLOEXEC)
            defer { fd.close() }
            dropCaches()
            start()
            let reply = try d.importer("ImportTar", [.unixFD(fd), .string(name), .boolean(false), .boolean(false)])
            guard let id = uint32Of(reply.first) else { throw BenchError("ImportTar: no transfer id") }
            try d.waitForTransfer(id)
            guard d.imageExists(name) else { throw BenchError("transfer ended without image \(name)") }
        }
    }
}

/// ExportTar of `name` into a fresh file in `outDir`, until its transfer ends.
func benchExport(_ ds: [Daemon], file: String?, name: String, outDir: String, format: String) {
    for d in ds {
        let out = "\(outDir)/export-\(d.who).tar"
        unlink(out)
        timed(file, item: "ExportTar \(format.isEmpty ? "plain" : format)", d) { start in
            let fd = try FileDescriptor.open(out, flags: O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o600)
            defer { fd.close() }
            dropCaches()
            start()
            let reply = try d.importer("ExportTar", [.string(name), .unixFD(fd), .string(format)])
            guard let id = uint32Of(reply.first) else { throw BenchError("ExportTar: no transfer id") }
            try d.waitForTransfer(id)
            guard let size = try? fd.stat().size, size > 0 else { throw BenchError("export wrote nothing") }
        }
        unlink(out)
    }
}

/// PullTar of `url` with checksum verification, until its transfer ends; the image must then exist.
func benchPull(_ ds: [Daemon], file: String?, url: String, name: String) {
    for d in ds {
        d.removeQuietly(name)
        // systemd-pull keeps the download as a hidden image (`.tar-<url>`) and fails the next pull
        // of the same URL when the server sends no ETag; hidden images go between runs (untimed).
        _ = try? d.manager("CleanPool", [.string("hidden")])
        timed(file, item: "PullTar (HTTP, verify=checksum)", d) { start in
            dropCaches()
            start()
            let reply = try d.importer("PullTar", [.string(url), .string(name), .string("checksum"), .boolean(false)])
            guard let id = uint32Of(reply.first) else { throw BenchError("PullTar: no transfer id") }
            try d.waitForTransfer(id)
            guard d.imageExists(name) else { throw BenchError("transfer ended without image \(name)") }
        }
    }
}

/// Times a command (a physical reference such as `tar -x` or `cp -a`) with cold caches.
func benchCommand(file: String?, item: String, who: String, argv: [String]) {
    dropCaches()
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = argv
    let t0 = now()
    do {
        try p.run()
        p.waitUntilExit()
        let t = now() - t0
        record(file, item: item, who: who, p.terminationStatus == 0 ? .seconds(t) : .failed("\(argv[0]) exited \(p.terminationStatus)"))
    } catch {
        record(file, item: item, who: who, .failed("\(error)"))
    }
}

// MARK: - Table

/// The median of `samples` (the mean of the middle two for an even count).
func median(_ samples: [Double]) -> Double? {
    guard !samples.isEmpty else { return nil }
    let sorted = samples.sorted()
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/// Every outcome recorded for one item and one daemon (or reference): one per run.
struct Samples {
    var outcomes: [Outcome] = []

    /// The median of the measured runs; a failure or n/a if any run had one (never hidden).
    var summary: Outcome? {
        if let bad = outcomes.first(where: { $0.value == nil }) { return bad }
        guard let m = median(outcomes.compactMap(\.value)), let first = outcomes.first else { return nil }
        if case .kibibytes = first { return .kibibytes(Int(m)) }
        return .seconds(m)
    }

    /// The median, with the spread of the runs where there were several: "0.658 s (3 runs: 0.61–0.70)".
    var text: String {
        guard let summary else { return "–" }
        let values = outcomes.compactMap(\.value)
        guard values.count > 1, case .seconds = summary, let lo = values.min(), let hi = values.max() else {
            return summary.description
        }
        return "\(summary) (\(values.count) runs: " + String(format: "%.3f–%.3f", lo, hi) + ")"
    }
}

/// RegisterMachine of `count` machines, each led by a sleeping child of this process, then
/// TerminateMachine of each, until the daemon has said MachineRemoved for all of them: one figure
/// (with the daemon's CPU time meanwhile). The sleepers are started before the clock starts.
/// machined 252 registers nothing where PID 1 is not systemd (no unit to find for the leader),
/// so its side records the error it answers. With `inUnits` (under a booted systemd) each leader
/// is a service of its own, `berth-bench-leader-N.service`, started with systemd-run: machined
/// 252 keeps one machine per unit.
func benchMachines(_ ds: [Daemon], file: String?, count: Int, inUnits: Bool) {
    let item = "RegisterMachine + TerminateMachine ×\(count)"
    let names = (0..<count).map { String(format: "bench%03d", $0) }
    for d in ds {
        var sleepers: [Process] = []
        var leaders: [Int32] = []
        if inUnits {
            leaders = (0..<count).compactMap { startLeaderUnit($0) }
        } else {
            for _ in 0..<count {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/bin/sleep")
                p.arguments = ["600"]
                if (try? p.run()) != nil { sleepers.append(p) }
            }
            leaders = sleepers.map(\.processIdentifier)
        }
        defer {
            // SIGKILL: a leader TerminateMachine did not end must not hold this loop for its 600 s.
            for p in sleepers where p.isRunning { kill(p.processIdentifier, SIGKILL) }
            for p in sleepers { p.waitUntilExit() }
            if inUnits { stopLeaderUnits(count) }
        }
        guard leaders.count == count else {
            record(file, item: item, who: d.who, .failed("could not start \(count) sleeping leaders"))
            continue
        }
        timed(file, item: item, d, cpu: true) { start in
            try d.client.matchSignal(sender: machine1, path: machine1Path, interface: machine1Manager, member: "MachineRemoved")
            // Signals a previous round left behind are not this round's.
            while !(try d.client.waitForSignals(timeoutMicroseconds: 1_000)).isEmpty {}
            start()
            for (name, leader) in zip(names, leaders) {
                do {
                    _ = try d.manager("RegisterMachine", [.string(name), .bytes([]), .string("berth-bench"), .string("container"),
                                                          .uint32(UInt32(bitPattern: leader)), .string("")])
                } catch {
                    throw BenchError("cannot register: \(error)")
                }
            }
            for name in names { _ = try d.manager("TerminateMachine", [.string(name)]) }
            var left = Set(names)
            let deadline = now() + 60
            while !left.isEmpty {
                guard now() < deadline else { throw BenchError("\(left.count) machines still listed 60 s after TerminateMachine") }
                for signal in try d.client.waitForSignals(timeoutMicroseconds: 100_000) where signal.member == "MachineRemoved" {
                    if let name = signal.arguments.first?.stringValue { left.remove(name) }
                }
            }
        }
        // Whatever a failed round left registered goes, untimed.
        for name in names { _ = try? d.manager("UnregisterMachine", [.string(name)]) }
    }
}

/// Runs `argv` (looked up in PATH) and returns its standard output, nil if it failed.
func output(_ argv: [String]) -> String? {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = argv
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = FileHandle.nullDevice
    guard (try? p.run()) != nil else { return nil }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return p.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
}

/// `sleep 600` as the service berth-bench-leader-N (systemd-run); its pid.
func startLeaderUnit(_ n: Int) -> Int32? {
    let unit = "berth-bench-leader-\(n).service"
    guard output(["systemd-run", "--quiet", "--unit=\(unit)", "--property=Type=exec", "/bin/sleep", "600"]) != nil,
          let pid = output(["systemctl", "show", "-p", "MainPID", "--value", unit]).flatMap({ Int32($0.filter { !$0.isWhitespace }) }),
          pid > 0 else { return nil }
    return pid
}

/// Stops the leader services that are left and forgets the failed ones.
func stopLeaderUnits(_ count: Int) {
    let units = (0..<count).map { "berth-bench-leader-\($0).service" }
    _ = output(["systemctl", "stop"] + units)
    _ = output(["systemctl", "reset-failed"] + units)
}

/// Prints the results file as a Markdown table: each figure for both daemons (the median of its
/// runs, with their spread), the ratio Berth/systemd of the medians, the physical reference
/// where there is one, and whether the target is met.
func printTable(_ file: String) throws {
    let text = try String(contentsOfFile: file, encoding: .utf8)
    var order: [String] = []
    var rows: [String: [String: Samples]] = [:]
    var refs: [String: (label: String, samples: Samples)] = [:]
    for line in text.split(separator: "\n") {
        let f = line.split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        guard f.count == 3 else { continue }
        if rows[f[0]] == nil { order.append(f[0]); rows[f[0]] = [:] }
        if f[1].hasPrefix("ref:") {
            refs[f[0], default: (String(f[1].dropFirst(4)), Samples())].samples.outcomes.append(Outcome(field: f[2]))
        } else {
            rows[f[0], default: [:]][f[1], default: Samples()].outcomes.append(Outcome(field: f[2]))
        }
    }
    print("| item | Berth | systemd 252 | Berth/systemd | reference | Berth/reference | target |")
    print("|---|---|---|---|---|---|---|")
    for item in order {
        let b = rows[item]?["berth"], s = rows[item]?["systemd"]
        let bv = b?.summary?.value, sv = s?.summary?.value
        var ratio = "–", refText = "–", refRatio = "–", target = "–"
        if let bv, let sv, sv > 0 { ratio = String(format: "%.2f", bv / sv) }
        let rv = refs[item]?.samples.summary?.value
        if let ref = refs[item] {
            refText = "\(ref.label): \(ref.samples.text)"
            if let bv, let rv, rv > 0 { refRatio = String(format: "%.2f", bv / rv) }
        }
        let isTime: Bool = if case .seconds? = s?.summary { true } else if case .seconds? = b?.summary { true } else { false }
        if isTime && !item.hasSuffix(cpuSuffix) {
            var met: Bool? = nil
            if let bv, let sv, sv > 0 { met = bv / sv <= 0.8 }
            if item.hasPrefix("ImportTar"), let bv, let rv, rv > 0 {
                met = (met ?? true) && bv / rv <= 1.2
            }
            target = met.map { $0 ? "met" : "**not met**" } ?? "not measured"
        }
        print("| \(item) | \(b?.text ?? "–") | \(s?.text ?? "–") | \(ratio) | \(refText) | \(refRatio) | \(target) |")
    }
}

// MARK: - Command line

let usage = """
    usage: berth-bench ITEM --berth ADDR --systemd ADDR [--results FILE] [--repeat N] [options]
      list --calls N --expect N               ListImages N times over one connection
      get --pattern img%04d --count N         GetImage + Properties.GetAll of N images
      clone --pattern sub%03d --count N --label L    CloneImage then RemoveImage of N images
      clone-one --name NAME --label L         CloneImage of one image, cold caches
      snapshot-ref --pool DIR --pattern sub%03d --count N --label L   the clone items' reference:
                                              the snapshot and delete ioctls alone, in DIR
      import --archive F --name N --label L   ImportTar, until the transfer ends
      export --name N --out-dir D [--format F]  ExportTar
      pull --url U --name N                   PullTar with verify=checksum
      machines --count N [--leaders-in-units yes]   RegisterMachine of N sleeping leaders, then
                                              TerminateMachine of each until MachineRemoved for all; with
                                              yes, each leader a service of its own (systemd-run), for a
                                              booted systemd, where machined needs one unit per machine
    --berth-pid PID, --systemd-pid PID: the machine1 daemons, whose CPU time list and get also
      record
    --settle PATH (repeatable): a btrfs filesystem to let settle (btrfs subvolume sync) before each
      timed run that starts with cold caches
    berth-bench time --item ITEM --who ref:LABEL [--results FILE] -- COMMAND...
    berth-bench rss --item ITEM --pid berth=PID [--pid systemd=PID,PID] [--field RssAnon] [--results FILE]
      (--field: the /proc/PID/status line to sum, default VmRSS)
    berth-bench table FILE
    """

func parse(_ args: ArraySlice<String>) -> (options: [String: [String]], rest: [String]) {
    var options: [String: [String]] = [:]
    var i = args.startIndex
    while i < args.endIndex {
        let a = args[i]
        if a == "--" { return (options, Array(args[(i + 1)...])) }
        if a.hasPrefix("--"), i + 1 < args.endIndex {
            options[String(a.dropFirst(2)), default: []].append(args[i + 1])
            i += 2
        } else {
            i += 1
        }
    }
    return (options, [])
}

func main() throws {
    // A test runner may start this with signals blocked, and the machine leaders spawned here
    // would inherit that, ignoring TerminateMachine's SIGTERM: they get the default mask.
    var none = sigset_t()
    sigemptyset(&none)
    pthread_sigmask(SIG_SETMASK, &none, nil)
    let argv = CommandLine.arguments
    guard argv.count >= 2 else { print(usage); exit(2) }
    let command = argv[1]
    if command == "table" {
        guard argv.count >= 3 else { print(usage); exit(2) }
        try printTable(argv[2])
        return
    }
    let (o, rest) = parse(argv[2...])
    func one(_ k: String) throws -> String {
        guard let v = o[k]?.last else { throw BenchError("missing --\(k)\n\(usage)") }
        return v
    }
    func int(_ k: String) throws -> Int {
        guard let v = Int(try one(k)) else { throw BenchError("--\(k) must be a number") }
        return v
    }
    let file = o["results"]?.last
    settlePaths = o["settle"] ?? []
    switch command {
    case "time":
        benchCommand(file: file, item: try one("item"), who: try one("who"), argv: rest)
        return
    case "rss":
        // --pid WHO=PID[,PID...]: the sum over a daemon's processes (machined + importd for systemd).
        for spec in o["pid"] ?? [] {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw BenchError("--pid WHO=PID[,PID...]") }
            var total = 0
            var missing: String? = nil
            for p in parts[1].split(separator: ",") {
                if let pid = Int32(p), let k = residentKiB(pid, field: o["field"]?.last ?? "VmRSS") { total += k } else { missing = String(p) }
            }
            record(file, item: try one("item"), who: parts[0], missing.map { .failed("no process \($0)") } ?? .kibibytes(total))
        }
        return
    default: break
    }
    func names() throws -> [String] {
        let pattern = try one("pattern")
        return (0..<(try int("count"))).map { String(format: pattern, $0) }
    }
    // --repeat N: N rounds, the daemons' order alternating (berth first, then systemd first…),
    // so neither always runs on the caches or the disk state the other left.
    let rounds = o["repeat"]?.last.flatMap { Int($0) } ?? 1
    if command == "snapshot-ref" {
        benchSnapshotReference(file: file, pool: try one("pool"), names: try names(), label: try one("label"), rounds: rounds)
        return
    }
    // Both daemons as a rule; one alone where only one can run at a time (the machine registry
    // under a booted systemd, where berthd and machined take turns on the one system bus).
    var pair: [Daemon] = []
    if let address = o["berth"]?.last {
        pair.append(Daemon(who: "berth", client: try BusClient(address: address), pid: o["berth-pid"]?.last.flatMap { Int32($0) }))
    }
    if let address = o["systemd"]?.last {
        pair.append(Daemon(who: "systemd", client: try BusClient(address: address), pid: o["systemd-pid"]?.last.flatMap { Int32($0) }))
    }
    guard !pair.isEmpty else { throw BenchError("missing --berth or --systemd\n\(usage)") }
    let daemons = (0..<max(rounds, 1)).flatMap { r in r % 2 == 0 ? pair : pair.reversed() }
    switch command {
    case "list": benchList(daemons, file: file, calls: try int("calls"), expect: try int("expect"))
    case "get": benchGet(daemons, file: file, names: try names())
    case "clone": benchCloneRemove(daemons, file: file, names: try names(), label: try one("label"))
    case "clone-one": benchCloneOne(daemons, file: file, name: try one("name"), label: try one("label"))
    case "import": benchImport(daemons, file: file, archive: try one("archive"), name: try one("name"), label: try one("label"))
    case "export": benchExport(daemons, file: file, name: try one("name"), outDir: try one("out-dir"), format: o["format"]?.last ?? "")
    case "pull": benchPull(daemons, file: file, url: try one("url"), name: try one("name"))
    case "machines": benchMachines(daemons, file: file, count: try int("count"), inUnits: o["leaders-in-units"]?.last == "yes")
    default: throw BenchError("unknown item \(command)\n\(usage)")
    }
}

do {
    try main()
} catch {
    FileHandle.standardError.write(Data("berth-bench: \(error)\n".utf8))
    exit(1)
}
