/// # Bus: Berth's Swift layer on sd-bus
///
/// One `EventLoop` thread runs sd-event and owns the connection; `Bus` is an actor pinned to that
/// thread (a custom `SerialExecutor`), and so are the objects it exports, so the synchronous C
/// callbacks of sd-bus (method dispatch, property getters, find and enumerate callbacks) enter them
/// with `assumeIsolated`, never crossing threads.
///
/// ```swift
/// let loop = try EventLoop()
/// let bus = try await Bus.connect(address: nil, loop: loop)       // nil: the system bus
/// try await bus.export([Machine1Manager.interface], at: "/org/freedesktop/machine1", handler: harness)
/// try await bus.exportSubtree([Machine1Image.interface], under: "/org/freedesktop/machine1/image", handler: images)
/// try await bus.requestName("org.freedesktop.machine1")
/// ```
///
/// A handler is an actor on the bus's executor implementing `BusObjectHandler`:
///
/// ```swift
/// actor Machine1Harness: BusObjectHandler {
///     nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }
///     func handle(_ call: MethodCall) async throws -> [BusValue] {
///         switch Machine1Manager.Method(rawValue: call.member) {
///         case .getImage: return [.objectPath(try await pool.image(named: call.string(0)).path)]
///         …
///         }
///     }
///     func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue { … }
/// }
/// ```
///
/// - `handle` is `async`: it may await for seconds (copies run elsewhere) and the reply is sent
///   when it returns; other calls are dispatched meanwhile. What it throws becomes the error reply:
///   a `BusError` as is, a `SystemCallError` as `System.Error.E…`, anything else
///   `org.freedesktop.DBus.Error.Failed`.
/// - `property` is synchronous (sd-bus asks for it inside a callback): answer from state the actor
///   holds, refreshed asynchronously where it is expensive.
/// - `objectExists` / `childObjects` serve dynamic trees exported with `exportSubtree` (a fallback
///   vtable plus a node enumerator): images, machines, transfers appear and vanish without any
///   registration call.
/// - Callers: `MethodCall.credentials()` (uid, pid of the sender, asked of the bus without
///   blocking) and `Authorizer` (root, else polkit, else AccessDenied).
/// - Arguments: `MethodCall.arguments` are decoded on first use, within `DecodeBudget.methodCall`
///   (LimitsExceeded beyond), so a harness that authorizes first never decodes a refused call's
///   arguments; a call that decoded much hands the freed memory back when it is answered.
/// - Client side: `Bus.call` calls other services asynchronously (sd_bus_call_async) from the
///   daemon; `BusClient` is a blocking client for command-line tools, on its own connection.
import CSystemd
import Glibc
import Linux
import Logging

/// An object handler: an actor running on the bus's executor that answers method calls and
/// property reads for the objects it is exported at.
public protocol BusObjectHandler: Actor {
    /// Answers one method call with the method's out arguments, in order, or throws the error to reply.
    func handle(_ call: MethodCall) async throws -> [BusValue]
    /// Answers `call` at once, on the bus thread, if it can be answered without waiting (a
    /// lookup of a few system calls, as GetImage); nil sends it on to `handle`. Default: nil.
    func handleNow(_ call: MethodCall) throws -> [BusValue]?
    /// The current value of property `name` of `interface` on the object at `path`.
    func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue
    /// For subtrees: whether an object exists at `path` (sd-bus's find callback). Default: true.
    func objectExists(_ path: ObjectPath) -> Bool
    /// For subtrees: the objects below `prefix` (sd-bus's node enumerator). Default: none.
    func childObjects(under prefix: ObjectPath) -> [ObjectPath]
}

extension BusObjectHandler {
    /// Every call goes to `handle`.
    public func handleNow(_ call: MethodCall) throws -> [BusValue]? { nil }
    /// Every path the handler is exported at exists (plain objects).
    public func objectExists(_ path: ObjectPath) -> Bool { true }
    /// No children to enumerate.
    public func childObjects(under prefix: ObjectPath) -> [ObjectPath] { [] }
}

/// One incoming message while sd-bus dispatches it (`Bus.currentRequestID`): its sender's
/// unique name and its cookie. Cheap to take for every property read.
public struct RequestID: Hashable, Sendable {
    let sender: String
    let cookie: UInt64
}

