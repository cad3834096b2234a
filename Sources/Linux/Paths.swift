import CLinux
import Glibc

/// renameat2(2) with RENAME_NOREPLACE: fails with EEXIST rather than replace the target.
public func renameNoReplace(_ from: String, _ to: String, fromDirectory: FileDescriptor? = nil, toDirectory: FileDescriptor? = nil) throws(SystemCallError) {
    let a = fromDirectory?.rawValue ?? AT_FDCWD, b = toDirectory?.rawValue ?? AT_FDCWD
    try sys("renameat2", "\(from) → \(to)") { renameat2(a, from, b, to, BERTH_RENAME_NOREPLACE) }
}

/// renameat2(2) with RENAME_EXCHANGE: swaps two entries atomically.
public func renameExchange(_ a: String, _ b: String) throws(SystemCallError) {
    try sys("renameat2", "\(a) ⇄ \(b)") { renameat2(AT_FDCWD, a, AT_FDCWD, b, BERTH_RENAME_EXCHANGE) }
}

/// unlinkat(2) without AT_REMOVEDIR: removes a file or a symlink itself (never what it points to).
public func removeFile(_ path: String) throws(SystemCallError) {
    try sys("unlinkat", path) { unlinkat(AT_FDCWD, path, 0) }
}

/// mkdirat(2).
public func makeDirectory(_ path: String, mode: mode_t = 0o755, relativeTo dir: FileDescriptor? = nil) throws(SystemCallError) {
    try sys("mkdirat", path) { mkdirat(dir?.rawValue ?? AT_FDCWD, path, mode) }
}

/// symlinkat(2): a symbolic link at `path` that points to `target`; EEXIST if `path` exists.
public func makeSymbolicLink(_ path: String, pointingTo target: String) throws(SystemCallError) {
    try sys("symlinkat", path) { symlinkat(target, AT_FDCWD, path) }
}

/// unlinkat(2) with AT_REMOVEDIR: removes an empty directory (ENOTEMPTY otherwise).
public func removeDirectory(_ path: String) throws(SystemCallError) {
    try sys("unlinkat", path) { unlinkat(AT_FDCWD, path, AT_REMOVEDIR) }
}

/// mkdir -p: makes `path` and missing parents; an existing directory is fine.
public func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(SystemCallError) {
    var current = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        current += "/" + part
        if mkdir(current, mode) != 0 && errno != EEXIST {
            throw SystemCallError("mkdir", .current, subject: current)
        }
    }
}

/// One entry of a directory listing (readdir(3)).
public struct DirectoryEntry: Sendable, Hashable {
    /// The entry's name (never `.` or `..`).
    public var name: String
    /// Its type in `st_mode`'s S_IFMT bits (S_IFDIR, S_IFREG, …) from `d_type`, so it compares
    /// with `FileStatus`/`EntryStatus` modes; nil where the filesystem does not say (DT_UNKNOWN):
    /// then only a stat tells.
    public var fileType: UInt32?
}

/// The entries of the directory open at `dir`, without `.` and `..`, in readdir order: the one
/// directory listing (fdopendir(3)/readdir(3)). It reads a duplicate (F_DUPFD_CLOEXEC), since
/// fdopendir takes ownership of its descriptor, rewound first (a duplicate shares the offset, so
/// a second listing of `dir` still sees everything); `dir` stays open for `*at` calls on the
/// entries. A readdir error is thrown, never taken for the end of the directory.
public func directoryListing(of dir: FileDescriptor) throws(SystemCallError) -> [DirectoryEntry] {
    let copy = try dir.duplicate()
    guard let stream = fdopendir(copy.rawValue) else { throw SystemCallError("fdopendir", .current) }
    // The stream owns the descriptor now: closedir closes it.
    _ = copy.release()
    defer { closedir(stream) }
    rewinddir(stream)
    var entries: [DirectoryEntry] = []
    while true {
        errno = 0
        guard let ent = readdir(stream) else {
            if errno != 0 { throw SystemCallError("readdir", .current) }
            return entries
        }
        let name = withUnsafeBytes(of: ent.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name == "." || name == ".." { continue }
        let type = ent.pointee.d_type
        entries.append(DirectoryEntry(name: name, fileType: type == UInt8(DT_UNKNOWN) ? nil : UInt32(type) << 12))
    }
}

/// The names in the directory open at `dir`, without `.` and `..` (`directoryListing(of:)`).
public func directoryEntries(of dir: FileDescriptor) throws(SystemCallError) -> [String] {
    try directoryListing(of: dir).map(\.name)
}

/// The names in the directory at `path` (symlinks followed, as opendir(3) does), without `.`
/// and `..` (`directoryListing(of:)`).
public func directoryEntries(_ path: String) throws(SystemCallError) -> [String] {
    let dir = try FileDescriptor.openDirectory(path)
    defer { dir.close() }
    return try directoryEntries(of: dir)
}

/// readlinkat(2).
public func readLink(_ path: String, relativeTo dir: FileDescriptor? = nil) throws(SystemCallError) -> String {
    var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = try sys("readlinkat", path) { readlinkat(dir?.rawValue ?? AT_FDCWD, path, &buf, buf.count - 1) }
    return buf.withUnsafeBufferPointer { raw in
        raw.withMemoryRebound(to: UInt8.self) { String(decoding: $0[0..<n], as: UTF8.self) }
    }
}

/// Joins path components with single slashes.
public func joinPath(_ base: String, _ components: String...) -> String {
    var result = base
    for c in components where !c.isEmpty {
        if result.hasSuffix("/") { result.removeLast() }
        result += c.hasPrefix("/") ? c : "/" + c
    }
    return result
}

/// The folder `path` names an entry of, for modules below the typed-path boundary (the Linux
/// layer, the sandbox, berth-inspect): "/" for "/x", "." for a bare name.
public func parentFolder(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

/// The components of `path` between slashes, empty ones (from "//" or a leading "/") left out.
public func pathComponents(_ path: String) -> [String] {
    path.split(separator: "/").map(String.init)
}

/// Whether `path` has a ".." component, which could climb out of the folder it is taken in.
public func pathClimbs(_ path: String) -> Bool {
    pathComponents(path).contains("..")
}

/// renameat2(2) with RENAME_EXCHANGE between two names relative to directories: swaps them
/// atomically (both must exist), whatever their types.
public func renameExchange(_ a: String, in aDirectory: FileDescriptor, with b: String, in bDirectory: FileDescriptor) throws(SystemCallError) {
    try sys("renameat2", "\(a) ⇄ \(b)") { renameat2(aDirectory.rawValue, a, bDirectory.rawValue, b, BERTH_RENAME_EXCHANGE) }
}
