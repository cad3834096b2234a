import Linux
import struct SystemPackage.FilePath

/// Inspection: reading files inside an image (machine1's metadata, portable1's units).
extension ImagePool {
    /// GetImageHostname/MachineID/MachineInfo/OSRelease, read through the backend's inspection
    /// root (closed on every path), every file resolved inside the image (openat2 RESOLVE_IN_ROOT).
    public func metadata(of name: String) async throws -> ImageMetadata {
        try await inspect(name, what: "metadata") { try ImageMetadata.read(imageRoot: $0) }
    }

    /// Runs `read` on a worker thread with the path of image `nameOrPath`'s root as its backend
    /// opens it for inspection (a raw image's file system mounted read-only; closed on every
    /// path), holding the image's lock shared. `nameOrPath` is an image name, or an absolute path
    /// to an image anywhere (portable1 takes both). What `read` throws is reported as "cannot
    /// read `what` of image `nameOrPath`". For readers of image contents: machine1's metadata,
    /// portable1's units.
    public func inspect<T: Sendable>(_ nameOrPath: String, what: String,
                                     _ read: @escaping @Sendable (String) throws -> T) async throws -> T {
        let name = nameOrPath
        if !name.hasPrefix("/") { try Self.validateName(name) }
        return try await serialised([(name, .shared)]) {
            let found = try name.hasPrefix("/") ? existing(path: FilePath(name)) : existing(name)
            // Shared, best effort: a running container holds its image exclusively, and its
            // os-release is still worth reading.
            let lock = found.isHost ? nil : try? locks.lockPath(found.path, .shared)
            defer { lock?.release() }
            let path = found.path, backend = found.backend
            return try await Blocking.run {
                guard let backend else { return try read(path.string) }
                let root: any InspectionRoot
                do { root = try backend.openForInspection(at: path) }
                catch { throw Self.poolError(error, "cannot open image '\(name)' for inspection") }
                defer { root.close() }
                do { return try read(root.root.string) }
                catch { throw Self.poolError(error, "cannot read \(what) of image '\(name)'") }
            }
        }
    }
}