/// A method call as received, with the means to ask who sent it. Its arguments are decoded when
/// first asked for (within `DecodeBudget.methodCall`), so a harness that authorizes the caller
/// first spends nothing on the arguments of a call it refuses.
public struct MethodCall: Sendable {
    /// The object the call is for.
    public let path: ObjectPath
    /// The interface named in the call.
    public let interface: String
    /// The member (method) name.
    public let member: String
    /// The caller's unique bus name (`:1.42`).
    public let sender: String?
    /// The message, held until the call is answered, and its arguments once decoded.
    let message: CallMessage
    /// Whether the caller allows polkit to ask the user interactively
    /// (sd_bus_message_get_allow_interactive_authorization).
    public let allowsInteractiveAuthorization: Bool
    /// The connection it arrived on.
    public let bus: Bus

    /// The caller's uid and pid, as the bus daemon vouches for them (GetConnectionCredentials).
    public nonisolated(nonsending) func credentials() async throws(BusError) -> Credentials {
        guard let sender else { throw BusError.accessDenied("the caller has no bus name") }
        return try await bus.credentials(of: sender)
    }

    /// The in arguments (their signature checked by sd-bus against the method's), decoded on
    /// first use on the bus thread; `org.freedesktop.DBus.Error.LimitsExceeded` beyond
    /// `DecodeBudget.methodCall`. Only on the bus thread, before the call is answered.
    public var arguments: [BusValue] {
        get throws(BusError) { try message.arguments() }
    }

    /// Argument `i` as a string (`s`, `o` or `g`).
    public func string(_ i: Int) throws(BusError) -> String {
        let arguments = try arguments
        guard i < arguments.count, let v = arguments[i].stringValue else { throw BusError.invalidArgs("argument \(i) is not a string") }
        return v
    }
    /// Argument `i` as a boolean.
    public func bool(_ i: Int) throws(BusError) -> Bool {
        let arguments = try arguments
        guard i < arguments.count, let v = arguments[i].boolValue else { throw BusError.invalidArgs("argument \(i) is not a boolean") }
        return v
    }
    /// Argument `i` as an unsigned integer.
    public func uint64(_ i: Int) throws(BusError) -> UInt64 {
        let arguments = try arguments
        guard i < arguments.count, let v = arguments[i].uint64Value else { throw BusError.invalidArgs("argument \(i) is not an unsigned integer") }
        return v
    }
    /// Argument `i` as an array of strings (`as`).
    public func strings(_ i: Int) throws(BusError) -> [String] {
        let arguments = try arguments
        guard i < arguments.count, case .array(_, let values) = arguments[i] else {
            throw BusError.invalidArgs("argument \(i) is not an array of strings")
        }
        var result: [String] = []
        result.reserveCapacity(values.count)
        for value in values {
            guard let s = value.stringValue else { throw BusError.invalidArgs("argument \(i) is not an array of strings") }
            result.append(s)
        }
        return result
    }
    /// Argument `i` as a signed 32-bit integer (`i`).
    public func int32(_ i: Int) throws(BusError) -> Int32 {
        let arguments = try arguments
        guard i < arguments.count, case .int32(let v) = arguments[i] else { throw BusError.invalidArgs("argument \(i) is not an int") }
        return v
    }
    /// Argument `i` as an array of signed 32-bit integers (`ai`).
    public func int32s(_ i: Int) throws(BusError) -> [Int32] {
        let arguments = try arguments
        guard i < arguments.count, case .array(_, let values) = arguments[i] else {
            throw BusError.invalidArgs("argument \(i) is not an array of ints")
        }
        var result: [Int32] = []
        result.reserveCapacity(values.count)
        for value in values {
            guard case .int32(let v) = value else { throw BusError.invalidArgs("argument \(i) is not an array of ints") }
            result.append(v)
        }
        return result
    }
    /// Argument `i` as bytes (`ay`).
    public func bytes(_ i: Int) throws(BusError) -> [UInt8] {
        let arguments = try arguments
        guard i < arguments.count, let v = arguments[i].bytesValue else { throw BusError.invalidArgs("argument \(i) is not a byte array") }
        return v
    }
    /// Argument `i` as a file descriptor (`h`); the call owns it until it is released.
    public func fileDescriptor(_ i: Int) throws(BusError) -> FileDescriptor {
        let arguments = try arguments
        guard i < arguments.count, let v = arguments[i].fileDescriptor else { throw BusError.invalidArgs("argument \(i) is not a file descriptor") }
        return v
    }
}

/// Who sent a call: `UnixUserID` and `ProcessID` from the bus daemon.
public struct Credentials: Sendable, Equatable {
    /// The caller's uid (`UnixUserID`).
    public var uid: UInt32
    /// The caller's pid (`ProcessID`), when the bus knows it.
    public var pid: UInt32?
    /// Credentials with these values.
    public init(uid: UInt32, pid: UInt32?) {
        self.uid = uid
        self.pid = pid
    }
}

