import CLinux
import FileTree
import Glibc
import Linux
import PoolAPI
import Transfer
import struct SystemPackage.FilePath

/// PullOci's work in the worker: resolve the reference to the host's image manifest, fetch the
/// config and the layers the pool's layer cache lacks (each blob checked against its digest
/// and size as it streams, and only then given its name in the cache), apply the layers in
/// order into `target`, and keep the image config beside the tree.
///
/// Nothing is applied before it is verified: a blob becomes visible in the cache only once its
/// digest matched (an O_TMPFILE until then, which vanishes with a failed or killed worker).
package enum OciPull {
    /// File inside the image that keeps the verified image config, verbatim.
    static let configFileName = ".oci-config.json"

    /// Pulls `referenceText` into the empty directory `target` (a temp entry of the pool),
    /// with the blob cache beside it in the pool folder and CA files under `root`.
    static func run(reference referenceText: String, root: String, target: String, reporter: StatusReporter) throws {
        guard let reference = OciReference(referenceText) else {
            throw TransferError("not a valid image reference: \(referenceText)")
        }
        let client = try RegistryClient(reference: reference, root: root)
        let (manifest, manifestDigest) = try resolveManifest(client, reporter: reporter)
        let (configDescriptor, layers) = try imageParts(of: manifest, reference: reference)
        reporter.log(LogPriority.info, "Image manifest \(manifestDigest): \(layers.count) layer(s).")

        let folder = FilePath(target).removingLastComponent()
        let pool = folder.isEmpty ? "." : folder.string
        let cache = try OciBlobCache(pool: pool)
        // Progress: the bytes of the layers still to download, then of all layers to apply.
        let missing = layers.filter { !cache.has($0) }
        let downloadTotal = missing.reduce(Int64(0)) { $0 + $1.size }
        let applyTotal = layers.reduce(Int64(0)) { $0 + $1.size }
        let total = max(Double(downloadTotal + applyTotal), 1)
        var done: Int64 = 0
        func report(_ extra: Int64) { reporter.progress(min(Double(done + extra) / total, 1)) }

        let configBytes = try cache.fetch(configDescriptor, client: client, limit: Int64(OciLimits.configBytes), progress: { _ in })
            .readToEnd(limit: OciLimits.configBytes)
        let config = try imageConfig(configBytes)

        var fetched = 0
        for layer in layers where !cache.has(layer) {
            fetched += 1
            reporter.log(LogPriority.info, "Downloading layer \(layer.digest) (\(layer.size) bytes).")
            _ = try cache.fetch(layer, client: client, limit: layer.size, progress: { report($0) })
            done += layer.size
        }
        if fetched < layers.count {
            reporter.log(LogPriority.info, "\(layers.count - fetched) layer(s) found in the layer cache.")
        }

        // On btrfs: start from the tree after the longest prefix of layers pulled before.
        let chains = OciChainCache.chainIDs(layers)
        let cacheFolder = pool + "/" + OciBlobCache.folderName
        let reused = OciChainCache.start(target, cacheFolder: cacheFolder, ids: chains, reporter: reporter)
        done += layers.prefix(reused).reduce(Int64(0)) { $0 + $1.size }
        let tree = try FileDescriptor.openDirectory(target, followSymlinks: false)
        defer { tree.close() }
        for (i, layer) in layers.enumerated() where i >= reused {
            reporter.log(LogPriority.info, "Applying layer \(i + 1)/\(layers.count) (\(layer.digest)).")
            let blob = try cache.open(layer)
            defer { blob.close() }
            try OciLayers.apply(blob: blob, into: tree, reporter: reporter, progress: { report($0) })
            done += layer.size
            OciChainCache.store(target, cacheFolder: cacheFolder, id: chains[i])
        }
        try writeConfig(configBytes, into: tree)
        let settings = OciSettings.nspawn(config, reference: reference.description)
        for warning in settings.warnings { reporter.log(LogPriority.warning, warning) }
        try writeSettings(settings.text, beside: target)
        reporter.progress(1)
    }

    /// The image manifest for this host: the reference's manifest, or the linux/<host arch>
    /// entry of its index. Every manifest fetched by digest is checked against it.
    static func resolveManifest(_ client: RegistryClient, reporter: StatusReporter) throws -> (OciManifestDocument, String) {
        let reference = client.reference
        var ref = reference.manifestReference
        var expected = reference.digest
        let arch = OciHostPlatform.architecture
        for _ in 0..<2 {
            let response = try client.manifest(ref)
            let digest = "sha256:" + sha256Hex(response.body)
            if let expected, digest != expected {
                throw TransferError("the manifest \(ref) of \(reference) has digest \(digest), expected \(expected): digest mismatch")
            }
            switch try interpretManifest(response.body, contentType: response.contentType, reference: reference, architecture: arch) {
            case .image(let document):
                return (document, digest)
            case .index(let entry):
                reporter.log(LogPriority.info, "Index \(digest): using the linux/\(arch) image \(entry).")
                ref = entry
                expected = entry
            }
        }
        throw TransferError("the index of \(reference) points to another index")
    }

    /// What a manifest the registry sent says: an image manifest, or an index whose entry for
    /// linux/`architecture` (a manifest digest) is to be fetched next.
    package enum ManifestStep {
        case image(OciManifestDocument)
        case index(String)
    }

    /// The registry's answer to a manifest request (`body`, with its Content-Type), decoded and
    /// checked: the parse of that hostile document, apart from fetching it.
    package static func interpretManifest(_ body: [UInt8], contentType: String?, reference: OciReference,
                                          architecture arch: String) throws -> ManifestStep {
        let document = try OciJSON.decode(OciManifestDocument.self, body, what: "manifest of \(reference)")
        let type = document.mediaType ?? contentType ?? ""
        if document.schemaVersion == 1 || type.contains("manifest.v1+json") && !type.contains("oci") {
            throw TransferError("\(reference) has a Docker schema 1 manifest, which is not supported")
        }
        if let entries = document.manifests {
            guard entries.count <= OciLimits.indexEntries else { throw TransferError("the index of \(reference) is too large") }
            guard let entry = entries.first(where: { $0.platform?.os == "linux" && $0.platform?.architecture == arch }) else {
                let offered = entries.compactMap { $0.platform.map { "\($0.os)/\($0.architecture)" } }.joined(separator: ", ")
                throw TransferError("\(reference) has no image for linux/\(arch) (it has: \(offered))")
            }
            guard OciReference.isDigest(entry.digest) else { throw TransferError("the index names a manifest by an unsupported digest") }
            return .index(entry.digest)
        }
        guard document.layers != nil else { throw TransferError("\(reference): neither an image manifest nor an index") }
        return .image(document)
    }

    /// The config and layer descriptors of an image manifest, checked: present, at most
    /// `OciLimits.layers` layers, sha256 digests, sizes not negative, layer media types known.
    package static func imageParts(of manifest: OciManifestDocument, reference: OciReference) throws
        -> (config: OciDescriptor, layers: [OciDescriptor])
    {
        guard let configDescriptor = manifest.config, let layers = manifest.layers else {
            throw TransferError("the manifest of \(reference) has no config or no layers")
        }
        guard layers.count <= OciLimits.layers else { throw TransferError("the image has \(layers.count) layers: too many") }
        for d in [configDescriptor] + layers {
            guard OciReference.isDigest(d.digest), d.size >= 0 else {
                throw TransferError("the manifest names a blob by an unsupported digest or size: \(d.digest)")
            }
        }
        for layer in layers {
            let type = layer.mediaType ?? ""
            guard OciMediaType.layers.contains(type) else { throw TransferError("layer \(layer.digest) has an unsupported media type '\(type)'") }
        }
        return (configDescriptor, layers)
    }

    /// The image config blob, decoded; an image for another OS than linux is refused.
    package static func imageConfig(_ bytes: [UInt8]) throws -> OciImageConfig {
        let config = try OciJSON.decode(OciImageConfig.self, bytes, what: "image config")
        if let os = config.os, os != "linux" { throw TransferError("the image is for \(os), not linux") }
        return config
    }

    /// `/.oci-config.json`: replaces whatever a layer put there (never following it).
    static func writeConfig(_ bytes: [UInt8], into tree: FileDescriptor) throws {
        try TreeRemoval.remove(configFileName, in: tree)
        let file = try FileDescriptor.open(configFileName, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o644, relativeTo: tree)
        defer { file.close() }
        try bytes.withUnsafeBytes { try file.writeAll($0) }
    }

    /// `<target>.nspawn` in the pool: berthd renames it to `NAME.nspawn` with the image.
    static func writeSettings(_ text: String, beside target: String) throws {
        let path = target + ".nspawn"
        let file = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o644)
        defer { file.close() }
        try Array(text.utf8).withUnsafeBytes { try file.writeAll($0) }
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        guard let hash = try? SHA256() else { return "" }
        bytes.withUnsafeBytes { hash.update($0) }
        return hash.finalHex()
    }
}

