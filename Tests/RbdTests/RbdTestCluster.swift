import Foundation
import Rbd
import TestSupport

/// The Ceph cluster the RBD tests use: the test process's shared one-node cluster
/// (`CephCluster.shared()`), or one started by hand (BERTH_TEST_CEPH_CONF, with a keyring in it).
enum RbdTestCluster {
    static var externalConf: String? { ProcessInfo.processInfo.environment["BERTH_TEST_CEPH_CONF"] }

    /// What the tests need: a cluster given by hand, or root and Ceph's daemons to start one.
    static let requirement = Requirement("a Ceph cluster (BERTH_TEST_CEPH_CONF, or ceph-mon, ceph-mgr, ceph-osd to start one)") {
        externalConf != nil ? nil : CephCluster.skipReason
    }

    static var poolName: String {
        if externalConf != nil { return ProcessInfo.processInfo.environment["BERTH_TEST_CEPH_POOL"] ?? "berth" }
        return (try? CephCluster.shared().pool) ?? "berth"
    }

    /// How a client connects: as berthd does, with the cluster's client identity.
    static func clusterConfiguration() throws -> RadosCluster.Configuration {
        if let conf = externalConf { return .init(configFile: conf) }
        let cluster = try CephCluster.shared()
        return .init(configFile: cluster.clientConf, clientID: cluster.clientID)
    }

    /// A pool on a connection of its own (`newConnection` says the test means another host's),
    /// shut down when the test drops it: no connection outlives the tests, as librados crashes a
    /// process that exits with one still open (its static objects go before its threads).
    static func pool(newConnection: Bool = false) throws -> RbdPool {
        try RadosCluster(clusterConfiguration()).pool(poolName)
    }
}
