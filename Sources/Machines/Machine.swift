import Glibc
import Linux

/// One registered machine (a container or VM), as org.freedesktop.machine1.Machine shows it.
public struct Machine: Sendable, Equatable {
    /// The machine name, a hostname (`MachineName.validate`).
    public var name: String
    /// The machine's 128-bit ID, 16 bytes, or empty when the registrar gave none.
    public var id: [UInt8]
    /// Who registered it (`systemd-nspawn`).
    public var service: String
    /// `container` or `vm`.
    public var `class`: String
    /// The leader's pid, on the host.
    public var leader: pid_t
    /// The leader's start time (field 22 of /proc/PID/stat): with the pid, identifies the process
    /// across a restart of berthd, where a bare pid could have been reused.
    public var leaderStartTime: UInt64
    /// The container's root directory, or "".
    public var rootDirectory: String
    /// Host network interfaces towards the machine.
    public var networkInterfaces: [Int32]
    /// The unit holding it: the scope berthd made, or the registrar's own unit.
    public var unit: String
    /// The control-group path (below each hierarchy's root) berthd made for it; "" for a
    /// registered machine, whose processes stay where the registrar put them.
    public var cgroup: String
    /// Registration time, µs since the epoch (CLOCK_REALTIME) and since boot (CLOCK_MONOTONIC).
    public var timestamp: UInt64
    public var timestampMonotonic: UInt64
    /// Where to reach the machine over SSH and the key to use (RegisterMachineEx's `SSHAddress`
    /// and `SSHPrivateKeyPath`), "" when not given.
    public var sshAddress: String
    public var sshPrivateKeyPath: String

    public init(name: String, id: [UInt8], service: String, class: String, leader: pid_t, leaderStartTime: UInt64,
                rootDirectory: String, networkInterfaces: [Int32], unit: String, cgroup: String,
                timestamp: UInt64, timestampMonotonic: UInt64, sshAddress: String = "", sshPrivateKeyPath: String = "") {
        self.name = name
        self.id = id
        self.service = service
        self.class = `class`
        self.leader = leader
        self.leaderStartTime = leaderStartTime
        self.rootDirectory = rootDirectory
        self.networkInterfaces = networkInterfaces
        self.unit = unit
        self.cgroup = cgroup
        self.timestamp = timestamp
        self.timestampMonotonic = timestampMonotonic
        self.sshAddress = sshAddress
        self.sshPrivateKeyPath = sshPrivateKeyPath
    }
}

/// machine1's name rule for machines: a hostname as systemd checks it (hostname_is_valid): 7-bit
/// letters, digits, `-` and `.`, at most 64 bytes, no leading or trailing dot, no `..`.
public enum MachineName {
    public static func isValid(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= 64, bytes.first != UInt8(ascii: "."), bytes.last != UInt8(ascii: ".") else { return false }
        var previousDot = false
        for c in bytes {
            let dot = c == UInt8(ascii: ".")
            if dot && previousDot { return false }
            previousDot = dot
            let ok = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || c == UInt8(ascii: "-") || dot
            if !ok { return false }
        }
        return true
    }

    /// The scope unit systemd names for machine `name`: `machine-NAME.scope`, NAME escaped as unit
    /// names are (`-` and anything outside letters, digits, `:`, `_` and `.` as `\xHH`).
    public static func scopeUnit(_ name: String) -> String {
        var escaped = ""
        for (i, c) in name.utf8.enumerated() {
            let plain = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || c == UInt8(ascii: ":") || c == UInt8(ascii: "_")
                || (c == UInt8(ascii: ".") && i > 0)
            escaped += plain ? String(UnicodeScalar(c)) : "\\x" + String(c, radix: 16, uppercase: false).leftPadded(to: 2)
        }
        return "machine-\(escaped).scope"
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
