import Bus
import Foundation
import Glibc
import Linux
import Testing
import TestSupport

/// A private bus with the test object exported on it, from a bus loop in this process.
final class TestService: @unchecked Sendable {
    let daemon: PrivateDBusDaemon
    let loop: EventLoop
    let bus: Bus
    let object: TestObject

    init() async throws {
        daemon = try PrivateDBusDaemon()
        loop = try EventLoop(name: "test-bus")
        bus = try await Bus.connect(address: daemon.address, loop: loop)
        object = TestObject(bus: bus)
        try await bus.export([TestInterface.interface], at: TestInterface.path, handler: object)
        try await bus.exportSubtree([TestInterface.itemInterface], under: TestInterface.itemPrefix, handler: object)
        try await bus.requestName(TestInterface.busName)
    }

    func stop() async {
        await bus.shutdown()
        loop.requestExit()
        await loop.joined()
        daemon.stop()
    }

    /// `busctl --address=… <args>`.
    func busctl(_ args: [String]) throws -> CommandResult {
        try run(["busctl", "--address=\(daemon.address)"] + args)
    }

    /// `busctl call` on the test object.
    func call(_ method: TestInterface.Method, _ args: [String] = []) throws -> CommandResult {
        // "--" so that negative numbers are not taken for options.
        try busctl(["call", "--", TestInterface.busName, TestInterface.path.rawValue, TestInterface.name, method.rawValue] + args)
    }

    /// Runs a python3-dbus script with `bus` bound to this bus and `obj` to the test object,
    /// optionally as another user (setpriv).
    func python(_ body: String, asUser uid: uid_t? = nil) throws -> CommandResult {
        let script = """
            import dbus, os, sys
            bus = dbus.bus.BusConnection(os.environ['DBUS_SYSTEM_BUS_ADDRESS'])
            obj = bus.get_object('\(TestInterface.busName)', '\(TestInterface.path)')
            iface = dbus.Interface(obj, '\(TestInterface.name)')
            \(body)
            """
        var argv = ["/usr/bin/python3", "-c", script]
        if let uid { argv = ["setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups"] + argv }
        return try run(argv, environment: daemon.environment)
    }
}

func withTestService(_ body: (TestService) async throws -> Void) async throws {
    let service = try await TestService()
    do {
        try await body(service)
    } catch {
        await service.stop()
        throw error
    }
    await service.stop()
}

@Suite(.serialized, .requires(.privateBus))
struct BusTests {
    @Test func introspectionMatchesTheInterfaceTable() async throws {
        try await withTestService { s in
            let xml = try run(["gdbus", "introspect", "--address", s.daemon.address, "--dest", TestInterface.busName,
                               "--object-path", TestInterface.path.rawValue, "--xml"], check: true).stdout
            let live = try #require(try IntrospectionXML.interfaces(xml)[TestInterface.name])
            let members = live.members
            #expect(members["method Echo"] == "method Echo(in v value, out v value)")
            #expect(members["method ReadFD"] == "method ReadFD(in h fd, out s content)")
            #expect(members["method Unnamed"] == "method Unnamed(in s -, in b -, out a{ss} -)")
            #expect(members["method RootOnly"] == "method RootOnly() @org.freedesktop.systemd1.Privileged=true")
            #expect(members["method Mutate"] == "method Mutate()")
            #expect(members["property Name"] == "property Name s read @org.freedesktop.DBus.Property.EmitsChangedSignal=const")
            #expect(members["property Counter"] == "property Counter u read")
            #expect(members["property Volatile"] == "property Volatile u read @org.freedesktop.DBus.Property.EmitsChangedSignal=invalidates")
            #expect(members["property Quiet"] == "property Quiet u read @org.freedesktop.DBus.Property.EmitsChangedSignal=false")
            #expect(members["signal Happened"] == "signal Happened(s what, u count)")
            #expect(members.count == TestInterface.interface.methods.count + TestInterface.interface.properties.count + 1)
        }
    }

