import CRbd
import Linux

/// A connection to a Ceph cluster (`rados_t`): made by `rados_create2`, configured from a conf
/// file and options, connected by `rados_connect`, shut down in `deinit` (`rados_shutdown`) once
/// the last pool and image opened through it are gone (they hold it).
public final class RadosCluster: @unchecked Sendable {
    // @unchecked: librados documents rados_t as safe to share between threads; this object only
    // holds the handle, never changes it after init, and frees it once in deinit.
    let library: RbdLibrary
    let handle: rados_t

    /// What to connect as and where.
    public struct Configuration: Sendable, Hashable {
        /// The cluster's conf file (`mon host`, `keyring`); nil uses Ceph's default search.
        public var configFile: String?
        /// The client id without `client.` (`berth` → `client.berth`); nil is `client.admin`.
        public var clientID: String?
        /// The cluster name (`ceph`), which names default conf and keyring paths.
        public var clusterName: String
        /// How long connecting and each monitor operation may take before failing with
        /// ETIMEDOUT, in seconds (librados' default is to wait for ever; 0 keeps that).
        public var timeoutSeconds: Int
        /// Further `rados_conf_set` options (`keyring`, `log_file`), applied after the file.
        public var options: [String: String]

        public init(configFile: String? = nil, clientID: String? = nil, clusterName: String = "ceph",
                    timeoutSeconds: Int = 30, options: [String: String] = [:]) {
            self.configFile = configFile
            self.clientID = clientID
            self.clusterName = clusterName
            self.timeoutSeconds = timeoutSeconds
            self.options = options
        }
    }

    public let configuration: Configuration

    /// Connects (rados_create2, rados_conf_read_file, rados_conf_set, rados_connect); loads the
    /// libraries first if this is the process's first RBD use.
    public init(_ configuration: Configuration) throws(RbdError) {
        let library = try RbdLibrary.shared()
        self.library = library
        self.configuration = configuration
        var cluster: rados_t?
        let user = "client." + (configuration.clientID ?? "admin")
        try check("rados_create2", configuration.clusterName,
                  library.rados_create2(&cluster, configuration.clusterName, user, 0))
        guard let cluster else { throw RbdError(call: "rados_create2", errno: .ENOMEM, subject: configuration.clusterName) }
        // From here every stored property is set, so a throw runs deinit, which shuts the handle
        // down: no rados_shutdown of our own on the error paths (it would be a double free).
        handle = cluster
        if let file = configuration.configFile {
            try check("rados_conf_read_file", file, library.rados_conf_read_file(cluster, file))
        }
        var options = configuration.options
        if configuration.timeoutSeconds > 0 {
            // Bounded waits on the monitors: without them an unreachable monitor blocks
            // rados_connect for ever. OSD operations keep librados' default (wait until the OSD
            // is back): a timed-out write would leave an image half-written where waiting
            // completes it; a caller that must not wait sets rados_osd_op_timeout itself.
            let seconds = String(configuration.timeoutSeconds)
            for key in ["client_mount_timeout", "rados_mon_op_timeout"]
            where options[key] == nil {
                options[key] = seconds
            }
        }
        // librados logs to stderr of the daemon by default; keep berthd's output its own.
        if options["log_to_stderr"] == nil { options["log_to_stderr"] = "false" }
        if options["err_to_stderr"] == nil { options["err_to_stderr"] = "false" }
        for (key, value) in options.sorted(by: { $0.key < $1.key }) {
            try check("rados_conf_set", key, library.rados_conf_set(cluster, key, value))
        }
        try check("rados_connect", configuration.configFile ?? configuration.clusterName,
                  library.rados_connect(cluster))
    }

    deinit {
        library.rados_shutdown(handle)
    }

    /// An I/O context on the pool `name` (rados_ioctx_create); ENOENT if there is no such pool.
    public func pool(_ name: String) throws(RbdError) -> RbdPool {
        try RbdPool(cluster: self, name: name)
    }
}
