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

    /// The unescaped last component if `self` is `prefix/<one escaped component>`
    /// (sd_bus_path_decode(3)), else nil.
    public func unescapedName(under prefix: ObjectPath) -> String? {
        var out: UnsafeMutablePointer<CChar>? = nil
        guard sd_bus_path_decode(rawValue, prefix.rawValue, &out) > 0, let out else { return nil }
        defer { free(out) }
        return String(cString: out)
    }

    /// Whether `self` is `prefix` or below it.
    public func isDescendant(of prefix: ObjectPath) -> Bool {
        rawValue == prefix.rawValue || rawValue.hasPrefix(prefix.rawValue == "/" ? "/" : prefix.rawValue + "/")
    }
}
