import ArgumentParser
import Bus
import Foundation
import Services

/// One image as `ListImages` and the image object's properties describe it (machine1's and portable1's).
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
    /// portable1's attached state (`detached`, `attached`, `running-runtime`, …); nil for machine1.
    public var state: String?
    /// The image class (`list-images --class`, import1's ListImages); nil otherwise.
    public var imageClass: String? = nil
}

extension ImageRow {
    /// One entry of machine1's `a(ssbttto)` or portable1's `a(ssbtttso)` ListImages reply; nil
    /// when it is neither.
    init?(listEntry: BusValue) {
        guard let f = listEntry.structureValue, f.count == 7 || f.count == 8, let name = f[0].stringValue,
              let type = f[1].stringValue, let ro = f[2].boolValue, let crtime = f[3].uint64Value,
              let mtime = f[4].uint64Value, let usage = f[5].uint64Value else { return nil }
        let state = f.count == 8 ? f[6].stringValue : nil
        if f.count == 8 && state == nil { return nil }
        self.init(name: name, type: type, readOnly: ro, creationTimestamp: crtime, modificationTimestamp: mtime,
                  usage: usage == .max ? nil : usage, path: nil, state: state)
    }
}

/// A machine1 connection for berthctl's image verbs: calls `org.freedesktop.machine1.Manager`
/// and reads image objects, turning error replies into berthctl failures.
struct Machine1Client {
    let client: BusClient

    init(_ global: GlobalOptions) throws {
        client = try connectBus(global)
    }

    /// Calls Manager method `method` with `arguments`; no timeout, as a big clone takes its time.
    @discardableResult
    func manager(_ method: Machine1Manager.Method, _ arguments: [BusValue] = []) throws -> [BusValue] {
        do {
            return try client.call(destination: ServiceKind.machine1.busName, path: ServiceKind.machine1.managerPath,
                                   interface: Machine1Manager.name, member: method.rawValue, arguments,
                                   timeoutMicroseconds: UInt64.max)
        } catch {
            throw CLIError(error)
        }
    }

    /// Property `property` of the image object at `path`.
    func imageProperty(_ path: ObjectPath, _ property: Machine1Image.Property) throws -> BusValue {
        do {
            return try client.property(destination: ServiceKind.machine1.busName, path: path, interface: Machine1Image.name,
                                       name: property.rawValue)
        } catch {
            throw CLIError(error)
        }
    }
}

/// `berthctl list-images`: ListImages as a table (hidden images with `--all`) or JSON.
public struct ListImages: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "list-images", abstract: "List the images of the machine pool.")
    @OptionGroup public var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Show hidden images (names starting with a dot) too.")
    public var all = false
    @Option(name: .customLong("class"), help: "List import1's images of this class (machine, portable, sysext, confext or all) instead.")
    public var imageClass: String?
    public init() {}

    /// The rows ListImages returns, sorted by name, hidden ones only with `all`.
    static func rows(_ client: Machine1Client, all: Bool) throws -> [ImageRow] {
        let reply = try client.manager(.listImages)
        let rows = (reply.first?.arrayValue ?? []).compactMap(ImageRow.init(listEntry:))
        return rows.filter { all || !$0.name.hasPrefix(".") }.sorted { $0.name < $1.name }
    }

    public func run() throws {
        if let imageClass { return try runWithClass(imageClass) }
        try reporting {
            let rows = try Self.rows(try Machine1Client(global), all: all)
            if global.json {
                print(try jsonLine(rows))
                return
            }
            printTable([["NAME", "TYPE", "RO", "USAGE", "CREATED", "MODIFIED"]] + rows.map {
                [$0.name, $0.type, $0.readOnly ? "yes" : "no", formatBytes($0.usage),
                 formatTimestamp($0.creationTimestamp), formatTimestamp($0.modificationTimestamp)]
            })
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
                                   usage: usage == .max ? nil : usage, path: try client.imageProperty(path, .path).stringValue,
                                   state: nil)
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
        let flag = try parseBoolean(value)
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
        let (name, size) = try parseLimitArguments(arguments)
        try reporting {
            let client = try Machine1Client(global)
            if let name {
                try client.manager(.setImageLimit, [.string(name), .uint64(size)])
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
