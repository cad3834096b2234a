import Glibc
import Linux
import TestSupport

/// Small file-making helpers for the FileTree tests: real files in a temporary folder.
enum Files {
    /// Writes `bytes` to a new file at `path` with `mode` (umask cleared by an fchmod).
    static func write(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        let fd = try FileDescriptor.open(path, flags: O_CREAT | O_EXCL | O_WRONLY, mode: mode)
        defer { fd.close() }
        try bytes.withUnsafeBytes { try fd.writeAll($0) }
        try fd.setMode(mode)
    }

    static func write(_ path: String, _ text: String, mode: mode_t = 0o644) throws {
        try write(path, Array(text.utf8), mode: mode)
    }

    static func read(_ path: String) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW)
        defer { fd.close() }
        return try fd.readToEnd(limit: 256 << 20)
    }

    /// A file of `size` bytes holding `data` at each of `offsets` and holes elsewhere.
    static func sparse(_ path: String, size: Int64, data: [UInt8], at offsets: [Int64]) throws {
        let fd = try FileDescriptor.open(path, flags: O_CREAT | O_EXCL | O_WRONLY, mode: 0o644)
        defer { fd.close() }
        try fd.truncate(to: size)
        for offset in offsets { try data.withUnsafeBytes { try fd.writeAll($0, at: offset) } }
    }

    /// lstat.
    static func status(_ path: String) throws -> FileStatus { try fileStatus(path, followSymlinks: false) }

    /// Sets an inode flag (FS_IMMUTABLE_FL, FS_APPEND_FL) with chattr, as a user would.
    static func chattr(_ flag: String, _ path: String) throws {
        try run(["chattr", flag, path], check: true)
    }
}

/// A fresh temporary folder per test, removed after (immutable flags lifted first).
func withTemporaryDirectory<T>(_ body: (TemporaryDirectory) throws -> T) throws -> T {
    let dir = try TemporaryDirectory(prefix: "berth-filetree")
    defer { dir.remove() }
    return try body(dir)
}
