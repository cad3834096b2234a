import Bus
import Glibc
import Linux
import PoolAPI

/// The one table from typed errors to the D-Bus errors systemd's daemons answer with.
///
/// Measured on systemd 252 (DESIGN.md, and live by the differential tests in
/// Tests/EndToEndTests/Machine1Tests.swift, which run systemd-machined 252 beside berthd): unknown
/// image → `org.freedesktop.machine1.NoSuchImage`, name taken → `FileExists`, bad name →
/// `InvalidArgs`, read-only (`.host`) → `System.Error.EROFS`, no quota support → `NotSupported`;
/// any other errno → `System.Error.E…`, except the few that sd-bus names itself (`errnoName`).
public enum ErrorMapping {
    /// systemd's own error names that are not errno-derived.
    public enum Name {
        // Each constant's value is the error name it stands for.
        public static let noSuchImage = "org.freedesktop.machine1.NoSuchImage"
        public static let noSuchMachine = "org.freedesktop.machine1.NoSuchMachine"
        public static let noSuchTransfer = "org.freedesktop.import1.NoSuchTransfer"
        public static let transferInProgress = "org.freedesktop.import1.TransferInProgress"
        public static let noSuchPortableImage = "org.freedesktop.portable1.NoSuchImage"
    }

    /// One row of the table: the D-Bus error name of a pool error code, and the errno whose
    /// strerror(3) text machined puts in the message where its reply is an errno's (nil where
    /// machined words it otherwise, or the error's own errno decides).
    struct Entry {
        let name: String
        let machinedErrno: Errno?
    }

    /// The table: a pool error code → its D-Bus error. nil for `.system` (the errno decides).
    static func entry(for code: PoolError.Code) -> Entry? {
        switch code {
        case .noSuchImage: Entry(name: Name.noSuchImage, machinedErrno: nil)
        case .imageExists: Entry(name: BusError.Name.fileExists, machinedErrno: .EEXIST)
        case .invalidName, .invalidArgument: Entry(name: BusError.Name.invalidArgs, machinedErrno: nil)
        case .readOnly: Entry(name: systemError(.EROFS), machinedErrno: .EROFS)
        case .notSupported: Entry(name: BusError.Name.notSupported, machinedErrno: .EOPNOTSUPP)
        case .busy: Entry(name: systemError(.EBUSY), machinedErrno: .EBUSY)
        case .noSpace: Entry(name: systemError(.ENOSPC), machinedErrno: .ENOSPC)
        case .quotaExceeded: Entry(name: systemError(.EDQUOT), machinedErrno: .EDQUOT)
        case .invalidImage: Entry(name: systemError(Errno(Glibc.EBADMSG)), machinedErrno: nil)
        case .cancelled: Entry(name: systemError(.ECANCELED), machinedErrno: nil)
        default: nil
        }
    }

    /// `System.Error.<errno name>`.
    static func systemError(_ e: Errno) -> String { BusError.systemErrorPrefix + e.name }

    /// The name sd_bus_error_set_errno gives `e`, as systemd's daemons reply a failed call: the
    /// D-Bus standard names sd-bus maps a few errnos to, `System.Error.<NAME>` otherwise (with
    /// Linux's names that `Errno` does not spell).
    static func errnoName(_ e: Errno) -> String {
        switch e {
        case .EEXIST: BusError.Name.fileExists
        case .EOPNOTSUPP, .ENOTTY, .ENOSYS: BusError.Name.notSupported
        case .EACCES, .EPERM: BusError.Name.accessDenied
        case Errno(Glibc.ENOPKG): BusError.systemErrorPrefix + "ENOPKG"
        case Errno(Glibc.ENOTCONN): BusError.systemErrorPrefix + "ENOTCONN"
        default: systemError(e)
        }
    }

    /// The error reply for anything a service's logic throws, with Berth's own message.
    public static func busError(_ error: any Error) -> BusError {
        switch error {
        case let e as BusError:
            return e
        case let e as PoolError:
            if let entry = entry(for: e.code) { return BusError(name: entry.name, message: e.description) }
            return BusError(errno: e.errno ?? .EIO, e.description)
        default:
            return Bus.busError(error)
        }
    }
}

/// systemd-machined 252's exact error replies for the image members: the pool's typed errors
/// carry Berth's own messages, but machine1's clients show machined's, so the messages are
/// rebuilt here from the image names of the call. The names come from `ErrorMapping`'s table.
enum Machine1Errors {
    /// `InvalidArgs "Image name 'x' is invalid."` unless `name` is a valid image name.
    static func validate(_ name: String) throws(BusError) {
        do { try ImagePool.validateName(name) } catch {
            throw BusError.invalidArgs("Image name '\(name)' is invalid.")
        }
    }

    /// `NoSuchImage "No image 'x' known"`.
    static func noSuchImage(_ name: String) -> BusError {
        BusError(name: ErrorMapping.Name.noSuchImage, message: "No image '\(name)' known")
    }

    /// A failed call's reply as sd_bus_error_set_errno builds it: the errno's name
    /// (`ErrorMapping.errnoName`) with strerror's text, after `prefix` if given.
    static func errno(_ e: Errno, prefix: String? = nil) -> BusError {
        let text = String(cString: strerror(e.rawValue))
        return BusError(name: ErrorMapping.errnoName(e), message: prefix.map { "\($0): \(text)" } ?? text)
    }

    /// What an image member of `name` throws, as machined replies it.
    static func translate(_ error: any Error, name: String, metadata: Bool = false) -> BusError {
        guard let e = error as? PoolError else { return ErrorMapping.busError(error) }
        switch e.code {
        case .noSuchImage: return noSuchImage(name)
        case .invalidName: return BusError.invalidArgs("Image name '\(name)' is invalid.")
        case .invalidImage where metadata:
            // machined: "Failed to read image metadata: Package not installed" for an image
            // with nothing to inspect (a raw file without partitions).
            return errno(Errno(Glibc.ENOPKG), prefix: "Failed to read image metadata")
        default:
            if let entry = ErrorMapping.entry(for: e.code), let n = entry.machinedErrno {
                return BusError(name: entry.name, message: String(cString: strerror(n.rawValue)))
            }
            if let n = e.errno { return errno(n, prefix: metadata ? "Failed to read image metadata" : nil) }
            return ErrorMapping.busError(e)
        }
    }
}
