import ArgumentParser
import Bus
import Foundation
import Glibc
import Linux
import Services
import Synchronization
import struct SystemPackage.FilePath

// berthctl's transfer verbs, machinectl's import-tar/-raw/-fs, export-tar/-raw and pull-tar/-raw
// over org.freedesktop.import1: each opens its file, starts the transfer, then follows it
// (LogMessage to stderr, Progress as a bar or "NN%" lines) until TransferRemoved.

/// Options of the verbs that start a transfer.
public struct TransferOptions: ParsableArguments {
    @Flag(help: "Return once the transfer has started, printing its id and object path.")
    public var noBlock = false

    public init() {}
}

/// What every import verb takes besides the file and the name.
public struct ImportOptions: ParsableArguments {
    @Flag(help: "Replace an existing image of that name.") public var force = false
    @Flag(help: "Make the imported image read-only.") public var readOnly = false
    @Option(name: .customLong("class"), help: "machine (the default), portable, sysext or confext: the pool the image goes to (ImportTarEx…).")
    public var imageClass: String?

    public init() {}
}

/// `berthctl import-tar FILE [NAME]`: Manager.ImportTar.
public struct ImportTar: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "import-tar", abstract: "Import a tar archive as an image.")

    @OptionGroup public var global: GlobalOptions
    @OptionGroup public var transfer: TransferOptions
    @OptionGroup public var importing: ImportOptions
    @Argument(help: "The archive; \"-\" or absent for stdin.") public var file: String?
    @Argument(help: "The image name (default: the file name without .tar and compression suffixes).") public var name: String?

    public init() {}

    public func run() throws {
        try TransferVerb.importFile(.importTar, file: file, name: name, force: importing.force, readOnly: importing.readOnly,
                                    imageClass: importing.imageClass, global: global, transfer: transfer)
    }
}

/// `berthctl import-raw FILE [NAME]`: Manager.ImportRaw.
public struct ImportRaw: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "import-raw", abstract: "Import a raw or qcow2 disk image as an image.")

    @OptionGroup public var global: GlobalOptions
    @OptionGroup public var transfer: TransferOptions
    @OptionGroup public var importing: ImportOptions
    @Argument(help: "The disk image; \"-\" or absent for stdin.") public var file: String?
    @Argument(help: "The image name (default: the file name without .raw/.qcow2 and compression suffixes).") public var name: String?

    public init() {}

    public func run() throws {
        try TransferVerb.importFile(.importRaw, file: file, name: name, force: importing.force, readOnly: importing.readOnly,
                                    imageClass: importing.imageClass, global: global, transfer: transfer)
    }
}

/// `berthctl import-fs DIR [NAME]`: Manager.ImportFileSystem.
public struct ImportFileSystem: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "import-fs", abstract: "Import a directory tree as an image.")

    @OptionGroup public var global: GlobalOptions
    @OptionGroup public var transfer: TransferOptions
    @OptionGroup public var importing: ImportOptions
    @Argument(help: "The directory to import.") public var directory: String
    @Argument(help: "The image name (default: the directory's name).") public var name: String?

    public init() {}

    public func run() throws {
        try TransferVerb.importFile(.importFileSystem, file: directory, name: name, force: importing.force, readOnly: importing.readOnly,
                                    imageClass: importing.imageClass, global: global, transfer: transfer)
    }
}

/// `berthctl export-tar NAME [FILE]`: Manager.ExportTar.
public struct ExportTar: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "export-tar", abstract: "Export an image as a tar archive.")

    @OptionGroup public var global: GlobalOptions
    @OptionGroup public var transfer: TransferOptions
    @Option(help: "uncompressed, xz, gzip, bzip2 or zstd (default: from the file suffix).") public var format: String?
    @Option(name: .customLong("class"), help: "machine (the default), portable, sysext or confext: the pool the image is in (ExportTarEx…).")
    public var imageClass: String?
    @Argument(help: "The image to export.") public var name: String
    @Argument(help: "The archive to write; \"-\" or absent for stdout.") public var file: String?

    public init() {}

    public func run() throws {
        try TransferVerb.exportImage(.exportTar, name: name, file: file, format: format, imageClass: imageClass, global: global, transfer: transfer)
    }
}

