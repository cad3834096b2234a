import Bus
import PoolAPI
import Transfer

// import1's members newer than systemd 252 (v256: image classes and flags; ProgressUpdate):
// the …Ex forms of the transfer methods, ListTransfersEx and ListImages. 252's members are
// the same transfers with class `machine` and their booleans as flags.

extension Import1Service {
    /// The …Ex methods, ListTransfersEx and ListImages, with importd's argument checks in its
    /// order (class, flags, then what 252's form checks) and its error words.
    func managerEx(_ method: Import1Manager.Method, _ call: MethodCall, engine: TransferEngine) async throws -> [BusValue] {
        switch method {
        case .importTarEx, .importRawEx, .importFileSystemEx:
            // (h fd, s local_name, s class, t flags)
            let fd = try call.fileDescriptor(0)
            let type: TransferType = switch method {
            case .importTarEx: .importTar
            case .importRawEx: .importRaw
            default: .importFileSystem
            }
            let imageClass = try Self.imageClass(try call.string(2))
            let flags = try Self.flags(try call.uint64(3), for: type)
            let local = try Self.checkedLocalNameEx(try call.string(1))
            let request = TransferRequest(type: type, local: local, operation: .importing(fd: fd.rawValue),
                                          imageClass: imageClass, flags: flags, remote: "")
            return try await start(request, engine: engine)
        case .exportTarEx, .exportRawEx:
            // (s local_name, s class, h fd, s format, t flags)
            let type: TransferType = method == .exportTarEx ? .exportTar : .exportRaw
            let imageClass = try Self.imageClass(try call.string(1))
            let flags = try Self.flags(try call.uint64(4), for: type)
            let local = try Self.checkedLocalNameEx(try call.string(0))
            let fd = try call.fileDescriptor(2)
            let formatName = try call.string(3)
            guard let format = ExportFormat(argument: formatName) else {
                throw BusError.invalidArgs("Unknown format specified: \(formatName)")
            }
            let request = TransferRequest(type: type, local: local, operation: .exporting(fd: fd.rawValue, format: format),
                                          imageClass: imageClass, flags: flags, remote: "")
            return try await start(request, engine: engine)
        case .pullTarEx, .pullRawEx:
            // (s url, s local_name, s class, s verify_mode, t flags)
            let type: TransferType = method == .pullTarEx ? .pullTar : .pullRaw
            let imageClass = try Self.imageClass(try call.string(2))
            let flags = try Self.flags(try call.uint64(4), for: type)
            let url = try call.string(0)
            guard Pull.isValidURL(url) else { throw BusError.invalidArgs("URL \(url) is invalid") }
            let local = try Self.checkedLocalNameEx(try call.string(1))
            let verifyName = try call.string(3)
            guard let verify = verifyName.isEmpty ? .signature : VerifyMode(rawValue: verifyName) else {
                throw BusError.invalidArgs("Unknown verification mode \(verifyName)")
            }
            let request = TransferRequest(type: type, local: local, operation: .pulling(url: url, verify: verify),
                                          imageClass: imageClass, flags: flags)
            return try await start(request, engine: engine)
        case .listTransfersEx:
            // (s class, t flags) → a(ussssdo); "" is every class, flags must be 0.
            let only = try Self.listedClass(try call.string(0))
            try Self.refuseFlags(try call.uint64(1))
            let rows: [BusValue] = transfers.values.sorted { $0.id < $1.id }.compactMap { t in
                if let only, t.imageClass != only { return nil }
                return .structure([.uint32(t.id), .string(t.type.rawValue), .string(t.remote), .string(t.local),
                                   .string(t.imageClass.rawValue), .double(t.systemdProgress), .objectPath(Self.transferPath(t.id))])
            }
            return [.array(element: "(ussssdo)", rows)]
        case .listImages:
            // (s class, t flags) → a(ssssbtttttt); "" is every class, flags must be 0.
            let only = try Self.listedClass(try call.string(0))
            try Self.refuseFlags(try call.uint64(1))
            var rows: [BusValue] = []
            for imageClass in ImageClass.allCases where only == nil || only == imageClass {
                guard let pool = engine.pools[imageClass] else { continue }
                let images: [Image]
                do { images = try await pool.images() } catch {
                    // importd: a failed class fails the call only when it was asked for alone.
                    if only != nil { throw error }
                    continue
                }
                rows += images.sorted { $0.name < $1.name }.map { Self.imageRow($0, imageClass) }
            }
            return [.array(element: "(ssssbtttttt)", rows)]
        default:
            throw Harness.unknownMethod(call)
        }
    }

