import ArgumentParser
import Bus
import Foundation
import Glibc
import Services

// berthctl's machine verbs: machinectl's list, status, show, kill, terminate, shell, login,
// copy-to, copy-from and bind over org.freedesktop.machine1's machine registry. Each sends what
// machinectl 252 sends and prints what it prints where that is useful; images keep their own
// verbs (list-images, image-status), so the plain names are the machines', as in machinectl.

extension Machine1Client {
    /// GetMachine: the object path of machine `name`.
    func machinePath(_ name: String) throws -> ObjectPath {
        guard let raw = try manager(.getMachine, [.string(name)]).first?.stringValue else {
            throw CLIError("GetMachine returned no object path")
        }
        return ObjectPath(raw)
    }

    /// Every property of `interface` on `path` (Properties.GetAll), in the order berthd sent them.
    func properties(_ path: ObjectPath, interface: String) throws -> [(String, BusValue)] {
        do {
            return try client.allProperties(destination: ServiceKind.machine1.busName, path: path, interface: interface)
        } catch {
            throw CLIError(error)
        }
    }

    /// GetMachineOSRelease, nil when it cannot be read (best effort, as machinectl).
    func osRelease(_ name: String) -> [String: String]? {
        (try? manager(.getMachineOSRelease, [.string(name)]))?.first?.dictionaryValue?.compactMapValues(\.stringValue)
    }

    /// GetMachineAddresses as text, nil when berthd cannot tell (best effort, as machinectl).
    func addresses(_ name: String) -> [String]? {
        guard let reply = try? manager(.getMachineAddresses, [.string(name)]) else { return nil }
        return (reply.first?.arrayValue ?? []).compactMap {
            guard let f = $0.structureValue, f.count == 2, let family = f[0].int64Value.map({ Int32(truncatingIfNeeded: $0) }), let bytes = f[1].bytesValue else { return nil }
            return MachineAddress.format(family: family, bytes)
        }
    }
}

/// IP addresses as GetMachineAddresses' `(iay)` carries them.
enum MachineAddress {
    /// `bytes` of address family `family` (AF_INET, AF_INET6) as inet_ntop prints them; nil for
    /// anything else or a wrong length.
    static func format(family: Int32, _ bytes: [UInt8]) -> String? {
        guard (family == AF_INET && bytes.count == 4) || (family == AF_INET6 && bytes.count == 16) else { return nil }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let ok = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &text, socklen_t(text.count)) } != nil
        return ok ? String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
    }
}

/// One machine as `berthctl list` shows it: ListMachines' entry with its os-release and addresses.
public struct MachineRow: Codable, Sendable, Equatable {
    /// The machine's name.
    public var machine: String
    /// `container`, `vm` or `host`.
    public var `class`: String
    /// The service that registered it (`systemd-nspawn`); empty for the host.
    public var service: String
    /// os-release ID, nil when unknown.
    public var os: String?
    /// os-release VERSION_ID, nil when unknown.
    public var version: String?
    /// Its IP addresses, nil when berthd cannot tell.
    public var addresses: [String]?
}

/// `berthctl list`: ListMachines as machinectl 252's table (MACHINE CLASS SERVICE OS VERSION
/// ADDRESSES; `.host` only with --all), or JSON.
public struct ListMachines: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "list", abstract: "List the running machines (containers and VMs).")
    @OptionGroup public var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Show the host (.host) too.") public var all = false
    @Flag(help: "Print no header and no footer.") public var noLegend = false
    public init() {}

    /// The machines ListMachines returns, sorted by name, hidden ones (`.host`) only with `all`.
    static func rows(_ client: Machine1Client, all: Bool) throws -> [MachineRow] {
        let reply = try client.manager(.listMachines)
        let entries: [(String, String, String)] = (reply.first?.arrayValue ?? []).compactMap {
            guard let f = $0.structureValue, f.count == 4, let name = f[0].stringValue, let cls = f[1].stringValue,
                  let service = f[2].stringValue else { return nil }
            return (name, cls, service)
        }
        return entries.filter { all || !$0.0.hasPrefix(".") }.sorted { $0.0 < $1.0 }.map { name, cls, service in
            let os = client.osRelease(name)
            return MachineRow(machine: name, class: cls, service: service, os: os?["ID"], version: os?["VERSION_ID"],
                              addresses: client.addresses(name))
        }
    }

    public func run() throws {
        try reporting {
            let rows = try Self.rows(try Machine1Client(global), all: all)
            if global.json {
                print(try jsonLine(rows))
                return
            }
            func dash(_ s: String?) -> String { (s ?? "").isEmpty ? "-" : s ?? "-" }
            let body = rows.map { r -> [String] in
                let first = r.addresses?.first.map { $0 + ((r.addresses?.count ?? 0) > 1 ? "…" : "") }
                return [r.machine, r.class, dash(r.service), dash(r.os), dash(r.version), dash(first)]
            }
            if noLegend {
                if !body.isEmpty { printTable(body) }
                return
            }
            if rows.isEmpty {
                print("No machines.")
                return
            }
            printTable([["MACHINE", "CLASS", "SERVICE", "OS", "VERSION", "ADDRESSES"]] + body)
            print("\n\(rows.count) machines listed.")
        }
    }
}