    @Test func marshalsEveryShapeTheAPIsUse() async throws {
        try await withTestService { s in
            let cases: [[String]] = [
                ["s", "hello world"], ["o", "/org/freedesktop/machine1/image/_2ehost"], ["g", "a{sv}"],
                ["y", "255"], ["b", "true"], ["n", "-3"], ["q", "65535"], ["i", "-70000"], ["u", "4000000000"],
                ["x", "-9000000000"], ["t", "18446744073709551615"], ["d", "0.5"],
                ["as", "2", "a", "b c"], ["ay", "3", "1", "2", "3"], ["a{ss}", "2", "ID", "debian", "VERSION_ID", "12"],
                ["a{sv}", "2", "Name", "s", "x", "ReadOnly", "b", "false"],
                ["a(ssbttto)", "1", "img", "directory", "false", "1", "2", "3", "/org/freedesktop/machine1/image/img"],
                ["a(usssdo)", "1", "7", "import-tar", "name", "remote", "0.25", "/org/freedesktop/import1/transfer/_7"],
                ["a(sv)", "1", "Slice", "s", "machine.slice"], ["(bba{ss})", "true", "false", "0"],
                ["av", "2", "u", "1", "as", "1", "x"],
            ]
            for c in cases {
                let r = try s.call(.echo, ["v"] + c)
                #expect(r.succeeded, "\(c): \(r.stderr)")
                // busctl prints what it read back in its input syntax, quoting strings.
                let printed = r.stdout.replacingOccurrences(of: "\"", with: "").trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(printed == "v " + c.joined(separator: " "), "\(c): \(r.stdout)")
            }
            // A round trip through python3-dbus, which checks values as well as types.
            let py = try s.python("""
                v = dbus.Array([dbus.Struct((dbus.String('img'), dbus.String('raw'), dbus.Boolean(True), dbus.UInt64(1), dbus.UInt64(2), dbus.UInt64(3), dbus.ObjectPath('/a/b')), signature='ssbttto')], signature='(ssbttto)')
                r = iface.Echo(dbus.Dictionary({'k': v, 'n': dbus.Int16(-2), 'd': dbus.Double(1.5), 'y': dbus.Byte(7)}, signature='sv', variant_level=1))
                print(sorted((str(k), repr(r[k])) for k in r))
                """)
            #expect(py.succeeded, "\(py.stderr)")
            #expect(py.stdout.contains("dbus.Int16(-2"), "\(py.stdout)")
            #expect(py.stdout.contains("dbus.Boolean(True"), "\(py.stdout)")
            #expect(py.stdout.contains("dbus.ObjectPath('/a/b')"), "\(py.stdout)")
            #expect(py.stdout.contains("dbus.Byte(7"), "\(py.stdout)")
        }
    }

    @Test func unnamedArgumentsAndErrors() async throws {
        try await withTestService { s in
            let r = try s.call(.unnamed, ["sb", "abc", "true"])
            #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "a{ss} 2 \"flag\" \"true\" \"name\" \"abc\"")
            let e = try s.call(.fail, ["s", "org.freedesktop.machine1.NoSuchImage"])
            #expect(!e.succeeded)
            let g = try run(["gdbus", "call", "--address", s.daemon.address, "--dest", TestInterface.busName, "--object-path",
                             TestInterface.path.rawValue, "--method", "io.berth.Test.Fail", "org.freedesktop.machine1.NoSuchImage"])
            #expect(g.stderr.contains("org.freedesktop.machine1.NoSuchImage"), "\(g.stderr)")
            let errno = try run(["gdbus", "call", "--address", s.daemon.address, "--dest", TestInterface.busName, "--object-path",
                                 TestInterface.path.rawValue, "--method", "io.berth.Test.Fail", "errno"])
            #expect(errno.stderr.contains("System.Error.EROFS"), "\(errno.stderr)")
        }
    }