/// `berthctl export-raw NAME [FILE]`: Manager.ExportRaw.
public struct ExportRaw: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "export-raw", abstract: "Export an image as a raw disk image.")

    @OptionGroup public var global: GlobalOptions
    @OptionGroup public var transfer: TransferOptions
    @Option(help: "uncompressed, xz, gzip, bzip2 or zstd (default: from the file suffix).") public var format: String?
    @Option(name: .customLong("class"), help: "machine (the default), portable, sysext or confext: the pool the image is in (ExportTarEx…).")
    public var imageClass: String?
    @Argument(help: "The image to export.") public var name: String
    @Argument(help: "The file to write; \"-\" or absent for stdout.") public var file: String?

    public init() {}

    public func run() throws {
        try TransferVerb.exportImage(.exportRaw, name: name, file: file, format: format, imageClass: imageClass, global: global, transfer: transfer)
    }
}

/// `berthctl pull-tar URL [NAME]`: Manager.PullTar.
public struct PullTar: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "pull-tar", abstract: "Download a tar archive as an image.")

    @OptionGroup public var global: GlobalOptions
    @OptionGroup public var transfer: TransferOptions
    @OptionGroup public var pulling: PullOptions
    @Option(help: "no, checksum or signature (the default, as machinectl).") public var verify = "signature"
    @Argument(help: "The URL to download.") public var url: String
    @Argument(help: "The image name (default: from the URL's last component).") public var name: String?

    public init() {}

    public func run() throws {
        try TransferVerb.pull(.pullTar, url: url, name: name, verify: verify, options: pulling, global: global, transfer: transfer)
    }
}

/// `berthctl pull-raw URL [NAME]`: Manager.PullRaw.
public struct PullRaw: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "pull-raw", abstract: "Download a raw disk image as an image.")

    @OptionGroup public var global: GlobalOptions
    @OptionGroup public var transfer: TransferOptions
    @OptionGroup public var pulling: PullOptions
    @Option(help: "no, checksum or signature (the default, as machinectl).") public var verify = "signature"
    @Argument(help: "The URL to download.") public var url: String
    @Argument(help: "The image name (default: from the URL's last component).") public var name: String?

    public init() {}

    public func run() throws {
        try TransferVerb.pull(.pullRaw, url: url, name: name, verify: verify, options: pulling, global: global, transfer: transfer)
    }
}

/// `berthctl pull-oci REF [NAME]`: Manager.PullOci (import1 of systemd v260).
public struct PullOci: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pull-oci", abstract: "Download an image from an OCI registry (registry/repository:tag or …@sha256:…).")

    @OptionGroup public var global: GlobalOptions
    @OptionGroup public var transfer: TransferOptions
    /// The same --force, --read-only, --keep-download and --class as pull-tar and pull-raw (an OCI pull
    /// keeps its verified layers in the pool's layer cache in any case).
    @OptionGroup public var options: PullOptions
    @Argument(help: "The image reference, e.g. registry.example:5000/team/app:1.0.") public var reference: String
    @Argument(help: "The image name (default: the repository's last component).") public var name: String?

    public init() {}

    public func run() throws {
        let flags = options.flags
        // "" lets berthd derive the name from the repository, as it checks the reference.
        let local = name ?? ""
        // The repository's last component, without its tag or digest.
        let repository = FilePath(String(reference.split(separator: "@").first ?? "")).lastComponent?.string ?? ""
        let shown = name ?? String(repository.split(separator: ":").first ?? "")
        try TransferVerb.follow(.pullOci, [.string(reference), .string(local), .string(options.imageClass ?? "machine"), .uint64(flags)], local: shown,
                                global: global, transfer: transfer)
    }
}

/// What the transfer verbs share: name and format derivation, and starting and following a transfer.
public enum TransferVerb {
    /// Suffixes machinectl strips from a file or URL name to make an image name, compression ones included.
    static let strippedSuffixes = [".xz", ".gz", ".bz2", ".zst", ".tar", ".tgz", ".raw", ".qcow2", ".img"]

