import Linux
#if canImport(Glibc)
import Glibc
#endif

/// A failed librados/librbd call: which call, on what, and the errno it returned (Ceph's calls
/// return `-errno`), or a library that could not be loaded at all.
///
/// Shaped like `SystemCallError` so the pool's one error table maps both the same way
/// (`errno` → D-Bus error); `systemCallError` gives the plain value where a caller wants it.
public struct RbdError: Error, CustomStringConvertible, Sendable {
    /// The C function that failed (`rbd_open`, `rados_connect`, `dlopen`).
    public let call: String
    /// What it was applied to (image, pool, snapshot, library), for the message.
    public let subject: String?
    /// The errno Ceph returned; nil for loading errors (dlopen/dlsym), which have none.
    public let errno: Errno?
    /// dlerror(3)'s text for loading errors.
    public let message: String?

    public init(call: String, errno: Errno, subject: String? = nil) {
        self.call = call
        self.errno = errno
        self.subject = subject
        self.message = nil
    }

    init(call: String, subject: String?, message: String) {
        self.call = call
        self.errno = nil
        self.subject = subject
        self.message = message
    }

    /// This error as a `SystemCallError` (a loading error becomes ELIBACC, "cannot access a
    /// needed shared library").
    public var systemCallError: SystemCallError {
        SystemCallError(call, errno ?? Errno(ELIBACC), subject: subject)
    }

    public var description: String {
        let target = subject.map { "(\($0))" } ?? ""
        if let errno { return "\(call)\(target): \(errno) (\(errno.name))" }
        return "\(call)\(target): \(message ?? "failed")"
    }
}

/// Checks a Ceph return code (`-errno` on failure) and passes a non-negative one through.
@discardableResult
@inline(__always)
func check<T: BinaryInteger>(_ call: String, _ subject: @autoclosure () -> String?, _ result: T) throws(RbdError) -> T {
    if result >= 0 { return result }
    throw RbdError(call: call, errno: Errno(-Int32(truncatingIfNeeded: result)), subject: subject())
}
