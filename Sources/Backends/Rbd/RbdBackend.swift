import Dispatch
import Glibc
import Linux
import PoolAPI
import Rbd
import Synchronization

import struct SystemPackage.FilePath

/// Machine images as Ceph RBD images in one RADOS pool, shared by every host that configures
/// the same pool (docs/rbd-backend.md).
///
/// - Type `raw`: an RBD image is a disk image, what machinectl's raw images are (import-raw,
///   export-raw, `systemd-nspawn --image`); systemd's `block` type is a block device node under
///   /dev, which an RBD image is only once mapped (krbd), and not on hosts without it.
/// - Clone: a snapshot of the source, protected, and an `rbd_clone3` copy-on-write child
///   (constant time, no data copied). Each clone has its own snapshot (`berth-clone-…`), removed
///   with the last clone that uses it.
/// - Remove: refused (`.busy`) while clones hang off the image: remove the clones first (or
///   flatten them with `rbd flatten`); berthd never flattens by itself, which would copy the
///   whole image behind the caller's back.
/// - Read-only: the image metadata key `berth.read-only` = `1`, seen by every host; berthd
///   refuses writes, resizes, renames into use of such an image and opens it read-only for
///   inspection, and Berth's writers (imports) refuse it. Ceph has no per-image read-only
///   switch, so another librbd client with write caps on the pool is not stopped (hence no
///   `.enforcedReadOnly` capability).
/// - In use: an image is in use while any client holds its advisory lock (`rbd lock`, what
///   Berth's writers and running machines take, cookie `berth:<host>:<purpose>`); remove,
///   rename, set-limit and set-read-only of it are refused with `.busy`, on every host.
/// - Limit: the image's size. SetImageLimit grows it (rbd_resize); shrinking is refused, as it
///   would cut the filesystem inside.
/// - Usage: from `rbd_diff_iterate2` with fast-diff (the object map), never a data read;
///   metadata is cached per image and refreshed in the background, so ListImages is one
///   `rbd_list2` however many images there are.
public final class RbdBackend: ExternalImageBackend, @unchecked Sendable {
    // @unchecked: the Rbd handles are thread-safe (see RbdPool); the cache is a Mutex.

    /// What to connect to and how this host behaves.
    public struct Configuration: Sendable {
        /// Cluster, conf file, client id.
        public var cluster: RadosCluster.Configuration
        /// The RADOS pool holding the images.
        public var pool: String
        /// Whether imports of raw images go to this pool rather than the local pool folder.
        public var receivesNewImages: Bool
        /// The name this host's locks carry (`berth:<host>:…`).
        public var hostName: String
        /// Who made a temp image (metadata `berth.temp-owner`): this host and berthd's root, so
        /// that two berthd instances (two hosts, or two roots on one host) each clean only
        /// their own temp images at start.
        public var owner: String
        /// How long cached metadata of an image is used before it is refreshed in the background.
        public var cacheSeconds: Double

        public init(cluster: RadosCluster.Configuration, pool: String, receivesNewImages: Bool = true,
                    hostName: String = RbdBackend.localHostName(), owner: String? = nil, cacheSeconds: Double = 10) {
            self.cluster = cluster
            self.pool = pool
            self.receivesNewImages = receivesNewImages
            self.hostName = hostName
            self.owner = owner ?? hostName
            self.cacheSeconds = cacheSeconds
        }
    }

    /// Opens an image's bytes as a file and mounts what it holds for inspection (the host's
    /// way to reach RBD bytes: rbd-fuse + loop here, `rbd map` where krbd exists). Given the
    /// image's pool, name and locator.
    public typealias Inspector = @Sendable (_ pool: RbdPool, _ name: String, _ locator: String) throws -> any InspectionRoot

    /// How many images new to this host a listing describes at once (one open each).
    public static let eagerDescriptions = 64

