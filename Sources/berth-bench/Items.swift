import Bus
import CBtrfsUtil
import CSystemd
import Foundation
import Glibc
import Linux
import Services

// The measured items: each times one piece of machine1/import1 work for every daemon of the run
// (`Bench.timed`) and records one figure per daemon and round. A new row is one method here and
// one subcommand in BerthBench.swift (with the shared `Run` options).

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

extension Bench {

    /// ListImages `calls` times over one connection; every reply must list at least `expect` images.
    func benchList(_ ds: [Daemon], calls: Int, expect: Int) {
        for d in ds {
            timed(item: "ListImages ×\(calls) (\(expect) images)", d, cpu: true) { _ in
                for _ in 0..<calls {
                    let n = try d.client.call(destination: machine1.busName, path: machine1.managerPath, interface: Machine1Manager.name,
                                              member: Machine1Manager.Method.listImages.rawValue, timeoutMicroseconds: longCall, read: countImageEntries)
                    if n < expect { throw BenchError("listed \(n) images, expected \(expect)") }
                }
            }
        }
    }

    /// GetImage then Properties.GetAll of the image object for `count` images named by `pattern`
    /// (the properties parsed by sd-bus, as for ListImages).
    func benchGet(_ ds: [Daemon], names: [String]) {
        for (i, d) in ds.enumerated() {
            if i % 2 == 0 { benchRoundTrips(d, item: "GetImage + GetAll ×\(names.count)", count: names.count) }
            timed(item: "GetImage + GetAll ×\(names.count)", d, cpu: true) { _ in
                for name in names {
                    let reply = try d.manager(.getImage, [.string(name)])
                    guard case .objectPath(let path)? = reply.first else { throw BenchError("GetImage \(name): no path") }
                    let count = try d.client.call(destination: machine1.busName, path: path, interface: StandardInterface.Properties.name,
                                                  member: StandardInterface.Properties.Method.getAll.rawValue,
                                                  [.string(Machine1Image.name)],
                                                  read: countProperties)
                    guard count >= 5 else { throw BenchError("GetAll \(name): too few properties") }
                }
            }
        }
    }

    /// The floor under GetImage + GetAll: as many round trips (two per image) of
    /// org.freedesktop.DBus.Peer.Ping, which sd-bus answers inside either daemon without calling
    /// it, so what is left is the bus's own cost. Recorded as the item's reference, once per run.
    func benchRoundTrips(_ d: Daemon, item: String, count: Int) {
        let t0 = now()
        do {
            for _ in 0..<(2 * count) {
                _ = try d.client.call(destination: machine1.busName, path: machine1.managerPath, interface: StandardInterface.Peer.name,
                                      member: StandardInterface.Peer.Method.ping.rawValue)
            }
            record(item: item, who: "ref:\(2 * count) Peer.Ping", .seconds(now() - t0))
        } catch {
            record(item: item, who: "ref:\(2 * count) Peer.Ping", .failed("\(error)"))
        }
    }

    /// CloneImage of each of `names` to `<name>-c`, then RemoveImage of every clone: two figures.
    func benchCloneRemove(_ ds: [Daemon], names: [String], label: String) {
        for d in ds {
            for n in names { d.removeQuietly(n + "-c") }
            settle()
            let cloned = timed(item: "CloneImage ×\(names.count) \(label)", d) { _ in
                for n in names { _ = try d.manager(.cloneImage, [.string(n), .string(n + "-c"), .boolean(false)]) }
            }
            if case .notImplemented = cloned {
                record(item: "RemoveImage ×\(names.count) \(label) clones", who: d.who, .notImplemented)
                continue
            }
            timed(item: "RemoveImage ×\(names.count) \(label) clones", d) { start in
                for n in names {
                    guard d.imageExists(n + "-c") else { throw BenchError("clone \(n)-c is missing") }
                }
                settle()
                start()
                for n in names { _ = try d.manager(.removeImage, [.string(n + "-c")]) }
            }
        }
    }

    /// The floor under the subvolume clones: the same snapshots made straight with libbtrfsutil
    /// (BTRFS_UTIL_CREATE_SNAPSHOT_RECURSIVE, as berthd asks for) in `pool`, then deleted, with no
    /// daemon and no bus. Each snapshot ioctl commits a btrfs transaction, which no daemon can
    /// skip. Recorded as the references of both clone items, `rounds` times.
    func benchSnapshotReference(pool: String, names: [String], label: String, rounds: Int) {
        let cloneItem = "CloneImage ×\(names.count) \(label)", removeItem = "RemoveImage ×\(names.count) \(label) clones"
        func attempt(_ item: String, _ who: String, _ body: () throws -> Void) {
            settle()
            let t0 = now()
            do {
                try body()
                record(item: item, who: who, .seconds(now() - t0))
            } catch {
                record(item: item, who: who, .failed("\(error)"))
            }
        }
        func check(_ what: String, _ name: String, _ e: btrfs_util_error) throws {
            guard e == BTRFS_UTIL_OK else { throw BenchError("\(what) \(name): \(String(cString: btrfs_util_strerror(e)))") }
        }
        do {
            let poolFD = try FileDescriptor.openDirectory(pool)
            defer { poolFD.close() }
            let sources = try names.map { n throws(SystemCallError) in try FileDescriptor.openDirectory(n, relativeTo: poolFD) }
            defer { for source in sources { source.close() } }
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
            record(item: cloneItem, who: "ref:snapshot ioctl", .failed("\(error)"))
        }
    }

