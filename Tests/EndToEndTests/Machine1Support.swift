import Foundation
import Glibc
import Testing
import TestSupport

/// berthd and systemd-machined 252 side by side, each on its own private bus, over one pool folder
/// on a loopback filesystem: berthd sees it at `<root>/var/lib/machines` (a bind mount), machined
/// at /var/lib/machines in its own mount namespace.
final class Machine1Pair: @unchecked Sendable {
    let fs: LoopbackFilesystem
    let berthBus: PrivateDBusDaemon
    let referenceBus: PrivateDBusDaemon
    let berthd: BerthdProcess
    let reference: ReferenceDaemon?
    /// The pool folder as berthd reports it.
    let berthPool: String
    private var bound = false

    /// The pool folder itself (the filesystem's mount point).
    var pool: String { fs.mountPoint }

    init(_ kind: LoopbackFilesystem.Kind, size: UInt64 = 700 << 20, withReference: Bool = true) throws {
        fs = try LoopbackFilesystem(kind, size: size)
        berthBus = try PrivateDBusDaemon()
        referenceBus = try PrivateDBusDaemon()
        berthd = try BerthdProcess(bus: berthBus, services: ["machine1"])
        berthPool = berthd.root + "/var/lib/machines"
        try FileManager.default.createDirectory(atPath: berthPool, withIntermediateDirectories: true)
        try run(["mount", "--bind", fs.mountPoint, berthPool], check: true)
        bound = true
        // machinectl refuses to run without it.
        try FileManager.default.createDirectory(atPath: "/run/systemd/system", withIntermediateDirectories: true)
        reference = withReference ? try ReferenceDaemon(.machined, busAddress: referenceBus.address, poolPath: fs.mountPoint) : nil
    }

    func stop() {
        reference?.stop()
        _ = berthd.terminate()
        if bound {
            if (try? run(["umount", berthPool]))?.succeeded != true { _ = try? run(["umount", "-l", berthPool]) }
            bound = false
        }
        berthd.stop()
        berthBus.stop()
        referenceBus.stop()
        fs.remove()
    }

    deinit { stop() }

    /// The two buses: berthd's first.
    var addresses: [String] { [berthBus.address, referenceBus.address] }

    /// `busctl` against the bus at `address`.
    func busctl(_ address: String, _ args: [String]) throws -> CommandResult {
        try run(["busctl", "--address=\(address)"] + args)
    }

    /// A Manager method with busctl, JSON reply.
    func managerJSON(_ address: String, _ member: String, _ signatureAndArgs: [String] = []) throws -> Any {
        let r = try run(["busctl", "--address=\(address)", "--json=short", "call", "org.freedesktop.machine1",
                         "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager", member] + signatureAndArgs, check: true)
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8))
    }

    /// A Manager method with gdbus, whose error output names the D-Bus error: `(status, stdout or
    /// "GDBus.Error:<name>: <message>")`.
    func gdbus(_ address: String, object: String = "/org/freedesktop/machine1", _ method: String, _ args: [String]) throws -> String {
        let r = try run(["gdbus", "call", "--address", address, "--dest", "org.freedesktop.machine1", "--object-path", object,
                         "--method", method] + args)
        if r.succeeded { return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
        // "Error: GDBus.Error:org.freedesktop.machine1.NoSuchImage: No image 'nope' known\n(According to …)"
        return r.stderr.split(separator: "\n").first.map(String.init) ?? r.stderr
    }

    /// machinectl against the bus at `address`.
    func machinectl(_ address: String, _ args: [String]) throws -> CommandResult {
        try run(["machinectl", "--no-pager"] + args, environment: ["DBUS_SYSTEM_BUS_ADDRESS": address, "SYSTEMD_COLORS": "0"])
    }
}

