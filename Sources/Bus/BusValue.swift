import CSystemd
import Glibc
import Linux

/// One D-Bus value of any type the three APIs use: the basic types `y b n q i u x t d s o g h`,
/// arrays (`a…`), dictionaries (`a{…}`), structs (`(…)`) and variants (`v`).
///
/// Containers carry their element signatures, so an empty array still marshals with its type.
/// Unix fds (`h`) are owned `FileDescriptor`s: received ones are duplicated (F_DUPFD_CLOEXEC) out
/// of the message, and sent ones are duplicated by sd-bus when appended, so the sender keeps and
/// closes its own.
public indirect enum BusValue: Sendable, Equatable, CustomStringConvertible {
    // The basic types, by D-Bus type code: y b n q i u x t d s o g h.
    case byte(UInt8)
    case boolean(Bool)
    case int16(Int16)
    case uint16(UInt16)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case uint64(UInt64)
    case double(Double)
    case string(String)
    case objectPath(ObjectPath)
    case signature(String)
    case unixFD(FileDescriptor)
    /// An array of values of signature `element`.
    case array(element: String, [BusValue])
    /// A dictionary (`a{kv}`), keys of signature `key` and values of signature `value`, in order.
    case dictionary(key: String, value: String, [DictEntry])
    case structure([BusValue])
    case variant(BusValue)

    /// One `{key, value}` pair of a dictionary.
    public struct DictEntry: Sendable, Equatable {
        /// The key (a basic type).
        public var key: BusValue
        /// The value.
        public var value: BusValue
        /// The pair `{key, value}`.
        public init(_ key: BusValue, _ value: BusValue) {
            self.key = key
            self.value = value
        }
    }

    /// The value's D-Bus type signature, e.g. `a(ssbttto)`.
    public var signature: String {
        switch self {
        case .byte: "y"
        case .boolean: "b"
        case .int16: "n"
        case .uint16: "q"
        case .int32: "i"
        case .uint32: "u"
        case .int64: "x"
        case .uint64: "t"
        case .double: "d"
        case .string: "s"
        case .objectPath: "o"
        case .signature: "g"
        case .unixFD: "h"
        case .array(let element, _): "a" + element
        case .dictionary(let key, let value, _): "a{" + key + value + "}"
        case .structure(let members): "(" + members.map(\.signature).joined() + ")"
        case .variant: "v"
        }
    }

    public var description: String {
        switch self {
        case .byte(let v): "\(v)"
        case .boolean(let v): "\(v)"
        case .int16(let v): "\(v)"
        case .uint16(let v): "\(v)"
        case .int32(let v): "\(v)"
        case .uint32(let v): "\(v)"
        case .int64(let v): "\(v)"
        case .uint64(let v): "\(v)"
        case .double(let v): "\(v)"
        case .string(let v): "\"\(v)\""
        case .objectPath(let v): v.rawValue
        case .signature(let v): "g\"\(v)\""
        case .unixFD(let fd): "fd \(fd.rawValue)"
        case .array(_, let vs): "[" + vs.map(\.description).joined(separator: ", ") + "]"
        case .dictionary(_, _, let es): "{" + es.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}"
        case .structure(let vs): "(" + vs.map(\.description).joined(separator: ", ") + ")"
        case .variant(let v): "<\(v)>"
        }
    }

    public static func == (a: BusValue, b: BusValue) -> Bool {
        switch (a, b) {
        case (.byte(let x), .byte(let y)): x == y
        case (.boolean(let x), .boolean(let y)): x == y
        case (.int16(let x), .int16(let y)): x == y
        case (.uint16(let x), .uint16(let y)): x == y
        case (.int32(let x), .int32(let y)): x == y
        case (.uint32(let x), .uint32(let y)): x == y
        case (.int64(let x), .int64(let y)): x == y
        case (.uint64(let x), .uint64(let y)): x == y
        case (.double(let x), .double(let y)): x == y
        case (.string(let x), .string(let y)): x == y
        case (.objectPath(let x), .objectPath(let y)): x == y
        case (.signature(let x), .signature(let y)): x == y
        case (.unixFD(let x), .unixFD(let y)): x === y
        case (.array(let e1, let x), .array(let e2, let y)): e1 == e2 && x == y
        case (.dictionary(let k1, let v1, let x), .dictionary(let k2, let v2, let y)): k1 == k2 && v1 == v2 && x == y
        case (.structure(let x), .structure(let y)): x == y
        case (.variant(let x), .variant(let y)): x == y
        default: false
        }
    }

    // MARK: Building the common shapes

    /// `as`.
    public static func strings(_ values: [String]) -> BusValue { .array(element: "s", values.map { .string($0) }) }
    /// `ay`.
    public static func bytes(_ values: [UInt8]) -> BusValue { .array(element: "y", values.map { .byte($0) }) }
    /// `a{ss}`, sorted by key so replies are stable.
    public static func stringDictionary(_ values: [String: String]) -> BusValue {
        .dictionary(key: "s", value: "s", values.sorted { $0.key < $1.key }.map { DictEntry(.string($0.key), .string($0.value)) })
    }
    /// `a{sv}`, sorted by key so replies are stable.
    public static func variantDictionary(_ values: [String: BusValue]) -> BusValue {
        .dictionary(key: "s", value: "v", values.sorted { $0.key < $1.key }.map { DictEntry(.string($0.key), .variant($0.value)) })
    }

    // MARK: Reading the common shapes

    /// The Swift value of a `s`, `o` or `g` (also through a variant).
    public var stringValue: String? {
        switch self {
        case .string(let s), .signature(let s): s
        case .objectPath(let p): p.rawValue
        case .variant(let v): v.stringValue
        default: nil
        }
    }
    /// The value of a `b` (also through a variant).
    public var boolValue: Bool? {
        switch self {
        case .boolean(let b): b
        case .variant(let v): v.boolValue
        default: nil
        }
    }
    /// Any unsigned or non-negative integer as UInt64 (also through a variant).
    public var uint64Value: UInt64? {
        switch self {
        case .byte(let v): UInt64(v)
        case .uint16(let v): UInt64(v)
        case .uint32(let v): UInt64(v)
        case .uint64(let v): v
        case .int16(let v): v >= 0 ? UInt64(v) : nil
        case .int32(let v): v >= 0 ? UInt64(v) : nil
        case .int64(let v): v >= 0 ? UInt64(v) : nil
        case .variant(let v): v.uint64Value
        default: nil
        }
    }
    /// Any integer as Int64 (also through a variant).
    public var int64Value: Int64? {
        switch self {
        case .int16(let v): Int64(v)
        case .int32(let v): Int64(v)
        case .int64(let v): v
        case .variant(let v): v.int64Value
        default: uint64Value.flatMap { $0 <= UInt64(Int64.max) ? Int64($0) : nil }
        }
    }
    /// The value of a `d` (also through a variant).
    public var doubleValue: Double? {
        switch self {
        case .double(let d): d
        case .variant(let v): v.doubleValue
        default: nil
        }
    }
    /// The elements of an array (also through a variant).
    public var arrayValue: [BusValue]? {
        switch self {
        case .array(_, let vs): vs
        case .variant(let v): v.arrayValue
        default: nil
        }
    }
    /// The members of a struct (also through a variant).
    public var structureValue: [BusValue]? {
        switch self {
        case .structure(let vs): vs
        case .variant(let v): v.structureValue
        default: nil
        }
    }
    /// The bytes of an `ay` (also through a variant).
    public var bytesValue: [UInt8]? {
        switch self {
        case .array("y", let vs):
            var bytes: [UInt8] = []
            bytes.reserveCapacity(vs.count)
            for v in vs {
                guard case .byte(let b) = v else { return nil }
                bytes.append(b)
            }
            return bytes
        case .variant(let v): return v.bytesValue
        default: return nil
        }
    }
    /// The entries of a dictionary in the order they came (also through a variant).
    public var dictionaryEntries: [DictEntry]? {
        switch self {
        case .dictionary(_, _, let es): es
        case .variant(let v): v.dictionaryEntries
        default: nil
        }
    }
    /// A dictionary with string keys, as a Swift dictionary (`a{s…}`; also through a variant).
    public var dictionaryValue: [String: BusValue]? {
        switch self {
        case .dictionary(_, _, let es):
            var d: [String: BusValue] = [:]
            for e in es {
                guard let k = e.key.stringValue else { return nil }
                d[k] = e.value
            }
            return d
        case .variant(let v): return v.dictionaryValue
        default: return nil
        }
    }
    /// The fd of an `h`.
    public var fileDescriptor: FileDescriptor? {
        if case .unixFD(let fd) = self { return fd }
        if case .variant(let v) = self { return v.fileDescriptor }
        return nil
    }
}