/// The pool's OCI blob cache, `POOL/.#berth-oci-cache/blobs/sha256-<hex>`: verified blobs by
/// digest, so a second pull downloads only the layers it has not seen. `.#` keeps it out of
/// image listings; berthd's start-up clean-up of temp entries leaves this one alone. A pull
/// holds a shared flock on the cache folder; CleanPool removes the folder under an exclusive one.
final class OciBlobCache {
    /// The cache folder's name in the pool folder.
    static let folderName = ImagePool.layerCacheEntry
    let folder: FileDescriptor
    let blobs: FileDescriptor

    init(pool: String) throws {
        let poolFD = try FileDescriptor.openDirectory(pool, followSymlinks: false)
        defer { poolFD.close() }
        if mkdirat(poolFD.rawValue, Self.folderName, 0o700) != 0 && errno != EEXIST {
            throw SystemCallError("mkdirat", .current, subject: Self.folderName)
        }
        let folder = try FileDescriptor.openDirectory(Self.folderName, relativeTo: poolFD, followSymlinks: false)
        do {
            _ = try sys("flock") { flock(folder.rawValue, LOCK_SH) }
            if mkdirat(folder.rawValue, "blobs", 0o700) != 0 && errno != EEXIST { throw SystemCallError("mkdirat", .current, subject: "blobs") }
            blobs = try FileDescriptor.openDirectory("blobs", relativeTo: folder, followSymlinks: false)
        } catch {
            folder.close()
            throw error
        }
        self.folder = folder
    }

