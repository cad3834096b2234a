import FileTree
import Linux
import struct SystemPackage.FilePath

/// Temp-entry installs: a new image made under a hidden temp name, filled, and moved to its
/// name atomically (imports; clones use the same temp entries and `discard`).
extension ImagePool {
    /// For imports: makes a temp entry `.#<name><random>` of `type` in the pool folder (tree
    /// types: the pool's tree backend, a subvolume on btrfs; raw: the raw backend's empty
    /// `NAME.raw`; `.notSupported` where no registered backend makes `type` there), calls
    /// `fill` with its path, then installs it atomically as `name`: a no-replace rename, or with
    /// `force` an exchange with the existing image, which is then removed. Without `force` an
    /// existing name fails before any work. Read-only if asked. On any error or cancellation
    /// the temp entry is removed. `fill` runs on Swift's cooperative pool: blocking work in it
    /// belongs in `Blocking.run`. If the replaced image cannot be removed after the swap (the
    /// new one is installed all the same), `warn` is told where it was left.
    public func install(_ name: String, type: ImageType, force: Bool, readOnly: Bool,
                        warn: @escaping @Sendable (String) -> Void = { _ in },
                        fill: @Sendable (String) async throws -> Void) async throws -> Image {
        try Self.validateName(name)
        return try await serialised([(name, .exclusive)]) {
            let current = Self.find(name, discoveryContext)
            if let current {
                if !force { throw PoolError(.imageExists, "image '\(name)' already exists") }
                try refuseReadOnlyImage(current, "replace")
                try refuseHeldImage(name)
            }
            let nameLock = try lockName(name)
            defer { nameLock.release() }
            try await ensurePoolFolder()
            let pool = realPoolPath
            // An external backend configured to receive new images of this type (an RBD pool)
            // gets them instead of the pool folder.
            let external = registry.isTree(type) ? nil : registry.externalBackend(receiving: type)
            let chosen = external ?? (registry.isTree(type) ? registry.treeBackend(for: pool) : registry.backend(for: type, in: pool))
            guard let backend = chosen else {
                throw PoolError(.notSupported, "no backend makes \(type.rawValue) images in \(pool)")
            }
            let entry = backend.entryName(forImage: name)
            let folder = external?.locatorFolder ?? pool
            let temp = folder.appending(Self.temporaryName(for: entry))
            let finalPath = folder.appending(entry)
            do {
                try await Blocking.run { try backend.createEmpty(at: temp) }
                try await fill(temp.string)
                try Task.checkCancellation()
                // The replaced image (if in the pool folder) must not be in use; it keeps its
                // lock until it is gone.
                let replaced = current.flatMap { $0.path.removingLastComponent() == folder ? $0 : nil }
                let replacedLock = try replaced.map { try lockPath($0.path, .exclusive, name) }
                defer { replacedLock?.release() }
                try await Blocking.run {
                    if readOnly { try backend.setReadOnly(true, at: temp) }
                    guard let replaced, let oldBackend = replaced.backend else {
                        try backend.rename(from: temp, to: finalPath)
                        return
                    }
                    if replaced.path == finalPath, isImageLocator(finalPath) {
                        // External storage has no atomic exchange: the old image moves aside
                        // under a temp name, the new one takes the name, then the old one goes.
                        let aside = folder.appending(Self.temporaryName(for: entry))
                        try oldBackend.rename(from: finalPath, to: aside)
                        do { try backend.rename(from: temp, to: finalPath) } catch {
                            try? oldBackend.rename(from: aside, to: finalPath)
                            throw error
                        }
                        do { try oldBackend.remove(at: aside) } catch {
                            warn("image '\(name)' was replaced, but its previous version could not be removed and is left at \(aside): \(error)")
                        }
                        return
                    }
                    if replaced.path == finalPath {
                        // Atomic swap, then the old image (now at the temp name) goes. An
                        // immutable directory cannot move: both are made writable for the swap.
                        // A symlinked image is the link only: what it points to is not touched.
                        let oldWasReadOnly = !replaced.isSymlink && ((try? oldBackend.image(named: name, at: replaced.path))?.readOnly ?? false)
                        if oldWasReadOnly { try oldBackend.setReadOnly(false, at: replaced.path) }
                        do {
                            try Self.exchange(temp, finalPath, newIsReadOnly: readOnly, backend)
                        } catch {
                            if oldWasReadOnly { try? oldBackend.setReadOnly(true, at: replaced.path) }
                            throw error
                        }
                    } else {
                        // Another type under another entry name (`x` replaced by `x.raw`): the
                        // new one goes in first, then the old one is removed.
                        try backend.rename(from: temp, to: finalPath)
                    }
                    let leftover = replaced.path == finalPath ? temp : replaced.path
                    var failure: (any Error)?
                    // A symlinked image is the link only: what it points to is not touched.
                    do {
                        if replaced.isSymlink { try removeFile(leftover.string) } else { try oldBackend.remove(at: leftover) }
                    } catch { failure = error }
                    if !replaced.isSymlink, (try? fileStatus(leftover.string, followSymlinks: false)) != nil {
                        do { try TreeRemoval.remove(at: leftover) } catch { failure = error }
                    }
                    if (try? fileStatus(leftover.string, followSymlinks: false)) != nil {
                        // The new image is in place: a success, but the old data still takes
                        // space, and the user must hear where.
                        let later = leftover == temp ? "; berthd removes it at its next start" : ""
                        warn("image '\(name)' was replaced, but its previous version could not be removed and is left at \(leftover)\(later): \(failure.map { "\($0)" } ?? "still there")")
                    }
                }
            } catch {
                await Self.discard(temp, backend)
                if error is CancellationError { throw PoolError(.cancelled, "install of '\(name)' cancelled") }
                throw Self.poolError(error, "cannot install image '\(name)'")
            }
            guard let f = Self.find(name, discoveryContext) else { throw PoolError(.noSuchImage, "image '\(name)' vanished") }
            return try Self.describe(f, discoveryContext)
        }
    }

    /// renameat2(RENAME_EXCHANGE) of the new entry with the old; an immutable new directory
    /// cannot move either, so its flag is lifted around the swap.
    static func exchange(_ new: FilePath, _ old: FilePath, newIsReadOnly: Bool, _ backend: any ImageBackend) throws {
        if newIsReadOnly { try backend.setReadOnly(false, at: new) }
        try renameExchange(new.string, old.string)
        if newIsReadOnly { try backend.setReadOnly(true, at: old) }
    }

    /// Removes a temp entry after a failure: through its backend (a subvolume needs btrfs),
    /// then fd-relative with flags lifted for whatever is still there.
    static func discard(_ temp: FilePath, _ backend: (any ImageBackend)?) async {
        _ = try? await Blocking.run {
            if isImageLocator(temp) {
                try? backend?.remove(at: temp)
                return
            }
            guard (try? fileStatus(temp.string, followSymlinks: false)) != nil else { return }
            try? backend?.remove(at: temp)
            if (try? fileStatus(temp.string, followSymlinks: false)) != nil { try? TreeRemoval.remove(at: temp) }
        }
    }
}