/// One connection to a message bus, served on its `EventLoop`'s thread.
public actor Bus {
    /// The loop whose thread owns this connection.
    public nonisolated let loop: EventLoop
    /// This actor runs on the loop thread; handlers pin themselves to the same executor.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    private var handle: OpaquePointer?
    private var exports: [ExportBox] = []
    private var slots: [OpaquePointer] = []
    private var pending: [UInt64: CallMessage] = [:]
    private var inFlight: [UInt64: Task<Void, Never>] = [:]
    private var nextCall: UInt64 = 1
    private let logger: Logger
    /// `credentials(of:)`'s answers for unique names, at most `knownCredentialsLimit` of them.
    private var knownCredentials: [String: Credentials] = [:]
    /// The handlers of `addSignalMatch`, alive as long as their slots.
    private var signalMatches: [SignalMatchBox] = []
    private static let knownCredentialsLimit = 256

    /// Connects to `address` (a D-Bus address such as `unix:path=/run/x/sock`), or when nil to the
    /// system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`), and attaches the
    /// connection to `loop`.
    public static func connect(address: String? = nil, loop: EventLoop, logger: Logger = Logger(label: "berth.bus")) async throws(BusError) -> Bus {
        let bus = try Bus(address: address ?? Bus.systemBusAddress, loop: loop, logger: logger)
        try await bus.attach()
        return bus
    }

    /// The system bus's address as sd-bus finds it: `DBUS_SYSTEM_BUS_ADDRESS` or the default socket.
    public static var systemBusAddress: String {
        if let a = getenv("DBUS_SYSTEM_BUS_ADDRESS") { return String(cString: a) }
        return "unix:path=/run/dbus/system_bus_socket"
    }

    private init(address: String, loop: EventLoop, logger: Logger) throws(BusError) {
        self.loop = loop
        self.logger = logger
        var b: OpaquePointer? = nil
        var r = sd_bus_new(&b)
        if r >= 0 { r = sd_bus_set_address(b, address) }
        if r >= 0 { r = sd_bus_set_bus_client(b, 1) }
        // Untrusted, as sd_bus_open_system is: sd-bus then enforces root for privileged methods and
        // introspects them with org.freedesktop.systemd1.Privileged, as systemd's daemons do.
        if r >= 0 { r = sd_bus_set_trusted(b, 0) }
        if r >= 0 { r = sd_bus_negotiate_fds(b, 1) }
        if r >= 0 { r = sd_bus_start(b) }
        if r < 0 {
            sd_bus_unref(b)
            throw BusError(errno: Errno(-r), "cannot connect to the bus at \(address)")
        }
        handle = b
    }

    private func attach() throws(BusError) {
        let r = sd_bus_attach_event(handle, loop.event, 0)
        if r < 0 { throw BusError(errno: Errno(-r), "cannot attach the bus to its event loop") }
    }

    /// This connection's unique name (`:1.5`), once the bus has answered Hello.
    public func uniqueName() async throws(BusError) -> String {
        // The Hello reply arrives asynchronously; a round trip to the bus guarantees it is in.
        _ = try await call(destination: Bus.driverName, path: Bus.driverPath, interface: Bus.driverName, member: "GetId", [])
        var name: UnsafePointer<CChar>? = nil
        let r = sd_bus_get_unique_name(handle, &name)
        guard r >= 0, let name else { throw BusError(errno: Errno(-r), "no unique name") }
        return String(cString: name)
    }

    // MARK: Exporting objects

    /// Exports `interfaces` on the object at `path`, answered by `handler` (sd_bus_add_object_vtable).
    public func export(_ interfaces: [BusInterface], at path: ObjectPath, handler: any BusObjectHandler) throws(BusError) {
        for interface in interfaces {
            let box = ExportBox(interface: interface, handler: handler, bus: self)
            var slot: OpaquePointer? = nil
            let r = sd_bus_add_object_vtable(handle, &slot, path.rawValue, interface.name, box.vtable.entries,
                                             Unmanaged.passUnretained(box).toOpaque())
            if r < 0 { throw BusError(errno: Errno(-r), "cannot export \(interface.name) at \(path)") }
            exports.append(box)
            if let slot { slots.append(slot) }
        }
    }

    /// Exports `interfaces` on every object below `prefix` that `handler.objectExists` confirms,
    /// listing `handler.childObjects` in introspection (sd_bus_add_fallback_vtable and
    /// sd_bus_add_node_enumerator).
    public func exportSubtree(_ interfaces: [BusInterface], under prefix: ObjectPath, handler: any BusObjectHandler) throws(BusError) {
        let enumBox = ExportBox(interface: BusInterface(name: ""), handler: handler, bus: self)
        var slot: OpaquePointer? = nil
        var r = sd_bus_add_node_enumerator(handle, &slot, prefix.rawValue, enumeratorThunk, Unmanaged.passUnretained(enumBox).toOpaque())
        if r < 0 { throw BusError(errno: Errno(-r), "cannot add a node enumerator at \(prefix)") }
        exports.append(enumBox)
        if let slot { slots.append(slot) }
        for interface in interfaces {
            let box = ExportBox(interface: interface, handler: handler, bus: self)
            slot = nil
            r = sd_bus_add_fallback_vtable(handle, &slot, prefix.rawValue, interface.name, box.vtable.entries, findThunk,
                                           Unmanaged.passUnretained(box).toOpaque())
            if r < 0 { throw BusError(errno: Errno(-r), "cannot export \(interface.name) below \(prefix)") }
            exports.append(box)
            if let slot { slots.append(slot) }
        }
    }

    /// Asks the bus for `name` (RequestName, without queueing) and fails if another connection has it.
    public func requestName(_ name: String) async throws(BusError) {
        let reply = try await call(destination: Bus.driverName, path: Bus.driverPath, interface: Bus.driverName,
                                   member: "RequestName", [.string(name), .uint32(4)])  // 4: DBUS_NAME_FLAG_DO_NOT_QUEUE
        guard let code = reply.first?.uint64Value, code == 1 || code == 4 else {
            throw BusError(name: BusError.Name.fileExists, message: "the bus name \(name) is owned by another connection")
        }
    }

    // MARK: Method dispatch (called from sd-bus callbacks on the loop thread)

    fileprivate func dispatch(_ m: OpaquePointer, _ box: ExportBox) -> Int32 {
        let path = ObjectPath(sd_bus_message_get_path(m).map { String(cString: $0) } ?? "/")
        let member = sd_bus_message_get_member(m).map { String(cString: $0) } ?? ""
        let sender = sd_bus_message_get_sender(m).map { String(cString: $0) }
        // Nothing of the arguments is decoded here: the handler asks for them, after it has
        // authorized the caller where the method needs it.
        let message = CallMessage(m, loop: loop)
        let id = nextCall
        nextCall += 1
        pending[id] = message
        let call = MethodCall(path: path, interface: box.interface.name, member: member, sender: sender, message: message,
                              allowsInteractiveAuthorization: sd_bus_message_get_allow_interactive_authorization(m) > 0,
                              bus: self)
        let handler = box.handler
        let expected = box.interface.method(member)?.outputSignature ?? ""
        // The synchronous answer, where the handler has one: no task, no suspension.
        do {
            if let values = try handler.assumeIsolated({ h in try h.handleNow(call) }) {
                finish(id, .success(values), expected: expected)
                return 1
            }
        } catch {
            finish(id, .failure(error), expected: expected)
            return 1
        }
        // Started at once on this thread (the handlers share the loop's executor): a call whose
        // handler does not suspend (GetImage, a property read) is answered before this callback
        // returns, with no trip through the executor's queue.
        let task = Task.immediate {
            let result: Result<[BusValue], any Error>
            do {
                result = .success(try await handler.handle(call))
            } catch {
                result = .failure(error)
            }
            self.finish(id, result, expected: expected)
        }
        // Still pending: the handler suspended, so the task lives on until it answers.
        if pending[id] != nil { inFlight[id] = task }
        return 1
    }

    private func finish(_ id: UInt64, _ result: Result<[BusValue], any Error>, expected: String) {
        inFlight[id] = nil
        guard let message = pending.removeValue(forKey: id), let m = message.pointer else { return }
        defer {
            let large = message.decodedALot
            message.release()
            // Many values decoded and now freed: hand the memory back rather than keep it
            // resident for good (an attacker's arrays, capped as they are, add up).
            if large { releaseFreeMemory() }
        }
        guard handle != nil else { return }
        switch result {
        case .success(let values):
            let signature = values.map(\.signature).joined()
            guard signature == expected else {
                logger.error("handler of \(String(cString: sd_bus_message_get_member(m))) returned \(signature), expected \(expected)")
                replyError(m, BusError.failed("internal error: reply of type \(signature), expected \(expected)"))
                return
            }
            var reply: OpaquePointer? = nil
            var r = sd_bus_message_new_method_return(m, &reply)
            if r >= 0, let reply {
                do {
                    try Marshal.append(reply, values)
                    r = sd_bus_send(handle, reply, nil)
                } catch {
                    replyError(m, error)
                }
            }
            sd_bus_message_unref(reply)
            if r < 0 { logger.warning("cannot send a reply: \(Errno(-r))") }
        case .failure(let error):
            replyError(m, error)
        }
    }

    private func replyError(_ m: OpaquePointer, _ error: any Error) {
        let e = Bus.busError(error)
        var err = sd_bus_error(name: nil, message: nil, _need_free: 0)
        sd_bus_error_set(&err, e.name, e.message)
        let r = sd_bus_reply_method_error(m, &err)
        sd_bus_error_free(&err)
        if r < 0 { logger.warning("cannot send an error reply: \(Errno(-r))") }
    }

    /// The D-Bus error a thrown error is answered with.
    public static func busError(_ error: any Error) -> BusError {
        switch error {
        case let e as BusError: return e
        case let e as SystemCallError: return BusError(errno: e.errno, e.description)
        case let e as Errno: return BusError(errno: e, e.description)
        case is CancellationError: return BusError(errno: .ECANCELED, "the operation was cancelled")
        default: return BusError.failed("\(error)")
        }
    }

    /// The incoming message sd-bus is dispatching right now: handlers answering several
    /// synchronous callbacks for one message (a find callback, then each property of a GetAll)
    /// may reuse one lookup for all of them. nil outside a dispatch.
    public var currentRequestID: RequestID? {
        guard let m = sd_bus_get_current_message(handle) else { return nil }
        var cookie: UInt64 = 0
        guard sd_bus_message_get_cookie(m, &cookie) >= 0 else { return nil }
        // The sender's unique name (":1.42", never reused on a bus) with the cookie identifies the
        // message; a short name fits Swift's inline string, so no allocation.
        let sender = sd_bus_message_get_sender(m).map { String(cString: $0) } ?? ""
        return RequestID(sender: sender, cookie: cookie)
    }

    fileprivate func readProperty(_ box: ExportBox, path: ObjectPath, name: String, reply: OpaquePointer,
                                  error: UnsafeMutablePointer<sd_bus_error>?) -> Int32 {
        do {
            let interfaceName = box.interface.name
            let value = try box.handler.assumeIsolated { h in try h.property(name, interface: interfaceName, path: path) }
            let expected = box.interface.property(name)?.signature ?? ""
            guard value.signature == expected else {
                throw BusError.failed("internal error: property \(name) is \(value.signature), expected \(expected)")
            }
            try Marshal.append(reply, value)
            return 1
        } catch let failure {
            let e = Bus.busError(failure)
            return sd_bus_error_set(error, e.name, e.message)
        }
    }

    fileprivate func find(_ box: ExportBox, path: ObjectPath) -> Bool {
        box.handler.assumeIsolated { h in h.objectExists(path) }
    }

    fileprivate func enumerate(_ box: ExportBox, prefix: ObjectPath) -> [ObjectPath] {
        box.handler.assumeIsolated { h in h.childObjects(under: prefix) }
    }

    // MARK: Signals

    /// Emits signal `member` of `interface` from `path` (sd_bus_message_new_signal, sd_bus_send).
    public func emitSignal(path: ObjectPath, interface: String, member: String, _ values: [BusValue]) throws(BusError) {
        var m: OpaquePointer? = nil
        var r = sd_bus_message_new_signal(handle, &m, path.rawValue, interface, member)
        guard r >= 0, let m else { throw BusError(errno: Errno(-r), "cannot make signal \(member)") }
        defer { sd_bus_message_unref(m) }
        try Marshal.append(m, values)
        r = sd_bus_send(handle, m, nil)
        if r < 0 { throw BusError(errno: Errno(-r), "cannot send signal \(member)") }
    }

    /// Emits `org.freedesktop.DBus.Properties.PropertiesChanged` for `names`, with the values the
    /// handler reports now or as invalidated, per each property's `EmitsChange`
    /// (sd_bus_emit_properties_changed_strv).
    public func emitPropertiesChanged(path: ObjectPath, interface: String, _ names: [String]) throws(BusError) {
        let strv = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: names.count + 1)
        defer {
            for i in 0..<names.count { free(strv[i]) }
            strv.deallocate()
        }
        for (i, n) in names.enumerated() { strv[i] = strdup(n) }
        strv[names.count] = nil
        let r = sd_bus_emit_properties_changed_strv(handle, path.rawValue, interface, strv)
        if r < 0 { throw BusError(errno: Errno(-r), "cannot emit PropertiesChanged") }
    }

    // MARK: Receiving signals

    /// Calls `handler` on the loop thread with every signal that matches `rule` (a D-Bus match
    /// rule such as `type='signal',sender='org.freedesktop.systemd1',member='JobRemoved'`), for as
    /// long as the connection lives. The match is sent to the bus without waiting for its answer
    /// (sd_bus_add_match_async), so the loop never blocks; a signal sent after the bus has
    /// processed the AddMatch is delivered. The handler runs inside sd-bus's dispatch: it must
    /// not block.
    public func addSignalMatch(_ rule: String, _ handler: @escaping (BusSignal) -> Void) throws(BusError) {
        guard let handle else { throw BusError(errno: .ENOTCONN, "the bus connection is closed") }
        let box = SignalMatchBox(handler)
        var slot: OpaquePointer? = nil
        let r = sd_bus_add_match_async(handle, &slot, rule, signalThunk, nil, Unmanaged.passUnretained(box).toOpaque())
        if r < 0 { throw BusError(errno: Errno(-r), "cannot add the match \(rule)") }
        signalMatches.append(box)
        if let slot { slots.append(slot) }
    }

    // MARK: Calling other services

    /// The bus driver, `org.freedesktop.DBus`.
    public static let driverName = "org.freedesktop.DBus"
    static let driverPath: ObjectPath = "/org/freedesktop/DBus"

    /// Calls `member` on another service and awaits its reply without blocking the loop
    /// (sd_bus_call_async). An error reply is thrown as `BusError`.
    public func call(destination: String, path: ObjectPath, interface: String, member: String, _ arguments: [BusValue],
                     timeoutMicroseconds: UInt64 = 0) async throws(BusError) -> [BusValue] {
        guard let handle else { throw BusError(errno: .ENOTCONN, "the bus connection is closed") }
        var m: OpaquePointer? = nil
        var r = sd_bus_message_new_method_call(handle, &m, destination, path.rawValue, interface, member)
        guard r >= 0, let m else { throw BusError(errno: Errno(-r), "cannot make call \(member)") }
        defer { sd_bus_message_unref(m) }
        try Marshal.append(m, arguments)
        let result: Result<[BusValue], BusError> = await withCheckedContinuation { continuation in
            let box = Unmanaged.passRetained(ReplyBox(continuation))
            r = sd_bus_call_async(handle, nil, m, replyThunk, box.toOpaque(), timeoutMicroseconds)
            if r < 0 {
                box.release()
                continuation.resume(returning: .failure(BusError(errno: Errno(-r), "cannot send call \(member)")))
            }
        }
        return try result.get()
    }

    /// The uid and pid of the connection `name` (GetConnectionCredentials). A unique name's
    /// answer is remembered: the bus takes a connection's credentials when it connects and never
    /// gives its unique name to another connection, so a caller's next privileged call costs no
    /// extra round trip. A well-known name is asked every time (its owner can change).
    public func credentials(of name: String) async throws(BusError) -> Credentials {
        if let known = knownCredentials[name] { return known }
        let reply = try await call(destination: Bus.driverName, path: Bus.driverPath, interface: Bus.driverName,
                                   member: "GetConnectionCredentials", [.string(name)])
        guard let d = reply.first?.dictionaryValue, let uid = d["UnixUserID"]?.uint64Value else {
            throw BusError.accessDenied("the bus does not know the caller's uid")
        }
        let credentials = Credentials(uid: UInt32(truncatingIfNeeded: uid),
                                      pid: d["ProcessID"]?.uint64Value.map { UInt32(truncatingIfNeeded: $0) })
        if name.hasPrefix(":") {
            // Bounded: callers come and go, and a forgotten one is only asked again.
            if knownCredentials.count >= Bus.knownCredentialsLimit { knownCredentials.removeAll(keepingCapacity: true) }
            knownCredentials[name] = credentials
        }
        return credentials
    }

    /// Whether some connection owns `name` (NameHasOwner).
    public func nameHasOwner(_ name: String) async throws(BusError) -> Bool {
        let reply = try await call(destination: Bus.driverName, path: Bus.driverPath, interface: Bus.driverName,
                                   member: "NameHasOwner", [.string(name)])
        return reply.first?.boolValue ?? false
    }

    // MARK: Shutdown

    /// The number of method calls not yet answered.
    public var callsInFlight: Int { pending.count }

    /// Cancels the calls in flight, gives them `grace` to answer (with their error), then closes the
    /// connection after flushing what is queued.
    public func shutdown(grace: Duration = .milliseconds(500)) async {
        for t in inFlight.values { t.cancel() }
        let clock = ContinuousClock()
        let deadline = clock.now + grace
        while !pending.isEmpty && clock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        close()
    }

    /// Closes the connection: unexported objects, unanswered calls dropped (sd_bus_flush_close_unref).
    public func close() {
        for slot in slots { sd_bus_slot_unref(slot) }
        slots = []
        exports = []
        signalMatches = []
        for message in pending.values { message.release() }
        pending = [:]
        if let handle {
            sd_bus_detach_event(handle)
            sd_bus_flush_close_unref(handle)
        }
        handle = nil
    }
}

