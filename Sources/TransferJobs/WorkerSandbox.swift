import CLinux
import Glibc
import Linux
import PoolAPI
import Sandbox
import Transfer

/// The transfer worker's confinement (docs/security.md, "The transfer worker"): what each type
/// of transfer may see and do once `berth-transfer` has confined itself, before it reads a byte
/// of its input. The policy is a pure function of the command line, so tests check it as such
/// and the TransferWorkerFixture applies the very same one.
extension TransferWorker {
    /// Capabilities of a worker that writes an image tree from an archive or a registry:
    /// owners, modes, set-ID bits, times, ACLs, device nodes and file capabilities as the
    /// archive says, into folders of any owner and mode; chroot for the extracting thread.
    package static let extractingCapabilities: CapabilitySet = [.chown, .dacOverride, .fowner, .fsetid, .mknod, .setfcap, .sysChroot]

    /// The host files a download needs: name resolution (resolv.conf, hosts, nsswitch.conf…),
    /// the CA store (/etc/ssl, /etc/ca-certificates, /etc/pki) and the dynamic linker's cache
    /// for gpg. Read-only; those that do not exist are left out.
    package static let networkFiles = [
        "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf",
        "/etc/services", "/etc/protocols", "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/ld.so.cache",
    ]

    /// The host files a worker reading or writing an RBD image (`--target`/`--source` a locator)
    /// needs to reach its cluster, read-only: `ROOT/etc/berth/backends.d`, /etc/ceph, the `[rbd]`
    /// section's ceph.conf and the keyrings that conf names (`keyring = PATH[,PATH…]`; a path
    /// with Ceph metavariables such as `$name` is reached through its folder). Read before the
    /// worker confines itself; a keyring elsewhere (named only on another host's command line)
    /// is not in the view, and the connection then fails saying so.
    package static func cephFiles(for locator: RbdLocator, root: String) -> [String] {
        var files = [BackendConfiguration.folder(root: root), "/etc/ceph"]
        guard let configuration = try? BackendConfiguration.load(root: root),
              let pool = configuration.rbdPool(for: locator) else { return files }
        files.append(pool.confPath)
        for line in (readSmall(pool.confPath) ?? "").split(whereSeparator: \.isNewline) {
            // Ceph reads `keyring`, `key file` and `keyfile` alike (spaces and underscores are one).
            let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingWhitespace() }
            guard parts.count == 2 else { continue }
            let key = String(parts[0].filter { $0 != " " && $0 != "_" })
            guard key == "keyring" || key == "keyfile" else { continue }
            for path in parts[1].split(separator: ",").map({ $0.trimmingWhitespace() }) where path.hasPrefix("/") {
                let folder = parentFolder(of: path)
                if !path.contains("$") { files.append(path) } else if !folder.contains("$") { files.append(folder) }
            }
        }
        return files
    }

    /// What a worker of `a`'s type may see and do.
    /// - import-tar, import-fs: its temp entry, read-write; the capabilities of extraction
    ///   (import-fs: and reading any file of its input tree); no network.
    /// - import-raw: its temp file, read-write; no capability; no network.
    /// - export-tar, export-raw: the image, read-only; reading any file of it; no network.
    /// - pull-tar, pull-raw: as the import, plus the host's network, the files of `networkFiles`
    ///   and, to verify signatures, the import keyrings under `--root`.
    /// - pull-oci: the pool folder read-write (the layer cache, the settings file beside the
    ///   temp entry, which a btrfs layer snapshot replaces), the capabilities of extraction,
    ///   the host's network, `networkFiles` and `ROOT/etc/berth/certs.d`.
    /// - an import into, export from or pull into an RBD image (a locator, not a path): no bind
    ///   for the image; the host's network (to the cluster) and `cephFiles`, read-only.
    package static func sandboxPolicy(for a: Arguments, cephFiles: [String] = []) -> SandboxPolicy {
        var policy = SandboxPolicy()
        policy.keepDescriptors = [statusDescriptor, dataDescriptor]
        if a.type == .importFileSystem {
            policy.directoryDescriptor = dataDescriptor
        } else {
            policy.nonDirectoryDescriptors = [dataDescriptor]
        }
        let onRbd = [a.target, a.source].contains { $0.map(RbdLocator.isLocator) ?? false }
        let target = a.target.flatMap { RbdLocator.isLocator($0) ? nil : SandboxPolicy.Bind($0, .readWrite) }
        switch a.type {
        case .importTar:
            policy.binds = [target].compactMap { $0 }
            policy.capabilities = extractingCapabilities
        case .importFileSystem:
            policy.binds = [target].compactMap { $0 }
            policy.capabilities = extractingCapabilities.subtracting(.sysChroot).union(.dacReadSearch)
        case .importRaw:
            policy.binds = [target].compactMap { $0 }
        case .exportTar, .exportRaw:
            policy.binds = [a.source.flatMap { RbdLocator.isLocator($0) ? nil : SandboxPolicy.Bind($0, .readOnly) }].compactMap { $0 }
            policy.capabilities = .dacReadSearch
        case .pullTar, .pullRaw:
            policy.binds = [target].compactMap { $0 }
            if a.verify == .signature {
                policy.binds += ["etc/systemd/import-pubring.gpg", "usr/lib/systemd/import-pubring.gpg"].map {
                    SandboxPolicy.Bind(joinPath(a.root, $0), .readOnly, required: false)
                }
            }
            policy.capabilities = a.type == .pullTar ? extractingCapabilities : []
        case .pullOci:
            if let target = a.target {
                policy.binds = [SandboxPolicy.Bind(parentFolder(of: target), .readWrite)]
            }
            policy.binds.append(SandboxPolicy.Bind(joinPath(a.root, "etc/berth/certs.d"), .readOnly, required: false))
            policy.capabilities = extractingCapabilities
        }
        if [.pullTar, .pullRaw, .pullOci].contains(a.type) {
            policy.hostNetwork = true
            policy.binds += networkFiles.map { SandboxPolicy.Bind($0, .readOnly, required: false, system: true) }
        }
        if onRbd {
            policy.hostNetwork = true
            policy.binds += cephFiles.map { SandboxPolicy.Bind($0, .readOnly, required: false, system: true) }
        }
        return policy
    }

    /// Confines this worker as `sandboxPolicy(for:)` says. For raw imports it first opens an
    /// unnamed scratch file (O_TMPFILE) beside the target (in the local pool folder, `--pool`,
    /// for an RBD image) — where a compressed or piped qcow2 image is unpacked before
    /// conversion — as the pool folder itself is not in the view; that file is returned, for
    /// `RawImport`.
    /// - Throws: `SandboxError`: the worker must then fail, never run unconfined.
    package static func confine(_ a: Arguments) throws(SandboxError) -> FileDescriptor? {
        let locator = (a.target ?? a.source).flatMap(RbdLocator.init)
        var policy = sandboxPolicy(for: a, cephFiles: locator.map { cephFiles(for: $0, root: a.root) } ?? [])
        var scratch: FileDescriptor?
        if a.type == .importRaw || a.type == .pullRaw, let target = a.target,
           let folder = RbdLocator.isLocator(target) ? a.poolPath : parentFolder(of: target) {
            // Unsupported here (an exotic filesystem): the qcow2 path reports its own error later.
            scratch = try? FileDescriptor.open(folder, flags: BERTH_O_TMPFILE | O_RDWR | O_CLOEXEC, mode: 0o600)
        }
        if let scratch { policy.keepDescriptors.append(scratch.rawValue) }
        try Sandbox.enter(policy)
        return scratch
    }
}