    /// The image metadata key marking an image read-only for Berth.
    public static let readOnlyKey = "berth.read-only"
    /// The image metadata key naming who made a temp image (`Configuration.owner`).
    public static let tempOwnerKey = "berth.temp-owner"
    /// The prefix of the snapshots clones are made from.
    public static let cloneSnapshotPrefix = "berth-clone-"

    public let configuration: Configuration
    public let pool: RbdPool
    private let inspector: Inspector?
    private let cache = Mutex<[String: Cached]>([:])
    private let names = Mutex<Names?>(nil)
    private let refreshQueue = DispatchQueue(label: "berth.rbd.metadata")

    private struct Cached {
        var image: Image
        var refreshed: Double
        var refreshing: Bool
    }

    /// Connects to the cluster (bounded by the configuration's timeout) and opens the pool.
    public init(_ configuration: Configuration, inspector: Inspector? = nil) throws {
        self.configuration = configuration
        self.inspector = inspector
        do {
            var cluster = configuration.cluster
            // berthd itself moves no image data (workers do): a stopped OSD must fail its calls
            // within the timeout rather than hold a pool operation for ever.
            if cluster.timeoutSeconds > 0, cluster.options["rados_osd_op_timeout"] == nil {
                cluster.options["rados_osd_op_timeout"] = String(cluster.timeoutSeconds)
            }
            pool = try RadosCluster(cluster).pool(configuration.pool)
        } catch {
            throw Self.poolError(error, "cannot open RBD pool '\(configuration.pool)'")
        }
    }

    public var identifier: String { "rbd" }
    public var imageType: ImageType { .raw }
    public var capabilities: BackendCapabilities { [.constantTimeClone, .quota, .shared, .blockBacked, .external] }
    public var locatorFolder: FilePath { FilePath(RbdLocator.scheme + configuration.cluster.clusterName).appending(configuration.pool) }

    /// `Image.path` of image `name`: its locator as the bus shows it, `rbd://CLUSTER/POOL/NAME`.
    public func imagePath(of name: String) -> String {
        RbdLocator(cluster: configuration.cluster.clusterName, pool: configuration.pool, image: name).description
    }
    public var receivesNewImages: Bool { configuration.receivesNewImages }

    // MARK: listing

    /// One rbd_list2. A few images not seen before are described as they are listed (one open
    /// each); where more than `eagerDescriptions` are new at once (a first ListImages of 1,000
    /// images), they get a placeholder (size and usage unknown) and are described in the
    /// background, so that listing opens none of them.
    public func externalImageNames() throws -> [String] {
        let names = try imageNames(allowStale: false)
        let unseen = cache.withLock { entries -> [String] in
            // Images gone from the pool (removed by another host) leave the cache.
            let present = Set(names)
            for name in entries.keys where !present.contains(name) { entries[name] = nil }
            let new = names.filter { entries[$0] == nil && !$0.hasPrefix(".#") }
            guard new.count > Self.eagerDescriptions else { return [] }
            var unseen: [String] = []
            for name in new {
                entries[name] = Cached(image: Image(name: name, path: imagePath(of: name), type: .raw, readOnly: false),
                                       refreshed: 0, refreshing: true)
                unseen.append(name)
            }
            return unseen
        }
        for name in unseen { refreshLater(name) }
        return names
    }

    /// From the last listing, refreshed in the background once older than a second: this runs
    /// on the bus thread for sd-bus's synchronous lookups, which must not wait on the cluster
    /// (only the very first lookup lists synchronously).
    public func hasExternalImage(named name: String) -> Bool {
        ((try? imageNames(allowStale: true)) ?? []).contains(name)
    }

    private struct Names {
        var names: [String]
        var fetched: Double
        var refreshing: Bool
    }

    /// How old the name listing may be before a listing (ListImages) asks the cluster again.
    private static let namesFreshSeconds = 1.0