/// What one sd-bus slot needs: the interface, its vtable memory, the handler and the connection.
/// Lives in `Bus.exports` for as long as the slot. Only used on the loop thread.
///
/// `@unchecked Sendable`: all its stored properties are immutable, and the C vtable memory it owns
/// is only read by sd-bus on the loop thread.
final class ExportBox: @unchecked Sendable {
    let interface: BusInterface
    let handler: any BusObjectHandler
    unowned let bus: Bus
    let vtable: Vtable

    init(interface: BusInterface, handler: any BusObjectHandler, bus: Bus) {
        self.interface = interface
        self.handler = handler
        self.bus = bus
        self.vtable = Vtable(interface, method: methodThunk, property: propertyThunk)
    }
}

/// An incoming method call's message, referenced from dispatch until the reply is sent, and its
/// arguments, decoded once on first use.
///
/// `@unchecked Sendable`: `MethodCall` (Sendable) carries it, but it is only used on the loop
/// thread (sd-bus messages are not thread-safe), which `arguments()` checks; `release()` runs
/// in `Bus.finish`/`Bus.close`, on that thread too.
final class CallMessage: @unchecked Sendable {
    /// The message; nil once released.
    private(set) var pointer: OpaquePointer?
    private let loop: EventLoop
    private var decoded: Result<[BusValue], BusError>?
    /// Whether decoding spent enough of its budget to be worth a `releaseFreeMemory` afterwards.
    private(set) var decodedALot = false