// MARK: - Signatures

/// Splitting D-Bus signatures into single complete types.
public enum Signature {
    /// The complete types of `signature`, in order: `sa{sv}(ii)` → `s`, `a{sv}`, `(ii)`.
    /// Throws `BusError.invalidArgs` for a malformed signature.
    public static func split(_ signature: String) throws(BusError) -> [String] {
        var result: [String] = []
        let chars = Array(signature.utf8)
        var i = 0
        while i < chars.count {
            let end = try completeTypeEnd(chars, i)
            result.append(String(decoding: chars[i..<end], as: UTF8.self))
            i = end
        }
        return result
    }

    private static func completeTypeEnd(_ c: [UInt8], _ start: Int) throws(BusError) -> Int {
        guard start < c.count else { throw BusError.invalidArgs("truncated signature") }
        switch c[start] {
        case UInt8(ascii: "a"):
            return try completeTypeEnd(c, start + 1)
        case UInt8(ascii: "("), UInt8(ascii: "{"):
            let close = c[start] == UInt8(ascii: "(") ? UInt8(ascii: ")") : UInt8(ascii: "}")
            var i = start + 1
            while i < c.count && c[i] != close { i = try completeTypeEnd(c, i) }
            guard i < c.count else { throw BusError.invalidArgs("unbalanced signature") }
            return i + 1
        case let ch where "ybnqiuxtdsoghv".utf8.contains(ch):
            return start + 1
        default:
            throw BusError.invalidArgs("bad signature character")
        }
    }
}

