import Linux

/// The one error type of the pool and its backends. Services map `code` to D-Bus error names in
/// one table; `cause` keeps the failing system call for logs and for `System.Error.E…`.
public struct PoolError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, as a closed set that can still grow without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: Hashable, Sendable {
            case noSuchImage, imageExists, invalidName, readOnly, notSupported, busy, noSpace, quotaExceeded
            case invalidImage, cancelled, system, invalidArgument
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// No image of that name (machine1: `NoSuchImage`).
        public static let noSuchImage = Code(.noSuchImage)
        /// The target name is taken (`org.freedesktop.DBus.Error.FileExists`).
        public static let imageExists = Code(.imageExists)
        /// Not a valid image name (`org.freedesktop.DBus.Error.InvalidArgs`).
        public static let invalidName = Code(.invalidName)
        /// The image is read-only, e.g. `.host` or a vendor image (`System.Error.EROFS`).
        public static let readOnly = Code(.readOnly)
        /// The backend cannot do this (`org.freedesktop.DBus.Error.NotSupported`).
        public static let notSupported = Code(.notSupported)
        /// The image is in use or locked by another operation (`System.Error.EBUSY`).
        public static let busy = Code(.busy)
        /// The filesystem ran out of space (`System.Error.ENOSPC`).
        public static let noSpace = Code(.noSpace)
        /// A quota limit was hit (`System.Error.EDQUOT`).
        public static let quotaExceeded = Code(.quotaExceeded)
        /// The image's content is malformed (bad qcow2 header, no root partition…).
        public static let invalidImage = Code(.invalidImage)
        /// The operation was cancelled.
        public static let cancelled = Code(.cancelled)
        /// An argument other than a name that cannot be honoured, e.g. a limit below current
        /// usage (`org.freedesktop.DBus.Error.InvalidArgs`, as systemd answers out-of-range values).
        public static let invalidArgument = Code(.invalidArgument)
        /// Any other failed system call: see `errno`.
        public static let system = Code(.system)

        public var description: String { "\(value)" }
    }

    public let code: Code
    public let message: String
    public let cause: (any Error)?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// The errno behind this error, where a system call caused it.
    public var errno: Errno? {
        if let c = cause as? SystemCallError { return c.errno }
        if let c = cause as? PoolError { return c.errno }
        return nil
    }

    public var description: String {
        if let cause { return "\(message): \(cause)" }
        return message
    }

    /// Wraps a failed system call, classifying the errnos that have a code of their own.
    public static func from(_ error: SystemCallError, _ message: String) -> PoolError {
        switch error.errno {
        case .ENOSPC: return PoolError(.noSpace, message, cause: error)
        case .EDQUOT: return PoolError(.quotaExceeded, message, cause: error)
        case .EROFS: return PoolError(.readOnly, message, cause: error)
        case .EBUSY: return PoolError(.busy, message, cause: error)
        case .EEXIST: return PoolError(.imageExists, message, cause: error)
        case .EOPNOTSUPP, .ENOTTY, .ENOSYS: return PoolError(.notSupported, message, cause: error)
        default: return PoolError(.system, message, cause: error)
        }
    }
}