    /// Takes a reference on `m` (sd_bus_message_ref).
    init(_ m: OpaquePointer, loop: EventLoop) {
        pointer = sd_bus_message_ref(m)
        self.loop = loop
    }

    /// The arguments, decoded within `DecodeBudget.methodCall` the first time.
    func arguments() throws(BusError) -> [BusValue] {
        if let decoded { return try decoded.get() }
        // sd-bus is not thread-safe: decoding elsewhere would race the loop. A handler that got
        // here off the bus thread is a bug, answered as a failed call rather than a crashed daemon.
        guard loop.isCurrent else { throw BusError.failed("a method call's arguments are read on the bus thread only") }
        guard let pointer else { throw BusError.failed("the call was already answered") }
        var budget = DecodeBudget.methodCall
        let result: Result<[BusValue], BusError>
        do { result = .success(try Marshal.readAll(pointer, budget: &budget)) } catch { result = .failure(error) }
        decodedALot = budget.spentALot
        decoded = result
        return try result.get()
    }

    /// Drops the message and the decoded arguments (sd_bus_message_unref).
    func release() {
        if let pointer { sd_bus_message_unref(pointer) }
        pointer = nil
        decoded = nil
    }

    deinit {
        if let pointer { sd_bus_message_unref(pointer) }
    }
}