    /// The pool's image names: one rbd_list2 unless the last one is fresh; with `allowStale`, an
    /// older listing is answered at once and refreshed in the background.
    private func imageNames(allowStale: Bool) throws -> [String] {
        let now = monotonicSeconds()
        enum Answer { case cached([String]), refresh([String]), list }
        let answer = names.withLock { cached -> Answer in
            guard var current = cached else { return .list }
            if now - current.fetched < Self.namesFreshSeconds { return .cached(current.names) }
            guard allowStale else { return .list }
            if current.refreshing { return .cached(current.names) }
            current.refreshing = true
            cached = current
            return .refresh(current.names)
        }
        switch answer {
        case .cached(let list): return list
        case .refresh(let list):
            refreshQueue.async { [self] in _ = try? listNow() }
            return list
        case .list: return try listNow()
        }
    }

    @discardableResult
    private func listNow() throws -> [String] {
        do {
            let list = try pool.listImages().map(\.name)
            names.withLock { $0 = Names(names: list, fetched: monotonicSeconds(), refreshing: false) }
            return list
        } catch {
            names.withLock { $0?.refreshing = false }
            throw Self.poolError(error, "cannot list RBD pool '\(pool.name)'")
        }
    }

    /// Our own changes are known at once, whatever the listing's age.
    private func noteNames(adding added: String?, removing removed: String?) {
        names.withLock { cached in
            guard var current = cached else { return }
            if let removed { current.names.removeAll { $0 == removed } }
            if let added, !current.names.contains(added) { current.names.append(added) }
            cached = current
        }
    }

    public func image(named name: String, entry: PoolEntry) throws -> Image {
        let now = monotonicSeconds()
        let cached = cache.withLock { entries -> Cached? in
            guard var entry = entries[name] else { return nil }
            if now - entry.refreshed > configuration.cacheSeconds, !entry.refreshing {
                entry.refreshing = true
                entries[name] = entry
                refreshLater(name)
            }
            return entry
        }
        if let cached { return cached.image }
        // First sight of this image outside a listing (GetImage, a mutation): its size and
        // flags now (one open), usage in the background.
        let image = try describe(name, withUsage: false)
        cache.withLock { $0[name] = Cached(image: image, refreshed: 0, refreshing: true) }
        refreshLater(name)
        return image
    }

    private func refreshLater(_ name: String) {
        refreshQueue.async { [self] in
            let image = try? describe(name, withUsage: true)
            cache.withLock { entries in
                if let image { entries[name] = Cached(image: image, refreshed: monotonicSeconds(), refreshing: false) }
                else { entries[name] = nil }
            }
        }
    }

    /// Refreshes the cache of `name` now (after our own changes to it).
    private func refreshNow(_ name: String) {
        let image = try? describe(name, withUsage: true)
        cache.withLock { $0[name] = image.map { Cached(image: $0, refreshed: monotonicSeconds(), refreshing: false) } }
    }

    private func describe(_ name: String, withUsage: Bool) throws -> Image {
        do {
            let image = try pool.openImage(name, readOnly: true)
            let size = try image.size()
            let readOnly = try image.metadata(Self.readOnlyKey) == "1"
            var usage = Image.unknown, exclusive = Image.unknown
            if withUsage {
                usage = try image.allocatedBytes(includeParent: true)
                exclusive = try image.allocatedBytes(includeParent: false)
            }
            return Image(name: name, path: imagePath(of: name), type: .raw, readOnly: readOnly,
                         creationTimestamp: (try? image.creationTimestamp()) ?? 0,
                         modificationTimestamp: (try? image.modificationTimestamp()) ?? 0,
                         usage: usage, usageExclusive: exclusive, limit: size, limitExclusive: size)
        } catch {
            throw Self.poolError(error, "cannot read RBD image '\(name)'")
        }
    }

    // MARK: mutations

