import CLinux
import Glibc
import Linux

/// The contents the suite puts into a fresh image: for tree backends every kind of inode and
/// metadata a faithful clone must keep; for file backends a sparse file with data.
public enum Fixture {
    /// A fixed past time (2001-09-09T01:46:40Z + ns) so copied times are told from "now".
    static let fileTime = timespec(tv_sec: 1_000_000_000, tv_nsec: 123_456_789)
    static let directoryTime = timespec(tv_sec: 1_100_000_000, tv_nsec: 987_654_321)
    /// Apparent size of the sparse file, and where its data blocks are.
    public static let sparseSize: Int64 = 64 << 20
    static let sparseDataOffsets: [Int64] = [0, 17 << 20, (64 << 20) - 4096]

    /// Fills the empty directory `path` with: nested directories (setgid, sticky, odd owners),
    /// a setuid file, a file with user./trusted. xattrs and a POSIX ACL, a 64 MiB sparse file
    /// with three data blocks, two hardlinks of one inode, relative/absolute/dangling symlinks
    /// (one pointing outside the tree), a default ACL on a directory, a character device, a block device, a fifo and a
    /// socket node; then fixed times on everything, directories after their contents.
    public static func fillTree(at path: String) throws {
        func p(_ rel: String) -> String { path + "/" + rel }
        try makeDirectory(p("etc"), mode: 0o755)
        try makeDirectory(p("srv"), mode: 0o2775)
        try makeDirectory(p("srv/deep"), mode: 0o700)
        try makeDirectory(p("srv/deep/er"), mode: 0o750)
        try makeDirectory(p("tmp"), mode: 0o1777)
        try makeDirectory(p("dev"), mode: 0o755)
        try write(p("etc/os-release"), "ID=berthtest\nNAME=\"Berth Test\"\nPRETTY_NAME='Berth Test 1'\n")
        try write(p("etc/hostname"), "fixture\n")
        try write(p("srv/deep/er/file"), String(repeating: "berth ", count: 5000))
        try write(p("setuid"), "#!/bin/sh\n", mode: 0o4755)
        try write(p("attributed"), "xattrs\n")
        try setXattr(p("attributed"), "user.berth", Array("user value".utf8))
        try setXattr(p("attributed"), "trusted.berth", Array("trusted value".utf8))
        try setXattr(p("attributed"), "system.posix_acl_access", accessACL(otherUser: 4242))
        try setXattr(p("srv"), "user.berth.dir", Array("on a directory".utf8))
        try write(p("hardlink-a"), "one inode, two names\n")
        try sys("link", "hardlink-b") { link(p("hardlink-a"), p("srv/hardlink-b")) }
        try makeSparseFile(p("sparse"))
        try sys("symlink") { symlink("srv/deep/er/file", p("relative-link")) }
        try sys("symlink") { symlink("/etc/shadow", p("etc/absolute-link")) }
        try sys("symlink") { symlink("../../../../outside", p("srv/deep/escaping-link")) }
        try sys("mknod") { mknod(p("dev/null"), mode_t(Glibc.S_IFCHR | 0o666), dev_t(berth_makedev(1, 3))) }
        try sys("mknod") { mknod(p("dev/loop-like"), mode_t(Glibc.S_IFBLK | 0o660), dev_t(berth_makedev(7, 200))) }
        try sys("mknod") { mknod(p("dev/fifo"), mode_t(Glibc.S_IFIFO | 0o640), 0) }
        try sys("mknod") { mknod(p("dev/socket"), mode_t(Glibc.S_IFSOCK | 0o600), 0) }
        for (rel, uid, gid) in [("srv", 1234, 5678), ("srv/deep/er/file", 4000, 4001), ("dev/fifo", 99, 98),
                                ("etc/absolute-link", 555, 556)] {
            try sys("lchown", rel) { lchown(p(rel), uid_t(uid), gid_t(gid)) }
        }
        // A default ACL set after the children exist: they have no ACL of their own, and a copy
        // that set it before making them would give them one.
        try setXattr(p("srv/deep"), "system.posix_acl_default", accessACL(otherUser: 4343))
        // lchown cleared nothing here, but chmod again where setgid must survive on srv.
        try sys("chmod") { chmod(p("srv"), 0o2775) }
        // Times: leaves first, then directories deepest first, the top last.
        for rel in ["etc/os-release", "etc/hostname", "srv/deep/er/file", "setuid", "attributed", "hardlink-a",
                    "sparse", "relative-link", "etc/absolute-link", "srv/deep/escaping-link", "dev/null",
                    "dev/loop-like", "dev/fifo", "dev/socket"] {
            try setTimes(p(rel), fileTime)
        }
        for rel in ["srv/deep/er", "srv/deep", "srv", "etc", "tmp", "dev"] {
            try setTimes(p(rel), directoryTime)
        }
        try setTimes(path, directoryTime)
    }

    /// A file image: `sparseSize` bytes, data only at `sparseDataOffsets`.
    public static func fillFile(at path: String) throws {
        try makeSparseFile(path)
    }

    static func makeSparseFile(_ path: String) throws {
        let fd = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT, mode: 0o644)
        try fd.truncate(to: sparseSize)
        for (i, offset) in sparseDataOffsets.enumerated() {
            let block = [UInt8](repeating: UInt8(0x41 + i), count: 4096)
            try block.withUnsafeBytes { try fd.writeAll($0, at: offset) }
        }
        try fd.sync()
    }

    static func write(_ path: String, _ text: String, mode: mode_t = 0o644) throws {
        let fd = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        try Array(text.utf8).withUnsafeBytes { try fd.writeAll($0) }
        try sys("fchmod") { fchmod(fd.rawValue, mode) }
    }

    static func setXattr(_ path: String, _ name: String, _ value: [UInt8]) throws {
        try sys("lsetxattr", "\(path) \(name)") { value.withUnsafeBytes { lsetxattr(path, name, $0.baseAddress, value.count, 0) } }
    }

    static func setTimes(_ path: String, _ t: timespec) throws {
        var times = [t, t]
        try sys("utimensat", path) { utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) }
    }

    /// The kernel's POSIX ACL xattr (version 2, then tag/perm/id entries sorted by tag):
    /// owner rw, one named user r, group r, mask r, other r.
    static func accessACL(otherUser: UInt32) -> [UInt8] {
        var bytes: [UInt8] = []
        func u16(_ v: UInt16) { bytes += [UInt8(v & 0xff), UInt8(v >> 8)] }
        func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8((v >> (8 * UInt32(i))) & 0xff)) } }
        u32(2)
        for (tag, perm, id) in [(UInt16(0x01), UInt16(6), UInt32.max), (0x02, 4, otherUser), (0x04, 4, UInt32.max),
                                (0x10, 4, UInt32.max), (0x20, 4, UInt32.max)] {
            u16(tag); u16(perm); u32(id)
        }
        return bytes
    }
}
