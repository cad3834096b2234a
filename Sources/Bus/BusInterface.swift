import CSystemd
import Glibc

/// A D-Bus interface declared once as a Swift value: its methods, properties and signals, with
/// argument names and property change semantics exactly as they are to be introspected.
///
/// `Bus.export` turns it into an `sd_bus_vtable`, so introspection, `Properties.Get/GetAll` and
/// argument checking come from sd-bus itself.
public struct BusInterface: Sendable {
    /// The interface name, e.g. `org.freedesktop.machine1.Manager`.
    public var name: String
    /// Its methods, in introspection order.
    public var methods: [Method]
    /// Its (read-only) properties.
    public var properties: [Property]
    /// Its signals.
    public var signals: [Signal]

    /// An interface with these members.
    public init(name: String, methods: [Method] = [], properties: [Property] = [], signals: [Signal] = []) {
        self.name = name
        self.methods = methods
        self.properties = properties
        self.signals = signals
    }

    /// One argument: its type and, unless the member leaves all its arguments unnamed, its name.
    public struct Argument: Sendable, Equatable {
        /// The argument's type, e.g. `a{sv}`.
        public var signature: String
        /// Its name, or nil when the member's arguments are unnamed.
        public var name: String?
    }

    /// A method. sd-bus names either all arguments of a member or none, so the initialisers take
    /// either all named or all unnamed arguments.
    public struct Method: Sendable {
        /// The member name.
        public var name: String
        /// The in arguments.
        public var inputs: [Argument]
        /// The out arguments.
        public var outputs: [Argument]
        /// Root-only, enforced by sd-bus itself (no `SD_BUS_VTABLE_UNPRIVILEGED`); introspected
        /// with `org.freedesktop.systemd1.Privileged`. Every other method is open on the wire and
        /// authorizes in its handler (root, else polkit).
        public var privileged: Bool

        /// A method whose arguments are all named (or that has none).
        public init<M: RawRepresentable>(_ member: M, in inputs: [(String, String)] = [], out outputs: [(String, String)] = [],
                                         privileged: Bool = false) where M.RawValue == String {
            self.name = member.rawValue
            self.inputs = inputs.map { Argument(signature: $0.0, name: $0.1) }
            self.outputs = outputs.map { Argument(signature: $0.0, name: $0.1) }
            self.privileged = privileged
        }

        /// A method whose arguments are all unnamed (systemd's Image objects have such).
        public init<M: RawRepresentable>(_ member: M, unnamedIn inputs: [String], unnamedOut outputs: [String],
                                         privileged: Bool = false) where M.RawValue == String {
            self.name = member.rawValue
            self.inputs = inputs.map { Argument(signature: $0, name: nil) }
            self.outputs = outputs.map { Argument(signature: $0, name: nil) }
            self.privileged = privileged
        }

        /// The concatenated input signature.
        public var inputSignature: String { inputs.map(\.signature).joined() }
        /// The concatenated output signature.
        public var outputSignature: String { outputs.map(\.signature).joined() }
    }

    /// How a property announces changes: the `org.freedesktop.DBus.Property.EmitsChangedSignal` annotation.
    public enum EmitsChange: String, Sendable {
        /// Never changes during the object's life (`const`).
        case const
        /// `PropertiesChanged` carries the new value (`true`, the default; no annotation).
        case `true`
        /// `PropertiesChanged` names it as invalidated (`invalidates`).
        case invalidates
        /// Changes without a signal (`false`).
        case `false`
    }

    /// A read-only property.
    public struct Property: Sendable {
        /// The member name.
        public var name: String
        /// Its type.
        public var signature: String
        /// How it announces changes.
        public var emitsChange: EmitsChange

        /// A property named by `member`'s raw value.
        public init<P: RawRepresentable>(_ member: P, _ signature: String, emitsChange: EmitsChange) where P.RawValue == String {
            self.name = member.rawValue
            self.signature = signature
            self.emitsChange = emitsChange
        }
    }

    /// A signal.
    public struct Signal: Sendable {
        /// The member name.
        public var name: String
        /// Its arguments, all named.
        public var arguments: [Argument]

        /// A signal named by `member`'s raw value.
        public init<S: RawRepresentable>(_ member: S, _ arguments: [(String, String)]) where S.RawValue == String {
            self.name = member.rawValue
            self.arguments = arguments.map { Argument(signature: $0.0, name: $0.1) }
        }

        /// The concatenated signature.
        public var signature: String { arguments.map(\.signature).joined() }
    }

    /// The method named `name`, if declared.
    public func method(_ name: String) -> Method? { methods.first { $0.name == name } }
    /// The property named `name`, if declared.
    public func property(_ name: String) -> Property? { properties.first { $0.name == name } }
    /// The signal named `name`, if declared.
    public func signal(_ name: String) -> Signal? { signals.first { $0.name == name } }
}

/// An `sd_bus_vtable` array and the C strings it points into, built from a `BusInterface`.
///
/// It must outlive the sd-bus slot that uses it: the exporting box holds it until the slot's
/// destroy callback runs.
final class Vtable {
    let entries: UnsafeMutablePointer<sd_bus_vtable>
    private var strings: [UnsafeMutablePointer<CChar>] = []

    init(_ interface: BusInterface, method: sd_bus_message_handler_t, property: sd_bus_property_get_t) {
        let count = 1 + interface.methods.count + interface.properties.count + interface.signals.count + 1
        entries = .allocate(capacity: count)
        var i = 0
        berth_vtable_start(entries + i, 0)
        i += 1
        for p in interface.properties {
            let flags: UInt64 = switch p.emitsChange {
            case .const: BERTH_SD_BUS_VTABLE_PROPERTY_CONST
            case .true: BERTH_SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE
            case .invalidates: BERTH_SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION
            case .false: 0
            }
            berth_vtable_property(entries + i, keep(p.name), keep(p.signature), property, flags)
            i += 1
        }
        for m in interface.methods {
            let flags = m.privileged ? 0 : BERTH_SD_BUS_VTABLE_UNPRIVILEGED
            berth_vtable_method(entries + i, keep(m.name), keep(m.inputSignature), keep(m.outputSignature),
                                names(m.inputs + m.outputs), method, flags)
            i += 1
        }
        for s in interface.signals {
            berth_vtable_signal(entries + i, keep(s.name), keep(s.signature), names(s.arguments), 0)
            i += 1
        }
        berth_vtable_end(entries + i)
    }

    private func keep(_ s: String) -> UnsafePointer<CChar> {
        copy(s.utf8.map { CChar(bitPattern: $0) } + [0])
    }

    private func copy(_ bytes: [CChar]) -> UnsafePointer<CChar> {
        guard let raw = malloc(bytes.count) else { preconditionFailure("out of memory building a vtable") }
        let p = raw.bindMemory(to: CChar.self, capacity: bytes.count)
        p.initialize(from: bytes, count: bytes.count)
        strings.append(p)
        return UnsafePointer(p)
    }

    /// sd-bus's argument-name list: each name NUL-terminated, then an empty name ending the list;
    /// an empty list when the arguments are unnamed.
    private func names(_ args: [BusInterface.Argument]) -> UnsafePointer<CChar> {
        let named = args.compactMap(\.name)
        var bytes: [CChar] = []
        if named.count == args.count {
            for n in named { bytes += n.utf8.map { CChar(bitPattern: $0) } + [0] }
        }
        bytes.append(0)
        return copy(bytes)
    }

    deinit {
        entries.deallocate()
        for s in strings { free(s) }
    }
}
