import Glibc
import Linux
import PoolAPI
import struct SystemPackage.FilePath

/// berthd's transfer worker, `berth-transfer` (TransferJobs): one transfer in a child process,
/// so hostile input can crash a worker but never the daemon, and the daemon itself never loads
/// libarchive, libcurl, gpgme or OpenSSL. This is the contract between the two sides.
///
/// Command line: `<exe> --berth-transfer-worker <type> --parent PID [--target PATH]
/// [--source PATH] [--format F] [--url URL] [--verify MODE] [--root DIR] [--class CLASS]
/// [--flags N] [--pool PATH] [--etag ETAG]…`.
/// fd 3 is the status pipe (StatusLine protocol), fd 4 the data fd (input for imports,
/// output for exports; none for pulls). Exit status 0 is success; anything else is failure,
/// with an `E` line saying why (4: the worker could not confine itself; it never runs
/// unconfined — TransferJobs/WorkerSandbox.swift, docs/security.md).
public enum TransferWorker {
    /// argv[1] that selects the worker mode.
    public static let flag = "--berth-transfer-worker"
    /// The worker executable, installed beside berthd.
    public static let executableName = "berth-transfer"
    package static let statusDescriptor: Int32 = 3
    package static let dataDescriptor: Int32 = 4

    /// `berth-transfer` in the folder of the running executable (/proc/self/exe, resolved now,
    /// so a berthd replaced on disk while running still finds the worker of its installation).
    public static func executableBesideSelf() -> String {
        let folder = FilePath((try? readLink("/proc/self/exe")) ?? "").removingLastComponent()
        return (folder.isEmpty ? "." : folder).appending(executableName).string
    }

    /// The worker's parsed command line.
    package struct Arguments: Equatable {
        package var type: TransferType
        package var parent: pid_t = 0
        package var target: String?
        package var source: String?
        package var format: ExportFormat = .uncompressed
        package var url: String?
        package var verify: VerifyMode = .no
        package var root: String = "/"
        /// The image class (the pool the image goes to or comes from).
        package var imageClass: ImageClass = .machine
        /// The transfer's flags (checked by berthd already; the worker acts on keep-download).
        package var flags: TransferFlags = []
        /// The real path of the class's pool folder: where a worker may keep caches (kept
        /// downloads, layers); nil where the worker needs none.
        package var poolPath: String?
        /// ETags of downloads already kept for this URL (keep-download): sent as If-None-Match.
        package var knownETags: [String] = []

        package init(type: TransferType) { self.type = type }

        /// `[flag, type, --option value…]`.
        package init(parsing arguments: [String]) throws {
            var rest = arguments[...]
            if rest.first == TransferWorker.flag { rest = rest.dropFirst() }
            guard let typeName = rest.popFirst(), let type = TransferType(rawValue: typeName) else {
                throw TransferError("worker: missing or unknown transfer type")
            }
            self.init(type: type)
            while let option = rest.popFirst() {
                guard let value = rest.popFirst() else { throw TransferError("worker: \(option) needs a value") }
                switch option {
                case "--parent": parent = pid_t(value) ?? 0
                case "--target": target = value
                case "--source": source = value
                case "--format":
                    guard let f = ExportFormat(argument: value) else { throw TransferError("worker: bad format \(value)") }
                    format = f
                case "--url": url = value
                case "--verify":
                    guard let v = VerifyMode(rawValue: value) else { throw TransferError("worker: bad verify mode \(value)") }
                    verify = v
                case "--root": root = value
                case "--class":
                    guard let c = ImageClass(argument: value) else { throw TransferError("worker: bad class \(value)") }
                    imageClass = c
                case "--flags":
                    guard let raw = UInt64(value) else { throw TransferError("worker: bad flags \(value)") }
                    flags = TransferFlags(rawValue: raw)
                case "--pool": poolPath = value
                case "--etag": knownETags.append(value)
                default: throw TransferError("worker: unknown option \(option)")
                }
            }
        }

        package var commandLine: [String] {
            var a = [TransferWorker.flag, type.rawValue, "--parent", String(parent), "--root", root,
                     "--format", format.rawValue, "--verify", verify.rawValue,
                     "--class", imageClass.rawValue, "--flags", String(flags.rawValue)]
            if let poolPath { a += ["--pool", poolPath] }
            for etag in knownETags { a += ["--etag", etag] }
            if let target { a += ["--target", target] }
            if let source { a += ["--source", source] }
            if let url { a += ["--url", url] }
            return a
        }
    }
}
