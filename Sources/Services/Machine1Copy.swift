import Bus
import Glibc
import Linux
import Machines
import PoolAPI
import Synchronization

/// Copies under way, across the service: machined refuses a 65th (OPERATIONS_MAX) with
/// LimitsExceeded, and so does berthd, so a caller cannot tie up every worker thread.
private let copiesUnderWay = Mutex(0)
private let maximumCopies = 64

/// machine1's copy members: CopyFromMachine, CopyToMachine, their …WithFlags forms, and the
/// Machine object's CopyFrom/CopyTo(WithFlags). The arguments are checked as machined 252 checks
/// them (bus_machine_method_copy), with its replies; the copy itself (`MachineFileCopy`) runs on a
/// worker thread, so other calls are answered meanwhile, and its errors are answered as
/// machined's copy operation answers a failed child: the errno, as sd-bus names it.
extension Machine1Service {
    /// Bit 0 of the flags: replace an existing destination (machinectl --force).
    static let copyReplace: UInt64 = 1

    /// `name`'s copy, `fromMachine` or to it; `flags` nil for the forms without flags.
    func copyFiles(machine name: String, fromMachine: Bool, source: String, destination: String, flags: UInt64?) async throws -> [BusValue] {
        if copiesUnderWay.withLock({ $0 }) >= maximumCopies {
            throw BusError(name: BusError.Name.limitsExceeded, message: "Too many ongoing copies.")
        }
        guard machineExists(name) else { throw Self.noSuchMachine(name) }
        guard let machine = machines[name]?.machine, machine.class == "container" else {
            throw BusError.notSupported("Copying files is only supported on container machines.")
        }
        if let flags, flags & ~Self.copyReplace != 0 { throw Self.sdBusErrno(.EINVAL) }
        guard source.hasPrefix("/") else { throw BusError.invalidArgs("Source path must be absolute.") }
        let destination = destination.isEmpty ? source : destination
        guard destination.hasPrefix("/") else { throw BusError.invalidArgs("Destination path must be absolute.") }
        // What machined refuses before it forks: a path with no file name at the end.
        for path in [source, destination] {
            do { _ = try MachineFileCopy.split(path) } catch {
                throw Self.sdBusErrno(error.errno, "Failed to extract file name of '\(path)' path: \(String(cString: strerror(error.errno.rawValue)))")
            }
        }
        let leader = machine.leader, start = machine.leaderStartTime
        let replace = (flags ?? 0) & Self.copyReplace != 0
        copiesUnderWay.withLock { $0 += 1 }
        defer { copiesUnderWay.withLock { $0 -= 1 } }
        do {
            try await Blocking.run(.bulk) {
                try MachineFileCopy.copy(leader: leader, leaderStartTime: start, direction: fromMachine ? .fromMachine : .toMachine,
                                         source: source, destination: destination, replace: replace)
            }
        } catch let error as SystemCallError {
            throw Self.sdBusErrno(error.errno)
        }
        return []
    }

    /// The error sd-bus makes of an errno (sd_bus_error_set_errno, and with a message,
    /// sd_bus_error_set_errnof): its well-known names where it has one, else `System.Error.E…`;
    /// without a message, its fixed text for those names, else strerror's.
    static func sdBusErrno(_ e: Errno, _ message: String? = nil) -> BusError {
        let known: (name: String, text: String)? = switch e {
        case .EPERM, .EACCES: (BusError.Name.accessDenied, "Access denied")
        case .EINVAL: (BusError.Name.invalidArgs, "Invalid argument")
        case .ESRCH: ("org.freedesktop.DBus.Error.UnixProcessIdUnknown", "No such process")
        case .ENOENT: (BusError.Name.fileNotFound, "File not found")
        case .EEXIST: (BusError.Name.fileExists, "File exists")
        case .EIO: ("org.freedesktop.DBus.Error.IOError", "Input/output error")
        case .EOPNOTSUPP: (BusError.Name.notSupported, "Not supported")
        case Errno(Glibc.EADDRNOTAVAIL): ("org.freedesktop.DBus.Error.BadAddress", "Address not available")
        case Errno(Glibc.ENOBUFS): (BusError.Name.limitsExceeded, "Limits exceeded")
        default: nil
        }
        if let known { return BusError(name: known.name, message: message ?? known.text) }
        return BusError(errno: e, message ?? String(cString: strerror(e.rawValue)))
    }
}