// MARK: - Marshalling

/// What decoding one message may build: at most `values` values (every element, key, member
/// and container counts one) and `bytes` bytes of strings. sd-bus caps a message at 128 MiB
/// (BUS_MESSAGE_SIZE_MAX, as dbus-daemon's max_message_size on the system bus) and an array at
/// 64 MiB (BUS_ARRAY_MAX_SIZE), but counts no elements, and decoding turns each wire element
/// into a heap value several times its size: a million one-letter strings (8 MiB on the wire)
/// became tens of MiB of Swift values. No method of the three APIs takes more than a few dozen
/// values, so a method call's arguments are capped far below that and a caller going beyond
/// gets `org.freedesktop.DBus.Error.LimitsExceeded`.
public struct DecodeBudget: Sendable {
    /// Values that may still be decoded.
    public private(set) var values: Int
    /// String bytes that may still be decoded.
    public private(set) var bytes: Int
    /// What the budget was made with, to tell how much was spent.
    private let initialValues: Int
    private let initialBytes: Int

    /// A budget of `values` values and `bytes` string bytes.
    public init(values: Int, bytes: Int) {
        self.values = values
        self.bytes = bytes
        initialValues = values
        initialBytes = bytes
    }

    /// The arguments of one incoming method call: 65,536 values and 4 MiB of strings, about
    /// 8 MiB of decoded values at most.
    public static var methodCall: DecodeBudget { DecodeBudget(values: 1 << 16, bytes: 4 << 20) }
    /// Replies to berthd's own calls (the bus driver, polkit): trusted peers, no cap.
    public static var unlimited: DecodeBudget { DecodeBudget(values: .max, bytes: .max) }

    /// Whether what was decoded is large enough that the memory it frees is worth handing back
    /// to the kernel afterwards (`releaseFreeMemory`): a tenth of the method-call budget.
    public var spentALot: Bool { initialValues - values > 1 << 12 || initialBytes - bytes > 256 << 10 }

    mutating func spend(values v: Int = 1, bytes b: Int = 0) throws(BusError) {
        guard values >= v, bytes >= b else {
            throw BusError.limitsExceeded("the message holds more than \(initialValues) values or \(initialBytes) bytes of strings")
        }
        values -= v
        bytes -= b
    }
}

/// Reads and appends `BusValue`s on an `sd_bus_message`; used only on the bus's thread.
enum Marshal {
    /// Reads the remaining arguments of `m` according to its signature, within `budget`.
    static func readAll(_ m: OpaquePointer, budget: inout DecodeBudget) throws(BusError) -> [BusValue] {
        guard let sig = sd_bus_message_get_signature(m, 1) else { return [] }
        var values: [BusValue] = []
        for t in try Signature.split(String(cString: sig)) { values.append(try read(m, t, &budget)) }
        return values
    }

    /// Reads the remaining arguments of a trusted message (a reply to berthd's own call).
    static func readAll(_ m: OpaquePointer) throws(BusError) -> [BusValue] {
        var budget = DecodeBudget.unlimited
        return try readAll(m, budget: &budget)
    }

