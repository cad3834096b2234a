import Logging
import PoolAPI

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
}