/// A message handle handed from an sd-bus callback into the bus actor on the same (loop) thread.
///
/// `@unchecked Sendable`: it never leaves the loop thread; the wrapper only lets the pointer pass
/// through `assumeIsolated`, which runs synchronously right there.
struct MessageHandle: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// An sd_bus_error out-parameter, passed like `MessageHandle` (same reasoning).
struct ErrorHandle: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<sd_bus_error>?
}

/// What one `Bus.addSignalMatch` needs on the loop thread: the handler.
///
/// `@unchecked Sendable`: created on the loop thread and only called there, by sd-bus.
final class SignalMatchBox: @unchecked Sendable {
    let handler: (BusSignal) -> Void
    init(_ handler: @escaping (BusSignal) -> Void) { self.handler = handler }
}

private func signalThunk(_ m: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ error: UnsafeMutablePointer<sd_bus_error>?) -> Int32 {
    guard let m, let userdata, sd_bus_message_is_signal(m, nil, nil) > 0,
          let interface = sd_bus_message_get_interface(m), let member = sd_bus_message_get_member(m),
          let path = sd_bus_message_get_path(m) else { return 0 }
    let box = Unmanaged<SignalMatchBox>.fromOpaque(userdata).takeUnretainedValue()
    // A signal whose body does not decode (or is absurdly large) is dropped rather than handed on half-read.
    var budget = DecodeBudget.methodCall
    guard let arguments = try? Marshal.readAll(m, budget: &budget) else { return 0 }
    box.handler(BusSignal(path: ObjectPath(String(cString: path)), interface: String(cString: interface),
                          member: String(cString: member), arguments: arguments))
    return 0
}