    /// The image name for a file or URL's last component `base`: known suffixes stripped, repeatedly.
    public static func imageName(fromFileName base: String) -> String {
        var name = base
        var stripped = true
        while stripped {
            stripped = false
            for suffix in strippedSuffixes where name.hasSuffix(suffix) && name.count > suffix.count {
                name.removeLast(suffix.count)
                stripped = true
            }
        }
        return name
    }

    /// The last component of `url`'s path, without query or fragment.
    public static func lastComponent(ofURL url: String) -> String {
        var u = Substring(url)
        if let i = u.firstIndex(where: { $0 == "?" || $0 == "#" }) { u = u[..<i] }
        // A URL's path is cut like a file path: trailing slashes go, the last component stays.
        return FilePath(String(u)).lastComponent?.string ?? ""
    }

    /// The export format for `file`'s suffix, as machinectl picks it: "" (uncompressed) unless
    /// it ends in .xz, .gz, .bz2 or .zst.
    public static func exportFormat(forFile file: String?) -> String {
        guard let file else { return "" }
        if file.hasSuffix(".xz") { return "xz" }
        if file.hasSuffix(".gz") { return "gzip" }
        if file.hasSuffix(".bz2") { return "bzip2" }
        if file.hasSuffix(".zst") { return "zstd" }
        return ""
    }

    static func importFile(_ method: Import1Manager.Method, file: String?, name: String?, force: Bool, readOnly: Bool,
                           imageClass: String? = nil, global: GlobalOptions, transfer: TransferOptions) throws {
        let path = file == "-" ? nil : file
        let local: String
        if let name {
            local = name
        } else if let path {
            let base = (path as NSString).lastPathComponent
            local = method == .importFileSystem ? base : imageName(fromFileName: base)
        } else {
            throw ValidationError("Need either a file or an image name.")
        }
        let fd: FileDescriptor
        if let path {
            let flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | (method == .importFileSystem ? O_DIRECTORY : 0)
            let raw = open(path, flags)
            guard raw >= 0 else { throw failure("Cannot open \(path): \(String(cString: strerror(errno)))") }
            fd = FileDescriptor(owning: raw)
        } else {
            guard method != .importFileSystem else { throw ValidationError("import-fs needs a directory.") }
            fd = try dupStandard(STDIN_FILENO)
        }
        if let imageClass {
            // The class needs the …Ex form (systemd ≥ 256); without it berthctl speaks 252's.
            try follow(method.withClassAndFlags, [.unixFD(fd), .string(local), .string(imageClass),
                                                  .uint64(TransferVerb.flags(force: force, readOnly: readOnly))],
                       local: local, global: global, transfer: transfer)
            return
        }
        try follow(method, [.unixFD(fd), .string(local), .boolean(force), .boolean(readOnly)], local: local, global: global, transfer: transfer)
    }