    /// An empty image of size 0 under `path` (a locator): imports resize it as they write. A
    /// temp image (`.#…`, every import's) is marked as this instance's, for the start-up clean-up.
    public func createEmpty(at path: FilePath) throws {
        let name = try imageName(path)
        do { try pool.createImage(name, size: 0) } catch { throw Self.poolError(error, "cannot create RBD image '\(name)'") }
        do { try markIfTemporary(name) } catch {
            try? pool.removeImage(name)
            throw Self.poolError(error, "cannot mark RBD image '\(name)' as this host's temp image")
        }
        noteNames(adding: name, removing: nil)
    }

    /// Tags a temp image (`.#…`) with this instance's owner; other names are left alone.
    private func markIfTemporary(_ name: String) throws(RbdError) {
        guard name.hasPrefix(".#") else { return }
        try pool.openImage(name).setMetadata(Self.tempOwnerKey, configuration.owner)
    }

    /// The `.#…` images whose owner tag is this instance's, removed. A writer of ours still
    /// registered on one (a worker killed with berthd keeps its watch until the OSD times it out,
    /// 30 s) is fenced: its exclusive lock broken and its client blocklisted, which drops the
    /// watch; then the removal is retried for a few seconds while the OSDs see the blocklist.
    public func removeStaleTemporaryImages() -> (removed: [String], failed: [(path: String, reason: String)]) {
        var removed: [String] = [], failed: [(path: String, reason: String)] = []
        let names: [String]
        do { names = try imageNames(allowStale: false) } catch {
            return ([], [(RbdLocator.scheme + "\(configuration.cluster.clusterName)/\(configuration.pool)", "\(error)")])
        }
        for name in names where name.hasPrefix(".#") {
            guard (try? pool.openImage(name, readOnly: true).metadata(Self.tempOwnerKey)) == configuration.owner else { continue }
            do {
                try removeFencingDeadWriters(name)
                removed.append(imagePath(of: name))
            } catch {
                failed.append((imagePath(of: name), "\(error)"))
            }
        }
        return (removed, failed)
    }

    private func removeFencingDeadWriters(_ name: String) throws {
        do {
            try remove(at: locator(of: name))
            return
        } catch let error as PoolError where error.code == .busy {
            let image: RbdImage
            do { image = try pool.openImage(name) } catch { throw Self.poolError(error, "cannot open RBD image '\(name)'") }
            for owner in (try? image.exclusiveLockOwners()) ?? [] {
                do { try image.breakExclusiveLock(owner: owner) } catch {
                    throw Self.poolError(error, "cannot break the lock \(owner) holds on RBD image '\(name)'")
                }
            }
            // `image` closes here: its own watch would keep the image busy too.
        }
        // The OSDs drop a blocklisted client's watch once they see the new map: moments.
        let deadline = monotonicSeconds() + 15
        while true {
            do {
                try remove(at: locator(of: name))
                return
            } catch let error as PoolError where error.code == .busy && monotonicSeconds() < deadline {
                usleep(200_000)
            }
        }
    }

    /// Not used: clones are made in one step (`cloneInOneStep`).
    public func clone(from source: FilePath, to destination: FilePath) throws {
        try cloneInOneStep(from: source, to: destination, readOnly: false)
    }

    public func clonesInOneStep(from source: FilePath) -> Bool { true }

    /// Snapshot + protect + rbd_clone3: constant time. On failure nothing is left: the child (if
    /// made) is removed, the snapshot unprotected and removed.
    public func cloneInOneStep(from source: FilePath, to destination: FilePath, readOnly: Bool) throws {
        let sourceName = try imageName(source), newName = try imageName(destination)
        var suffix = SystemRandomNumberGenerator()
        let snapshot = Self.cloneSnapshotPrefix + String(suffix.next() as UInt64, radix: 16)
        do {
            let parent = try pool.openImage(sourceName)
            try parent.createSnapshot(snapshot)
            do {
                try parent.protectSnapshot(snapshot)
                do {
                    try pool.clone(parent: sourceName, snapshot: snapshot, to: newName)
                    do {
                        let child = try pool.openImage(newName)
                        // The source's read-only mark is not inherited: a clone is a new image.
                        if readOnly { try child.setMetadata(Self.readOnlyKey, "1") } else { try child.removeMetadata(Self.readOnlyKey) }
                    } catch {
                        try? pool.removeImage(newName)
                        throw error
                    }
                } catch {
                    try? parent.unprotectSnapshot(snapshot)
                    throw error
                }
            } catch {
                try? parent.removeSnapshot(snapshot)
                throw error
            }
        } catch {
            if let e = error as? RbdError, e.errno == .EEXIST {
                throw PoolError(.imageExists, "RBD image '\(newName)' already exists", cause: e.systemCallError)
            }
            throw Self.poolError(error, "cannot clone RBD image '\(sourceName)' to '\(newName)'")
        }
        noteNames(adding: newName, removing: nil)
        refreshNow(newName)
    }

