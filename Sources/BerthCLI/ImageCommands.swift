import ArgumentParser
import Bus
import Foundation
import Services

/// One image as `ListImages` and the image object's properties describe it.
public struct ImageRow: Codable, Sendable, Equatable {
    /// `Name`.
    public var name: String
    /// `Type`: directory, subvolume, raw or block.
    public var type: String
    /// `ReadOnly`.
    public var readOnly: Bool
    /// µs since the epoch; 0 when unknown.
    public var creationTimestamp: UInt64
    /// `ModificationTimestamp`, µs since the epoch; 0 when unknown.
    public var modificationTimestamp: UInt64
    /// Bytes; nil when unknown (UINT64_MAX on the bus).
    public var usage: UInt64?
    /// `Path` (image-status only).
    public var path: String?
}

/// A machine1 connection for berthctl's image verbs: calls `org.freedesktop.machine1.Manager`
/// and reads image objects, turning error replies into berthctl failures.
struct Machine1Client {
    let client: BusClient

    init(_ global: GlobalOptions) throws {
        do { client = try BusClient(address: global.busAddress) } catch { throw ValidationError("cannot reach the bus: \(error)") }
    }

    /// Calls Manager method `method` with `arguments`; no timeout, as a big clone takes its time.
    @discardableResult
    func manager(_ method: Machine1Manager.Method, _ arguments: [BusValue] = []) throws -> [BusValue] {
        do {
            return try client.call(destination: ServiceKind.machine1.busName, path: ServiceKind.machine1.managerPath,
                                   interface: Machine1Manager.name, member: method.rawValue, arguments,
                                   timeoutMicroseconds: UInt64.max)
        } catch {
            throw CLIError("\(error.message) (\(error.name))")
        }
    }

    /// Property `property` of the image object at `path`.
    func imageProperty(_ path: ObjectPath, _ property: Machine1Image.Property) throws -> BusValue {
        do {
            return try client.property(destination: ServiceKind.machine1.busName, path: path, interface: Machine1Image.name,
                                       name: property.rawValue)
        } catch {
            throw CLIError("\(error.message) (\(error.name))")
        }
    }
}

/// A failure berthctl reports on stderr with exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Parses a size as machinectl does: bytes, or with a K/M/G/T/P/E suffix (1024-based);
/// `infinity` or `-` for no limit (UINT64_MAX).
public func parseSize(_ text: String) throws -> UInt64 {
    if text == "infinity" || text == "-" { return .max }
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60]
    var digits = text.uppercased()
    if digits.hasSuffix("B") { digits.removeLast() }
    var factor: UInt64 = 1
    if let last = digits.last, let f = units[last] {
        factor = f
        digits.removeLast()
    }
    guard let n = UInt64(digits) else { throw ValidationError("invalid size '\(text)'") }
    let (product, overflow) = n.multipliedReportingOverflow(by: factor)
    guard !overflow else { throw ValidationError("size '\(text)' is too large") }
    return product
}

/// Human-readable bytes as machinectl prints them (`8.0K`, `1.5G`); `-` for unknown.
func formatBytes(_ bytes: UInt64?) -> String {
    guard let bytes else { return "-" }
    let units = ["B", "K", "M", "G", "T", "P", "E"]
    var value = Double(bytes), i = 0
    while value >= 1024 && i < units.count - 1 {
        value /= 1024
        i += 1
    }
    return i == 0 ? "\(bytes)B" : String(format: "%.1f%@", value, units[i])
}

/// A µs timestamp as a date, `-` for 0.
func formatTimestamp(_ us: UInt64) -> String {
    guard us != 0 else { return "-" }
    let f = DateFormatter()
    f.dateFormat = "EEE yyyy-MM-dd HH:mm:ss zzz"
    f.locale = Locale(identifier: "en_US_POSIX")
    return f.string(from: Date(timeIntervalSince1970: Double(us) / 1_000_000))
}

/// Runs `body`, printing a `CLIError` as `berthctl: …` and exiting 1.
func reporting(_ body: () throws -> Void) throws {
    do { try body() } catch let e as CLIError {
        FileHandle.standardError.write(Data("berthctl: \(e.description)\n".utf8))
        throw ExitCode(1)
    }
}

func jsonLine<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

