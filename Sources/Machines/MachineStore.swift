import Glibc
import Linux

/// The registry on disk, one file per machine in `ROOT/run/berth/machines`, so a restarted berthd
/// knows the machines that still run. Written atomically (a temp file renamed over); every value
/// hex-encoded, so a root directory with any byte in it cannot break the format.
public struct MachineStore: Sendable {
    public let directory: String

    public init(root: String) { directory = joinPath(root, "run/berth/machines") }

    /// Writes `machine`'s file.
    public func save(_ machine: Machine) throws(SystemCallError) {
        try makeDirectories(directory, mode: 0o700)
        let fields: [(String, String)] = [
            ("NAME", machine.name), ("ID", hex(machine.id)), ("SERVICE", machine.service), ("CLASS", machine.class),
            ("LEADER", "\(machine.leader)"), ("LEADER_START", "\(machine.leaderStartTime)"), ("ROOT", machine.rootDirectory),
            ("NETIF", machine.networkInterfaces.map(String.init).joined(separator: " ")), ("UNIT", machine.unit),
            ("CGROUP", machine.cgroup), ("TIMESTAMP", "\(machine.timestamp)"), ("TIMESTAMP_MONOTONIC", "\(machine.timestampMonotonic)"),
            ("SSH_ADDRESS", machine.sshAddress), ("SSH_PRIVATE_KEY_PATH", machine.sshPrivateKeyPath),
        ]
        let text = fields.map { "\($0.0)=\(hex(Array($0.1.utf8)))\n" }.joined()
        let final = joinPath(directory, machine.name)
        let temp = joinPath(directory, ".#" + machine.name)
        let fd = try FileDescriptor.open(temp, flags: O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode: 0o600)
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { buffer in Result { () throws(SystemCallError) in try fd.writeAll(buffer) } }
        fd.close()
        try written.get()
        try sys("renameat", final) { renameat(AT_FDCWD, temp, AT_FDCWD, final) }
    }

    /// Removes `name`'s file, if there is one.
    public func remove(_ name: String) {
        _ = unlink(joinPath(directory, name))
    }

    /// Every machine on file; files that do not parse are removed.
    public func loadAll() -> [Machine] {
        var machines: [Machine] = []
        for file in (try? directoryEntries(directory)) ?? [] {
            let path = joinPath(directory, file)
            if file.hasPrefix(".#") { _ = unlink(path); continue }
            guard let text = readSmall(path), let machine = Self.parse(text), machine.name == file else {
                _ = unlink(path)
                continue
            }
            machines.append(machine)
        }
        return machines
    }

    package static func parse(_ text: String) -> Machine? {
        var f: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "="), let bytes = unhex(line[line.index(after: eq)...]) else { return nil }
            f[String(line[..<eq])] = String(decoding: bytes, as: UTF8.self)
        }
        guard let name = f["NAME"], let idHex = f["ID"], let id = unhex(Substring(idHex)), let leader = f["LEADER"].flatMap({ pid_t($0) }),
              let start = f["LEADER_START"].flatMap({ UInt64($0) }), let timestamp = f["TIMESTAMP"].flatMap({ UInt64($0) }),
              let monotonic = f["TIMESTAMP_MONOTONIC"].flatMap({ UInt64($0) }) else { return nil }
        return Machine(name: name, id: id, service: f["SERVICE"] ?? "", class: f["CLASS"] ?? "container", leader: leader,
                       leaderStartTime: start, rootDirectory: f["ROOT"] ?? "",
                       networkInterfaces: (f["NETIF"] ?? "").split(separator: " ").compactMap { Int32($0) },
                       unit: f["UNIT"] ?? "", cgroup: f["CGROUP"] ?? "", timestamp: timestamp, timestampMonotonic: monotonic,
                       sshAddress: f["SSH_ADDRESS"] ?? "", sshPrivateKeyPath: f["SSH_PRIVATE_KEY_PATH"] ?? "")
    }
}

private func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
    return String(decoding: out, as: UTF8.self)
}

private func unhex(_ text: Substring) -> [UInt8]? {
    let chars = Array(text.utf8)
    guard chars.count % 2 == 0 else { return nil }
    func value(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        default: nil
        }
    }
    var out: [UInt8] = []
    var i = 0
    while i < chars.count {
        guard let hi = value(chars[i]), let lo = value(chars[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
        i += 2
    }
    return out
}