/// Everything `berthctl status NAME` shows of one machine.
public struct MachineStatus: Codable, Sendable, Equatable {
    /// `Name`.
    public var name: String
    /// `Id` as 32 hex digits, nil when all zero.
    public var id: String?
    /// `Timestamp`, µs since the epoch; 0 when unknown.
    public var since: UInt64
    /// `Leader`.
    public var leader: UInt32
    /// The leader's command name (/proc/PID/comm), nil when it cannot be read.
    public var leaderCommand: String?
    /// `Service`.
    public var service: String
    /// `Class`.
    public var `class`: String
    /// `RootDirectory`, nil when empty.
    public var root: String?
    /// `Unit`.
    public var unit: String
    /// `NetworkInterfaces`, as names where the host knows them.
    public var interfaces: [String]
    /// GetMachineAddresses, nil when berthd cannot tell.
    public var addresses: [String]?
    /// os-release PRETTY_NAME, nil when unknown.
    public var os: String?
    /// GetMachineUIDShift, nil when 0 or unknown.
    public var uidShift: UInt32?

    /// Reads machine `name` (GetMachine, then its object's properties and the best-effort members).
    static func gather(_ client: Machine1Client, _ name: String) throws -> MachineStatus {
        let path = try client.machinePath(name)
        let props = Dictionary(try client.properties(path, interface: Machine1Machine.name), uniquingKeysWith: { a, _ in a })
        func s(_ p: Machine1Machine.Property) -> String { props[p.rawValue]?.stringValue ?? "" }
        let idBytes = props[Machine1Machine.Property.id.rawValue]?.bytesValue ?? []
        let leader = props[Machine1Machine.Property.leader.rawValue]?.uint64Value.map { UInt32(truncatingIfNeeded: $0) } ?? 0
        let comm = leader > 0 ? (try? String(contentsOfFile: "/proc/\(leader)/comm", encoding: .utf8))?
            .trimmingCharacters(in: .newlines) : nil
        let ifindices = props[Machine1Machine.Property.networkInterfaces.rawValue]?.arrayValue?.compactMap { $0.int64Value.map { Int32(truncatingIfNeeded: $0) } } ?? []
        let interfaces = ifindices.map { index -> String in
            var buffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
            guard if_indextoname(UInt32(bitPattern: index), &buffer) != nil else { return String(index) }
            return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        let shift = (try? client.manager(.getMachineUIDShift, [.string(name)]))?.first?.uint64Value.map { UInt32(truncatingIfNeeded: $0) }
        let os = client.osRelease(name)
        return MachineStatus(
            name: s(.name).isEmpty ? name : s(.name),
            id: idBytes.allSatisfy { $0 == 0 } ? nil : idBytes.map { String(format: "%02x", $0) }.joined(),
            since: props[Machine1Machine.Property.timestamp.rawValue]?.uint64Value ?? 0,
            leader: leader, leaderCommand: comm, service: s(.service), class: s(.class),
            root: s(.rootDirectory).isEmpty ? nil : s(.rootDirectory), unit: s(.unit), interfaces: interfaces,
            addresses: client.addresses(name), os: os?["PRETTY_NAME"] ?? os?["NAME"],
            uidShift: shift == 0 ? nil : shift)
    }

    /// The status as machinectl 252 prints it (without the process tree and the journal).
    var text: String {
        var lines = [name + (id.map { "(\($0))" } ?? "")]
        if since != 0 { lines.append("\t   Since: \(formatTimestamp(since)); \(formatRelative(since))") }
        if leader > 0 { lines.append("\t  Leader: \(leader)" + (leaderCommand.map { " (\($0))" } ?? "")) }
        if !service.isEmpty {
            lines.append("\t Service: \(service)" + (self.class.isEmpty ? "" : "; class \(self.class)"))
        } else if !self.class.isEmpty {
            lines.append("\t   Class: \(self.class)")
        }
        if let root { lines.append("\t    Root: \(root)") }
        if !interfaces.isEmpty { lines.append("\t   Iface: " + interfaces.joined(separator: " ")) }
        if let addresses, !addresses.isEmpty { lines.append("\t Address: " + addresses.joined(separator: "\n\t          ")) }
        if let os { lines.append("\t      OS: \(os)") }
        if let uidShift { lines.append("  UID Shift: \(uidShift)") }  // sic: machinectl 252 indents this one with two spaces
        if !unit.isEmpty { lines.append("\t    Unit: \(unit)") }
        return lines.joined(separator: "\n")
    }
}

/// A µs timestamp relative to now, in the steps of systemd's format_timestamp_relative
/// (`3s ago`, `4min 2s ago`, `7min ago`, `2h 5min ago`, `1 day 3h ago`, `3 weeks 2 days ago`).
func formatRelative(_ us: UInt64, now: Date = Date()) -> String {
    let nowUS = UInt64(max(0, now.timeIntervalSince1970 * 1_000_000))
    let future = us > nowUS
    let d = future ? us - nowUS : nowUS - us
    let second: UInt64 = 1_000_000, minute = 60 * second, hour = 60 * minute, day = 24 * hour
    let week = 7 * day, month = 2_629_800 * second, year = 31_557_600 * second
    let text: String
    switch d {
    case year...:
        let years = d / year, months = (d % year) / month
        text = "\(years) \(years == 1 ? "year" : "years") \(months) \(months == 1 ? "month" : "months")"
    case month...:
        let months = d / month, days = (d % month) / day
        text = "\(months) \(months == 1 ? "month" : "months") \(days) \(days == 1 ? "day" : "days")"
    case week...:
        let weeks = d / week, days = (d % week) / day
        text = "\(weeks) \(weeks == 1 ? "week" : "weeks") \(days) \(days == 1 ? "day" : "days")"
    case (2 * day)...: text = "\(d / day) days"
    case (25 * hour)...: text = "1 day \((d - day) / hour)h"
    case (6 * hour)...: text = "\(d / hour)h"
    case hour...: text = "\(d / hour)h \((d % hour) / minute)min"
    case (5 * minute)...: text = "\(d / minute)min"
    case minute...: text = "\(d / minute)min \((d % minute) / second)s"
    case second...: text = "\(d / second)s"
    case 1000...: text = "\(d / 1000)ms"
    default: return "now"
    }
    return future ? "in \(text)" : "\(text) ago"
}

/// `berthctl status NAME…` for machines: see `Status`, which shows the daemon's status without names.
enum MachineStatusVerb {
    static func run(_ global: GlobalOptions, _ names: [String]) throws {
        try reporting {
            let client = try Machine1Client(global)
            var first = true
            for name in names {
                let status = try MachineStatus.gather(client, name)
                if global.json {
                    print(try jsonLine(status))
                    continue
                }
                if !first { print("") }
                first = false
                print(status.text)
            }
        }
    }
}

/// A property value for JSON output: D-Bus basic types as JSON ones, `ay` as hex.
enum PropertyJSON: Encodable, Equatable {
    case string(String), bool(Bool), int(Int64), uint(UInt64), double(Double), array([PropertyJSON])

