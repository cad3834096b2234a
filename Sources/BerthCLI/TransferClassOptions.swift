import ArgumentParser
import Bus
import Services

// berthctl's image classes and transfer flags (import1's members newer than systemd 252):
// `--class` on every transfer verb, `--read-only` and `--keep-download` on the pulls, and
// `list-images --class`. Without them berthctl calls 252's members, so it still works against
// systemd 252's importd.

/// What the pull verbs take besides URL, name and verification.
public struct PullOptions: ParsableArguments {
    @Flag(help: "Replace an existing image of that name.") public var force = false
    @Flag(help: "Make the pulled image read-only (PullTarEx…).") public var readOnly = false
    @Flag(help: "Keep the download as a hidden image and reuse it while the server's ETag matches (PullTarEx…).")
    public var keepDownload = false
    @Option(name: .customLong("class"), help: "machine (the default), portable, sysext or confext: the pool the image goes to (PullTarEx…).")
    public var imageClass: String?

    public init() {}

    /// Whether only the …Ex form carries these options.
    var needsEx: Bool { imageClass != nil || readOnly || keepDownload }

    /// The flags argument of PullTarEx/PullRawEx.
    var flags: UInt64 {
        TransferVerb.flags(force: force, readOnly: readOnly) | (keepDownload ? 4 : 0)
    }
}

extension TransferVerb {
    /// IMPORT_FORCE (bit 0) and IMPORT_READ_ONLY (bit 1) as import1's `flags`.
    static func flags(force: Bool, readOnly: Bool) -> UInt64 {
        (force ? 1 : 0) | (readOnly ? 2 : 0)
    }
}

extension Import1Manager.Method {
    /// The …Ex form of a 252 transfer method (class and flags arguments); itself otherwise.
    var withClassAndFlags: Import1Manager.Method {
        switch self {
        case .importTar: .importTarEx
        case .importRaw: .importRawEx
        case .importFileSystem: .importFileSystemEx
        case .exportTar: .exportTarEx
        case .exportRaw: .exportRawEx
        case .pullTar: .pullTarEx
        case .pullRaw: .pullRawEx
        default: self
        }
    }
}

extension ListImages {
    /// import1's ListImages(class, 0): the images of one class, or of all with "" (berthctl's
    /// `--class all`), hidden ones only with `all`, sorted by class then name.
    static func classRows(_ client: BusClient, imageClass: String, all: Bool) throws -> [ImageRow] {
        let reply: [BusValue]
        do {
            reply = try client.call(destination: ServiceKind.import1.busName, path: ServiceKind.import1.managerPath,
                                    interface: Import1Manager.name, member: Import1Manager.Method.listImages.rawValue,
                                    [.string(imageClass == "all" ? "" : imageClass), .uint64(0)])
        } catch {
            throw CLIError(error)
        }
        let rows: [ImageRow] = (reply.first?.arrayValue ?? []).compactMap { entry in
            // (class, name, type, path, read-only, crtime, mtime, usage, usage-exclusive, limit, limit-exclusive)
            guard let f = entry.structureValue, f.count == 11, let cls = f[0].stringValue, let name = f[1].stringValue,
                  let type = f[2].stringValue, let path = f[3].stringValue, let ro = f[4].boolValue,
                  let crtime = f[5].uint64Value, let mtime = f[6].uint64Value, let usage = f[7].uint64Value else { return nil }
            var row = ImageRow(name: name, type: type, readOnly: ro, creationTimestamp: crtime, modificationTimestamp: mtime,
                               usage: usage == .max ? nil : usage, path: path, state: nil)
            row.imageClass = cls
            return row
        }
        return rows.filter { all || !$0.name.hasPrefix(".") }.sorted { ($0.imageClass ?? "", $0.name) < ($1.imageClass ?? "", $1.name) }
    }

    /// `list-images --class`: the table with a CLASS column, or JSON.
    func runWithClass(_ imageClass: String) throws {
        try reporting {
            let rows = try Self.classRows(try connectBus(global), imageClass: imageClass, all: all)
            if global.json {
                print(try jsonLine(rows))
                return
            }
            printTable([["CLASS", "NAME", "TYPE", "RO", "USAGE", "CREATED", "MODIFIED"]] + rows.map {
                [$0.imageClass ?? "", $0.name, $0.type, $0.readOnly ? "yes" : "no", formatBytes($0.usage),
                 formatTimestamp($0.creationTimestamp), formatTimestamp($0.modificationTimestamp)]
            })
            print("\n\(rows.count) images listed.")
        }
    }
}
