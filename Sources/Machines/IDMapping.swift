import Glibc
import Linux

/// A user namespace's user or group mapping, as /proc/PID/uid_map and gid_map show it: lines of
/// `inside outside count`, read from the host (berthd's namespace).
public struct IDMapping: Sendable, Equatable {
    /// One line of the map: ids `inside ..< inside+count` in the namespace are `outside ..<
    /// outside+count` on the host.
    public struct Range: Sendable, Equatable {
        public var inside: UInt32
        public var outside: UInt32
        public var count: UInt32

        public init(inside: UInt32, outside: UInt32, count: UInt32) {
            self.inside = inside
            self.outside = outside
            self.count = count
        }
    }

    /// The lines, in the file's order.
    public var ranges: [Range]

    public init(ranges: [Range]) { self.ranges = ranges }

    /// Parses the text of a uid_map or gid_map; nil if a line is not three numbers.
    public init?(parsing text: String) {
        var ranges: [Range] = []
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count == 3, let inside = UInt32(f[0]), let outside = UInt32(f[1]), let count = UInt32(f[2]) else { return nil }
            ranges.append(Range(inside: inside, outside: outside, count: count))
        }
        self.ranges = ranges
    }

    /// The user (`uid_map`) or group (`gid_map`) mapping of process `pid`'s user namespace; nil
    /// if it cannot be read (the process is gone).
    public static func of(process pid: pid_t, groups: Bool) -> IDMapping? {
        readSmall("/proc/\(pid)/\(groups ? "gid_map" : "uid_map")").flatMap { IDMapping(parsing: $0) }
    }

    /// True for the host's own namespace (nothing shifted: every line maps an id to itself).
    public var isIdentity: Bool { ranges.allSatisfy { $0.inside == $0.outside } }

    /// The host id of namespace id `inside`, as machined translates it (machine_translate_uid):
    /// lines that map onto host id 0 onwards are how a namespace without shift looks and are
    /// skipped; nil where no line covers it, or the result is not a valid id.
    public func outside(_ inside: UInt32) -> UInt32? {
        for r in ranges where r.outside != 0 && inside >= r.inside && UInt64(inside) < UInt64(r.inside) + UInt64(r.count) {
            let converted = UInt64(inside - r.inside) + UInt64(r.outside)
            return Self.isValid(converted) ? UInt32(converted) : nil
        }
        return nil
    }

    /// The namespace id of host id `outside` (machined's machine_owns_uid), with the same rules.
    public func inside(_ outside: UInt32) -> UInt32? {
        for r in ranges where r.outside != 0 && outside >= r.outside && UInt64(outside) < UInt64(r.outside) + UInt64(r.count) {
            let converted = UInt64(outside - r.outside) + UInt64(r.inside)
            return Self.isValid(converted) ? UInt32(converted) : nil
        }
        return nil
    }

    /// systemd's uid_is_valid: not (uid_t) -1 and not the 16-bit -1 (65535).
    public static func isValid(_ id: UInt64) -> Bool { id != 0xFFFF_FFFF && id != 0xFFFF && id <= UInt64(UInt32.max) }

    /// The overflow id ("nobody") a copy gives what has no counterpart on the other side, as the
    /// kernel shows unmapped ids.
    public static let overflowID: UInt32 = 65534
}