    deinit {
        blobs.close()
        folder.close()  // the flock goes with it
    }

    static func name(_ digest: String) -> String { "sha256-" + digest.dropFirst(7) }

    /// Is the blob there, of its descriptor's size? (A torn entry of the wrong size is removed.)
    func has(_ d: OciDescriptor) -> Bool {
        guard let st = try? fileStatus(Self.name(d.digest), relativeTo: blobs, followSymlinks: false), st.isRegular else { return false }
        if st.size == d.size { return true }
        _ = unlinkat(blobs.rawValue, Self.name(d.digest), 0)
        return false
    }

    /// The cached blob, open for reading.
    func open(_ d: OciDescriptor) throws -> FileDescriptor {
        try FileDescriptor.open(Self.name(d.digest), flags: O_RDONLY | O_NOFOLLOW, relativeTo: blobs)
    }

    /// The blob from the cache, or downloaded, verified and then cached; open for reading.
    func fetch(_ d: OciDescriptor, client: RegistryClient, limit: Int64, progress: @escaping (Int64) -> Void) throws -> FileDescriptor {
        if has(d) { return try open(d) }
        guard d.size <= limit else { throw TransferError("blob \(d.digest) is \(d.size) bytes: too large") }
        // Unnamed until verified: a failure (or a killed worker) leaves nothing.
        let file = try FileDescriptor(owning: sys("openat(O_TMPFILE)") { openat(blobs.rawValue, ".", BERTH_O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600) })
        let hash = try SHA256()
        _ = try client.blob(d.digest, sink: .file(fd: file.rawValue, hash: hash, limit: d.size, progress: progress))
        let size = try file.stat().size
        guard size == d.size else {
            throw TransferError("blob \(d.digest) is \(size) bytes, its descriptor says \(d.size): size mismatch")
        }
        let actual = "sha256:" + hash.finalHex()
        guard actual == d.digest else {
            throw TransferError("blob \(d.digest) has digest \(actual): digest mismatch, the download is discarded")
        }
        let name = Self.name(d.digest)
        if linkat(file.rawValue, "", blobs.rawValue, name, FileDescriptor.emptyPath) != 0 && errno != EEXIST {
            _ = try sys("linkat", name) { linkat(AT_FDCWD, "/proc/self/fd/\(file.rawValue)", blobs.rawValue, name, AT_SYMLINK_FOLLOW) }
        }
        _ = lseek(file.rawValue, 0, SEEK_SET)
        return file
    }
}