    @Test func propertiesAndPropertiesChanged() async throws {
        try await withTestService { s in
            let name = try s.busctl(["get-property", TestInterface.busName, TestInterface.path.rawValue, TestInterface.name, "Name"])
            #expect(name.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "s \"test object\"")
            let monitor = try SignalMonitor(address: s.daemon.address)
            defer { monitor.stop() }
            try await monitor.waitUntilListening()
            #expect(try s.call(.setCounter, ["u", "42"]).succeeded)
            let counter = try s.busctl(["get-property", TestInterface.busName, TestInterface.path.rawValue, TestInterface.name, "Counter"])
            #expect(counter.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "u 42")
            let line = try await monitor.waitForLine(containing: "PropertiesChanged")
            // Counter (emits change) carries its value; Volatile (invalidates) is only named.
            #expect(line.contains("'Counter': <uint32 42>"), "\(line)")
            #expect(line.contains("['Volatile']"), "\(line)")
            let all = try s.busctl(["--json=short", "call", TestInterface.busName, TestInterface.path.rawValue,
                                    "org.freedesktop.DBus.Properties", "GetAll", "s", TestInterface.name])
            #expect(all.stdout.contains("\"Quiet\":{\"type\":\"u\",\"data\":42}"), "\(all.stdout)")
        }
    }

    @Test func signalsReachListeners() async throws {
        try await withTestService { s in
            let monitor = try SignalMonitor(address: s.daemon.address)
            defer { monitor.stop() }
            try await monitor.waitUntilListening()
            #expect(try s.call(.emit, ["s", "it happened"]).succeeded)
            let line = try await monitor.waitForLine(containing: "Happened")
            #expect(line.contains("io.berth.Test.Happened ('it happened', uint32 1)"), "\(line)")
        }
    }

    @Test func aSlowCallDoesNotHoldBackAFastOne() async throws {
        try await withTestService { s in
            let slow = Process()
            slow.executableURL = URL(fileURLWithPath: "/usr/bin/busctl")
            slow.arguments = ["--address=\(s.daemon.address)", "call", TestInterface.busName, TestInterface.path.rawValue,
                              TestInterface.name, TestInterface.Method.slow.rawValue]
            let out = Pipe()
            slow.standardOutput = out
            try slow.run()
            // Wait until the slow call is being handled (it then waits for the fast one).
            var waited = 0
            while await !s.object.events.contains("slow started") && waited < 1000 {
                try await Task.sleep(for: .milliseconds(10))
                waited += 1
            }
            let fast = try s.call(.fast)
            #expect(fast.stdout.contains("\"fast\""))
            slow.waitUntilExit()
            #expect(String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).contains("\"slow\""))
            // The fast reply was sent while the slow handler was still suspended.
            #expect(await s.object.events == ["slow started", "fast", "slow finished"])
        }
    }

    @Test func fileDescriptorsInAndOut() async throws {
        try await withTestService { s in
            let sent = try s.python("""
                r, w = os.pipe()
                os.write(w, b'bytes through a pipe')
                os.close(w)
                print(iface.ReadFD(dbus.types.UnixFd(r)))
                """)
            #expect(sent.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "bytes through a pipe", "\(sent.stderr)")
            let received = try s.python("""
                fd = iface.MakeFD('made by the handler').take()
                print(os.read(fd, 100).decode())
                """)
            #expect(received.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "made by the handler", "\(received.stderr)")
        }
    }

    @Test(.requires(.root, .commands("setpriv")))  // a client as nobody
    func mutationsAreDeniedToNobodyWithoutPolkit() async throws {
        try await withTestService { s in
            let nobody: uid_t = 65534
            // The second answer comes from the credentials remembered for this connection.
            let who = try s.python("print(int(iface.WhoAmI()), int(iface.WhoAmI()))", asUser: nobody)
            #expect(who.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "65534 65534", "\(who.stderr)")
            let script = """
                for m in ('Mutate', 'RootOnly'):
                    try:
                        getattr(iface, m)()
                        print(m, 'allowed')
                    except dbus.exceptions.DBusException as e:
                        print(m, e.get_dbus_name())
                """
            let denied = try s.python(script, asUser: nobody)
            #expect(denied.stdout.contains("Mutate org.freedesktop.DBus.Error.AccessDenied"), "\(denied.stdout) \(denied.stderr)")
            #expect(denied.stdout.contains("RootOnly org.freedesktop.DBus.Error.AccessDenied"), "\(denied.stdout) \(denied.stderr)")
            // Reading stays open to everyone.
            let read = try s.python("print(obj.Get('io.berth.Test', 'Name', dbus_interface='org.freedesktop.DBus.Properties'))", asUser: nobody)
            #expect(read.stdout.contains("test object"), "\(read.stderr)")
            let root = try s.python(script)
            #expect(root.stdout.contains("Mutate allowed") && root.stdout.contains("RootOnly allowed"), "\(root.stdout)")
        }
    }