    init(_ value: BusValue) {
        switch value {
        case .boolean(let b): self = .bool(b)
        case .byte(let v): self = .uint(UInt64(v))
        case .uint16(let v): self = .uint(UInt64(v))
        case .uint32(let v): self = .uint(UInt64(v))
        case .uint64(let v): self = .uint(v)
        case .int16(let v): self = .int(Int64(v))
        case .int32(let v): self = .int(Int64(v))
        case .int64(let v): self = .int(v)
        case .double(let v): self = .double(v)
        case .string(let s), .signature(let s): self = .string(s)
        case .objectPath(let p): self = .string(p.rawValue)
        case .variant(let v): self = PropertyJSON(v)
        case .array("y", _): self = .string((value.bytesValue ?? []).map { String(format: "%02x", $0) }.joined())
        case .array(_, let vs): self = .array(vs.map(PropertyJSON.init))
        case .structure(let vs): self = .array(vs.map(PropertyJSON.init))
        default: self = .string(value.description)
        }
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .uint(let u): try c.encode(u)
        case .double(let d): try c.encode(d)
        case .array(let a): try c.encode(a)
        }
    }
}

/// A property as `machinectl show` prints it (systemd's bus_print_property): booleans yes/no,
/// `…Timestamp` as a date, `ay` as hex, `au` as 8-digit hex words, `as` space-separated; other
/// arrays and structures are not printed (`[unprintable]` with `all`). Nil when it is not
/// printed: empty and `all` not set (`-p` sets it for the properties it names, as in machinectl).
func propertyText(_ name: String, _ value: BusValue, all: Bool) -> String? {
    func shown(_ text: String) -> String? { text.isEmpty && !all ? nil : text }
    switch value {
    case .variant(let v): return propertyText(name, v, all: all)
    case .boolean(let b): return b ? "yes" : "no"
    case .uint64(let t) where name.hasSuffix("Timestamp"):
        return shown(t == 0 || t == .max ? "" : formatTimestamp(t))
    case .string(let s): return shown(s.contains("\n") ? "[unprintable]" : s)
    case .objectPath(let p): return p.rawValue
    case .array("y", _): return shown((value.bytesValue ?? []).map { String(format: "%02x", $0) }.joined())
    case .array("u", let vs):
        return shown(vs.compactMap { $0.uint64Value }.map { String(format: "%08x", UInt32(truncatingIfNeeded: $0)) }.joined())
    case .array("s", let vs): return shown(vs.compactMap(\.stringValue).map(shellQuoted).joined(separator: " "))
    case .byte(let v): return String(v)
    case .int16(let v): return String(v)
    case .uint16(let v): return String(v)
    case .int32(let v): return String(v)
    case .uint32(let v): return String(v)
    case .int64(let v): return String(v)
    case .uint64(let v): return String(v)
    case .double(let v): return String(format: "%g", v)
    default: return all ? "[unprintable]" : nil
    }
}

