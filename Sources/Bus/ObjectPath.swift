import CSystemd
import Glibc

/// A D-Bus object path such as `/org/freedesktop/machine1/image/_2ehost`.
public struct ObjectPath: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    /// The path as text.
    public var rawValue: String
    /// The path `rawValue` (not checked: sd-bus rejects invalid paths when they are used).
    public init(rawValue: String) { self.rawValue = rawValue }
    /// The path `rawValue`.
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }
    public var description: String { rawValue }
    public static func < (a: ObjectPath, b: ObjectPath) -> Bool { a.rawValue < b.rawValue }

    /// `self/<escaped name>` as sd_bus_path_encode(3) builds it: `.host` → `_2ehost`, `""` → `_`.
    public func appending(escaped name: String) -> ObjectPath {
        // Letters and digits stay as they are: the common case needs no C call.
        if !name.isEmpty, name.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) }) {
            return ObjectPath(rawValue == "/" ? "/" + name : rawValue + "/" + name)
        }
        var out: UnsafeMutablePointer<CChar>? = nil
        guard sd_bus_path_encode(rawValue, name, &out) >= 0, let out else {
            // Only fails on out-of-memory or an invalid prefix, both programming errors here.
            preconditionFailure("sd_bus_path_encode(\(rawValue), \(name)) failed")
        }
        defer { free(out) }
        return ObjectPath(String(cString: out))
    }

    /// The unescaped last component if `self` is `prefix/<one escaped component>`, decoded as
    /// sd_bus_path_decode(3) decodes it (`_XX` is the byte 0xXX, any other `_` stands for itself,
    /// `_` alone is ""), else nil.
    ///
    /// Unlike sd_bus_path_decode, whose C string ends at the first NUL, a component that decodes
    /// to a NUL byte or to bytes that are not UTF-8 is nil: no name holds those, so
    /// `image/base_00junk` is not another path of `image/base` (systemd 252 takes it for `base`).
    /// A non-canonical escape that decodes exactly (`_62ase` for `base`) is accepted, as sd-bus
    /// and systemd 252 accept it. No allocation for a plain name.
    public func unescapedName(under prefix: ObjectPath) -> String? {
        let path = rawValue.utf8
        let head = prefix.rawValue.utf8
        guard path.starts(with: head) else { return nil }
        var rest = path.dropFirst(head.count)
        if prefix.rawValue != "/" {
            guard rest.first == UInt8(ascii: "/") else { return nil }
            rest = rest.dropFirst()
        }
        guard !rest.isEmpty else { return nil }
        if !rest.contains(UInt8(ascii: "_")) {
            // Only letters and digits are left in a valid path: the name as it is.
            guard rest.allSatisfy(Self.isPlain) else { return nil }
            return String(decoding: rest, as: UTF8.self)
        }
        if rest.count == 1 { return "" }
        let escaped = Array(rest)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(escaped.count)
        var i = 0
        while i < escaped.count {
            let c = escaped[i]
            guard c == UInt8(ascii: "_") || Self.isPlain(c) else { return nil }
            if c == UInt8(ascii: "_"), i + 2 < escaped.count, let hi = Self.hexValue(escaped[i + 1]), let lo = Self.hexValue(escaped[i + 2]) {
                bytes.append(hi << 4 | lo)
                i += 3
            } else {
                bytes.append(c)
                i += 1
            }
        }
        guard !bytes.contains(0) else { return nil }
        return String(validating: bytes, as: UTF8.self)
    }

    /// A letter or digit: what an object path holds besides `/` and `_`.
    private static func isPlain(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7a)
    }

    /// The value of a hex digit (either case), as systemd's unhexchar.
    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        case 0x41...0x46: c - 0x41 + 10
        default: nil
        }
    }

    /// Whether `self` is `prefix` or below it.
    public func isDescendant(of prefix: ObjectPath) -> Bool {
        rawValue == prefix.rawValue || rawValue.hasPrefix(prefix.rawValue == "/" ? "/" : prefix.rawValue + "/")
    }
}