    @Test(.requires(.root, .commands("setpriv")))  // a client as nobody
    func polkitDecidesForOtherUsersWhenItIsOnTheBus() async throws {
        try await withTestService { s in
            let polkitBus = try await Bus.connect(address: s.daemon.address, loop: s.loop)
            let polkit = FakePolkit(bus: polkitBus)
            try await polkitBus.export([FakePolkit.interface], at: "/org/freedesktop/PolicyKit1/Authority", handler: polkit)
            try await polkitBus.requestName(Authorizer.polkitName)
            let script = """
                try:
                    iface.Mutate()
                    print('allowed')
                except dbus.exceptions.DBusException as e:
                    print(e.get_dbus_name())
                """
            await polkit.setAllows(true)
            let allowed = try s.python(script, asUser: 65534)
            #expect(allowed.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "allowed", "\(allowed.stderr)")
            await polkit.setAllows(false)
            let denied = try s.python(script, asUser: 65534)
            #expect(denied.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "org.freedesktop.DBus.Error.AccessDenied")
            // Root is never asked about.
            let root = try s.python(script)
            #expect(root.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "allowed")
            let asked = await polkit.asked
            #expect(asked.count == 2)
            #expect(asked.allSatisfy { $0.subjectKind == "system-bus-name" && $0.action == "io.berth.test.mutate" })
            await polkitBus.shutdown()
        }
    }

    @Test func shutdownCancelsCallsInFlightAndAnswersThem() async throws {
        try await withTestService { s in
            let sleeper = Process()
            sleeper.executableURL = URL(fileURLWithPath: "/usr/bin/busctl")
            sleeper.arguments = ["--address=\(s.daemon.address)", "call", TestInterface.busName, TestInterface.path.rawValue,
                                 TestInterface.name, TestInterface.Method.sleep.rawValue]
            let err = Pipe()
            sleeper.standardError = err
            try sleeper.run()
            var waited = 0
            while await !s.object.events.contains("sleeping") && waited < 1000 {
                try await Task.sleep(for: .milliseconds(10))
                waited += 1
            }
            #expect(await s.bus.callsInFlight == 1)
            await s.bus.shutdown()
            #expect(await s.bus.callsInFlight == 0)
            sleeper.waitUntilExit()
            let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(sleeper.terminationStatus != 0)
            #expect(message.contains("cancelled"), "\(message)")
        }
    }

    @Test func childObjectsAppearAndDisappear() async throws {
        try await withTestService { s in
            let added = try s.call(.addItem, ["s", ".host"])
            #expect(added.stdout.contains("/io/berth/Test/item/_2ehost"), "\(added.stdout)")
            let tree = try s.busctl(["tree", "--list", TestInterface.busName])
            #expect(tree.stdout.contains("/io/berth/Test/item/_2ehost"), "\(tree.stdout)")
            let name = try s.busctl(["get-property", TestInterface.busName, "/io/berth/Test/item/_2ehost", "io.berth.Item", "Name"])
            #expect(name.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "s \".host\"")
            #expect(try s.call(.removeItem, ["s", ".host"]).succeeded)
            let gone = try s.busctl(["get-property", TestInterface.busName, "/io/berth/Test/item/_2ehost", "io.berth.Item", "Name"])
            #expect(!gone.succeeded)
            #expect(gone.stderr.contains("Unknown object") || gone.stderr.contains("UnknownObject"), "\(gone.stderr)")
        }
    }

    @Test func pathEscapingFollowsSdBus() {
        let prefix: ObjectPath = "/org/freedesktop/machine1/image"
        #expect(prefix.appending(escaped: ".host").rawValue == "/org/freedesktop/machine1/image/_2ehost")
        #expect(prefix.appending(escaped: "a b").rawValue == "/org/freedesktop/machine1/image/a_20b")
        #expect(prefix.appending(escaped: "").rawValue == "/org/freedesktop/machine1/image/_")
        #expect(prefix.appending(escaped: "Img0042").rawValue == "/org/freedesktop/machine1/image/Img0042")
        #expect(prefix.appending(escaped: "img_1").rawValue == "/org/freedesktop/machine1/image/img_5f1")
        #expect(ObjectPath("/org/freedesktop/machine1/image/_2ehost").unescapedName(under: prefix) == ".host")
        #expect(ObjectPath("/org/freedesktop/machine1").unescapedName(under: prefix) == nil)
    }

