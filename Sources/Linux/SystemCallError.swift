import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// An `errno` value, named by its C constant where it matters to callers.
public struct Errno: RawRepresentable, Hashable, Sendable, Error, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public init(_ value: Int32) { self.rawValue = value }

    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(errno) }

    public static let EPERM = Errno(Glibc.EPERM)
    public static let ENOENT = Errno(Glibc.ENOENT)
    public static let EINTR = Errno(Glibc.EINTR)
    public static let EIO = Errno(Glibc.EIO)
    public static let EBADF = Errno(Glibc.EBADF)
    public static let EAGAIN = Errno(Glibc.EAGAIN)
    public static let ENOMEM = Errno(Glibc.ENOMEM)
    public static let EACCES = Errno(Glibc.EACCES)
    public static let EBUSY = Errno(Glibc.EBUSY)
    public static let EEXIST = Errno(Glibc.EEXIST)
    public static let EXDEV = Errno(Glibc.EXDEV)
    public static let ENOTDIR = Errno(Glibc.ENOTDIR)
    public static let EISDIR = Errno(Glibc.EISDIR)
    public static let EINVAL = Errno(Glibc.EINVAL)
    public static let ENOSPC = Errno(Glibc.ENOSPC)
    public static let EROFS = Errno(Glibc.EROFS)
    public static let ENOTTY = Errno(Glibc.ENOTTY)
    public static let ENOTEMPTY = Errno(Glibc.ENOTEMPTY)
    public static let ENOSYS = Errno(Glibc.ENOSYS)
    public static let EOPNOTSUPP = Errno(Glibc.EOPNOTSUPP)
    public static let ENODATA = Errno(Glibc.ENODATA)
    public static let EDQUOT = Errno(Glibc.EDQUOT)
    public static let ENXIO = Errno(Glibc.ENXIO)
    public static let ELOOP = Errno(Glibc.ELOOP)
    public static let ENAMETOOLONG = Errno(Glibc.ENAMETOOLONG)
    public static let ECANCELED = Errno(Glibc.ECANCELED)
    public static let ESRCH = Errno(Glibc.ESRCH)
    public static let ENOTCONN = Errno(Glibc.ENOTCONN)

    /// The C constant's name (`ENOENT`), as systemd uses it in `System.Error.ENOENT`.
    public var name: String {
        Errno.names[rawValue] ?? "E\(rawValue)"
    }

    /// strerror(3).
    public var description: String {
        String(cString: strerror(rawValue))
    }

    private static let names: [Int32: String] = [
        Glibc.EPERM: "EPERM", Glibc.ENOENT: "ENOENT", Glibc.ESRCH: "ESRCH", Glibc.EINTR: "EINTR",
        Glibc.EIO: "EIO", Glibc.ENXIO: "ENXIO", Glibc.E2BIG: "E2BIG", Glibc.EBADF: "EBADF",
        Glibc.EAGAIN: "EAGAIN", Glibc.ENOMEM: "ENOMEM", Glibc.EACCES: "EACCES", Glibc.EFAULT: "EFAULT",
        Glibc.EBUSY: "EBUSY", Glibc.EEXIST: "EEXIST", Glibc.EXDEV: "EXDEV", Glibc.ENODEV: "ENODEV",
        Glibc.ENOTDIR: "ENOTDIR", Glibc.EISDIR: "EISDIR", Glibc.EINVAL: "EINVAL", Glibc.ENFILE: "ENFILE",
        Glibc.EMFILE: "EMFILE", Glibc.ENOTTY: "ENOTTY", Glibc.EFBIG: "EFBIG", Glibc.ENOSPC: "ENOSPC",
        Glibc.ESPIPE: "ESPIPE", Glibc.EROFS: "EROFS", Glibc.EMLINK: "EMLINK", Glibc.EPIPE: "EPIPE",
        Glibc.ENAMETOOLONG: "ENAMETOOLONG", Glibc.ENOSYS: "ENOSYS", Glibc.ENOTEMPTY: "ENOTEMPTY",
        Glibc.ELOOP: "ELOOP", Glibc.ENODATA: "ENODATA", Glibc.EOPNOTSUPP: "EOPNOTSUPP",
        Glibc.EDQUOT: "EDQUOT", Glibc.ECANCELED: "ECANCELED", Glibc.ENOTCONN: "ENOTCONN",
        Glibc.ETIMEDOUT: "ETIMEDOUT", Glibc.ECONNREFUSED: "ECONNREFUSED", Glibc.ENOMEDIUM: "ENOMEDIUM",
        Glibc.EBADMSG: "EBADMSG", Glibc.EPROTO: "EPROTO", Glibc.ENOTSOCK: "ENOTSOCK",
    ]
}

/// A failed system call: which call, on what, and the errno it returned.
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    /// The C function that failed, e.g. `renameat2`; its man page explains the errno.
    public let call: String
    /// What the call was applied to (a path, a device), for the message.
    public let subject: String?
    public let errno: Errno

    public init(_ call: String, _ errno: Errno, subject: String? = nil) {
        self.call = call
        self.errno = errno
        self.subject = subject
    }

    public var description: String {
        if let subject { return "\(call)(\(subject)): \(errno) (\(errno.name))" }
        return "\(call): \(errno) (\(errno.name))"
    }
}

/// Runs a C call returning -1 on failure, retrying EINTR in this one place.
/// - Returns: the call's non-negative result.
@discardableResult
@inline(__always)
public func sys<T: BinaryInteger>(_ name: String, _ subject: @autoclosure () -> String? = nil, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Errno.current
        if e == .EINTR { continue }
        throw SystemCallError(name, e, subject: subject())
    }
}
