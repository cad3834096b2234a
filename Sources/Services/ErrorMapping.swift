import Bus
import Glibc
import Linux
import PoolAPI

/// The one table from typed errors to the D-Bus error names systemd's daemons answer with.
///
/// Measured on systemd 252 (DESIGN.md): unknown image → `org.freedesktop.machine1.NoSuchImage`,
/// name taken → `FileExists`, bad name → `InvalidArgs`, read-only (`.host`) → `System.Error.EROFS`,
/// no quota support → `NotSupported`; any other errno → `System.Error.E…`.
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

    /// The D-Bus error for `code`, or nil where the errno decides (`system`).
    static func name(for code: PoolError.Code) -> String? {
        switch code {
        case .noSuchImage: Name.noSuchImage
        case .imageExists: BusError.Name.fileExists
        case .invalidName, .invalidArgument: BusError.Name.invalidArgs
        case .readOnly: BusError.systemErrorPrefix + Errno.EROFS.name
        case .notSupported: BusError.Name.notSupported
        case .busy: BusError.systemErrorPrefix + Errno.EBUSY.name
        case .noSpace: BusError.systemErrorPrefix + Errno.ENOSPC.name
        case .quotaExceeded: BusError.systemErrorPrefix + Errno.EDQUOT.name
        case .invalidImage: BusError.systemErrorPrefix + Errno(Glibc.EBADMSG).name
        case .cancelled: BusError.systemErrorPrefix + Errno.ECANCELED.name
        default: nil
        }
    }

    /// The error reply for anything a service's logic throws.
    public static func busError(_ error: any Error) -> BusError {
        switch error {
        case let e as BusError:
            return e
        case let e as PoolError:
            if let name = name(for: e.code) { return BusError(name: name, message: e.description) }
            return BusError(errno: e.errno ?? .EIO, e.description)
        default:
            return Bus.busError(error)
        }
    }
}