    /// Reads one value of complete type `type`, spending `budget` on it as it goes: an array
    /// beyond the budget fails at the first element too many, so no more is ever built.
    static func read(_ m: OpaquePointer, _ type: String, _ budget: inout DecodeBudget) throws(BusError) -> BusValue {
        try budget.spend()
        let u = Array(type.utf8)
        guard let first = u.first else { throw BusError.invalidArgs("empty type") }
        func basic<T: BitwiseCopyable>(_ initial: T) throws(BusError) -> T {
            var v = initial
            let r = sd_bus_message_read_basic(m, CChar(bitPattern: first), &v)
            if r <= 0 { throw BusError.invalidArgs("cannot read '\(type)': \(r < 0 ? Errno(-r).description : "missing")") }
            return v
        }
        func text(_ budget: inout DecodeBudget) throws(BusError) -> String {
            var p: UnsafePointer<CChar>? = nil
            let r = sd_bus_message_read_basic(m, CChar(bitPattern: first), &p)
            guard r > 0, let p else { throw BusError.invalidArgs("cannot read '\(type)'") }
            try budget.spend(values: 0, bytes: strlen(p))
            return String(cString: p)
        }
        switch first {
        case UInt8(ascii: "y"): return .byte(try basic(UInt8(0)))
        case UInt8(ascii: "b"): return .boolean(try basic(Int32(0)) != 0)
        case UInt8(ascii: "n"): return .int16(try basic(Int16(0)))
        case UInt8(ascii: "q"): return .uint16(try basic(UInt16(0)))
        case UInt8(ascii: "i"): return .int32(try basic(Int32(0)))
        case UInt8(ascii: "u"): return .uint32(try basic(UInt32(0)))
        case UInt8(ascii: "x"): return .int64(try basic(Int64(0)))
        case UInt8(ascii: "t"): return .uint64(try basic(UInt64(0)))
        case UInt8(ascii: "d"): return .double(try basic(Double(0)))
        case UInt8(ascii: "s"): return .string(try text(&budget))
        case UInt8(ascii: "o"): return .objectPath(ObjectPath(try text(&budget)))
        case UInt8(ascii: "g"): return .signature(try text(&budget))
        case UInt8(ascii: "h"):
            let fd = try basic(Int32(-1))
            // The message owns `fd`; keep our own copy past the message's life.
            let copy = fcntl(fd, F_DUPFD_CLOEXEC, 3)
            if copy < 0 { throw BusError(errno: .current, "cannot duplicate the passed file descriptor") }
            return .unixFD(FileDescriptor(owning: copy))
        case UInt8(ascii: "v"):
            var t: CChar = 0
            var contents: UnsafePointer<CChar>? = nil
            guard sd_bus_message_peek_type(m, &t, &contents) > 0, let contents else {
                throw BusError.invalidArgs("cannot read variant")
            }
            let inner = String(cString: contents)
            try enter(m, "v", inner)
            let v = try read(m, inner, &budget)
            try exit(m)
            return .variant(v)
        case UInt8(ascii: "("):
            let inner = String(type.dropFirst().dropLast())
            try enter(m, "r", inner)
            var members: [BusValue] = []
            for t in try Signature.split(inner) { members.append(try read(m, t, &budget)) }
            try exit(m)
            return .structure(members)
        case UInt8(ascii: "a"):
            let element = String(type.dropFirst())
            try enter(m, "a", element)
            if element.hasPrefix("{") {
                let kv = try Signature.split(String(element.dropFirst().dropLast()))
                guard kv.count == 2 else { throw BusError.invalidArgs("bad dict entry \(element)") }
                var entries: [BusValue.DictEntry] = []
                while true {
                    let r = sd_bus_message_enter_container(m, CChar(UInt8(ascii: "e")), kv[0] + kv[1])
                    if r == 0 { break }
                    if r < 0 { throw BusError.invalidArgs("cannot read dict entry: \(Errno(-r))") }
                    let k = try read(m, kv[0], &budget)
                    let v = try read(m, kv[1], &budget)
                    try exit(m)
                    entries.append(.init(k, v))
                }
                try exit(m)
                return .dictionary(key: kv[0], value: kv[1], entries)
            }
            var items: [BusValue] = []
            while true {
                let r = sd_bus_message_at_end(m, 0)
                if r < 0 { throw BusError.invalidArgs("cannot read array: \(Errno(-r))") }
                if r > 0 { break }
                items.append(try read(m, element, &budget))
            }
            try exit(m)
            return .array(element: element, items)
        default:
            throw BusError.invalidArgs("unsupported type '\(type)'")
        }
    }