/// Holds a pending reply's continuation across sd_bus_call_async.
private final class ReplyBox {
    let continuation: CheckedContinuation<Result<[BusValue], BusError>, Never>
    init(_ c: CheckedContinuation<Result<[BusValue], BusError>, Never>) { continuation = c }
}

private func replyThunk(_ m: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ error: UnsafeMutablePointer<sd_bus_error>?) -> Int32 {
    guard let userdata else { return 0 }
    let box = Unmanaged<ReplyBox>.fromOpaque(userdata).takeRetainedValue()
    guard let m else {
        box.continuation.resume(returning: .failure(BusError(name: BusError.Name.noReply, message: "no reply")))
        return 0
    }
    if sd_bus_message_is_method_error(m, nil) > 0 {
        box.continuation.resume(returning: .failure(BusError(reply: m)))
    } else {
        do {
            box.continuation.resume(returning: .success(try Marshal.readAll(m)))
        } catch {
            box.continuation.resume(returning: .failure(error))
        }
    }
    return 0
}

private func methodThunk(_ m: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?, _ error: UnsafeMutablePointer<sd_bus_error>?) -> Int32 {
    guard let m, let userdata else { return -EINVAL }
    let box = Unmanaged<ExportBox>.fromOpaque(userdata).takeUnretainedValue()
    let message = MessageHandle(pointer: m)
    return box.bus.assumeIsolated { bus in bus.dispatch(message.pointer, box) }
}

