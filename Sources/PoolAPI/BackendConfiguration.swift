import Glibc
import Linux

/// berthd's optional backends, as configured in `ROOT/etc/berth/backends.d/*.conf` (docs/rbd.md).
///
/// The syntax, decided here and validated strictly (a typo must not silently drop a pool):
/// - files named `*.conf` (not hidden) in that folder, read in byte order of their names; other
///   files are ignored, so an editor's `rbd.conf~` does nothing; a missing folder is no backends;
/// - per line: blank, a comment (`#` or `;` first), a section header `[rbd]` alone on its line,
///   or `key=value` (spaces around both trimmed; the value is everything after the first `=`,
///   so paths may hold spaces); one key per line, each key at most once per section;
/// - `[rbd]` is the only section; each makes one RBD pool:
///   `pool` (required: the Ceph pool), `cluster` (`ceph`), `conf` (`/etc/ceph/<cluster>.conf`,
///   resolved under `--root` like every path of berthd), `id` (the cephx client id without
///   `client.`, default `admin` as Ceph's tools), `timeout` (seconds, 1…600, default 30: how
///   long connecting and each cluster operation may take before failing) and `required`
///   (`yes`/`no`, default `no`: with `yes` berthd refuses to start when the cluster cannot be
///   reached; with `no` it logs the error and serves everything else without that pool);
/// - the same pool of the same cluster twice is an error.
/// Any error names the file and line.
public struct BackendConfiguration: Sendable, Equatable {
    /// One `[rbd]` section.
    public struct RbdPool: Sendable, Equatable {
        /// The Ceph pool holding the images (`pool=`).
        public var pool: String
        /// The cluster name (`cluster=`), as Ceph's `--cluster`.
        public var cluster: String
        /// The conf file as written (`conf=`), absolute, not yet resolved under the root.
        public var conf: String
        /// The conf file resolved under berthd's root: what librados and rbd-fuse read.
        public var confPath: String
        /// The cephx client id (`id=`), without `client.`.
        public var clientID: String
        /// Bound on connecting and each cluster operation, in seconds (`timeout=`).
        public var timeoutSeconds: Int
        /// Whether berthd refuses to start without this pool (`required=`).
        public var required: Bool
        /// Where the section starts, `FILE:LINE`, for messages about it.
        public var origin: String

        public init(pool: String, cluster: String = "ceph", conf: String? = nil, confPath: String? = nil,
                    clientID: String = "admin", timeoutSeconds: Int = 30, required: Bool = false, origin: String = "") {
            self.pool = pool
            self.cluster = cluster
            let written = conf ?? "/etc/ceph/\(cluster).conf"
            self.conf = written
            self.confPath = confPath ?? written
            self.clientID = clientID
            self.timeoutSeconds = timeoutSeconds
            self.required = required
            self.origin = origin
        }
    }

    /// The RBD pools, in file and section order.
    public var rbdPools: [RbdPool]

    public init(rbdPools: [RbdPool] = []) { self.rbdPools = rbdPools }

    /// Whether nothing optional is configured: berthd then runs as without the folder, and no
    /// Ceph library is loaded.
    public var isEmpty: Bool { rbdPools.isEmpty }

    /// `ROOT/etc/berth/backends.d`.
    public static func folder(root: String) -> String { joinPath(root, "etc/berth/backends.d") }

    /// A configuration file that cannot be used, with where and why.
    public struct ParseError: Error, CustomStringConvertible, Equatable {
        /// The file's path.
        public var file: String
        /// The 1-based line, or nil for the file as a whole (unreadable).
        public var line: Int?
        /// What is wrong.
        public var reason: String
        public var description: String { "\(file)\(line.map { ":\($0)" } ?? ""): \(reason)" }

        public init(file: String, line: Int?, reason: String) {
            self.file = file
            self.line = line
            self.reason = reason
        }
    }

    /// The keys of an `[rbd]` section.
    public static let rbdKeys = ["pool", "cluster", "conf", "id", "timeout", "required"]

