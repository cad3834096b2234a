import Bus
import Glibc
import Linux
import PoolAPI

/// systemd-machined 252's exact error replies for the image members (measured, /work/refnotes.md
/// and DESIGN.md): the pool's typed errors carry Berth's own messages; machine1's clients show
/// machined's, so the names *and* messages are rebuilt here from the image names of the call.
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

    /// A `System.Error.E…` (or the name sd-bus maps that errno to) with strerror's text, as
    /// sd_bus_error_set_errno builds it.
    static func errno(_ e: Errno, prefix: String? = nil) -> BusError {
        let text = String(cString: strerror(e.rawValue))
        let message = prefix.map { "\($0): \(text)" } ?? text
        switch e {
        case .EEXIST: return BusError(name: BusError.Name.fileExists, message: message)
        case .EOPNOTSUPP, .ENOTTY, .ENOSYS: return BusError(name: BusError.Name.notSupported, message: message)
        case .EACCES, .EPERM: return BusError(name: BusError.Name.accessDenied, message: message)
        // Linux's own errno names that Errno does not spell: systemd's `System.Error.<NAME>`.
        case Errno(Glibc.ENOPKG): return BusError(name: BusError.systemErrorPrefix + "ENOPKG", message: message)
        case Errno(Glibc.ENOTCONN): return BusError(name: BusError.systemErrorPrefix + "ENOTCONN", message: message)
        default: return BusError(errno: e, message)
        }
    }

    /// What an image member of `name` (and `newName`) throws, as machined replies it.
    static func translate(_ error: any Error, name: String, metadata: Bool = false) -> BusError {
        guard let e = error as? PoolError else { return ErrorMapping.busError(error) }
        switch e.code {
        case .noSuchImage: return noSuchImage(name)
        case .imageExists: return errno(.EEXIST)
        case .readOnly: return errno(.EROFS)
        case .notSupported: return errno(.EOPNOTSUPP)
        case .busy: return errno(.EBUSY)
        case .noSpace: return errno(.ENOSPC)
        case .quotaExceeded: return errno(.EDQUOT)
        case .invalidImage where metadata:
            // machined: "Failed to read image metadata: Package not installed" for an image
            // with nothing to inspect (a raw file without partitions).
            return errno(Errno(Glibc.ENOPKG), prefix: "Failed to read image metadata")
        case .invalidName: return BusError.invalidArgs("Image name '\(name)' is invalid.")
        default:
            if let n = e.errno { return errno(n, prefix: metadata ? "Failed to read image metadata" : nil) }
            return ErrorMapping.busError(e)
        }
    }
}