/// `text` as systemd's shell_maybe_quote leaves it: as it is when it is safe, else in double
/// quotes with `"`, `\\`, `` ` `` and `$` escaped.
func shellQuoted(_ text: String) -> String {
    let special = Set(" \t\n\"'\\`$&|;<>()*?[]{}~#!")
    guard !text.isEmpty, text.contains(where: { special.contains($0) }) else { return text.isEmpty ? "\"\"" : text }
    var out = "\""
    for c in text {
        if "\"\\`$".contains(c) { out.append("\\") }
        out.append(c)
    }
    return out + "\""
}

/// `berthctl show [NAME…]`: a machine's properties as `Name=value` lines (machinectl show), or
/// the manager's without a name; `-p` picks properties, `--value` prints values only.
public struct Show: ParsableCommand {
    public static let configuration = CommandConfiguration(abstract: "Show the properties of machines (or of the manager).")
    @OptionGroup public var global: GlobalOptions
    @Option(name: [.short, .customLong("property")], help: "Show only this property (may be repeated, or comma-separated).")
    public var property: [String] = []
    @Flag(help: "Print only the values, not NAME=.") public var value = false
    @Flag(name: .shortAndLong, help: "Show empty properties too.") public var all = false
    @Argument(help: "Machine names.") public var names: [String] = []
    public init() {}

    public func run() throws {
        let wanted = Set(property.flatMap { $0.split(separator: ",").map(String.init) })
        try reporting {
            let client = try Machine1Client(global)
            // Every interface's properties (GetAll with ""), as machinectl asks: the manager's
            // include berthd's own io.berth.Daemon ones.
            let targets: [(ObjectPath, String)] = names.isEmpty
                ? [(ServiceKind.machine1.managerPath, "")]
                : try names.map { (try client.machinePath($0), "") }
            var first = true
            for (path, interface) in targets {
                let props = try client.properties(path, interface: interface).filter { wanted.isEmpty || wanted.contains($0.0) }
                if global.json {
                    var object: [String: PropertyJSON] = [:]
                    for (k, v) in props { object[k] = PropertyJSON(v) }
                    print(try jsonLine(object))
                    continue
                }
                if !first { print("") }
                first = false
                for (k, v) in props {
                    // A property asked for by name is printed even when empty, as machinectl does.
                    guard let text = propertyText(k, v, all: all || wanted.contains(k)) else { continue }
                    print(value ? text : "\(k)=\(text)")
                }
            }
        }
    }
}