/// The nspawn settings file (systemd.nspawn(5)) that runs an OCI image as its config says:
/// `Boot=no` (the image's command is not an init), `Parameters=` Entrypoint + Cmd,
/// `Environment=` per Env entry, `WorkingDirectory=`, `User=`. Values are double-quoted with
/// `"` and `\` escaped; a value with a control character cannot be written safely on one
/// line and is left out (the returned warnings say which).
package enum OciSettings {
    package static func nspawn(_ config: OciImageConfig, reference: String) -> (text: String, warnings: [String]) {
        var lines = ["# Written by berthd from the image config of \(reference)", "[Exec]", "Boot=no"]
        var warnings: [String] = []
        let exec = config.config
        let command = (exec?.Entrypoint ?? []) + (exec?.Cmd ?? [])
        if !command.isEmpty {
            let quoted = command.compactMap(quote)
            if quoted.count == command.count {
                lines.append("Parameters=" + quoted.joined(separator: " "))
            } else {
                warnings.append("the image's command has control characters: not written to the nspawn settings")
            }
        }
        for variable in exec?.Env ?? [] where variable.contains("=") && !variable.hasPrefix("=") {
            if let q = quote(variable) { lines.append("Environment=" + q) } else {
                warnings.append("an environment variable of the image has control characters: left out")
            }
        }
        // WorkingDirectory= takes the rest of the line as the path, unquoted.
        if let dir = exec?.WorkingDir, dir.hasPrefix("/"), quote(dir) != nil { lines.append("WorkingDirectory=" + dir) }
        // nspawn's User= takes a user name (or number) of the image; "uid:gid" has no equivalent.
        if let user = exec?.User, !user.isEmpty {
            // Printable ASCII only: DEL (0x7f) is a control character too (found by fuzzing).
            if !user.contains(":"), user.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f && $0 != "\"" && $0 != "\\" }) {
                lines.append("User=" + user)
            } else {
                warnings.append("the image's user '\(user.unicodeScalars.filter { $0.value >= 0x20 })' has no nspawn equivalent: left out")
            }
        }
        return (lines.joined(separator: "\n") + "\n", warnings)
    }

    /// Double-quoted, `"` and `\` escaped; nil for a value with a control character.
    static func quote(_ s: String) -> String? {
        guard s.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7f }) else { return nil }
        var out = "\""
        for u in s.unicodeScalars {
            if u == "\\" || u == "\"" { out += "\\" }
            out.unicodeScalars.append(u)
        }
        return out + "\""
    }
}
