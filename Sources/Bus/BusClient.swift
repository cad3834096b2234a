import CSystemd
import Glibc
import Linux
import Synchronization

/// A blocking D-Bus client on its own connection, for command-line tools (berthctl): each call
/// waits for its reply (sd_bus_call). Never use it inside berthd, whose loop must not block.
///
/// `@unchecked Sendable`: the connection handle is only used under `lock`, one call at a time.
public final class BusClient: @unchecked Sendable {
    private let handle: OpaquePointer
    /// Guards `handle` (sd-bus is not thread-safe). It holds no value: the handle is needed
    /// outside it too (deinit), and a `Mutex<OpaquePointer>` would not make the C object safer.
    private let lock = Mutex(())

    /// Connects to `address`, or when nil to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` or the default socket).
    public init(address: String? = nil) throws(BusError) {
        let address = address ?? Bus.systemBusAddress
        var b: OpaquePointer? = nil
        var r = sd_bus_new(&b)
        if r >= 0 { r = sd_bus_set_address(b, address) }
        if r >= 0 { r = sd_bus_set_bus_client(b, 1) }
        if r >= 0 { r = sd_bus_negotiate_fds(b, 1) }
        if r >= 0 { r = sd_bus_start(b) }
        // Finish the handshake now (authentication, Hello): sd_bus_start only begins it, and a
        // bus daemon drops a connection still unauthenticated after its auth_timeout, which a
        // client holding its connection idle before the first call would otherwise run into.
        var unique: UnsafePointer<CChar>? = nil
        if r >= 0 { r = sd_bus_get_unique_name(b, &unique) }
        guard r >= 0, let b else {
            sd_bus_unref(b)
            throw BusError(errno: Errno(-r), "cannot connect to the bus at \(address)")
        }
        handle = b
    }

    deinit { sd_bus_flush_close_unref(handle) }

    /// Calls `member` and waits for the reply (sd_bus_call); an error reply is thrown as `BusError`.
    public func call(destination: String, path: ObjectPath, interface: String, member: String, _ arguments: [BusValue] = [],
                     timeoutMicroseconds: UInt64 = 0) throws(BusError) -> [BusValue] {
        try call(destination: destination, path: path, interface: interface, member: member, arguments,
                 timeoutMicroseconds: timeoutMicroseconds) { reply throws(BusError) in try Marshal.readAll(reply) }
    }

    /// Calls `member`, waits for the reply and hands the reply message to `read` (on this
    /// thread, before the message is released), for clients that parse a large reply with
    /// sd-bus's own readers (sd_bus_message_skip, sd_bus_message_read_basic) as a C client
    /// would, rather than into `BusValue`s.
    public func call<T: Sendable>(destination: String, path: ObjectPath, interface: String, member: String, _ arguments: [BusValue] = [],
                        timeoutMicroseconds: UInt64 = 0,
                        read: (OpaquePointer) throws(BusError) -> T) throws(BusError) -> T {
        try lock.withLock { _ throws(BusError) -> T in try callLocked(destination: destination, path: path, interface: interface, member: member,
                                                                     arguments, timeoutMicroseconds: timeoutMicroseconds, read: read) }
    }

    /// `call`'s work, under `lock`.
    private func callLocked<T>(destination: String, path: ObjectPath, interface: String, member: String, _ arguments: [BusValue],
                               timeoutMicroseconds: UInt64, read: (OpaquePointer) throws(BusError) -> T) throws(BusError) -> T {
        var m: OpaquePointer? = nil
        var r = sd_bus_message_new_method_call(handle, &m, destination, path.rawValue, interface, member)
        guard r >= 0, let m else { throw BusError(errno: Errno(-r), "cannot make call \(member)") }
        defer { sd_bus_message_unref(m) }
        try Marshal.append(m, arguments)
        var error = sd_bus_error(name: nil, message: nil, _need_free: 0)
        defer { sd_bus_error_free(&error) }
        var reply: OpaquePointer? = nil
        r = sd_bus_call(handle, m, timeoutMicroseconds, &error, &reply)
        defer { sd_bus_message_unref(reply) }
        if r < 0 {
            if let name = error.name {
                throw BusError(name: String(cString: name), message: error.message.map { String(cString: $0) } ?? "")
            }
            throw BusError(errno: Errno(-r), "call \(member) failed")
        }
        guard let reply else { throw BusError.failed("call \(member): no reply") }
        return try read(reply)
    }

    /// Asks the bus to route signals matching the given fields to this connection
    /// (sd_bus_match_signal); they are then returned by `waitForSignals`. Call it before the
    /// method whose signals you need, so none can be missed.
    public func matchSignal(sender: String?, path: ObjectPath?, interface: String?, member: String?) throws(BusError) {
        // The callback only keeps sd-bus from dropping the match; the signals themselves are
        // taken from sd_bus_process's returned message in waitForSignals.
        let r = lock.withLock { _ in
            sd_bus_match_signal(handle, nil, sender, path?.rawValue, interface, member, { _, _, _ in 0 }, nil)
        }
        guard r >= 0 else { throw BusError(errno: Errno(-r), "cannot subscribe to signal \(member ?? "*")") }
    }