/// `berthctl list-images`: ListImages as a table (hidden images with `--all`) or JSON.
public struct ListImages: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "list-images", abstract: "List the images of the machine pool.")
    @OptionGroup public var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Show hidden images (names starting with a dot) too.")
    public var all = false
    public init() {}

    /// The rows ListImages returns, sorted by name, hidden ones only with `all`.
    static func rows(_ client: Machine1Client, all: Bool) throws -> [ImageRow] {
        let reply = try client.manager(.listImages)
        let rows: [ImageRow] = (reply.first?.arrayValue ?? []).compactMap { entry in
            guard let f = entry.structureValue, f.count == 7, let name = f[0].stringValue, let type = f[1].stringValue,
                  let ro = f[2].boolValue, let crtime = f[3].uint64Value, let mtime = f[4].uint64Value,
                  let usage = f[5].uint64Value else { return nil }
            return ImageRow(name: name, type: type, readOnly: ro, creationTimestamp: crtime, modificationTimestamp: mtime,
                            usage: usage == .max ? nil : usage, path: nil)
        }
        return rows.filter { all || !$0.name.hasPrefix(".") }.sorted { $0.name < $1.name }
    }

    public func run() throws {
        try reporting {
            let rows = try Self.rows(try Machine1Client(global), all: all)
            if global.json {
                print(try jsonLine(rows))
                return
            }
            let table = [["NAME", "TYPE", "RO", "USAGE", "CREATED", "MODIFIED"]] + rows.map {
                [$0.name, $0.type, $0.readOnly ? "yes" : "no", formatBytes($0.usage),
                 formatTimestamp($0.creationTimestamp), formatTimestamp($0.modificationTimestamp)]
            }
            let widths = (0..<6).map { c in table.map { $0[c].count }.max() ?? 0 }
            for line in table {
                print(zip(line, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: " ")
                    .trimmingCharacters(in: .whitespaces))
            }
            print("\n\(rows.count) images listed.")
        }
    }
}

/// `berthctl image-status NAME…`: GetImage, then the image object's properties and metadata.
public struct ImageStatus: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "image-status", abstract: "Show an image's properties.")
    @OptionGroup public var global: GlobalOptions
    @Argument(help: "Image names.") public var names: [String]
    public init() {}

    /// Everything image-status shows of one image.
    public struct Status: Codable, Sendable, Equatable {
        /// The image object's properties.
        public var image: ImageRow
        /// GetImageHostname, nil when the image has none.
        public var hostname: String?
        /// GetImageOSRelease, nil when it cannot be read.
        public var osRelease: [String: String]?
        /// `Limit`, nil when there is none.
        public var limit: UInt64?
    }

    public func run() throws {
        try reporting {
            let client = try Machine1Client(global)
            for name in names {
                guard let raw = try client.manager(.getImage, [.string(name)]).first?.stringValue else {
                    throw CLIError("GetImage returned no object path")
                }
                let path = ObjectPath(raw)
                func u64(_ p: Machine1Image.Property) throws -> UInt64 { try client.imageProperty(path, p).uint64Value ?? 0 }
                let usage = try u64(.usage), limit = try u64(.limit)
                let row = ImageRow(name: try client.imageProperty(path, .name).stringValue ?? name,
                                   type: try client.imageProperty(path, .type).stringValue ?? "",
                                   readOnly: try client.imageProperty(path, .readOnly).boolValue ?? false,
                                   creationTimestamp: try u64(.creationTimestamp), modificationTimestamp: try u64(.modificationTimestamp),
                                   usage: usage == .max ? nil : usage, path: try client.imageProperty(path, .path).stringValue)
                // Metadata is best effort, as in machinectl: an image without os-release still has a status.
                let hostname = (try? client.manager(.getImageHostname, [.string(name)]))?.first?.stringValue
                let os = (try? client.manager(.getImageOSRelease, [.string(name)]))?.first?.dictionaryValue?
                    .compactMapValues(\.stringValue)
                let status = Status(image: row, hostname: hostname?.isEmpty == false ? hostname : nil, osRelease: os,
                                    limit: limit == .max ? nil : limit)
                if global.json {
                    print(try jsonLine(status))
                    continue
                }
                print(row.name)
                print("\t    Type: \(row.type)")
                print("\t    Path: \(row.path ?? "-")")
                if let h = status.hostname { print("\tHostname: \(h)") }
                if let pretty = os?["PRETTY_NAME"] ?? os?["NAME"] { print("\t      OS: \(pretty)") }
                print("\t      RO: \(row.readOnly ? "read-only" : "writable")")
                print("\t Created: \(formatTimestamp(row.creationTimestamp))")
                print("\tModified: \(formatTimestamp(row.modificationTimestamp))")
                print("\t   Usage: \(formatBytes(row.usage))")
                if let limit = status.limit { print("\t   Limit: \(formatBytes(limit))") }
            }
        }
    }
}

