/// Where an RBD image lives, written as the path-like string `rbd://CLUSTER/POOL/IMAGE`: the value
/// an RBD-backed `Image.path` holds and the `--target`/`--source` a transfer worker gets for an
/// import into, or an export from, an RBD image. It names no file: whoever opens it connects
/// with the matching `[rbd]` section of `backends.d` (BackendConfiguration), found by cluster and
/// pool.
public struct RbdLocator: Sendable, Hashable, CustomStringConvertible {
    /// The scheme prefix.
    public static let scheme = "rbd://"
    /// The prefix as a `FilePath` folds it (repeated separators coalesced).
    static let pathScheme = "rbd:/"

    /// The cluster name (`ceph`).
    public var cluster: String
    /// The Ceph pool.
    public var pool: String
    /// The RBD image name (a temp name `.#…` while an import writes it).
    public var image: String

    public init(cluster: String, pool: String, image: String) {
        self.cluster = cluster
        self.pool = pool
        self.image = image
    }

    /// Parses `rbd://CLUSTER/POOL/IMAGE`, or `rbd:/CLUSTER/POOL/IMAGE` as a `FilePath` of it
    /// spells it; nil for anything else (a plain path, a bad name).
    public init?(_ text: String) {
        let rest: Substring
        if text.hasPrefix(Self.scheme) {
            rest = text.dropFirst(Self.scheme.count)
        } else if text.hasPrefix(Self.pathScheme) {
            rest = text.dropFirst(Self.pathScheme.count)
        } else {
            return nil
        }
        let parts = rest.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        let (cluster, pool, image) = (String(parts[0]), String(parts[1]), String(parts[2]))
        guard BackendConfiguration.isCephName(cluster), BackendConfiguration.isCephName(pool),
              !image.isEmpty, !image.contains("/"), image.utf8.count <= 255, !image.utf8.contains(0) else { return nil }
        self.init(cluster: cluster, pool: pool, image: image)
    }

    /// `rbd://CLUSTER/POOL/IMAGE`.
    public var description: String { "\(Self.scheme)\(cluster)/\(pool)/\(image)" }

    /// The same pool, another image (a temp name, the final name).
    public func with(image: String) -> RbdLocator { RbdLocator(cluster: cluster, pool: pool, image: image) }

    /// Whether `text` is an RBD locator rather than a path.
    public static func isLocator(_ text: String) -> Bool { text.hasPrefix(scheme) || text.hasPrefix(pathScheme) }
}

extension BackendConfiguration {
    /// The `[rbd]` section serving `locator`'s cluster and pool.
    public func rbdPool(for locator: RbdLocator) -> RbdPool? {
        rbdPools.first { $0.cluster == locator.cluster && $0.pool == locator.pool }
    }
}
