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

/// One transfer to start (the arguments of import1's ImportTar, ImportRaw, ImportFileSystem,
/// ExportTar, ExportRaw, PullTar and PullRaw).
public struct TransferRequest: Sendable {
    /// What to do, with the arguments of that kind only.
    public enum Operation: Sendable {
        /// ImportTar / ImportRaw / ImportFileSystem: read `fd` (a file, pipe or socket; a
        /// directory for import-fs) into a new image.
        case importing(fd: Int32, force: Bool, readOnly: Bool)
        /// ExportTar / ExportRaw: write the image to `fd` (a file or pipe).
        case exporting(fd: Int32, format: ExportFormat)
        /// PullTar / PullRaw: download `url`, verify, import. PullOci: `url` is the image
        /// reference (`OciReference`), `verify` unused (every blob is checked by its digest).
        case pulling(url: String, verify: VerifyMode, force: Bool)
    }

    /// `Transfer.Type`.
    public var type: TransferType
    /// The image name (`local_name`).
    public var local: String
    /// What `Transfer.Remote` shows: the URL, or a description of the fd.
    public var remote: String
    /// What to do, with its arguments.
    public var operation: Operation

    /// A request; `remote` defaults to the URL for pulls, else to the fd's path in /proc.
    /// The fd stays the caller's: the engine duplicates it and the caller may close it after
    /// `start` returns.
    public init(type: TransferType, local: String, operation: Operation, remote: String? = nil) {
        self.type = type
        self.local = local
        self.operation = operation
        switch operation {
        case .pulling(let url, _, _): self.remote = remote ?? url
        case .importing(let fd, _, _), .exporting(let fd, _): self.remote = remote ?? Self.describe(fd)
        }
    }

    /// ImportTar(fd, local_name, force, read_only).
    public static func importTar(fd: Int32, local: String, force: Bool = false, readOnly: Bool = false) -> TransferRequest {
        TransferRequest(type: .importTar, local: local, operation: .importing(fd: fd, force: force, readOnly: readOnly))
    }

    /// ImportRaw(fd, local_name, force, read_only).
    public static func importRaw(fd: Int32, local: String, force: Bool = false, readOnly: Bool = false) -> TransferRequest {
        TransferRequest(type: .importRaw, local: local, operation: .importing(fd: fd, force: force, readOnly: readOnly))
    }

    /// ImportFileSystem(fd, local_name, force, read_only): `fd` is a directory.
    public static func importFileSystem(fd: Int32, local: String, force: Bool = false, readOnly: Bool = false) -> TransferRequest {
        TransferRequest(type: .importFileSystem, local: local, operation: .importing(fd: fd, force: force, readOnly: readOnly))
    }

    /// ExportTar(local_name, fd, format).
    public static func exportTar(local: String, fd: Int32, format: ExportFormat) -> TransferRequest {
        TransferRequest(type: .exportTar, local: local, operation: .exporting(fd: fd, format: format))
    }

    /// ExportRaw(local_name, fd, format).
    public static func exportRaw(local: String, fd: Int32, format: ExportFormat) -> TransferRequest {
        TransferRequest(type: .exportRaw, local: local, operation: .exporting(fd: fd, format: format))
    }

    /// PullTar(url, local_name, verify_mode, force).
    public static func pullTar(url: String, local: String, verify: VerifyMode, force: Bool = false) -> TransferRequest {
        TransferRequest(type: .pullTar, local: local, operation: .pulling(url: url, verify: verify, force: force))
    }

    /// PullRaw(url, local_name, verify_mode, force).
    public static func pullRaw(url: String, local: String, verify: VerifyMode, force: Bool = false) -> TransferRequest {
        TransferRequest(type: .pullRaw, local: local, operation: .pulling(url: url, verify: verify, force: force))
    }

    /// PullOci(ref, local_name, class, flags) with force; the image is a tree.
    public static func pullOci(reference: String, local: String, force: Bool = false) -> TransferRequest {
        TransferRequest(type: .pullOci, local: local, operation: .pulling(url: reference, verify: .no, force: force))
    }

    /// `Transfer.Verify`: the pull's mode, "" for imports and exports (and for pull-oci, whose
    /// blobs are always checked against their digests).
    public var verify: String {
        if type == .pullOci { return "" }
        if case .pulling(_, let verify, _) = operation { return verify.rawValue }
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