    static func exportImage(_ method: Import1Manager.Method, name: String, file: String?, format: String?,
                            imageClass: String? = nil, global: GlobalOptions, transfer: TransferOptions) throws {
        let path = file == "-" ? nil : file
        var formatName = format ?? exportFormat(forFile: path)
        if formatName == "uncompressed" { formatName = "" }
        guard ["", "xz", "gzip", "bzip2", "zstd"].contains(formatName) else {
            throw ValidationError("Unknown format \(formatName): use uncompressed, xz, gzip, bzip2 or zstd.")
        }
        let fd: FileDescriptor
        if let path {
            let raw = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0o666)
            guard raw >= 0 else { throw failure("Cannot create \(path): \(String(cString: strerror(errno)))") }
            fd = FileDescriptor(owning: raw)
        } else {
            // As machinectl: an archive written to a terminal is of no use to anyone.
            guard isatty(STDOUT_FILENO) == 0 else { throw ValidationError("Refusing to write the archive to a terminal.") }
            fd = try dupStandard(STDOUT_FILENO)
        }
        if let imageClass {
            try follow(method.withClassAndFlags, [.string(name), .string(imageClass), .unixFD(fd), .string(formatName), .uint64(0)],
                       local: name, global: global, transfer: transfer)
            return
        }
        try follow(method, [.string(name), .unixFD(fd), .string(formatName)], local: name, global: global, transfer: transfer)
    }

    static func pull(_ method: Import1Manager.Method, url: String, name: String?, verify: String, options: PullOptions,
                     global: GlobalOptions, transfer: TransferOptions) throws {
        guard ["no", "checksum", "signature"].contains(verify) else {
            throw ValidationError("Unknown verification mode \(verify): use no, checksum or signature.")
        }
        let local = name ?? imageName(fromFileName: lastComponent(ofURL: url))
        guard !local.isEmpty else { throw ValidationError("Cannot derive an image name from \(url); give one.") }
        if options.needsEx {
            try follow(method.withClassAndFlags, [.string(url), .string(local), .string(options.imageClass ?? "machine"),
                                                  .string(verify), .uint64(options.flags)],
                       local: local, global: global, transfer: transfer)
            return
        }
        try follow(method, [.string(url), .string(local), .string(verify), .boolean(options.force)], local: local, global: global, transfer: transfer)
    }

    /// Prints `message` to stderr; the exit code 1 to throw.
    private static func failure(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        return ExitCode(1)
    }

    private static func dupStandard(_ fd: Int32) throws -> FileDescriptor {
        let raw = fcntl(fd, F_DUPFD_CLOEXEC, 3)
        guard raw >= 0 else { throw failure("Cannot use fd \(fd): \(String(cString: strerror(errno)))") }
        return FileDescriptor(owning: raw)
    }

    /// Starts the transfer with `method(arguments)` and follows it to its end (or only prints
    /// its id with --no-block). Exits 1 unless TransferRemoved reports "done".
    static func follow(_ method: Import1Manager.Method, _ arguments: [BusValue], local: String,
                       global: GlobalOptions, transfer: TransferOptions) throws {
        let client: BusClient
        do { client = try BusClient(address: global.busAddress) } catch { throw failure("Cannot reach the bus: \(error)") }
        let service = ServiceKind.import1
        // Subscribed before the call so that neither a quick TransferRemoved nor early log lines are missed.
        if !transfer.noBlock {
            try client.matchSignal(sender: service.busName, path: service.managerPath, interface: Import1Manager.name,
                                   member: Import1Manager.Signal.transferRemoved.rawValue)
            try client.matchSignal(sender: service.busName, path: nil, interface: Import1Transfer.name,
                                   member: Import1Transfer.Signal.logMessage.rawValue)
            // If berthd goes away mid-transfer no TransferRemoved will come: its name losing its owner ends the wait.
            try client.matchSignal(sender: "org.freedesktop.DBus", path: ObjectPath("/org/freedesktop/DBus"),
                                   interface: "org.freedesktop.DBus", member: "NameOwnerChanged")
            Interrupt.install()
        }
        let reply: [BusValue]
        do {
            reply = try client.call(destination: service.busName, path: service.managerPath, interface: Import1Manager.name,
                                    member: method.rawValue, arguments)
        } catch {
            throw failure("Failed to start transfer: \(error.message)")
        }
        guard reply.count == 2, let id64 = reply[0].uint64Value, case .objectPath(let path) = reply[1] else {
            throw failure("\(method.rawValue) returned \(reply)")
        }
        let id = UInt32(truncatingIfNeeded: id64)
        if transfer.noBlock {
            if global.json {
                print(try TransferOutcome(id: id, path: path.rawValue, local: local, result: nil).json())
            } else {
                print("\(id) \(path.rawValue)")
            }
            return
        }
        let display = ProgressDisplay(local: local)
        var canceled = false
        var result: String?
        while result == nil {
            if !canceled && Interrupt.happened {
                canceled = true
                display.clear()
                FileHandle.standardError.write(Data("Canceling transfer \(id).\n".utf8))
                _ = try? client.call(destination: service.busName, path: service.managerPath, interface: Import1Manager.name,
                                     member: Import1Manager.Method.cancelTransfer.rawValue, [.uint32(id)])
            }
            for signal in try client.waitForSignals(timeoutMicroseconds: 500_000) {
                if signal.member == Import1Transfer.Signal.logMessage.rawValue && signal.path == path {
                    if signal.arguments.count == 2, let message = signal.arguments[1].stringValue {
                        display.clear()
                        FileHandle.standardError.write(Data((message.hasSuffix("\n") ? message : message + "\n").utf8))
                    }
                } else if signal.member == Import1Manager.Signal.transferRemoved.rawValue, signal.arguments.count == 3,
                          signal.arguments[0].uint64Value == UInt64(id) {
                    result = signal.arguments[2].stringValue ?? "failed"
                } else if signal.member == "NameOwnerChanged", signal.arguments.count == 3,
                          signal.arguments[0].stringValue == service.busName, signal.arguments[2].stringValue == "" {
                    display.clear()
                    FileHandle.standardError.write(Data("\(service.busName) went away during the transfer.\n".utf8))
                    result = "failed"
                }
            }
            if result == nil, let progress = try? client.property(destination: service.busName, path: path, interface: Import1Transfer.name,
                                                                  name: Import1Transfer.Property.progress.rawValue).doubleValue {
                display.show(progress >= 0 ? progress : nil)
            }
        }
        // A transfer that ended "done" got all the way: its last poll (every 0.5 s) may have caught
        // it short of that, so the bar is drawn full once before it goes.
        if result == "done" { display.show(1) }
        display.clear()
        let outcome = result ?? "failed"
        if global.json { print(try TransferOutcome(id: id, path: path.rawValue, local: local, result: outcome).json()) }
        if outcome != "done" {
            FileHandle.standardError.write(Data("Transfer \(outcome).\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// A transfer's id, object path, local name and (once over) its TransferRemoved result, for --json.
public struct TransferOutcome: Codable, Sendable, Equatable {
    public var id: UInt32
    public var path: String
    public var local: String
    public var result: String?

    func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}

/// Progress on stderr: a bar redrawn in place on a terminal, else a "NN%" line per new percent.
final class ProgressDisplay {
    private let terminal = isatty(STDERR_FILENO) != 0
    private let local: String
    private var lastPercent: Int?
    private var spin = 0
    private var drawn = false

    init(local: String) { self.local = local }

    /// Shows `progress` (0…1), nil while unknown.
    func show(_ progress: Double?) {
        if terminal {
            let width = 30
            let bar: String
            if let progress {
                let filled = min(width, max(0, Int(progress * Double(width))))
                bar = "[" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled) + "] "
                    + "\(Int((progress * 100).rounded(.down)))%"
            } else {
                let marks = ["|", "/", "-", "\\"]
                spin = (spin + 1) % marks.count
                bar = "[" + String(repeating: " ", count: width) + "] " + marks[spin]
            }
            FileHandle.standardError.write(Data("\r\u{1B}[K\(local) \(bar)".utf8))
            drawn = true
        } else if let progress {
            let percent = Int((progress * 100).rounded(.down))
            if percent != lastPercent {
                lastPercent = percent
                FileHandle.standardError.write(Data("\(percent)%\n".utf8))
            }
        }
    }

    /// Erases the bar before other output.
    func clear() {
        if drawn {
            FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
            drawn = false
        }
    }
}

/// SIGINT while following a transfer: recorded here, acted on (CancelTransfer) by the loop.
enum Interrupt {
    /// Lock-free, so storing it from a signal handler is safe.
    private static let flag = Atomic<Bool>(false)

    /// Installs the SIGINT handler (sigaction without SA_RESTART, so sd_bus_wait returns at once).
    static func install() {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in Interrupt.flag.store(true, ordering: .relaxed) }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        sigaction(SIGINT, &action, nil)
        // A parent may have left SIGINT blocked (Foundation's Process passes its mask on).
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigprocmask(SIG_UNBLOCK, &set, nil)
    }

    static var happened: Bool { flag.load(ordering: .relaxed) }
}
