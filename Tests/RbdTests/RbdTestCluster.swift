import Foundation
import Rbd
import TestSupport

/// The Ceph cluster the RBD tests use: one per test process, shared by the suites.
enum RbdTestCluster {
    /// A cluster someone started by hand (BERTH_TEST_CEPH_CONF, admin keyring in it).
    static var externalConf: String? { ProcessInfo.processInfo.environment["BERTH_TEST_CEPH_CONF"] }

    static var available: Bool { externalConf != nil }

    static let poolName = ProcessInfo.processInfo.environment["BERTH_TEST_CEPH_POOL"] ?? "berth"

    /// How a backend under test connects.
    static func clusterConfiguration() throws -> RadosCluster.Configuration {
        guard let conf = externalConf else { throw ClusterMissing() }
        return .init(configFile: conf)
    }

    nonisolated(unsafe) private static var cluster: RadosCluster?
    private static let lock = NSLock()

    /// The shared connection's pool, or (`newConnection`) a pool on a connection of its own, as
    /// a second host would have.
    static func pool(newConnection: Bool = false) throws -> RbdPool {
        guard let conf = externalConf else { throw ClusterMissing() }
        if newConnection {
            return try RadosCluster(.init(configFile: conf)).pool(poolName)
        }
        lock.lock()
        defer { lock.unlock() }
        if let cluster { return try cluster.pool(poolName) }
        let made = try RadosCluster(.init(configFile: conf))
        cluster = made
        return try made.pool(poolName)
    }

    struct ClusterMissing: Error, CustomStringConvertible {
        var description: String { "no Ceph cluster for the RBD tests" }
    }
}