/// Signal names and numbers as systemd's signal_from_string reads them: `TERM`, `SIGTERM`, `15`,
/// `RTMIN+3`, `SIGRTMAX-1`.
public enum SignalName {
    static let names: [(String, Int32)] = [
        ("HUP", SIGHUP), ("INT", SIGINT), ("QUIT", SIGQUIT), ("ILL", SIGILL), ("TRAP", SIGTRAP), ("ABRT", SIGABRT),
        ("IOT", SIGABRT), ("BUS", SIGBUS), ("FPE", SIGFPE), ("KILL", SIGKILL), ("USR1", SIGUSR1), ("SEGV", SIGSEGV),
        ("USR2", SIGUSR2), ("PIPE", SIGPIPE), ("ALRM", SIGALRM), ("TERM", SIGTERM), ("STKFLT", SIGSTKFLT), ("CHLD", SIGCHLD),
        ("CONT", SIGCONT), ("STOP", SIGSTOP), ("TSTP", SIGTSTP), ("TTIN", SIGTTIN), ("TTOU", SIGTTOU), ("URG", SIGURG),
        ("XCPU", SIGXCPU), ("XFSZ", SIGXFSZ), ("VTALRM", SIGVTALRM), ("PROF", SIGPROF), ("WINCH", SIGWINCH), ("IO", SIGIO),
        ("POLL", SIGIO), ("PWR", SIGPWR), ("SYS", SIGSYS),
    ]

    /// The signal number `text` names; throws for anything that is not a signal (0, 65, `FOO`).
    public static func parse(_ text: String) throws -> Int32 {
        let rtmin: Int32 = 34, rtmax: Int32 = 64  // glibc's SIGRTMIN (after its two private ones) and SIGRTMAX on Linux
        if let n = Int32(text) {
            guard n >= 1 && n <= rtmax else { throw ValidationError("invalid signal '\(text)'") }
            return n
        }
        var name = text.uppercased()
        if name.hasPrefix("SIG") { name.removeFirst(3) }
        if let found = names.first(where: { $0.0 == name }) { return found.1 }
        for (prefix, base, sign) in [("RTMIN", rtmin, Int32(1)), ("RTMAX", rtmax, Int32(-1))] where name.hasPrefix(prefix) {
            let rest = name.dropFirst(prefix.count)
            if rest.isEmpty { return base }
            let op: Character = sign > 0 ? "+" : "-"
            guard rest.first == op, let k = Int32(rest.dropFirst()), k >= 0, k <= rtmax - rtmin else { break }
            return base + sign * k
        }
        throw ValidationError("invalid signal '\(text)'")
    }
}

/// `berthctl kill NAME… [--kill-whom leader|all] [--signal SIG]`: KillMachine.
public struct Kill: ParsableCommand {
    public static let configuration = CommandConfiguration(abstract: "Send a signal to the processes of machines.")
    @OptionGroup public var global: GlobalOptions
    @Option(name: [.customLong("kill-whom"), .customLong("kill-who")], help: "leader or all (default).")
    public var killWhom = "all"
    @Option(name: .shortAndLong, help: "Signal name or number (default SIGTERM).") public var signal = "SIGTERM"
    @Argument(help: "Machine names.") public var names: [String]
    public init() {}

    public func validate() throws {
        guard killWhom == "leader" || killWhom == "all" else { throw ValidationError("--kill-whom must be leader or all, not '\(killWhom)'") }
        _ = try SignalName.parse(signal)
        guard !names.isEmpty else { throw ValidationError("expected at least one machine name") }
    }

    public func run() throws {
        let number = try SignalName.parse(signal)
        try reporting {
            let client = try Machine1Client(global)
            for name in names { try client.manager(.killMachine, [.string(name), .string(killWhom), .int32(number)]) }
        }
    }
}

/// `berthctl terminate NAME…`: TerminateMachine.
public struct Terminate: ParsableCommand {
    public static let configuration = CommandConfiguration(abstract: "Terminate machines (all their processes).")
    @OptionGroup public var global: GlobalOptions
    @Argument(help: "Machine names.") public var names: [String]
    public init() {}
    public func run() throws {
        try reporting {
            let client = try Machine1Client(global)
            for name in names { try client.manager(.terminateMachine, [.string(name)]) }
        }
    }
}

