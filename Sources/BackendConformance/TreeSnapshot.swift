import CLinux
import Glibc
import Linux

/// Everything a faithful copy must preserve about a tree, per relative path, for comparing a
/// clone with its source: type, mode bits (setuid/setgid/sticky included), numeric owner, size,
/// device numbers, symlink targets, atime/mtime (nanoseconds), extended attributes (ACLs are
/// system.posix_acl_*), content checksums, hardlink groups, and which files are sparse.
public struct TreeSnapshot: Sendable, Equatable, CustomStringConvertible {
    /// One inode as seen at one path.
    public struct Entry: Sendable, Equatable {
        /// st_mode: type and permission bits, setuid/setgid/sticky included.
        public var mode: UInt32
        /// Numeric owner and group.
        public var uid: UInt32
        public var gid: UInt32
        /// Apparent size (0 for directories, whose size is filesystem-specific).
        public var size: Int64
        /// Device number of device nodes.
        public var rdev: UInt64
        /// readlink(2) of a symlink.
        public var symlinkTarget: String?
        /// Nanoseconds since the epoch; 0 where not compared (directories, symlinks).
        public var accessTime: Int64
        public var modificationTime: Int64
        /// Every extended attribute, ACLs (system.posix_acl_*) included.
        public var xattrs: [String: [UInt8]]
        /// Contents checksum of regular files.
        public var checksum: UInt64?
        /// The first path (sorted) sharing this inode; equal to its own path if not hardlinked.
        public var hardlinkGroup: String
        /// Allocated bytes well below the size: holes were kept.
        public var isSparse: Bool
    }

    /// Entries by path relative to the snapshot's top ("." for the top itself).
    public var entries: [String: Entry]

    /// Walks `path` (not following symlinks) and records every entry, "." for the top.
    /// - Parameter includeAccessTimes: compare access times of files and special files.
    ///   Directories' and symlinks' are never recorded: listing a directory or reading a link
    ///   (which any copy must do) moves them.
    public init(of path: String, includeAccessTimes: Bool = true) throws {
        var entries: [String: Entry] = [:]
        var groups: [[UInt64]: String] = [:]
        var queue: [String] = ["."]
        while let rel = queue.popLast() {
            let full = rel == "." ? path : path + "/" + rel
            let st = try fileStatus(full, followSymlinks: false)
            let key = [st.device, st.inode]
            var group = rel
            if !st.isDirectory && st.linkCount > 1 {
                if let g = groups[key], g < rel { group = g } else { groups[key] = rel }
            }
            var entry = Entry(
                mode: st.mode, uid: st.uid, gid: st.gid, size: st.isDirectory ? 0 : st.size, rdev: st.rdev,
                symlinkTarget: st.isSymlink ? try readLink(full) : nil,
                accessTime: includeAccessTimes && !st.isDirectory && !st.isSymlink ? Int64(st.accessTime.tv_sec) * 1_000_000_000 + Int64(st.accessTime.tv_nsec) : 0,
                modificationTime: Int64(st.modificationTime.tv_sec) * 1_000_000_000 + Int64(st.modificationTime.tv_nsec),
                xattrs: try Self.xattrs(full), checksum: nil, hardlinkGroup: group,
                isSparse: st.isRegular && st.size > 1 << 20 && Int64(st.allocatedBytes) < st.size / 2)
            if st.isRegular { entry.checksum = try Self.checksum(full) }
            entries[rel] = entry
            if st.isDirectory {
                for name in try directoryEntries(full) {
                    queue.append(rel == "." ? name : rel + "/" + name)
                }
            }
        }
        // Hardlink groups must name the smallest path of each group on both sides.
        for (rel, e) in entries where e.hardlinkGroup != rel {
            let st = try fileStatus(path + "/" + rel, followSymlinks: false)
            if let g = groups[[st.device, st.inode]] { entries[rel]?.hardlinkGroup = g }
        }
        self.entries = entries
    }

    /// The paths whose entries differ between two snapshots, with what differs.
    public func differences(from other: TreeSnapshot) -> [String] {
        var result: [String] = []
        for path in Set(entries.keys).union(other.entries.keys).sorted() {
            guard let a = entries[path] else { result.append("\(path): only in the other tree"); continue }
            guard let b = other.entries[path] else { result.append("\(path): missing from the other tree"); continue }
            if a != b { result.append("\(path): \(a) ≠ \(b)") }
        }
        return result
    }

    public var description: String { "\(entries.count) entries" }

    static func xattrs(_ path: String) throws -> [String: [UInt8]] {
        let size = llistxattr(path, nil, 0)
        if size <= 0 { return [:] }
        var list = [CChar](repeating: 0, count: size)
        let n = llistxattr(path, &list, size)
        guard n > 0 else { return [:] }
        var result: [String: [UInt8]] = [:]
        for raw in list[0..<n].split(separator: 0) {
            let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let len = lgetxattr(path, name, nil, 0)
            guard len >= 0 else { continue }
            var value = [UInt8](repeating: 0, count: max(len, 1))
            let got = lgetxattr(path, name, &value, len)
            guard got >= 0 else { continue }
            result[name] = Array(value[0..<got])
        }
        return result
    }

    /// FNV-1a over the non-zero 1 MiB blocks (by absolute offset) and the size: holes and
    /// zero-filled data hash alike, as a copy may store either; SEEK_DATA skips holes fast.
    static func checksum(_ path: String) throws -> UInt64 {
        // O_NOATIME: reading must not move the atimes we compare.
        let fd = try FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW | FileDescriptor.noAccessTime)
        let size = try fd.stat().size
        let block = 1 << 20
        var hash: UInt64 = 0xcbf29ce484222325
        func mix(_ v: UInt64) { hash = (hash ^ v) &* 0x100000001b3 }
        mix(UInt64(size))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: block, alignment: 8)
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: block, alignment: 8)
        defer { buffer.deallocate(); zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var offset: Int64 = 0
        while offset < size {
            let data = lseek(fd.rawValue, off_t(offset), BERTH_SEEK_DATA)
            if data < 0 { break }  // ENXIO: only a hole remains
            let start = Int64(data) / Int64(block) * Int64(block)
            let n = try fd.read(into: buffer, at: start)
            if n == 0 { break }
            guard let a = buffer.baseAddress, let z = zeros.baseAddress else { break }
            if memcmp(a, z, n) != 0 {
                mix(UInt64(start))
                for i in 0..<(n / 8) { mix(buffer.load(fromByteOffset: i * 8, as: UInt64.self)) }
                for i in (n / 8 * 8)..<n { mix(UInt64(buffer[i])) }
            }
            offset = start + Int64(block)
        }
        return hash
    }
}
