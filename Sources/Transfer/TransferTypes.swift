import PoolAPI

/// The kinds of transfer, by the strings import1 reports (`Transfer.Type`, ListTransfers).
public enum TransferType: String, Sendable, Hashable, CaseIterable {
    case importTar = "import-tar"
    case importRaw = "import-raw"
    case importFileSystem = "import-fs"
    case exportTar = "export-tar"
    case exportRaw = "export-raw"
    case pullTar = "pull-tar"
    case pullRaw = "pull-raw"
    // Newer than systemd 252
    /// PullOci (import1 of systemd v260): an image from an OCI registry.
    case pullOci = "pull-oci"
}

/// PullTar/PullRaw's `verify_mode` argument (`Transfer.Verify`).
public enum VerifyMode: String, Sendable, Hashable, CaseIterable {
    /// No verification.
    case no
    /// SHA-256 from `<file>.sha256` or `SHA256SUMS` beside the image must match.
    case checksum
    /// As `checksum`, and `SHA256SUMS` must carry a good detached signature (`.gpg`/`.asc`)
    /// by a key of `ROOT/etc/systemd/import-pubring.gpg` or `ROOT/usr/lib/systemd/…`.
    case signature
}

/// ExportTar/ExportRaw's `format` argument: `""` and `"uncompressed"` write plain data.
public enum ExportFormat: String, Sendable, Hashable, CaseIterable {
    case uncompressed
    case gzip
    case bzip2
    case xz
    case zstd

    /// Parses import1's format string; `""` means uncompressed (machinectl sends it for a
    /// plain file). nil for anything else (the harness answers InvalidArgs).
    public init?(argument: String) {
        if argument.isEmpty { self = .uncompressed; return }
        self.init(rawValue: argument)
    }
}

/// import1's `flags` argument of the …Ex members (systemd's public `ImportFlags` bits, stable
/// on the bus). 252's members map their `force`/`read_only` booleans onto the same bits.
public struct TransferFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// IMPORT_FORCE (bit 0): replace an existing image of that name atomically.
    public static let force = TransferFlags(rawValue: 1 << 0)
    /// IMPORT_READ_ONLY (bit 1): the new image is read-only.
    public static let readOnly = TransferFlags(rawValue: 1 << 1)
    /// IMPORT_PULL_KEEP_DOWNLOAD (bit 2, pulls only): keep the verified download as a hidden
    /// image of the pool, reused by a later pull of the same URL while the server's ETag matches.
    public static let keepDownload = TransferFlags(rawValue: 1 << 2)

    /// What a transfer of `type` accepts (importd: imports force|read-only, pulls also
    /// keep-download, exports nothing). A new kind of pull adds itself here.
    public static func allowed(for type: TransferType) -> TransferFlags {
        switch type {
        case .importTar, .importRaw, .importFileSystem: [.force, .readOnly]
        case .pullTar, .pullRaw: [.force, .readOnly, .keepDownload]
        // keep-download: accepted; an OCI pull always keeps its verified layers in the pool's
        // layer cache.
        case .pullOci: [.force, .readOnly, .keepDownload]
        case .exportTar, .exportRaw: []
        }
    }

    /// `raw` if it holds only bits of `allowed`, else importd's InvalidArgs message
    /// ("Flags 0x… invalid").
    public init(validating raw: UInt64, allowed: TransferFlags) throws(TransferError) {
        guard raw & ~allowed.rawValue == 0 else {
            throw TransferError("Flags 0x\(String(raw, radix: 16)) invalid")
        }
        self.init(rawValue: raw)
    }
}

/// One transfer to start (the arguments of import1's ImportTar, ImportRaw, ImportFileSystem,
/// ExportTar, ExportRaw, PullTar and PullRaw, and of their …Ex forms).
public struct TransferRequest: Sendable {
    /// What to do, with the arguments of that kind only.
    public enum Operation: Sendable {
        /// ImportTar / ImportRaw / ImportFileSystem: read `fd` (a file, pipe or socket; a
        /// directory for import-fs) into a new image.
        case importing(fd: Int32)
        /// ExportTar / ExportRaw: write the image to `fd` (a file or pipe).
        case exporting(fd: Int32, format: ExportFormat)
        /// PullTar / PullRaw: download `url`, verify, import. PullOci: `url` is the image
        /// reference (`OciReference`), `verify` unused (every blob is checked by its digest).
        case pulling(url: String, verify: VerifyMode)
    }

    /// `Transfer.Type`.
    public var type: TransferType
    /// The image name (`local_name`).
    public var local: String
    /// What `Transfer.Remote` shows: the URL, or a description of the fd.
    public var remote: String
    /// What to do, with its arguments.
    public var operation: Operation
    /// The class of the image: which pool it is imported into or exported from (252's members:
    /// `.machine`).
    public var imageClass: ImageClass
    /// force / read-only / keep-download, already checked against `TransferFlags.allowed(for:)`.
    public var flags: TransferFlags

    /// A request; `remote` defaults to the URL for pulls, else to the fd's path in /proc.
    /// The fd stays the caller's: the engine duplicates it and the caller may close it after
    /// `start` returns.
    public init(type: TransferType, local: String, operation: Operation, imageClass: ImageClass = .machine,
                flags: TransferFlags = [], remote: String? = nil) {
        self.type = type
        self.local = local
        self.operation = operation
        self.imageClass = imageClass
        self.flags = flags
        switch operation {
        case .pulling(let url, _): self.remote = remote ?? url
        case .importing(let fd), .exporting(let fd, _): self.remote = remote ?? Self.describe(fd)
        }
    }