    public func rename(from source: FilePath, to destination: FilePath) throws {
        let from = try imageName(source), to = try imageName(destination)
        do {
            try refuseInUse(try pool.openImage(from, readOnly: true), "rename")
            try pool.renameImage(from, to: to)
            // An image moved aside under a temp name (an import replacing it) is ours to clean
            // should berthd die before it goes (best effort: the rename itself is done).
            try? markIfTemporary(to)
        } catch {
            throw Self.poolError(error, "cannot rename RBD image '\(from)' to '\(to)'")
        }
        cache.withLock { $0[from] = nil }
        noteNames(adding: to, removing: from)
        refreshNow(to)
    }

    /// Removes the image and the clone snapshots it holds; refused while it has clones or is
    /// in use. The parent's clone snapshot goes too once no other clone uses it.
    public func remove(at path: FilePath) throws {
        let name = try imageName(path)
        var parentLink: (image: RbdLinkedImage, snapshot: String)?
        do {
            let image = try pool.openImage(name)
            try refuseInUse(image, "remove")
            let children = try image.children()
            if !children.isEmpty {
                throw PoolError(.busy, "RBD image '\(name)' has clones (\(children.map(\.imageName).joined(separator: ", "))): remove them first, or flatten them (rbd flatten)")
            }
            parentLink = try image.parent()
            for snapshot in try image.snapshots() {
                if (try? image.isSnapshotProtected(snapshot.name)) == true { try image.unprotectSnapshot(snapshot.name) }
                try image.removeSnapshot(snapshot.name)
            }
        } catch let error as PoolError {
            throw error
        } catch {
            throw Self.poolError(error, "cannot remove RBD image '\(name)'")
        }
        do { try pool.removeImage(name) } catch {
            throw Self.poolError(error, "cannot remove RBD image '\(name)'")
        }
        cache.withLock { $0[name] = nil }
        noteNames(adding: nil, removing: name)
        // The snapshot this clone was made from is Berth's own: it goes with its last clone.
        if let parentLink, parentLink.snapshot.hasPrefix(Self.cloneSnapshotPrefix), parentLink.image.poolName == pool.name,
           let parent = try? pool.openImage(parentLink.image.imageName),
           (try? parent.children().isEmpty) == true {
            try? parent.unprotectSnapshot(parentLink.snapshot)
            try? parent.removeSnapshot(parentLink.snapshot)
        }
    }

    public func setReadOnly(_ readOnly: Bool, at path: FilePath) throws {
        let name = try imageName(path)
        do {
            let image = try pool.openImage(name)
            if readOnly { try refuseInUse(image, "mark read-only") }
            if readOnly { try image.setMetadata(Self.readOnlyKey, "1") } else { try image.removeMetadata(Self.readOnlyKey) }
        } catch {
            throw Self.poolError(error, "cannot change the read-only state of RBD image '\(name)'")
        }
        refreshNow(name)
    }

