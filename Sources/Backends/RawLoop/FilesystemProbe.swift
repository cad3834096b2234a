import Linux

/// Filesystems an image's root may have, told apart by their superblock magic so that mounting
/// names the right type at once instead of trying each one against an untrusted image.
enum FilesystemKind: String, Sendable, CaseIterable {
    case ext4, btrfs, xfs, vfat, squashfs, erofs

    /// The type name mount(2) takes.
    var mountType: String { rawValue }

    /// The option that lets a read-only mount skip replaying a dirty journal, which it cannot
    /// write back on a read-only loop device.
    var noRecoveryOption: String? {
        switch self {
        case .ext4, .xfs: return "norecovery"
        case .btrfs: return "rescue=nologreplay"
        case .vfat, .squashfs, .erofs: return nil
        }
    }

    /// Reads the superblock area at `offset` of `fd` and names the filesystem found there.
    static func probe(_ fd: FileDescriptor, at offset: UInt64) throws -> FilesystemKind? {
        let head = try io { () throws(SystemCallError) in try fd.readBytes(4096, at: offset) }
        // ext2/3/4: s_magic 0xEF53 at 1024 + 56, little-endian; the ext4 driver mounts all three.
        if head.count >= 1082, head.littleEndian(UInt16.self, at: 1080) == 0xEF53 { return .ext4 }
        if head.matches(Array("XFSB".utf8), at: 0) { return .xfs }
        if head.matches(Array("hsqs".utf8), at: 0) { return .squashfs }
        if head.count >= 1028, head.littleEndian(UInt32.self, at: 1024) == 0xE0F5_E1E2 { return .erofs }
        if head.count >= 512, head[510] == 0x55, head[511] == 0xAA,
           head.matches(Array("FAT".utf8), at: 54) || head.matches(Array("FAT32".utf8), at: 82) {
            return .vfat
        }
        // btrfs: "_BHRfS_M" at 64 KiB + 64.
        let btrfs = try io { () throws(SystemCallError) in try fd.readBytes(8, at: offset + 0x10040) }
        if btrfs == Array("_BHRfS_M".utf8) { return .btrfs }
        return nil
    }
}