/// The copy verbs' arguments as machinectl sends them: the host path made absolute against the
/// working folder, a missing destination the same path as the source.
enum CopyArguments {
    /// `(source, destination)` for the call: copy-to sends (host, machine), copy-from (machine, host).
    static func paths(from: Bool, source: String, destination: String?, cwd: String = FileManager.default.currentDirectoryPath)
        -> (String, String) {
        let dest = destination ?? source
        let host = absolute(from ? dest : source, cwd: cwd)
        let machine = from ? source : dest
        return from ? (machine, host) : (host, machine)
    }

    /// `path` made absolute against `cwd`, as path_make_absolute_cwd (no normalization).
    static func absolute(_ path: String, cwd: String) -> String {
        path.hasPrefix("/") ? path : (cwd.hasSuffix("/") ? cwd : cwd + "/") + path
    }
}

/// `berthctl copy-to NAME SRC [DST] [--force]`: CopyToMachine (WithFlags with --force).
public struct CopyTo: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "copy-to", abstract: "Copy a file or folder from the host into a machine.")
    @OptionGroup public var global: GlobalOptions
    @Flag(help: "Replace what is at the destination.") public var force = false
    @Argument(help: "Machine name.") public var name: String
    @Argument(help: "Path on the host.") public var source: String
    @Argument(help: "Path in the machine (default: the same as SRC).") public var destination: String?
    public init() {}
    public func run() throws {
        try copy(global, name: name, from: false, source: source, destination: destination, force: force)
    }
}

/// `berthctl copy-from NAME SRC [DST] [--force]`: CopyFromMachine (WithFlags with --force).
public struct CopyFrom: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "copy-from", abstract: "Copy a file or folder from a machine to the host.")
    @OptionGroup public var global: GlobalOptions
    @Flag(help: "Replace what is at the destination.") public var force = false
    @Argument(help: "Machine name.") public var name: String
    @Argument(help: "Path in the machine.") public var source: String
    @Argument(help: "Path on the host (default: the same as SRC).") public var destination: String?
    public init() {}
    public func run() throws {
        try copy(global, name: name, from: true, source: source, destination: destination, force: force)
    }
}

/// machined's flag for …WithFlags: replace an existing destination.
let machineCopyReplace: UInt64 = 1

private func copy(_ global: GlobalOptions, name: String, from: Bool, source: String, destination: String?, force: Bool) throws {
    let (a, b) = CopyArguments.paths(from: from, source: source, destination: destination)
    let method: Machine1Manager.Method = from ? (force ? .copyFromMachineWithFlags : .copyFromMachine)
                                              : (force ? .copyToMachineWithFlags : .copyToMachine)
    var arguments: [BusValue] = [.string(name), .string(a), .string(b)]
    if force { arguments.append(.uint64(machineCopyReplace)) }
    try reporting {
        do {
            try Machine1Client(global).manager(method, arguments)
        } catch let e as CLIError {
            throw CLIError("Failed to copy: \(e.description)")
        }
    }
}

/// `berthctl bind NAME SRC [DST] [--read-only] [--mkdir]`: BindMountMachine. SRC is made
/// absolute against the working folder (machinectl sends it as typed, and berthd refuses a
/// relative one); a missing DST is sent empty, so berthd uses SRC's path inside the machine.
public struct Bind: ParsableCommand {
    public static let configuration = CommandConfiguration(abstract: "Bind-mount a host folder or file into a machine.")
    @OptionGroup public var global: GlobalOptions
    @Flag(help: "Make the mount read-only.") public var readOnly = false
    @Flag(help: "Create the destination first if it is missing.") public var mkdir = false
    @Argument(help: "Machine name.") public var name: String
    @Argument(help: "Path on the host.") public var source: String
    @Argument(help: "Path in the machine (default: the same as SRC).") public var destination: String?
    public init() {}
    public func run() throws {
        let src = CopyArguments.absolute(source, cwd: FileManager.default.currentDirectoryPath)
        try reporting {
            do {
                try Machine1Client(global).manager(.bindMountMachine, [.string(name), .string(src), .string(destination ?? ""),
                                                                       .boolean(readOnly), .boolean(mkdir)])
            } catch let e as CLIError {
                throw CLIError("Failed to bind mount: \(e.description)")
            }
        }
    }
}