    /// Processes what has arrived (sd_bus_process) and, if no signal was among it, waits up to
    /// `timeoutMicroseconds` for more (sd_bus_wait). The signals received, possibly none; an
    /// interrupted wait (EINTR) returns early with none.
    public func waitForSignals(timeoutMicroseconds: UInt64) throws(BusError) -> [BusSignal] {
        try lock.withLock { _ throws(BusError) -> [BusSignal] in
            var signals = try processPending()
            if !signals.isEmpty { return signals }
            let r = sd_bus_wait(handle, timeoutMicroseconds)
            if r < 0 && -r != EINTR { throw BusError(errno: Errno(-r), "cannot wait on the bus") }
            signals = try processPending()
            return signals
        }
    }

    /// sd_bus_process until nothing is left; the signals among the processed messages.
    private func processPending() throws(BusError) -> [BusSignal] {
        var signals: [BusSignal] = []
        while true {
            var m: OpaquePointer? = nil
            let r = sd_bus_process(handle, &m)
            if r < 0 {
                sd_bus_message_unref(m)
                throw BusError(errno: Errno(-r), "cannot process bus messages")
            }
            if let m {
                defer { sd_bus_message_unref(m) }
                if sd_bus_message_is_signal(m, nil, nil) > 0,
                   let interface = sd_bus_message_get_interface(m), let member = sd_bus_message_get_member(m),
                   let path = sd_bus_message_get_path(m) {
                    let arguments = (try? Marshal.readAll(m)) ?? []
                    signals.append(BusSignal(path: ObjectPath(String(cString: path)), interface: String(cString: interface),
                                             member: String(cString: member), arguments: arguments))
                }
            }
            if r == 0 { return signals }
        }
    }

    /// The connection's socket (sd_bus_get_fd), for a client that waits on it beside other
    /// descriptors in its own poll loop and then calls `waitForSignals(timeoutMicroseconds: 0)`.
    public var pollDescriptor: Int32 {
        lock.withLock { _ in sd_bus_get_fd(handle) }
    }

    /// All properties of `interface` on `path` (org.freedesktop.DBus.Properties.GetAll), each
    /// unwrapped from its variant, in the order they came.
    public func allProperties(destination: String, path: ObjectPath, interface: String) throws(BusError) -> [(String, BusValue)] {
        let reply = try call(destination: destination, path: path, interface: StandardInterface.Properties.name,
                             member: StandardInterface.Properties.Method.getAll.rawValue,
                             [.string(interface)])
        guard let entries = reply.first?.dictionaryEntries else { throw BusError.failed("GetAll returned no dictionary") }
        return entries.compactMap { e in
            guard let name = e.key.stringValue else { return nil }
            if case .variant(let v) = e.value { return (name, v) }
            return (name, e.value)
        }
    }

    /// Reads property `name` of `interface` (org.freedesktop.DBus.Properties.Get), unwrapped from its variant.
    public func property(destination: String, path: ObjectPath, interface: String, name: String) throws(BusError) -> BusValue {
        let reply = try call(destination: destination, path: path, interface: StandardInterface.Properties.name,
                             member: StandardInterface.Properties.Method.get.rawValue,
                             [.string(interface), .string(name)])
        guard case .variant(let v)? = reply.first else { throw BusError.failed("Get \(name) returned no variant") }
        return v
    }

    /// Calls org.freedesktop.DBus.Peer.Ping on `path` of `destination`; true if it answered.
    public func ping(destination: String, path: ObjectPath, timeoutMicroseconds: UInt64 = 2_000_000) -> Bool {
        (try? call(destination: destination, path: path, interface: StandardInterface.Peer.name,
                   member: StandardInterface.Peer.Method.ping.rawValue,
                   timeoutMicroseconds: timeoutMicroseconds)) != nil
    }

    /// org.freedesktop.DBus.Introspectable.Introspect of `path`.
    public func introspect(destination: String, path: ObjectPath) throws(BusError) -> String {
        let reply = try call(destination: destination, path: path, interface: StandardInterface.Introspectable.name,
                             member: StandardInterface.Introspectable.Method.introspect.rawValue)
        guard let xml = reply.first?.stringValue else { throw BusError.failed("Introspect returned no string") }
        return xml
    }
}

/// One D-Bus signal received by `BusClient.waitForSignals`.
public struct BusSignal: Sendable {
    /// The object that emitted it.
    public var path: ObjectPath
    /// Its interface.
    public var interface: String
    /// Its member name.
    public var member: String
    /// Its arguments.
    public var arguments: [BusValue]
}
