import Foundation
import Glibc
import Testing
import TestSupport

/// berthd's resident and anonymous memory, in bytes, from /proc/PID/status (`VmRSS`, `RssAnon`).
private func residentMemory(of pid: pid_t) -> (rss: UInt64, anon: UInt64)? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    func field(_ name: String) -> UInt64? {
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return nil }
        return line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }.map { $0 * 1024 }
    }
    guard let rss = field("VmRSS"), let anon = field("RssAnon") else { return nil }
    return (rss, anon)
}

/// Calls an unprivileged local user can make to berthd: they must cost berthd neither unbounded
/// memory nor its bus thread (issue 11, defects 6 and 8, and file-system work on the bus thread).
@Suite(.serialized, .requires(.root, .privateBus, .commands("setpriv"), .python3DBus))
struct HostileCallerTests {
    /// One `nobody` caller: sends `method` with a million-element array argument and prints the
    /// D-Bus error name it got (or `ok`).
    private static let hugeArrayCaller = #"""
        import dbus, sys
        bus = dbus.bus.BusConnection(sys.argv[1])
        n = 1000000
        calls = [
            ("org.freedesktop.portable1", "/org/freedesktop/portable1", "org.freedesktop.portable1.Manager", "AttachImage",
             [dbus.String("img"), dbus.Array(["x"] * n, signature="s"), dbus.String("default"), dbus.Boolean(False), dbus.String("")]),
            ("org.freedesktop.portable1", "/org/freedesktop/portable1", "org.freedesktop.portable1.Manager", "GetImageStateWithExtensions",
             [dbus.String("img"), dbus.Array(["x"] * n, signature="s"), dbus.UInt64(0)]),
            ("org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager", "RegisterMachineWithNetwork",
             [dbus.String("m"), dbus.Array([], signature="y"), dbus.String("s"), dbus.String("container"), dbus.UInt32(1),
              dbus.String("/"), dbus.Array([1] * n, signature="i")]),
        ]
        for dest, path, iface, member, args in calls:
            try:
                bus.call_blocking(dest, path, iface, member, None, args, timeout=60)
                print(member, "ok", flush=True)
            except dbus.exceptions.DBusException as e:
                print(member, e.get_dbus_name(), flush=True)
        """#

    /// Four `nobody` callers send million-element arrays to portable1 and machine1 methods. They
    /// are refused (AccessDenied before anything is decoded, LimitsExceeded where the method is
    /// open to everyone), berthd's memory stays bounded during and after, and it still answers.
    @Test func hugeArgumentsFromUnprivilegedCallersCostBoundedMemory() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["machine1", "import1", "portable1"])
        defer { berthd.stop() }
        let before = try #require(residentMemory(of: berthd.pid))
        let script = berthd.root + "/caller.py"
        try Self.hugeArrayCaller.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(berthd.root, 0o755)
        chmod(script, 0o644)
        // Four callers at once, each its own process (not under a shell: the test process's
        // blocked SIGCHLD would keep a shell's `wait` from returning).
        var callers: [(process: Process, output: Pipe)] = []
        for _ in 0..<4 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            p.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", script, bus.address]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            callers.append((p, out))
        }
        // Sample berthd's memory while the callers run.
        var peak = before
        while callers.contains(where: { $0.process.isRunning }) {
            if let now = residentMemory(of: berthd.pid) { peak = (max(peak.rss, now.rss), max(peak.anon, now.anon)) }
            usleep(20_000)
        }
        let replies = callers.flatMap { caller in
            String(decoding: caller.output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n").map(String.init)
        }
        #expect(replies.count == 12, "\(replies)")
        for reply in replies {
            let expected = reply.hasPrefix("GetImageStateWithExtensions")
                ? "org.freedesktop.DBus.Error.LimitsExceeded" : "org.freedesktop.DBus.Error.AccessDenied"
            #expect(reply.hasSuffix(expected), "\(reply)")
        }
        let list = try run(["busctl", "--address=\(bus.address)", "--timeout=10", "call", "org.freedesktop.machine1",
                            "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager", "ListImages"])
        #expect(list.succeeded && list.stdout.contains(".host"), "\(list.stderr)")
        let after = try #require(residentMemory(of: berthd.pid))
        print("berthd resident memory: \(before.rss >> 20) MiB before, \(peak.rss >> 20) MiB at most during, \(after.rss >> 20) MiB after")
        let limit: UInt64 = 100 << 20
        #expect(peak.rss < limit, "berthd grew from \(before.rss >> 20) MiB to \(peak.rss >> 20) MiB resident during the calls")
        #expect(after.rss < limit, "berthd kept \(after.rss >> 20) MiB resident (anonymous \(after.anon >> 20) MiB) after the calls")
        #expect(berthd.terminate() == 0)
    }

    /// `…/image/base_00junk` decodes to "base\0junk": it names no image, so it is UnknownObject
    /// and nothing is done to `base` (systemd 252 resolves it to `base`; Berth refuses). A path
    /// whose escapes are not valid UTF-8 is refused too; a non-canonical but exact escape
    /// (`_62ase` for `base`) is accepted, as systemd 252 accepts it.
    @Test func objectPathsThatDoNotDecodeToAValidNameAreUnknownObjects() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["machine1"])
        defer { berthd.stop() }
        try FileManager.default.createDirectory(atPath: berthd.root + "/var/lib/machines/base", withIntermediateDirectories: true)
        func gdbus(_ path: String, _ method: String, _ args: [String]) throws -> CommandResult {
            try run(["gdbus", "call", "--address", bus.address, "--dest", "org.freedesktop.machine1", "--object-path", path,
                     "--method", method] + args)
        }
        let prefix = "/org/freedesktop/machine1/image/"
        for alias in ["base_00junk", "base_00", "_ff", "base_2f"] {
            let name = try gdbus(prefix + alias, "org.freedesktop.DBus.Properties.Get", ["org.freedesktop.machine1.Image", "Name"])
            #expect(name.stderr.contains("org.freedesktop.DBus.Error.UnknownObject"), "\(alias): \(name.stdout) \(name.stderr)")
            let mark = try gdbus(prefix + alias, "org.freedesktop.machine1.Image.MarkReadOnly", ["true"])
            #expect(mark.stderr.contains("org.freedesktop.DBus.Error.UnknownObject"), "\(alias): \(mark.stdout) \(mark.stderr)")
        }
        let readOnly = try gdbus(prefix + "base", "org.freedesktop.DBus.Properties.Get", ["org.freedesktop.machine1.Image", "ReadOnly"])
        #expect(readOnly.stdout.contains("false"), "\(readOnly.stdout) \(readOnly.stderr)")
        let canonical = try gdbus(prefix + "_62ase", "org.freedesktop.DBus.Properties.Get", ["org.freedesktop.machine1.Image", "Name"])
        #expect(canonical.stdout.contains("'base'"), "\(canonical.stdout) \(canonical.stderr)")
        #expect(berthd.terminate() == 0)
    }

    /// Holds a FUSE mount whose server never answers (not even INIT): every access to it blocks
    /// until the connection is aborted by closing the device, which `release()` does.
    private final class HungMount {
        let path: String
        let holder: Process
        let input = Pipe()

        init(at path: String) throws {
            self.path = path
            holder = Process()
            holder.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            holder.arguments = ["-c", """
                import ctypes, os, sys
                fd = os.open("/dev/fuse", os.O_RDWR)
                libc = ctypes.CDLL(None, use_errno=True)
                opts = ("fd=%d,rootmode=40000,user_id=0,group_id=0" % fd).encode()
                if libc.mount(b"berth-hung", sys.argv[1].encode(), b"fuse", 0, opts) != 0:
                    print("mount failed", ctypes.get_errno(), flush=True); sys.exit(1)
                print("ready", flush=True)
                sys.stdin.read()
                """, path]
            let out = Pipe()
            holder.standardOutput = out
            holder.standardInput = input
            try holder.run()
            let line = readLine(from: out.fileHandleForReading)
            guard line.hasPrefix("ready") else { throw TestSupportError("cannot mount a hung FUSE file system: \(line)") }
        }

        /// Aborts the connection (blocked calls fail with ENOTCONN) and detaches the mount.
        func release() {
            try? input.fileHandleForWriting.close()
            holder.waitUntilExit()
            _ = try? run(["umount", "-l", path])
        }
    }

    /// With the pool folder on a mount that hangs every access, the node enumerator
    /// (Introspect of the image subtree) and the PoolUsage/PoolLimit properties answer from what
    /// was last seen, and the other calls are still served: one hung mount does not stall the
    /// bus thread of all three services.
    @Test func aHungPoolMountDoesNotStallTheBusThread() throws {
        #expect(FileManager.default.fileExists(atPath: "/dev/fuse"), "no /dev/fuse")
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["machine1", "import1", "portable1"])
        defer { berthd.stop() }
        let pool = berthd.root + "/var/lib/machines"
        try FileManager.default.createDirectory(atPath: pool + "/one", withIntermediateDirectories: true)
        func busctl(_ args: [String]) throws -> CommandResult {
            try run(["busctl", "--address=\(bus.address)", "--timeout=5"] + args)
        }
        let manager = ["org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager"]
        let introspectImages = ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1/image",
                                "org.freedesktop.DBus.Introspectable", "Introspect"]
        // Seen once while the mount is healthy.
        let tree = try busctl(introspectImages)
        #expect(tree.stdout.contains("node name=\\\"one\\\""), "\(tree.stdout) \(tree.stderr)")
        let usageBefore = try busctl(["get-property"] + manager + ["PoolUsage"])
        #expect(usageBefore.succeeded, "\(usageBefore.stderr)")

        let hung = try HungMount(at: pool)
        defer { hung.release() }
        // The listing last made, or one made meanwhile by a thread that never got to finish.
        let introspect = try busctl(introspectImages)
        #expect(introspect.succeeded, "Introspect of the image subtree: \(introspect.stderr)")
        let usage = try busctl(["get-property"] + manager + ["PoolUsage", "PoolLimit", "PoolPath"])
        #expect(usage.succeeded, "PoolUsage/PoolLimit: \(usage.stderr)")
        let host = try busctl(["call"] + manager + ["GetImage", "s", ".host"])
        #expect(host.stdout.contains("_2ehost"), "GetImage(.host): \(host.stderr)")
        let other = try busctl(["call", "org.freedesktop.import1", "/org/freedesktop/import1", "org.freedesktop.import1.Manager",
                                "ListTransfers"])
        #expect(other.succeeded, "import1 ListTransfers: \(other.stderr)")
        hung.release()
        // Once the mount is gone, the listing is fresh again.
        let after = try busctl(["call"] + manager + ["ListImages"])
        #expect(after.stdout.contains("\"one\""), "\(after.stdout) \(after.stderr)")
        #expect(berthd.terminate() == 0)
    }

    /// With the last search path hung, an image removed from the pool is not listed by
    /// introspection after RemoveImage returned ("removed means gone"), though the listing that
    /// would show it gone cannot complete.
    @Test func aHungSearchPathStillLeavesRemovedImagesOut() throws {
        let bus = try PrivateDBusDaemon()
        defer { bus.stop() }
        let berthd = try BerthdProcess(bus: bus, services: ["machine1"])
        defer { berthd.stop() }
        let pool = berthd.root + "/var/lib/machines"
        for name in ["one", "two"] {
            try FileManager.default.createDirectory(atPath: pool + "/" + name, withIntermediateDirectories: true)
        }
        let vendor = berthd.root + "/usr/lib/machines"
        try FileManager.default.createDirectory(atPath: vendor, withIntermediateDirectories: true)
        func busctl(_ args: [String]) throws -> CommandResult {
            try run(["busctl", "--address=\(bus.address)", "--timeout=5"] + args)
        }
        let introspectImages = ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1/image",
                                "org.freedesktop.DBus.Introspectable", "Introspect"]
        let before = try busctl(introspectImages)
        #expect(before.stdout.contains("node name=\\\"one\\\"") && before.stdout.contains("node name=\\\"two\\\""), "\(before.stdout)")

        let hung = try HungMount(at: vendor)
        defer { hung.release() }
        // Found in the pool folder, before the hung folder is looked at.
        let remove = try busctl(["call", "org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager",
                                 "RemoveImage", "s", "one"])
        #expect(remove.succeeded, "\(remove.stderr)")
        #expect(!FileManager.default.fileExists(atPath: pool + "/one"))
        for _ in 0..<2 {
            let listed = try busctl(introspectImages)
            #expect(listed.succeeded, "\(listed.stderr)")
            #expect(!listed.stdout.contains("node name=\\\"one\\\"") && listed.stdout.contains("node name=\\\"two\\\""),
                    "\(listed.stdout)")
        }
        hung.release()
        #expect(berthd.terminate() == 0)
    }
}
