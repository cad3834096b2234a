import FileTree
import Glibc
import Linux

/// The worker mode of berthd: one transfer in a child process, so hostile input can crash a
/// worker but never the daemon. berthd dispatches to it first thing in main:
/// `if CommandLine.arguments.dropFirst().first == TransferWorker.flag { TransferWorker.main(…) }`.
///
/// Command line: `<exe> --berth-transfer-worker <type> --parent PID [--target PATH]
/// [--source PATH] [--format F] [--url URL] [--verify MODE] [--root DIR]`.
/// fd 3 is the status pipe (StatusLine protocol), fd 4 the data fd (input for imports,
/// output for exports; none for pulls). Exit status 0 is success; anything else is failure,
/// with an `E` line saying why.
public enum TransferWorker {
    /// argv[1] that selects the worker mode.
    public static let flag = "--berth-transfer-worker"
    static let statusDescriptor: Int32 = 3
    static let dataDescriptor: Int32 = 4

    /// The worker's parsed command line.
    struct Arguments: Equatable {
        var type: TransferType
        var parent: pid_t = 0
        var target: String?
        var source: String?
        var format: ExportFormat = .uncompressed
        var url: String?
        var verify: VerifyMode = .no
        var root: String = "/"

        init(type: TransferType) { self.type = type }

        /// `[flag, type, --option value…]`.
        init(parsing arguments: [String]) throws {
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
                default: throw TransferError("worker: unknown option \(option)")
                }
            }
        }

        var commandLine: [String] {
            var a = [TransferWorker.flag, type.rawValue, "--parent", String(parent), "--root", root,
                     "--format", format.rawValue, "--verify", verify.rawValue]
            if let target { a += ["--target", target] }
            if let source { a += ["--source", source] }
            if let url { a += ["--url", url] }
            return a
        }
    }

    /// The worker's entry: runs one transfer and exits (0 on success).
    public static func main(arguments: [String]) -> Never {
        // Die with berthd: PR_SET_PDEATHSIG, then make sure berthd did not die before that.
        let parsed: Arguments
        do { parsed = try Arguments(parsing: arguments) } catch {
            StatusReporter(fd: statusDescriptor).fail("\(error)")
            exit(2)
        }
        _ = try? setParentDeathSignal(SIGKILL)
        if parsed.parent != 0 && getppid() != parsed.parent { exit(3) }
        // A closed pipe is an error to report, not a silent death.
        signal(SIGPIPE, SIG_IGN)
        _ = fcntl(statusDescriptor, F_SETFD, FD_CLOEXEC)
        _ = fcntl(dataDescriptor, F_SETFD, FD_CLOEXEC)
        let reporter = StatusReporter(fd: statusDescriptor)
        do {
            try perform(parsed, data: dataDescriptor, reporter: reporter)
            exit(0)
        } catch {
            reporter.fail("\(error)")
            exit(1)
        }
    }

    /// One transfer's work, in-process (the worker calls this; so can tests).
    static func perform(_ a: Arguments, data: Int32, reporter: StatusReporter) throws {
        func need(_ value: String?, _ what: String) throws -> String {
            guard let value else { throw TransferError("worker: \(what) missing") }
            return value
        }
        switch a.type {
        case .importTar, .importRaw, .importFileSystem:
            reporter.log(LogPriority.info, "Importing \(a.type.rawValue) image.")
        case .exportTar, .exportRaw:
            reporter.log(LogPriority.info, "Exporting image as \(a.format.rawValue) \(a.type == .exportTar ? "tar" : "raw").")
        case .pullTar, .pullRaw:
            reporter.log(LogPriority.info, "Pulling \(a.url ?? "?") (verify: \(a.verify.rawValue)).")
        }
        switch a.type {
        case .importTar:
            try TarImport.extract(from: data, into: try need(a.target, "--target"), reporter: reporter)
        case .importRaw:
            try RawImport.run(from: data, to: try need(a.target, "--target"), reporter: reporter)
        case .importFileSystem:
            let into = try FileDescriptor.openDirectory(try need(a.target, "--target"), followSymlinks: false)
            let from = try FileDescriptor(owning: sys("dup") { dup(data) })
            _ = try TreeCopy.copyContents(of: from, into: into)
            reporter.progress(1)
        case .exportTar:
            try TarExport.run(directory: try need(a.source, "--source"), to: data, format: a.format, reporter: reporter)
        case .exportRaw:
            try RawExport.run(path: try need(a.source, "--source"), to: data, format: a.format, reporter: reporter)
        case .pullTar, .pullRaw:
            try Pull.run(url: try need(a.url, "--url"), kind: a.type, verify: a.verify, root: a.root,
                         target: try need(a.target, "--target"), reporter: reporter)
        }
        reporter.log(LogPriority.info, "Operation completed successfully.")
    }
}
