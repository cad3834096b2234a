import Bus
import Foundation
import Glibc
import Linux

/// `io.berth.Test`: a test interface exercising every Bus feature the services rely on.
enum TestInterface {
    static let name = "io.berth.Test"
    static let busName = "io.berth.TestService"
    static let path: ObjectPath = "/io/berth/Test"
    static let itemPrefix: ObjectPath = "/io/berth/Test/item"

    enum Method: String, CaseIterable {
        case echo = "Echo", slow = "Slow", fast = "Fast", readFD = "ReadFD", makeFD = "MakeFD"
        case mutate = "Mutate", rootOnly = "RootOnly", whoAmI = "WhoAmI", emit = "Emit", setCounter = "SetCounter"
        case addItem = "AddItem", removeItem = "RemoveItem", unnamed = "Unnamed", fail = "Fail", sleep = "Sleep"
    }
    enum Property: String { case name = "Name", counter = "Counter", volatile = "Volatile", quiet = "Quiet" }
    enum Signal: String { case happened = "Happened" }

    static let interface = BusInterface(
        name: name,
        methods: [
            .init(Method.echo, in: [("v", "value")], out: [("v", "value")]),
            .init(Method.slow, out: [("s", "result")]),
            .init(Method.fast, out: [("s", "result")]),
            .init(Method.readFD, in: [("h", "fd")], out: [("s", "content")]),
            .init(Method.makeFD, in: [("s", "content")], out: [("h", "fd")]),
            .init(Method.mutate),
            .init(Method.rootOnly, privileged: true),
            .init(Method.whoAmI, out: [("u", "uid")]),
            .init(Method.emit, in: [("s", "what")]),
            .init(Method.setCounter, in: [("u", "value")]),
            .init(Method.addItem, in: [("s", "name")], out: [("o", "path")]),
            .init(Method.removeItem, in: [("s", "name")]),
            .init(Method.unnamed, unnamedIn: ["s", "b"], unnamedOut: ["a{ss}"]),
            .init(Method.fail, in: [("s", "name")]),
            .init(Method.sleep),
        ],
        properties: [
            .init(Property.name, "s", emitsChange: .const),
            .init(Property.counter, "u", emitsChange: .true),
            .init(Property.volatile, "u", emitsChange: .invalidates),
            .init(Property.quiet, "u", emitsChange: .false),
        ],
        signals: [.init(Signal.happened, [("s", "what"), ("u", "count")])])

    static let itemInterface = BusInterface(
        name: "io.berth.Item",
        properties: [.init(ItemProperty.name, "s", emitsChange: .const)])
    enum ItemProperty: String { case name = "Name" }
}