    private static func enter(_ m: OpaquePointer, _ kind: Character, _ contents: String) throws(BusError) {
        let r = sd_bus_message_enter_container(m, CChar(kind.asciiValue ?? 0), contents)
        if r <= 0 { throw BusError.invalidArgs("cannot enter container \(kind)\(contents)") }
    }

    private static func exit(_ m: OpaquePointer) throws(BusError) {
        let r = sd_bus_message_exit_container(m)
        if r < 0 { throw BusError.invalidArgs("cannot leave container: \(Errno(-r))") }
    }

    /// Appends `values` in order.
    static func append(_ m: OpaquePointer, _ values: [BusValue]) throws(BusError) {
        for v in values { try append(m, v) }
    }

    /// Appends one value.
    static func append(_ m: OpaquePointer, _ value: BusValue) throws(BusError) {
        try append(m, value, structContents: nil)
    }

    /// Appends one value; `structContents` is a struct's member signature where the caller
    /// knows it (from an array's element type), so a struct in a long array does not work its
    /// signature out again for every element. sd-bus checks every value against the
    /// container's declared signature itself and fails the append (-ENXIO) on a mismatch.
    private static func append(_ m: OpaquePointer, _ value: BusValue, structContents: String?) throws(BusError) {
        func check(_ r: Int32) throws(BusError) {
            if r < 0 { throw BusError(errno: Errno(-r), "cannot append \(value.signature)") }
        }
        func basic<T: BitwiseCopyable>(_ type: UInt8, _ v: T) throws(BusError) {
            var v = v
            try check(sd_bus_message_append_basic(m, CChar(type), &v))
        }
        func text(_ type: UInt8, _ s: String) throws(BusError) {
            try check(s.withCString { sd_bus_message_append_basic(m, CChar(type), $0) })
        }
        switch value {
        case .byte(let v): try basic(UInt8(ascii: "y"), v)
        case .boolean(let v): try basic(UInt8(ascii: "b"), Int32(v ? 1 : 0))
        case .int16(let v): try basic(UInt8(ascii: "n"), v)
        case .uint16(let v): try basic(UInt8(ascii: "q"), v)
        case .int32(let v): try basic(UInt8(ascii: "i"), v)
        case .uint32(let v): try basic(UInt8(ascii: "u"), v)
        case .int64(let v): try basic(UInt8(ascii: "x"), v)
        case .uint64(let v): try basic(UInt8(ascii: "t"), v)
        case .double(let v): try basic(UInt8(ascii: "d"), v)
        case .string(let s): try text(UInt8(ascii: "s"), s)
        case .objectPath(let p): try text(UInt8(ascii: "o"), p.rawValue)
        case .signature(let s): try text(UInt8(ascii: "g"), s)
        case .unixFD(let fd): try basic(UInt8(ascii: "h"), fd.rawValue)  // sd-bus duplicates it
        case .variant(let inner):
            try check(sd_bus_message_open_container(m, CChar(UInt8(ascii: "v")), inner.signature))
            try append(m, inner, structContents: nil)
            try check(sd_bus_message_close_container(m))
        case .structure(let members):
            // The contents' signature: "(…)" without its parentheses.
            let contents = structContents ?? members.map(\.signature).joined()
            try check(sd_bus_message_open_container(m, CChar(UInt8(ascii: "r")), contents))
            for member in members { try append(m, member, structContents: nil) }
            try check(sd_bus_message_close_container(m))
        case .array(let element, let items):
            try check(sd_bus_message_open_container(m, CChar(UInt8(ascii: "a")), element))
            let contents = element.hasPrefix("(") ? String(element.dropFirst().dropLast()) : nil
            for item in items { try append(m, item, structContents: contents) }
            try check(sd_bus_message_close_container(m))
        case .dictionary(let key, let valueType, let entries):
            try check(sd_bus_message_open_container(m, CChar(UInt8(ascii: "a")), "{" + key + valueType + "}"))
            for e in entries {
                try check(sd_bus_message_open_container(m, CChar(UInt8(ascii: "e")), key + valueType))
                try append(m, e.key, structContents: nil)
                try append(m, e.value, structContents: nil)
                try check(sd_bus_message_close_container(m))
            }
            try check(sd_bus_message_close_container(m))
        }
    }
}