/// Fixture images.
enum PoolFixture {
    /// A directory image with os-release, hostname, machine-id and machine-info.
    static func directoryImage(_ path: String, hostname: String = "dirhost") throws {
        try FileManager.default.createDirectory(atPath: path + "/etc", withIntermediateDirectories: true)
        try "ID=berthtest\nNAME=\"Berth Test\"\nVERSION_ID=1\n".write(toFile: path + "/etc/os-release", atomically: false, encoding: .utf8)
        try "\(hostname)\n".write(toFile: path + "/etc/hostname", atomically: false, encoding: .utf8)
        try "0123456789abcdef0123456789abcdef\n".write(toFile: path + "/etc/machine-id", atomically: false, encoding: .utf8)
        try "PRETTY_HOSTNAME=\"Dir Host\"\nCHASSIS=vm\n".write(toFile: path + "/etc/machine-info", atomically: false, encoding: .utf8)
        try String(repeating: "x", count: 20_000).write(toFile: path + "/data", atomically: false, encoding: .utf8)
    }

    /// A GPT disk with one ext4 root partition (DPS root type) holding os-release and hostname.
    static func rawImage(_ path: String, scratch: String) throws {
        let tree = scratch + "/rawtree"
        try FileManager.default.createDirectory(atPath: tree + "/etc", withIntermediateDirectories: true)
        try "ID=rawtest\nNAME=\"Raw Test\"\n".write(toFile: tree + "/etc/os-release", atomically: false, encoding: .utf8)
        try "rawhost\n".write(toFile: tree + "/etc/hostname", atomically: false, encoding: .utf8)
        let part = scratch + "/part.img"
        try run(["mkfs.ext4", "-q", "-F", "-d", tree, part, "16M"], check: true)
        try run(["truncate", "-s", "20M", path], check: true)
        try run(["sfdisk", "-q", path], input: Data("label: gpt\nstart=2048, size=32768, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709\n".utf8),
                check: true)
        try run(["dd", "if=\(part)", "of=\(path)", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"], check: true)
    }

    /// The standard pool: dirimg, emptydir, rawimg (GPT), emptyraw (no partitions), .hidden, ..x,
    /// and on btrfs subimg (a subvolume).
    static func populate(_ pool: String, kind: LoopbackFilesystem.Kind) throws {
        try directoryImage(pool + "/dirimg")
        try FileManager.default.createDirectory(atPath: pool + "/emptydir", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: pool + "/.hidden", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: pool + "/..x", withIntermediateDirectories: true)
        let scratch = try TemporaryDirectory(prefix: "berth-rawfixture")
        defer { scratch.remove() }
        try rawImage(pool + "/rawimg.raw", scratch: scratch.path)
        try run(["truncate", "-s", "8M", pool + "/emptyraw.raw"], check: true)
        if kind == .btrfs {
            try run(["btrfs", "-q", "subvolume", "create", pool + "/subimg"], check: true)
            try directoryImage(pool + "/subimg", hostname: "subhost")
        }
    }
}

/// ListImages rows, normalised where Berth documents a difference: trees' mtime (machined says 0,
/// Berth the tree's) and usage (machined: unknown; Berth: measured in the background), and the
/// pool path prefix inside object paths never differs.
func normalisedListing(_ json: Any) throws -> [String] {
    let root = try #require(json as? [String: Any])
    let data = try #require(root["data"] as? [Any])
    let rows = try #require(data.first as? [[Any]])
    return rows.map { row in
        let type = row[1] as? String ?? ""
        let tree = type == "directory" || type == "subvolume"
        return [row[0], row[1], row[2], row[3], tree ? "-" : row[4], tree ? "-" : row[5], row[6]]
            .map { "\($0)" }.joined(separator: " ")
    }.sorted()
}

/// `machinectl show-image` output as a dictionary, pool prefix replaced, tree mtime/usage dropped.
func normalisedShowImage(_ text: String, pool: String) -> [String: String] {
    var d: [String: String] = [:]
    for line in text.split(separator: "\n") {
        guard let eq = line.firstIndex(of: "=") else { continue }
        d[String(line[..<eq])] = String(line[line.index(after: eq)...]).replacingOccurrences(of: pool, with: "/var/lib/machines")
    }
    if d["Type"] == "directory" || d["Type"] == "subvolume" {
        for k in ["ModificationTimestamp", "Usage", "UsageExclusive"] { d[k] = nil }
    }
    return d
}
