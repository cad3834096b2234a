import Logging
import PoolAPI
import Rbd
import RbdBackend
import RbdHost
import RawLoopBackend

import struct SystemPackage.FilePath

/// berthd's optional backends from `ROOT/etc/berth/backends.d/*.conf` (docs/rbd.md).
extension Daemon {
    /// Reads and validates the configuration; a bad file stops berthd at start with its file
    /// and line. With no configuration nothing else happens here: no Ceph library is loaded.
    func loadBackendConfiguration() throws -> BackendConfiguration {
        let configuration: BackendConfiguration
        do {
            configuration = try BackendConfiguration.load(root: options.root)
        } catch {
            throw DaemonError("\(error)")
        }
        for pool in configuration.rbdPools {
            logger.info("RBD pool '\(pool.pool)' of cluster '\(pool.cluster)' configured at \(pool.origin)")
        }
        return configuration
    }

    /// Connects each configured RBD pool (off the bus thread, each bounded by its `timeout`).
    /// A pool that cannot be reached stops berthd if it is `required`, else it is left out with
    /// an error in the log and berthd serves everything else.
    /// - Parameter raw: the raw backend, whose read-only loop inspection reads an RBD image's
    ///   bytes once rbd-fuse shows it as a file.
    func connectRbdPools(_ configuration: BackendConfiguration, runtimeDirectory: String,
                         raw: RawLoopBackend) async throws -> [any ImageBackend] {
        guard !configuration.rbdPools.isEmpty else { return [] }
        // What a killed predecessor left mounted (an inspection open when it died).
        RbdFuse.cleanUpStaleMounts(runtimeDirectory: runtimeDirectory)
        var backends: [any ImageBackend] = []
        for (index, pool) in configuration.rbdPools.enumerated() {
            let client = RbdFuse.Client(cluster: pool.cluster, pool: pool.pool, confPath: pool.confPath,
                                        clientID: pool.clientID, timeoutSeconds: pool.timeoutSeconds)
            let inspector: RbdBackend.Inspector = { _, name, _ in
                try RbdFuse.openForInspection(image: name, client: client, runtimeDirectory: runtimeDirectory,
                                              inspectFile: { try raw.openForInspection(at: FilePath($0)) })
            }
            let cluster = RadosCluster.Configuration(
                configFile: pool.confPath, clientID: pool.clientID, clusterName: pool.cluster, timeoutSeconds: pool.timeoutSeconds,
                options: ["rados_osd_op_timeout": String(pool.timeoutSeconds)])
            // The first pool receives new raw images (imports); more pools only list and serve theirs.
            // Temp images are tagged host:root, so each berthd cleans only its own at start.
            let settings = RbdBackend.Configuration(cluster: cluster, pool: pool.pool, receivesNewImages: index == 0,
                                                    owner: "\(RbdBackend.localHostName()):\(options.root)")
            do {
                let backend = try await Blocking.run { try RbdBackend(settings, inspector: inspector) }
                backends.append(backend)
                logger.info("RBD pool '\(pool.pool)' of cluster '\(pool.cluster)' connected as client.\(pool.clientID)")
            } catch {
                let message = "cannot reach RBD pool '\(pool.pool)' of cluster '\(pool.cluster)' (\(pool.origin)): \(error)"
                if pool.required { throw DaemonError(message + "; it is required=yes") }
                logger.error("\(message); serving without it (required=no)")
            }
        }
        return backends
    }
}
