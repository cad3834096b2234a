import FileTree
import Glibc
import Linux
import Synchronization
import struct SystemPackage.FilePath

/// The machine image pool behind org.freedesktop.machine1's image methods (ListImages,
/// GetImage, CloneImage, RenameImage, RemoveImage, MarkImageReadOnly, SetImageLimit,
/// SetPoolLimit, CleanPool, GetImageOSRelease…) and import1's installs, with systemd 252's
/// observable behaviour: search paths, name rules, `.host`, vendor images, temp names, locks.
///
/// The per-type work lives in the backends; this actor holds the preamble systemd repeats per
/// type (names, read-only host and vendor images, locks) once. Blocking work runs on dedicated
/// threads (`Blocking`), so while a multi-GiB clone runs, `images()` answers at once: the actor
/// is re-entrant and only waits on its own per-image locks.
public actor ImagePool {
    /// Where the pool lives: every path under `root`, "/" in production.
    public struct Configuration: Sendable {
        /// Every path is resolved under this folder (berthd's `--root`).
        public var root: String
        /// The pool folder, relative to `root`: where clones, renames and imports go.
        public var poolFolder: String
        /// The folders searched for images, relative to `root`, first occurrence of a name wins.
        public var searchFolders: [String]
        /// Whether the pool lists `.host`, the host's own root (machine images do, portables not).
        public var hasHostImage: Bool

        /// machine1's pool under `root` (berthd's `--root`): systemd 252's machine image search
        /// paths, `.host` included.
        public init(root: String) {
            self.root = root
            poolFolder = "var/lib/machines"
            searchFolders = ["etc/machines", "run/machines", "var/lib/machines", "var/lib/container",
                             "usr/local/lib/machines", "usr/lib/machines"]
            hasHostImage = true
        }

        /// portable1's pool under `root`: systemd 252's portable image search paths, no `.host`.
        public static func portables(root: String) -> Configuration {
            var c = Configuration(root: root)
            c.poolFolder = "var/lib/portables"
            c.searchFolders = ["etc/portables", "run/portables", "var/lib/portables", "usr/local/lib/portables",
                               "usr/lib/portables"]
            c.hasHostImage = false
            return c
        }

        /// `ROOT/<poolFolder>`: where clones, renames (of pool images) and imports go.
        public var poolPath: String { joinPath(root, poolFolder) }
        /// `ROOT/run/berth`: berthd's runtime state.
        public var runtimeDirectory: String { joinPath(root, "run/berth") }
        /// `ROOT/run/systemd/nspawn/locks`: systemd-nspawn's and machined's image locks.
        public var lockDirectory: String { joinPath(root, "run/systemd/nspawn/locks") }
        /// The search folders under `root`.
        public var searchPaths: [String] { searchFolders.map { joinPath(root, $0) } }
    }

    /// How `CleanPool` chooses: hidden images only, or every image.
    public enum CleanMode: String, Sendable { case hidden, all }

    /// Where the pool lives.
    public let configuration: Configuration
    /// The backends that claim and make images, in priority order.
    public let registry: BackendRegistry
    let realRoot: FilePath
    let realPoolPath: FilePath
    let locks: ImageLocks
    var nameLocks = NameLocks()
    /// Images held for reading by transfers (`holdForReading`), by name, with their holder count.
    var readHolds: [String: Int] = [:]
    let searchPaths: [FilePath]
    let realPaths = RealPathCache()

    /// A pool over `configuration.root`'s search paths. Nothing is touched until first use;
    /// call `removeStaleTemporaryEntries()` at daemon start.
    public init(configuration: Configuration, registry: BackendRegistry) {
        self.configuration = configuration
        self.registry = registry
        let root = Self.realPath(FilePath(configuration.root)) ?? FilePath(configuration.root)
        realRoot = root
        realPoolPath = root.appending(configuration.poolFolder)
        searchPaths = configuration.searchPaths.map { FilePath($0) }
        locks = ImageLocks(directory: root.appending("run/systemd/nspawn/locks"), root: root)
    }

    /// The real path of the pool folder (`PoolPath`: `ROOT/var/lib/machines` for machine1).
    public nonisolated var poolPath: String { realPoolPath.string }

    // MARK: the pool folder and errors

    /// Makes `ROOT/var/lib/machines` on first use, of the parent's kind: the tree backend of
    /// the parent folder creates it (a subvolume on btrfs, like systemd), else mkdir. Mode 0700
    /// whichever made it, as systemd-machined makes it: images hold device nodes and setuid
    /// files that no other user may reach (a subvolume is born 0755, a mkdir under the umask).
    func ensurePoolFolder() async throws {
        let pool = realPoolPath, registry = self.registry
        if (try? entryStatus(pool.string, followSymlinks: true))?.isDirectory == true { return }
        try await Blocking.run {
            if (try? fileStatus(pool.string))?.isDirectory == true { return }
            let parent = pool.removingLastComponent()
            do { try makeDirectories(parent.string) } catch { throw Self.poolError(error, "cannot create \(parent)") }
            do {
                if let tree = registry.treeBackend(for: parent) {
                    try tree.createEmpty(at: pool)
                } else {
                    try makeDirectory(pool.string, mode: 0o700)
                }
                try FileDescriptor.openDirectory(pool.string, followSymlinks: false).setMode(0o700)
            } catch {
                if (try? fileStatus(pool.string))?.isDirectory == true { return }  // made meanwhile
                throw Self.poolError(error, "cannot create the pool folder \(pool)")
            }
        }
    }

    static func poolError(_ error: any Error, _ message: String) -> PoolError {
        if let e = error as? PoolError { return e }
        if let e = error as? SystemCallError {
            if e.errno == .ECANCELED { return PoolError(.cancelled, message, cause: e) }
            return PoolError.from(e, message)
        }
        if error is CancellationError { return PoolError(.cancelled, message, cause: error) }
        return PoolError(.system, message, cause: error)
    }

    /// realpath(3), nil if it does not exist.
    public static func realPath(_ path: String) -> String? {
        guard let r = realpath(path, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    /// realpath(3) of a `FilePath`, nil if it does not exist.
    static func realPath(_ path: FilePath) -> FilePath? {
        realPath(path.string).map { FilePath($0) }
    }
}