private func propertyThunk(_ bus: OpaquePointer?, _ path: UnsafePointer<CChar>?, _ interface: UnsafePointer<CChar>?,
                           _ property: UnsafePointer<CChar>?, _ reply: OpaquePointer?, _ userdata: UnsafeMutableRawPointer?,
                           _ error: UnsafeMutablePointer<sd_bus_error>?) -> Int32 {
    guard let path, let property, let reply, let userdata else { return -EINVAL }
    let box = Unmanaged<ExportBox>.fromOpaque(userdata).takeUnretainedValue()
    let p = ObjectPath(String(cString: path))
    let name = String(cString: property)
    let message = MessageHandle(pointer: reply)
    let err = ErrorHandle(pointer: error)
    return box.bus.assumeIsolated { bus in bus.readProperty(box, path: p, name: name, reply: message.pointer, error: err.pointer) }
}

private func findThunk(_ bus: OpaquePointer?, _ path: UnsafePointer<CChar>?, _ interface: UnsafePointer<CChar>?,
                       _ userdata: UnsafeMutableRawPointer?, _ found: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                       _ error: UnsafeMutablePointer<sd_bus_error>?) -> Int32 {
    guard let path, let userdata else { return 0 }
    let box = Unmanaged<ExportBox>.fromOpaque(userdata).takeUnretainedValue()
    let p = ObjectPath(String(cString: path))
    guard box.bus.assumeIsolated({ bus in bus.find(box, path: p) }) else { return 0 }
    found?.pointee = userdata
    return 1
}

private func enumeratorThunk(_ bus: OpaquePointer?, _ prefix: UnsafePointer<CChar>?, _ userdata: UnsafeMutableRawPointer?,
                             _ nodes: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?,
                             _ error: UnsafeMutablePointer<sd_bus_error>?) -> Int32 {
    guard let prefix, let userdata, let nodes else { return 0 }
    let box = Unmanaged<ExportBox>.fromOpaque(userdata).takeUnretainedValue()
    let p = ObjectPath(String(cString: prefix))
    let children = box.bus.assumeIsolated { bus in bus.enumerate(box, prefix: p) }
    // sd-bus frees the array and its strings with free(): they must come from malloc.
    guard let raw = malloc(MemoryLayout<UnsafeMutablePointer<CChar>?>.stride * (children.count + 1)) else { return -ENOMEM }
    let array = raw.bindMemory(to: UnsafeMutablePointer<CChar>?.self, capacity: children.count + 1)
    for (i, c) in children.enumerated() { array[i] = strdup(c.rawValue) }
    array[children.count] = nil
    nodes.pointee = array
    return 0
}