/// `berthctl clone NAME NEW`: CloneImage.
public struct Clone: ParsableCommand {
    public static let configuration = CommandConfiguration(abstract: "Clone an image.")
    @OptionGroup public var global: GlobalOptions
    @Flag(help: "Make the clone read-only.") public var readOnly = false
    @Argument public var name: String
    @Argument public var newName: String
    public init() {}
    public func run() throws {
        try reporting { try Machine1Client(global).manager(.cloneImage, [.string(name), .string(newName), .boolean(readOnly)]) }
    }
}

/// `berthctl rename NAME NEW`: RenameImage.
public struct Rename: ParsableCommand {
    public static let configuration = CommandConfiguration(abstract: "Rename an image.")
    @OptionGroup public var global: GlobalOptions
    @Argument public var name: String
    @Argument public var newName: String
    public init() {}
    public func run() throws {
        try reporting { try Machine1Client(global).manager(.renameImage, [.string(name), .string(newName)]) }
    }
}

/// `berthctl remove NAME…`: RemoveImage.
public struct Remove: ParsableCommand {
    public static let configuration = CommandConfiguration(abstract: "Remove images.")
    @OptionGroup public var global: GlobalOptions
    @Argument public var names: [String]
    public init() {}
    public func run() throws {
        try reporting {
            let client = try Machine1Client(global)
            for name in names { try client.manager(.removeImage, [.string(name)]) }
        }
    }
}

/// `berthctl read-only NAME [yes|no]`: MarkImageReadOnly.
public struct ReadOnly: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "read-only", abstract: "Mark an image read-only or writable.")
    @OptionGroup public var global: GlobalOptions
    @Argument public var name: String
    @Argument(help: "yes (default) or no.") public var value: String = "yes"
    public init() {}
    public func run() throws {
        let flag: Bool
        switch value.lowercased() {
        case "yes", "true", "1", "on": flag = true
        case "no", "false", "0", "off": flag = false
        default: throw ValidationError("expected yes or no, not '\(value)'")
        }
        try reporting { try Machine1Client(global).manager(.markImageReadOnly, [.string(name), .boolean(flag)]) }
    }
}

/// `berthctl set-limit [NAME] SIZE`: SetImageLimit, or SetPoolLimit without a name.
public struct SetLimit: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "set-limit", abstract: "Set the size limit of an image or of the pool.")
    @OptionGroup public var global: GlobalOptions
    @Argument(help: "[NAME] SIZE (bytes, or with K/M/G/T; 'infinity' for none).") public var arguments: [String]
    public init() {}
    public func run() throws {
        guard arguments.count == 1 || arguments.count == 2, let sizeText = arguments.last else {
            throw ValidationError("expected [NAME] SIZE")
        }
        let size = try parseSize(sizeText)
        try reporting {
            let client = try Machine1Client(global)
            if arguments.count == 2 {
                try client.manager(.setImageLimit, [.string(arguments[0]), .uint64(size)])
            } else {
                try client.manager(.setPoolLimit, [.uint64(size)])
            }
        }
    }
}

/// `berthctl clean [--all]`: CleanPool, printing what went.
public struct Clean: ParsableCommand {
    public static let configuration = CommandConfiguration(abstract: "Remove hidden images, or with --all every image not in use.")
    @OptionGroup public var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Remove every image not in use, not only hidden ones.") public var all = false
    public init() {}

    /// One removed image.
    public struct Removed: Codable, Sendable, Equatable {
        /// The image name.
        public var name: String
        /// What it used, nil when unknown.
        public var usage: UInt64?
    }

    public func run() throws {
        try reporting {
            let reply = try Machine1Client(global).manager(.cleanPool, [.string(all ? "all" : "hidden")])
            let removed: [Removed] = (reply.first?.arrayValue ?? []).compactMap {
                guard let f = $0.structureValue, f.count == 2, let name = f[0].stringValue, let usage = f[1].uint64Value else { return nil }
                return Removed(name: name, usage: usage == .max ? nil : usage)
            }.sorted { $0.name < $1.name }
            if global.json {
                print(try jsonLine(removed))
                return
            }
            for r in removed { print("Removed image '\(r.name)'. Freed \(formatBytes(r.usage)).") }
            print("\(removed.count) images removed.")
        }
    }
}