    /// CloneImage of one big image with cold caches.
    func benchCloneOne(_ ds: [Daemon], name: String, label: String) {
        for d in ds {
            d.removeQuietly(name + "-c")
            timed(item: "CloneImage \(label)", d) { start in
                dropCaches()
                start()
                _ = try d.manager(.cloneImage, [.string(name), .string(name + "-c"), .boolean(false)])
            }
            d.removeQuietly(name + "-c")
            dropCaches()
        }
    }

    /// ImportTar of `archive` as `name`, until its transfer ends; the image must then exist.
    func benchImport(_ ds: [Daemon], archive: String, name: String, label: String) {
        for d in ds {
            d.removeQuietly(name)
            timed(item: "ImportTar \(label)", d) { start in
                let fd = try FileDescriptor.open(archive, flags: O_RDONLY | O_CLOEXEC)
                defer { fd.close() }
                dropCaches()
                start()
                let reply = try d.importer(.importTar, [.unixFD(fd), .string(name), .boolean(false), .boolean(false)])
                guard let id = uint32Of(reply.first) else { throw BenchError("ImportTar: no transfer id") }
                try d.waitForTransfer(id)
                guard d.imageExists(name) else { throw BenchError("transfer ended without image \(name)") }
            }
        }
    }

    /// ExportTar of `name` into a fresh file in `outDir`, until its transfer ends.
    func benchExport(_ ds: [Daemon], name: String, outDir: String, format: String) {
        for d in ds {
            let out = "\(outDir)/export-\(d.who).tar"
            unlink(out)
            timed(item: "ExportTar \(format.isEmpty ? "plain" : format)", d) { start in
                let fd = try FileDescriptor.open(out, flags: O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o600)
                defer { fd.close() }
                dropCaches()
                start()
                let reply = try d.importer(.exportTar, [.string(name), .unixFD(fd), .string(format)])
                guard let id = uint32Of(reply.first) else { throw BenchError("ExportTar: no transfer id") }
                try d.waitForTransfer(id)
                guard let size = try? fd.stat().size, size > 0 else { throw BenchError("export wrote nothing") }
            }
            unlink(out)
        }
    }

    /// PullTar of `url` with checksum verification, until its transfer ends; the image must then exist.
    func benchPull(_ ds: [Daemon], url: String, name: String) {
        for d in ds {
            d.removeQuietly(name)
            // systemd-pull keeps the download as a hidden image (`.tar-<url>`) and fails the next pull
            // of the same URL when the server sends no ETag; hidden images go between runs (untimed).
            _ = try? d.manager(.cleanPool, [.string("hidden")])
            timed(item: "PullTar (HTTP, verify=checksum)", d) { start in
                dropCaches()
                start()
                let reply = try d.importer(.pullTar, [.string(url), .string(name), .string("checksum"), .boolean(false)])
                guard let id = uint32Of(reply.first) else { throw BenchError("PullTar: no transfer id") }
                try d.waitForTransfer(id)
                guard d.imageExists(name) else { throw BenchError("transfer ended without image \(name)") }
            }
        }
    }

    /// Times a command (a physical reference such as `tar -x` or `cp -a`) with cold caches.
    func benchCommand(item: String, who: String, argv: [String]) {
        dropCaches()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        let t0 = now()
        do {
            try p.run()
            p.waitUntilExit()
            let t = now() - t0
            record(item: item, who: who, p.terminationStatus == 0 ? .seconds(t) : .failed("\(argv[0]) exited \(p.terminationStatus)"))
        } catch {
            record(item: item, who: who, .failed("\(error)"))
        }
    }


    /// RegisterMachine of `count` machines, each led by a sleeping child of this process, then
    /// TerminateMachine of each, until the daemon has said MachineRemoved for all of them: one figure
    /// (with the daemon's CPU time meanwhile). The sleepers are started before the clock starts.
    /// machined 252 registers nothing where PID 1 is not systemd (no unit to find for the leader),
    /// so its side records the error it answers. With `inUnits` (under a booted systemd) each leader
    /// is a service of its own, `berth-bench-leader-N.service`, started with systemd-run: machined
    /// 252 keeps one machine per unit.
    func benchMachines(_ ds: [Daemon], count: Int, inUnits: Bool) {
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
                record(item: item, who: d.who, .failed("could not start \(count) sleeping leaders"))
                continue
            }
            timed(item: item, d, cpu: true) { start in
                try d.client.matchSignal(sender: machine1.busName, path: machine1.managerPath, interface: Machine1Manager.name,
                                     member: Machine1Manager.Signal.machineRemoved.rawValue)
                // Signals a previous round left behind are not this round's.
                while !(try d.client.waitForSignals(timeoutMicroseconds: 1_000)).isEmpty {}
                start()
                for (name, leader) in zip(names, leaders) {
                    do {
                        _ = try d.manager(.registerMachine, [.string(name), .bytes([]), .string("berth-bench"), .string("container"),
                                                              .uint32(UInt32(bitPattern: leader)), .string("")])
                    } catch {
                        throw BenchError("cannot register: \(error)")
                    }
                }
                for name in names { _ = try d.manager(.terminateMachine, [.string(name)]) }
                var left = Set(names)
                let deadline = now() + 60
                while !left.isEmpty {
                    guard now() < deadline else { throw BenchError("\(left.count) machines still listed 60 s after TerminateMachine") }
                    for signal in try d.client.waitForSignals(timeoutMicroseconds: 100_000) where signal.member == Machine1Manager.Signal.machineRemoved.rawValue {
                        if let name = signal.arguments.first?.stringValue { left.remove(name) }
                    }
                }
            }
            // Whatever a failed round left registered goes, untimed.
            for name in names { _ = try? d.manager(.unregisterMachine, [.string(name)]) }
        }
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

