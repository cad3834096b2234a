import CBtrfsUtil
import FileTree
import Glibc
import Linux
import struct SystemPackage.FilePath
import Transfer

/// On btrfs, the layer cache also keeps the tree after each prefix of layers, as a subvolume
/// snapshot `POOL/.#berth-oci-cache/chains/chain-<id>` (id: SHA-256 over the layer digests of
/// the prefix, in order). A pull whose first N layers are an earlier pull's starts from a
/// snapshot of that tree (O(1)) and applies only the rest; after each layer it applies, it
/// snapshots the tree for the next pull. Elsewhere (ext4 …) nothing of this happens: the
/// layers are applied from the blob cache.
///
/// The snapshots are writable subvolumes (so CleanPool's removal of the cache can empty and
/// remove them); only the worker touches them, in the 0700 pool folder.
package enum OciChainCache {
    /// The chain id of each prefix: ids[i] covers layers 0...i.
    package static func chainIDs(_ layers: [OciDescriptor]) -> [String] {
        var ids: [String] = []
        var previous = ""
        for layer in layers {
            previous = OciPull.sha256Hex(Array((previous + " " + layer.digest).utf8))
            ids.append(previous)
        }
        return ids
    }

    /// Is `path` a btrfs subvolume (the temp entry the pool made on a btrfs pool)?
    static func isSubvolume(_ path: String) -> Bool { btrfs_util_is_subvolume(path) == BTRFS_UTIL_OK }

    static func folder(_ cacheFolder: String) -> String { cacheFolder + "/chains" }

    static func path(_ cacheFolder: String, _ id: String) -> String { folder(cacheFolder) + "/chain-" + id }

    /// Replaces the empty subvolume `target` with a snapshot of the longest cached prefix of
    /// `ids`; returns how many layers that tree already holds (0: `target` is left as it was).
    static func start(_ target: String, cacheFolder: String, ids: [String], reporter: StatusReporter) -> Int {
        guard isSubvolume(target) else { return 0 }
        for n in stride(from: ids.count, to: 0, by: -1) {
            let chain = path(cacheFolder, ids[n - 1])
            guard isSubvolume(chain) else { continue }
            // rmdir(2), not BTRFS_IOC_SNAP_DESTROY: an empty subvolume goes that way without
            // CAP_SYS_ADMIN, which the confined worker does not have (WorkerSandbox.swift).
            guard unlinkat(AT_FDCWD, target, AT_REMOVEDIR) == 0 else { return 0 }
            if btrfs_util_create_snapshot(chain, target, 0, nil, nil) == BTRFS_UTIL_OK {
                reporter.log(LogPriority.info, "Starting from a snapshot of the tree after \(n) layer(s) (btrfs layer cache).")
                return n
            }
            // Put the empty subvolume back: the pull then applies every layer.
            _ = btrfs_util_create_subvolume(target, 0, nil, nil)
            return 0
        }
        return 0
    }

    /// Snapshots `target` (the tree after the layers of chain `id`) into the cache, unless it
    /// is there already. A failure only costs the next pull time: it is not an error.
    static func store(_ target: String, cacheFolder: String, id: String) {
        guard isSubvolume(target) else { return }
        _ = mkdir(folder(cacheFolder), 0o700)
        let final = path(cacheFolder, id)
        if isSubvolume(final) { return }
        let temp = folder(cacheFolder) + "/tmp-\(getpid())-" + id
        guard btrfs_util_create_snapshot(target, temp, 0, nil, nil) == BTRFS_UTIL_OK else { return }
        if (try? renameNoReplace(temp, final)) == nil {
            // Emptied, then removed by rmdir: no CAP_SYS_ADMIN needed (see `start`).
            try? TreeRemoval.remove(at: FilePath(temp))
        }
    }
}
