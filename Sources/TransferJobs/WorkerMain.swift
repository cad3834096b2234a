import FileTree
import Glibc
import Linux
import Transfer

/// The worker's side of `TransferWorker`: what `berth-transfer` runs.
extension TransferWorker {
    /// The worker's entry: runs one transfer and exits (0 on success).
    public static func main(arguments: [String]) -> Never {
        // Die with berthd: PR_SET_PDEATHSIG, then make sure berthd did not die before that.
        let parsed: Arguments
        do { parsed = try Arguments(parsing: arguments) } catch {
            StatusReporter(fd: statusDescriptor).fail("\(error)")
            exit(2)
        }
        do { try setParentDeathSignal(SIGKILL) } catch {
            // Without it the worker would outlive a crashed berthd, writing into its pool.
            StatusReporter(fd: statusDescriptor).fail("cannot die with berthd: \(error)")
            exit(3)
        }
        // berthd died before PR_SET_PDEATHSIG took effect (we were reparented): no one waits for us.
        if parsed.parent != 0 && getppid() != parsed.parent { exit(3) }
        // A closed pipe is an error to report, not a silent death.
        signal(SIGPIPE, SIG_IGN)
        _ = fcntl(statusDescriptor, F_SETFD, FD_CLOEXEC)
        _ = fcntl(dataDescriptor, F_SETFD, FD_CLOEXEC)
        let reporter = StatusReporter(fd: statusDescriptor)
        // Confined before a byte of input is read (WorkerSandbox.swift); a worker that cannot
        // confine itself fails the transfer rather than run with the host's full root.
        let scratch: FileDescriptor?
        do { scratch = try confine(parsed) } catch {
            reporter.fail("cannot confine the transfer worker: \(error)")
            exit(4)
        }
        do {
            try perform(parsed, data: dataDescriptor, reporter: reporter, scratch: scratch)
            exit(0)
        } catch {
            reporter.fail("\(error)")
            exit(1)
        }
    }

    /// One transfer's work, in-process (the worker calls this; so can tests). `scratch`: an
    /// unnamed file on the pool's filesystem for raw imports (see `confine`).
    static func perform(_ a: Arguments, data: Int32, reporter: StatusReporter, scratch: FileDescriptor? = nil) throws {
        func need(_ value: String?, _ what: String) throws -> String {
            guard let value else { throw TransferError("worker: \(what) missing") }
            return value
        }
        switch a.type {
        case .importTar, .importRaw, .importFileSystem:
            let what = switch a.type { case .importTar: "tar archive"; case .importRaw: "raw disk image"; default: "directory tree" }
            reporter.log(LogPriority.info, "Importing \(what).")
        case .exportTar, .exportRaw:
            reporter.log(LogPriority.info, "Exporting image as \(a.format.rawValue) \(a.type == .exportTar ? "tar" : "raw").")
        case .pullTar, .pullRaw:
            reporter.log(LogPriority.info, "Pulling \(a.url ?? "?") (verify: \(a.verify.rawValue)).")
        case .pullOci:
            reporter.log(LogPriority.info, "Pulling OCI image \(a.url ?? "?").")
        }
        switch a.type {
        case .importTar:
            try TarImport.extract(from: data, into: try need(a.target, "--target"), reporter: reporter)
        case .importRaw:
            try RawImport.run(from: data, to: try need(a.target, "--target"), root: a.root, scratch: scratch, reporter: reporter)
        case .importFileSystem:
            let into = try FileDescriptor.openDirectory(try need(a.target, "--target"), followSymlinks: false)
            let from = try FileDescriptor(owning: sys("dup") { dup(data) })
            _ = try TreeCopy.copyContents(of: from, into: into)
            reporter.progress(1)
        case .exportTar:
            try TarExport.run(directory: try need(a.source, "--source"), to: data, format: a.format, reporter: reporter)
        case .exportRaw:
            try RawExport.run(path: try need(a.source, "--source"), to: data, format: a.format, root: a.root, reporter: reporter)
        case .pullTar, .pullRaw:
            try Pull.run(url: try need(a.url, "--url"), kind: a.type, verify: a.verify, root: a.root,
                         target: try need(a.target, "--target"),
                         knownETags: a.flags.contains(.keepDownload) ? a.knownETags : [], scratch: scratch, reporter: reporter)
        case .pullOci:
            try OciPull.run(reference: try need(a.url, "--url"), root: a.root, target: try need(a.target, "--target"), reporter: reporter)
        }
        reporter.log(LogPriority.info, "Operation completed successfully.")
    }
}