    /// 252's `force` and `read_only` booleans as the flag bits.
    public static func flags(force: Bool, readOnly: Bool) -> TransferFlags {
        var f: TransferFlags = []
        if force { f.insert(.force) }
        if readOnly { f.insert(.readOnly) }
        return f
    }

    /// ImportTar(fd, local_name, force, read_only).
    public static func importTar(fd: Int32, local: String, force: Bool = false, readOnly: Bool = false,
                                 imageClass: ImageClass = .machine) -> TransferRequest {
        TransferRequest(type: .importTar, local: local, operation: .importing(fd: fd), imageClass: imageClass,
                        flags: flags(force: force, readOnly: readOnly))
    }

    /// ImportRaw(fd, local_name, force, read_only).
    public static func importRaw(fd: Int32, local: String, force: Bool = false, readOnly: Bool = false,
                                 imageClass: ImageClass = .machine) -> TransferRequest {
        TransferRequest(type: .importRaw, local: local, operation: .importing(fd: fd), imageClass: imageClass,
                        flags: flags(force: force, readOnly: readOnly))
    }

    /// ImportFileSystem(fd, local_name, force, read_only): `fd` is a directory.
    public static func importFileSystem(fd: Int32, local: String, force: Bool = false, readOnly: Bool = false,
                                        imageClass: ImageClass = .machine) -> TransferRequest {
        TransferRequest(type: .importFileSystem, local: local, operation: .importing(fd: fd), imageClass: imageClass,
                        flags: flags(force: force, readOnly: readOnly))
    }

    /// ExportTar(local_name, fd, format).
    public static func exportTar(local: String, fd: Int32, format: ExportFormat, imageClass: ImageClass = .machine) -> TransferRequest {
        TransferRequest(type: .exportTar, local: local, operation: .exporting(fd: fd, format: format), imageClass: imageClass)
    }

    /// ExportRaw(local_name, fd, format).
    public static func exportRaw(local: String, fd: Int32, format: ExportFormat, imageClass: ImageClass = .machine) -> TransferRequest {
        TransferRequest(type: .exportRaw, local: local, operation: .exporting(fd: fd, format: format), imageClass: imageClass)
    }

    /// PullTar(url, local_name, verify_mode, force).
    public static func pullTar(url: String, local: String, verify: VerifyMode, force: Bool = false,
                               imageClass: ImageClass = .machine, flags extra: TransferFlags = []) -> TransferRequest {
        TransferRequest(type: .pullTar, local: local, operation: .pulling(url: url, verify: verify), imageClass: imageClass,
                        flags: flags(force: force, readOnly: false).union(extra))
    }

    /// PullRaw(url, local_name, verify_mode, force).
    public static func pullRaw(url: String, local: String, verify: VerifyMode, force: Bool = false,
                               imageClass: ImageClass = .machine, flags extra: TransferFlags = []) -> TransferRequest {
        TransferRequest(type: .pullRaw, local: local, operation: .pulling(url: url, verify: verify), imageClass: imageClass,
                        flags: flags(force: force, readOnly: false).union(extra))
    }

    /// PullOci(ref, local_name, class, flags): the image is a tree of the class's pool.
    public static func pullOci(reference: String, local: String, imageClass: ImageClass = .machine,
                               flags: TransferFlags = []) -> TransferRequest {
        TransferRequest(type: .pullOci, local: local, operation: .pulling(url: reference, verify: .no), imageClass: imageClass,
                        flags: flags)
    }

    /// `Transfer.Verify`: the pull's mode, "" for imports and exports (and for pull-oci, whose
    /// blobs are always checked against their digests).
    public var verify: String {
        if type == .pullOci { return "" }
        if case .pulling(_, let verify) = operation { return verify.rawValue }
        return ""
    }

    private static func describe(_ fd: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: 4097)
        let n = readlink("/proc/self/fd/\(fd)", &buffer, 4096)
        guard n > 0 else { return "fd:\(fd)" }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

import Glibc

/// How a transfer ended: TransferRemoved's `result` string is `rawValue`.
public enum TransferResult: Sendable, Equatable {
    /// The transfer completed (and, for imports, the image is installed).
    case done
    /// Cancel()/CancelTransfer stopped it; nothing was left behind.
    case canceled
    /// It failed, with the reason (also sent as an error-priority log line).
    case failed(String)

    /// "done", "canceled" or "failed", as TransferRemoved carries it.
    public var rawValue: String {
        switch self {
        case .done: "done"
        case .canceled: "canceled"
        case .failed: "failed"
        }
    }
}

/// What a transfer reports while it runs.
public enum TransferEvent: Sendable, Equatable {
    /// A log line with its syslog priority (Transfer.LogMessage(u priority, s line)).
    case log(priority: Int32, message: String)
    /// Progress moved (Transfer.Progress, 0…1).
    case progress(Double)
    /// The last event: the transfer is over (TransferRemoved).
    case finished(TransferResult)
}

/// syslog(3) priorities used in log events.
public enum LogPriority {
    /// LOG_ERR.
    public static let error: Int32 = 3
    /// LOG_WARNING.
    public static let warning: Int32 = 4
    /// LOG_NOTICE.
    public static let notice: Int32 = 5
    /// LOG_INFO.
    public static let info: Int32 = 6
    /// LOG_DEBUG.
    public static let debug: Int32 = 7
}

/// PullTar/PullRaw: what the daemon checks before starting a worker (the worker's download is
/// in TransferJobs).
public enum Pull {
    /// Is this an http(s) URL import1 accepts?
    public static func isValidURL(_ url: String) -> Bool {
        (url.hasPrefix("http://") || url.hasPrefix("https://")) && !url.contains(where: { $0 == " " || $0 == "\n" })
            && url.split(separator: "/", omittingEmptySubsequences: false).count >= 4
    }
}
