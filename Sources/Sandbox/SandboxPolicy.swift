/// What a confined process may see and do: `Sandbox.enter(_:)` turns it into a mount view,
/// namespaces, capabilities and a seccomp filter.
///
/// The view is a fresh read-only tmpfs root holding only: `/usr` (read-only, so shared
/// libraries and helper programs such as gpg resolve), the top-level `/bin`, `/lib`… links or
/// folders of the host, `/dev/null`, `zero`, `full`, `random`, `urandom`, a private `/proc`
/// showing no other process (hidepid=invisible, subset=pid), a small private `/tmp`, and the
/// `binds` below — each at the same path as on the host, so no path in the process's
/// arguments changes.
public struct SandboxPolicy: Sendable, Equatable {
    /// Whether a bind may be written through.
    public enum Access: Sendable, Equatable {
        case readOnly
        case readWrite
    }

    /// One file or folder of the host shown in the view at its own path.
    public struct Bind: Sendable, Equatable {
        /// The absolute path, on the host and in the view. Symlinks in it are followed on the host.
        public var path: String
        public var access: Access
        /// A missing optional bind is left out; a missing required one fails `enter`.
        public var required: Bool
        /// Host configuration or programs (the CA store, resolv.conf): bound with what is
        /// mounted below it, executables allowed. Otherwise (pool folders, images): only that
        /// mount, nosuid, nodev and noexec.
        public var system: Bool

        public init(_ path: String, _ access: Access, required: Bool = true, system: Bool = false) {
            self.path = path
            self.access = access
            self.required = required
            self.system = system
        }
    }

    /// Pool folders, images, keyrings… beyond the base view.
    public var binds: [Bind] = []
    /// Stay in the host's network namespace; otherwise a new, empty one (no interface is up,
    /// not even loopback: nothing can be reached).
    public var hostNetwork = false
    /// The capabilities the process keeps (bounding, permitted and effective sets).
    public var capabilities: CapabilitySet = []
    /// Descriptors that stay open beside 0–2; every other one is closed.
    public var keepDescriptors: [Int32] = []
    /// A descriptor that may be a directory (an input tree): it is bound into the view at
    /// `SandboxPolicy.inputPath` (read-only) and reopened there, under the same number, so
    /// that `..` from it ends at the view's root instead of walking the host's tree.
    public var directoryDescriptor: Int32?
    /// Descriptors that must not be directories (a directory descriptor reaches the host's
    /// tree through `..`): `enter` fails if one is.
    public var nonDirectoryDescriptors: [Int32] = []
    /// Size limit of the private /tmp.
    public var scratchBytes = 32 << 20

    /// Where `directoryDescriptor`'s folder appears in the view.
    public static let inputPath = "/run/input"

    public init() {}
}