    /// Every name round-trips through sd_bus_path_encode and our decoding; sd-bus's decoding
    /// rules hold (a lone `_` is "", an `_` not followed by two hex digits is itself, escapes
    /// need not be canonical); a component decoding to NUL or to non-UTF-8 names nothing.
    @Test func pathDecodingRefusesWhatNamesNothing() {
        let prefix: ObjectPath = "/org/freedesktop/machine1/image"
        for name in [".host", "a b", "img_1", "Img0042", "..x", "ünï", "x_", "_", "a.b-c", String(repeating: "z", count: 255)] {
            #expect(prefix.appending(escaped: name).unescapedName(under: prefix) == name, "\(name)")
        }
        func decode(_ component: String) -> String? { ObjectPath("/org/freedesktop/machine1/image/" + component).unescapedName(under: prefix) }
        #expect(decode("_") == "")
        #expect(decode("_62ase") == "base")
        #expect(decode("a_2Eb") == "a.b")
        #expect(decode("a_zz") == "a_zz")
        #expect(decode("a_2") == "a_2")
        #expect(decode("base_00junk") == nil)
        #expect(decode("base__00") == nil)
        #expect(decode("_ff") == nil)
        #expect(decode("a/b") == nil)
        #expect(ObjectPath("/org/freedesktop/machine1/imagex").unescapedName(under: prefix) == nil)
        #expect(ObjectPath("/org/freedesktop/machine1/image/").unescapedName(under: prefix) == nil)
        #expect(ObjectPath("/x").unescapedName(under: "/") == "x")
    }

    /// Arguments beyond a method call's decoding budget are answered LimitsExceeded; within it
    /// they are decoded as ever.
    @Test func argumentsBeyondTheBudgetAreLimitsExceeded() async throws {
        try await withTestService { s in
            let many = (0..<70_000).map { _ in "1" }
            let over = try s.call(.echo, ["v", "ay", String(many.count)] + many)
            #expect(!over.succeeded && (over.stderr.contains("LimitsExceeded") || over.stderr.contains("more than")), "\(over.stderr)")
            let within = try s.call(.echo, ["v", "ay", "1000"] + many.prefix(1000))
            #expect(within.succeeded, "\(within.stderr)")
        }
    }

    @Test func signaturesSplitIntoCompleteTypes() throws {
        #expect(try Signature.split("sa{sv}(ii)aas") == ["s", "a{sv}", "(ii)", "aas"])
        #expect(throws: BusError.self) { try Signature.split("a{sv") }
    }
}

/// `gdbus monitor` on the test service, its output collected line by line.
final class SignalMonitor: @unchecked Sendable {
    private let process = Process()
    private let output: URL
    private let folder: TemporaryDirectory

    init(address: String) throws {
        folder = try TemporaryDirectory(prefix: "berth-monitor")
        output = URL(fileURLWithPath: folder.appending("out"))
        FileManager.default.createFile(atPath: output.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/stdbuf")
        // gdbus monitor only subscribes on a message bus connection (--system), not with --address.
        process.arguments = ["-oL", "gdbus", "monitor", "--system", "--dest", TestInterface.busName]
        process.environment = ProcessInfo.processInfo.environment.merging(["DBUS_SYSTEM_BUS_ADDRESS": address]) { $1 }
        process.standardOutput = try FileHandle(forWritingTo: output)
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    var text: String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }

    /// Waits until gdbus has subscribed (it prints a banner once the match rules are in place).
    func waitUntilListening() async throws {
        _ = try await waitForLine(containing: "Monitoring signals")
    }

    func waitForLine(containing needle: String) async throws -> String {
        for _ in 0..<1000 {
            if let line = text.split(separator: "\n").first(where: { $0.contains(needle) }) { return String(line) }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw TestSupportError("gdbus monitor printed no line with \(needle): \(text)")
    }

    func stop() {
        // SIGKILL: processes started from test threads inherit their blocked SIGTERM.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        folder.remove()
    }
}