    /// importd's check of `local_name` in the …Ex members, in its newer words ("Local image
    /// name … is invalid"; 252's members keep 252's "Local name …").
    static func checkedLocalNameEx(_ name: String) throws(BusError) -> String {
        do { try ImagePool.validateName(name) } catch {
            throw BusError.invalidArgs("Local image name \(name) is invalid")
        }
        return name
    }

    /// One ListImages row: class, name, type, path, read-only, crtime, mtime, usage,
    /// usage-exclusive, limit, limit-exclusive (importd's order).
    private static func imageRow(_ image: Image, _ imageClass: ImageClass) -> BusValue {
        .structure([
            .string(imageClass.rawValue), .string(image.name), .string(image.type.rawValue), .string(image.path),
            .boolean(image.readOnly), .uint64(image.creationTimestamp), .uint64(image.modificationTimestamp),
            .uint64(image.usage), .uint64(image.usageExclusive), .uint64(image.limit), .uint64(image.limitExclusive),
        ])
    }

    /// importd's check of `class`: one of systemd's classes, else InvalidArgs.
    static func imageClass(_ name: String) throws(BusError) -> ImageClass {
        guard let c = ImageClass(argument: name) else { throw BusError.invalidArgs("Image class '\(name)' not known") }
        return c
    }

    /// The list methods' `class`: "" is every class (nil).
    private static func listedClass(_ name: String) throws(BusError) -> ImageClass? {
        name.isEmpty ? nil : try imageClass(name)
    }

    /// importd's check of `flags` for a transfer of `type`: only the bits it takes, else InvalidArgs.
    static func flags(_ raw: UInt64, for type: TransferType) throws(BusError) -> TransferFlags {
        do { return try TransferFlags(validating: raw, allowed: .allowed(for: type)) } catch {
            throw BusError.invalidArgs(error.message)
        }
    }

    /// The list methods take no flag yet.
    private static func refuseFlags(_ raw: UInt64) throws(BusError) {
        guard raw == 0 else { throw BusError.invalidArgs("Flags 0x\(String(raw, radix: 16)) invalid") }
    }
}

/// ProgressUpdate's rate limit: a transfer's progress goes out when its whole percent changed
/// and at least `interval` after the previous signal, so a fast transfer sends a handful, not
/// one per worker report; the last value held back goes out before TransferRemoved.
struct ProgressThrottle {
    /// The shortest time between two ProgressUpdate signals of one transfer.
    static let interval: Duration = .milliseconds(250)
    private var sentPercent: Int?
    private var sentAt: ContinuousClock.Instant?
    private var pending: Double?

    /// The value to send now for a new `fraction`, if any.
    mutating func offer(_ fraction: Double, now: ContinuousClock.Instant = .now) -> Double? {
        let percent = Int((fraction * 100).rounded(.down))
        guard percent != sentPercent else { pending = nil; return nil }
        if let sentAt, now - sentAt < Self.interval {
            pending = fraction
            return nil
        }
        sentPercent = percent
        sentAt = now
        pending = nil
        return fraction
    }

    /// The value held back, once, at the end of the transfer.
    mutating func flush() -> Double? {
        defer { pending = nil }
        guard let pending else { return nil }
        sentPercent = Int((pending * 100).rounded(.down))
        return pending
    }
}

extension Import1Service {
    /// `Transfer.ProgressUpdate(d progress)` on the transfer's object; a failure is logged only.
    func emitProgressUpdate(_ id: UInt32, _ fraction: Double) async {
        do {
            try await bus.emitSignal(path: Self.transferPath(id), interface: Import1Transfer.name,
                                     member: Import1Transfer.Signal.progressUpdate.rawValue, [.double(fraction)])
        } catch {
            logger.debug("transfer \(id): cannot emit ProgressUpdate: \(error)")
        }
    }
}