    /// Reads every `*.conf` of `ROOT/etc/berth/backends.d`; none (or no folder) is an empty configuration.
    public static func load(root: String) throws(ParseError) -> BackendConfiguration {
        let folder = folder(root: root)
        let names: [String]
        do {
            names = try directoryEntries(folder).filter { !$0.hasPrefix(".") && $0.hasSuffix(".conf") && $0.count > 5 }
        } catch {
            if error.errno == .ENOENT { return BackendConfiguration() }
            throw ParseError(file: folder, line: nil, reason: "cannot read the folder: \(error)")
        }
        var configuration = BackendConfiguration()
        for name in names.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
            let path = joinPath(folder, name)
            let text = try readSmallFile(path)
            let parsed = try parse(text, file: path, root: root)
            for pool in parsed.rbdPools {
                if let earlier = configuration.rbdPools.first(where: { $0.pool == pool.pool && $0.cluster == pool.cluster }) {
                    let line = Int(pool.origin.split(separator: ":").last ?? "")
                    throw ParseError(file: path, line: line,
                                     reason: "pool '\(pool.pool)' of cluster '\(pool.cluster)' is already configured at \(earlier.origin)")
                }
                configuration.rbdPools.append(pool)
            }
        }
        return configuration
    }

    /// Parses one file's text (`file` names it in errors; `conf=` is resolved under `root`).
    public static func parse(_ text: String, file: String, root: String = "/") throws(ParseError) -> BackendConfiguration {
        var pools: [RbdPool] = []
        var section: (line: Int, values: [String: String])?

        func finish() throws(ParseError) {
            guard let current = section else { return }
            pools.append(try rbdPool(current.values, file: file, line: current.line, root: root))
            if let earlier = pools.dropLast().first(where: { $0.pool == pools.last?.pool && $0.cluster == pools.last?.cluster }) {
                throw ParseError(file: file, line: current.line,
                                 reason: "pool '\(earlier.pool)' of cluster '\(earlier.cluster)' is already configured at \(earlier.origin)")
            }
        }

        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        for (index, rawLine) in lines.enumerated() {
            let number = index + 1
            let line = rawLine.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else {
                    throw ParseError(file: file, line: number,
                                     reason: "a section header stands alone on its line, e.g. [rbd] (put each key=value on its own line)")
                }
                let name = String(line.dropFirst().dropLast()).trimmingWhitespace()
                guard name == "rbd" else {
                    throw ParseError(file: file, line: number, reason: "unknown section [\(name)] (known: [rbd])")
                }
                try finish()
                section = (number, [:])
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw ParseError(file: file, line: number, reason: "expected key=value, a [section] or a # comment")
            }
            let key = String(line[..<equals]).trimmingWhitespace()
            let value = String(line[line.index(after: equals)...]).trimmingWhitespace()
            guard section != nil else {
                throw ParseError(file: file, line: number, reason: "'\(key)' before any section ([rbd])")
            }
            guard rbdKeys.contains(key) else {
                throw ParseError(file: file, line: number,
                                 reason: "unknown key '\(key)' in [rbd] (known: \(rbdKeys.joined(separator: ", ")))")
            }
            guard section?.values[key] == nil else {
                throw ParseError(file: file, line: number, reason: "'\(key)' given twice in one [rbd] section")
            }
            section?.values[key] = value
            // Remember where each key stands, for errors about its value.
            section?.values["#line:" + key] = String(number)
        }
        try finish()
        return BackendConfiguration(rbdPools: pools)
    }

    private static func rbdPool(_ values: [String: String], file: String, line: Int, root: String) throws(ParseError) -> RbdPool {
        func lineOf(_ key: String) -> Int { values["#line:" + key].flatMap { Int($0) } ?? line }
        func fail(_ key: String, _ reason: String) -> ParseError { ParseError(file: file, line: lineOf(key), reason: reason) }

        guard let pool = values["pool"] else {
            throw ParseError(file: file, line: line, reason: "[rbd] needs pool=<Ceph pool name>")
        }
        guard isCephName(pool) else {
            throw fail("pool", "pool '\(pool)' is not a Ceph pool name (letters, digits, '-', '_', '.', not starting with '.', at most 255 bytes)")
        }
        let cluster = values["cluster"] ?? "ceph"
        guard isCephName(cluster), !cluster.contains(".") else {
            throw fail("cluster", "cluster '\(cluster)' is not a cluster name (letters, digits, '-', '_')")
        }
        let conf = values["conf"] ?? "/etc/ceph/\(cluster).conf"
        guard conf.hasPrefix("/"), !conf.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
            throw fail("conf", "conf '\(conf)' must be an absolute path without '.' or '..' components")
        }
        let clientID = values["id"] ?? "admin"
        guard isCephName(clientID), !clientID.hasPrefix("client.") else {
            throw fail("id", "id '\(clientID)' is not a cephx client id (letters, digits, '-', '_', '.'; without 'client.')")
        }
        var timeout = 30
        if let text = values["timeout"] {
            guard let seconds = Int(text), (1...600).contains(seconds) else {
                throw fail("timeout", "timeout '\(text)' must be a whole number of seconds from 1 to 600")
            }
            timeout = seconds
        }
        var required = false
        if let text = values["required"] {
            switch text.lowercased() {
            case "yes", "true", "1", "on": required = true
            case "no", "false", "0", "off": required = false
            default: throw fail("required", "required '\(text)' must be yes or no")
            }
        }
        return RbdPool(pool: pool, cluster: cluster, conf: conf, confPath: joinPath(root, conf), clientID: clientID,
                       timeoutSeconds: timeout, required: required, origin: "\(file):\(line)")
    }

    /// Ceph's names as berthd accepts them: printable ASCII letters, digits, `-`, `_`, `.`, not
    /// starting with `.`, non-empty, at most 255 bytes (nothing a shell, a path or a conf file
    /// could read otherwise).
    static func isCephName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 255, !name.hasPrefix(".") else { return false }
        return name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
                || c == UInt8(ascii: "-") || c == UInt8(ascii: "_") || c == UInt8(ascii: ".")
        }
    }

    /// Reads a configuration file of at most 64 KiB (a bigger one is a mistake, not a config),
    /// not through a symlink's last component.
    private static func readSmallFile(_ path: String) throws(ParseError) -> String {
        let bytes: [UInt8]
        do {
            let file = try FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW)
            bytes = try file.readToEnd(limit: (64 << 10) + 1)
        } catch {
            throw ParseError(file: path, line: nil, reason: "cannot read: \(error)")
        }
        guard bytes.count <= 64 << 10 else { throw ParseError(file: path, line: nil, reason: "larger than 64 KiB") }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ParseError(file: path, line: nil, reason: "not UTF-8 text")
        }
        return text
    }
}