    /// The limit is the image's size: grows it; shrinking (which would cut the filesystem
    /// inside) and removing the limit are refused.
    public func setLimit(_ bytes: UInt64, at path: FilePath) throws {
        let name = try imageName(path)
        if bytes == Image.unknown { throw PoolError(.notSupported, "an RBD image's limit is its size and cannot be removed") }
        do {
            let image = try pool.openImage(name)
            if try image.metadata(Self.readOnlyKey) == "1" { throw PoolError(.readOnly, "RBD image '\(name)' is read-only") }
            try refuseInUse(image, "resize")
            let size = try image.size()
            if bytes < size {
                throw PoolError(.invalidArgument, "RBD image '\(name)' is \(size) bytes: shrinking it to \(bytes) would cut the data inside")
            }
            if bytes > size { try image.resize(to: bytes) }
        } catch let error as PoolError {
            throw error
        } catch {
            throw Self.poolError(error, "cannot resize RBD image '\(name)'")
        }
        refreshNow(name)
    }

    public func openForInspection(at path: FilePath) throws -> any InspectionRoot {
        let name = try imageName(path)
        guard let inspector else { throw PoolError(.notSupported, "no way to reach RBD image bytes is configured on this host") }
        return try inspector(pool, name, imagePath(of: name))
    }

    // MARK: locks held elsewhere

    /// The advisory lock Berth's writers and running machines hold on an image; `.busy` naming
    /// the holder if anyone holds it.
    private func refuseInUse(_ image: RbdImage, _ what: String) throws {
        let lockers = try image.lockers()
        guard let holder = lockers.lockers.first else { return }
        throw PoolError(.busy, "cannot \(what) RBD image '\(image.name)': it is in use (locked by \(holder.client), \(holder.cookie))",
                        cause: SystemCallError("rbd_list_lockers", .EBUSY, subject: image.name))
    }

    /// Takes the image's advisory lock for a writer on this host (an import, a running
    /// machine), so other hosts refuse to remove, rename or write it. Release with `unlock`.
    /// A read-only image (`berth.read-only`) is refused (`.readOnly`): this is the writer path
    /// through which Berth honours the mark.
    public func lockForWriting(_ name: String, purpose: String) throws -> RbdImage {
        do {
            let image = try pool.openImage(name)
            if try image.metadata(Self.readOnlyKey) == "1" {
                throw PoolError(.readOnly, "RBD image '\(name)' is read-only: it cannot be opened for writing")
            }
            try image.lockExclusive(cookie: Self.cookie(host: configuration.hostName, purpose: purpose))
            return image
        } catch {
            throw Self.poolError(error, "cannot lock RBD image '\(name)'")
        }
    }

    /// The advisory lock cookie of Berth's writers: `berth:<host>:<purpose>`.
    public static func cookie(host: String, purpose: String) -> String { "berth:\(host):\(purpose)" }

    // MARK: helpers

    private func imageName(_ locator: FilePath) throws -> String {
        guard let name = imageName(ofLocator: locator) else {
            throw PoolError(.invalidArgument, "\(locator) is not an image of RBD pool \(locatorFolder)")
        }
        return name
    }

    /// This host's name (uname's nodename).
    public static func localHostName() -> String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: &name.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// RbdError → PoolError with the pool's codes (EBUSY: in use, EEXIST: exists, ENOENT: no
    /// such image, EROFS: read-only); anything else keeps its errno as a system error.
    static func poolError(_ error: any Error, _ message: String) -> PoolError {
        if let error = error as? PoolError { return error }
        guard let error = error as? RbdError else { return PoolError(.system, "\(message): \(error)") }
        let cause = error.systemCallError
        switch error.errno {
        case .EBUSY?: return PoolError(.busy, "\(message): in use (\(error))", cause: cause)
        case .EEXIST?: return PoolError(.imageExists, "\(message): \(error)", cause: cause)
        case .ENOENT?: return PoolError(.noSuchImage, "\(message): \(error)", cause: cause)
        case .EROFS?: return PoolError(.readOnly, "\(message): \(error)", cause: cause)
        case .ENOSPC?: return PoolError(.noSpace, "\(message): \(error)", cause: cause)
        default: return PoolError(.system, "\(message): \(error)", cause: cause)
        }
    }
}