/// The test harness: answers `io.berth.Test` and the `io.berth.Item` subtree on the bus's thread.
actor TestObject: BusObjectHandler {
    let bus: Bus
    nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }

    private(set) var events: [String] = []
    private var counter: UInt32 = 0
    private var items: Set<String> = []
    private var gate: CheckedContinuation<Void, Never>?
    private var gateOpened = false

    init(bus: Bus) { self.bus = bus }

    func handle(_ call: MethodCall) async throws -> [BusValue] {
        if call.interface == TestInterface.itemInterface.name { throw BusError.notSupported("no methods") }
        switch TestInterface.Method(rawValue: call.member) {
        case .echo:
            return [try call.arguments[0]]
        case .slow:
            events.append("slow started")
            // Waits until Fast has been answered: if the loop were blocked here, Fast never would be.
            if !gateOpened { await withCheckedContinuation { gate = $0 } }
            events.append("slow finished")
            return [.string("slow")]
        case .fast:
            events.append("fast")
            gateOpened = true
            gate?.resume()
            gate = nil
            return [.string("fast")]
        case .readFD:
            let fd = try call.fileDescriptor(0)
            let bytes = try await Task.detached { try fd.readToEnd() }.value
            return [.string(String(decoding: bytes, as: UTF8.self))]
        case .makeFD:
            var fds: [Int32] = [0, 0]
            try sys("pipe") { pipe(&fds) }
            let reader = FileDescriptor(owning: fds[0])
            let writer = FileDescriptor(owning: fds[1])
            let content = Array(try call.string(0).utf8)
            try content.withUnsafeBytes { try writer.writeAll($0) }
            writer.close()
            return [.unixFD(reader)]
        case .mutate:
            try await Authorizer().authorize(call, action: "io.berth.test.mutate")
            return []
        case .rootOnly:
            return []
        case .whoAmI:
            return [.uint32(try await call.credentials().uid)]
        case .emit:
            counter += 1
            try await bus.emitSignal(path: TestInterface.path, interface: TestInterface.name, member: TestInterface.Signal.happened.rawValue,
                                     [.string(try call.string(0)), .uint32(counter)])
            return []
        case .setCounter:
            counter = UInt32(try call.uint64(0))
            try await bus.emitPropertiesChanged(path: TestInterface.path, interface: TestInterface.name,
                                                [TestInterface.Property.counter.rawValue, TestInterface.Property.volatile.rawValue])
            return []
        case .addItem:
            let name = try call.string(0)
            items.insert(name)
            return [.objectPath(TestInterface.itemPrefix.appending(escaped: name))]
        case .removeItem:
            items.remove(try call.string(0))
            return []
        case .unnamed:
            return [.stringDictionary(["name": try call.string(0), "flag": "\(try call.bool(1))"])]
        case .sleep:
            events.append("sleeping")
            try await Task.sleep(for: .seconds(60))
            return []
        case .fail:
            let name = try call.string(0)
            if name == "errno" { throw SystemCallError("unlinkat", .EROFS) }
            throw BusError(name: name, message: "failed as asked")
        case nil:
            throw BusError(name: BusError.Name.unknownMethod, message: call.member)
        }
    }

    func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue {
        if interface == TestInterface.itemInterface.name {
            guard let item = path.unescapedName(under: TestInterface.itemPrefix), items.contains(item) else {
                throw BusError(name: BusError.Name.unknownObject, message: "no item at \(path)")
            }
            return .string(item)
        }
        switch TestInterface.Property(rawValue: name) {
        case .name: return .string("test object")
        case .counter, .volatile, .quiet: return .uint32(counter)
        case nil: throw BusError(name: BusError.Name.unknownProperty, message: name)
        }
    }

    func objectExists(_ path: ObjectPath) -> Bool {
        guard let item = path.unescapedName(under: TestInterface.itemPrefix) else { return false }
        return items.contains(item)
    }

    func childObjects(under prefix: ObjectPath) -> [ObjectPath] {
        items.sorted().map { TestInterface.itemPrefix.appending(escaped: $0) }
    }
}

/// A stand-in for polkit's `org.freedesktop.PolicyKit1.Authority` (only CheckAuthorization),
/// answering yes or no as the test says, and remembering what it was asked.
actor FakePolkit: BusObjectHandler {
    static let interface = BusInterface(
        name: "org.freedesktop.PolicyKit1.Authority",
        methods: [.init(Method.checkAuthorization,
                        in: [("(sa{sv})", "subject"), ("s", "action_id"), ("a{ss}", "details"), ("u", "flags"), ("s", "cancellation_id")],
                        out: [("(bba{ss})", "result")])])
    enum Method: String { case checkAuthorization = "CheckAuthorization" }

    let bus: Bus
    nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }
    var allows = false
    private(set) var asked: [(subjectKind: String, action: String)] = []

    init(bus: Bus) { self.bus = bus }

    func setAllows(_ value: Bool) { allows = value }

    func handle(_ call: MethodCall) async throws -> [BusValue] {
        let kind = try call.arguments[0].structureValue?.first?.stringValue ?? ""
        asked.append((kind, try call.string(1)))
        return [.structure([.boolean(allows), .boolean(false), .stringDictionary([:])])]
    }

    func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue {
        throw BusError(name: BusError.Name.unknownProperty, message: name)
    }
}
