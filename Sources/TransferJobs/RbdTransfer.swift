import FileTree
import Glibc
import Linux
import PoolAPI
import Rbd
import RbdBackend
import Transfer

/// The worker's side of import1 on an RBD pool: the target or source is a locator
/// (`rbd://CLUSTER/POOL/IMAGE`, a temp image `.#…` for imports) and the worker connects itself,
/// as the `[rbd]` section of `ROOT/etc/berth/backends.d` says (the same client id and conf as
/// berthd). A pull onto RBD thus needs the network to the cluster as well as to the URL.
enum RbdTransfer {
    /// Opens `locator`'s image (read-only for exports). The connection lives as long as the
    /// image (the image holds its pool, the pool its cluster).
    static func open(_ locator: RbdLocator, root: String, readOnly: Bool) throws -> RbdImage {
        let configuration: BackendConfiguration
        do { configuration = try BackendConfiguration.load(root: root) } catch { throw TransferError("\(error)") }
        guard let pool = configuration.rbdPool(for: locator) else {
            throw TransferError("no [rbd] section for pool '\(locator.pool)' of cluster '\(locator.cluster)' in \(BackendConfiguration.folder(root: root))")
        }
        return try call("connect to RBD pool '\(pool.pool)'") { () throws(RbdError) in
            let cluster = try RadosCluster(RadosCluster.Configuration(
                configFile: pool.confPath, clientID: pool.clientID, clusterName: pool.cluster, timeoutSeconds: pool.timeoutSeconds,
                options: ["rados_osd_op_timeout": String(pool.timeoutSeconds)]))
            return try cluster.pool(locator.pool).openImage(locator.image, readOnly: readOnly)
        }
    }

    /// Runs a librbd call, its error becoming a transfer error that names the call and errno.
    static func call<T>(_ what: String, _ body: () throws(RbdError) -> T) throws -> T {
        do { return try body() } catch { throw TransferError("cannot \(what): \(error)") }
    }

    /// Calls `body` with the image's bytes in order, `buffer` at a time (an RBD image has no
    /// SEEK_DATA: all of it is read; unallocated extents read as zeros, which a sparse file
    /// output leaves holes again).
    static func forEachChunk(of image: RbdImage, size: Int64, buffer: UnsafeMutableRawBufferPointer, reporter: StatusReporter,
                             _ body: (UnsafeRawBufferPointer, Int64) throws -> Void) throws {
        var position: Int64 = 0
        while position < size {
            let want = Int(min(Int64(buffer.count), size - position))
            let n = try call("read RBD image '\(image.name)'") { () throws(RbdError) in
                try image.read(at: UInt64(position), into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
            }
            if n == 0 { throw TransferError("the image shrank while being exported") }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), 0)
            position += Int64(n)
            if size > 0 { reporter.progress(Double(position) / Double(size)) }
        }
    }
}

/// An import's new RBD image (created empty by berthd under a temp name), written in place:
/// grown as the stream goes, zero blocks left unallocated, cut to the stream's size at the end.
/// While it writes, the worker holds the image open and owns its exclusive-lock feature's lock
/// (rbd_lock_acquire): another client's writes fail instead of taking it over, and another
/// host's berthd cannot remove it (librbd refuses to remove an image with watchers) — its
/// start-up clean-up of temp images, say. Both end with the worker, however it ends. (Not an
/// advisory `rbd lock`: librbd makes an image with an exclusive advisory lock read-only for
/// every client, its holder too, so that lock is for running machines, not for a writer.)
final class RbdDestination: ImportDestination {
    let image: RbdImage
    private var size: UInt64

    /// Growth steps: at least this much at a time, so a stream of small writes resizes rarely.
    static let growthStep: UInt64 = 256 << 20

    init(image: RbdImage) throws {
        self.image = image
        size = try RbdTransfer.call("size RBD image '\(image.name)'") { () throws(RbdError) in try image.size() }
        try RbdTransfer.call("take the exclusive lock of RBD image '\(image.name)'") { () throws(RbdError) in
            try image.acquireExclusiveLock()
        }
    }

    /// Flushes what librbd still buffers (berthd renames the image once the worker has ended).
    func finish() throws {
        try RbdTransfer.call("flush RBD image '\(image.name)'") { () throws(RbdError) in try image.flush() }
    }

    func makeZeroed(size: UInt64) throws(SystemCallError) {
        do {
            try image.resize(to: 0)
            try image.resize(to: size)
        } catch {
            throw error.systemCallError
        }
        self.size = size
    }

    func writeSparse(_ data: UnsafeRawBufferPointer, at offset: Int64) throws(SystemCallError) {
        try SparseWriter.forEachNonZeroRun(of: data) { (run: Range<Int>) throws(SystemCallError) in
            do throws(RbdError) {
                try image.write(UnsafeRawBufferPointer(rebasing: data[run]), at: UInt64(offset) + UInt64(run.lowerBound))
            } catch {
                throw error.systemCallError
            }
        }
    }

    func writeGrowing(_ data: UnsafeRawBufferPointer, at offset: Int64) throws {
        let end = UInt64(offset) + UInt64(data.count)
        if end > size {
            // Doubling, in steps of at least `growthStep`: O(log n) resizes for a stream of n bytes.
            let wanted = max(end, size * 2, size + Self.growthStep)
            let grown = (wanted + Self.growthStep - 1) / Self.growthStep * Self.growthStep
            try RbdTransfer.call("grow RBD image '\(image.name)'") { () throws(RbdError) in try image.resize(to: grown) }
            size = grown
        }
        try writeSparse(data, at: offset)
    }

    /// An RBD image has no folder beside it: the worker gets an unnamed file in the local pool
    /// folder before it confines itself (`TransferWorker.confine`), or it cannot unpack a
    /// streamed qcow2 image.
    func makeScratch() throws -> FileDescriptor {
        throw TransferError("no local scratch file for unpacking a streamed qcow2 image into RBD image '\(image.name)'")
    }

    func setSize(_ newSize: Int64) throws {
        try RbdTransfer.call("size RBD image '\(image.name)'") { () throws(RbdError) in try image.resize(to: UInt64(newSize)) }
        size = UInt64(newSize)
    }
}
