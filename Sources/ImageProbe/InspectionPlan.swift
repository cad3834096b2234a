import InspectProtocol
import Linux

/// Filesystems an image's root may have, by blkid's TYPE, so that mounting names the right type
/// at once instead of letting the kernel try each one against an untrusted image.
public enum FilesystemKind: String, Sendable, CaseIterable {
    case ext4, btrfs, xfs, vfat, squashfs, erofs

    /// blkid's TYPE for it; ext2 and ext3 are mounted by the ext4 driver.
    public init?(blkidType: String) {
        switch blkidType {
        case "ext2", "ext3", "ext4": self = .ext4
        default: self.init(rawValue: blkidType)
        }
    }

    /// The type name mount(2) takes.
    public var mountType: String { rawValue }

    /// The option that lets a read-only mount skip replaying a dirty journal, which it cannot
    /// write back on a read-only loop device.
    public var noRecoveryOption: String? {
        switch self {
        case .ext4, .xfs: return "norecovery"
        case .btrfs: return "rescue=nologreplay"
        case .vfat, .squashfs, .erofs: return nil
        }
    }

    static let names = allCases.map(\.rawValue).joined(separator: ", ")
}

/// What to mount for an inspection, decided from the image file alone before any kernel state
/// exists: the sector size to attach it with, and the filesystems (a DPS root and/or /usr
/// partition of a GPT disk, the one Linux partition of an MBR disk, or the whole image).
public struct InspectionPlan: Sendable, Equatable {
    /// One filesystem to mount.
    public struct Mount: Sendable, Equatable {
        /// The partition, or nil for the whole image.
        public let partition: ProbedPartition?
        public let filesystem: FilesystemKind
        /// Mounted on the root's /usr (or, alone, as /usr of an empty root).
        public let isUsr: Bool

        public init(partition: ProbedPartition?, filesystem: FilesystemKind, isUsr: Bool) {
            self.partition = partition
            self.filesystem = filesystem
            self.isUsr = isUsr
        }
    }

    /// 512, or 4096 for a GPT written with 4 KiB sectors: the loop device's logical block size.
    public let sectorSize: UInt32
    /// Root first, then /usr.
    public let mounts: [Mount]

    /// Whether the loop device needs a partition scan.
    public var isPartitioned: Bool { mounts.contains { $0.partition != nil } }

    /// Probes the `size` bytes of the image `fd` with libblkid and decides what to mount.
    /// Throws `.invalidImage` with a reason for anything Berth cannot inspect.
    public static func make(image fd: FileDescriptor, size: UInt64) throws(InspectorAnswer.Failure) -> InspectionPlan {
        guard size > 0 else { throw invalid("the image is empty (0 bytes)") }
        var sectorSize: UInt32 = 512
        var disk = try DiskProbe.probe(fd, size: size, sectorSize: 512)
        // A GPT written for 4 KiB sectors has its header at byte 4096: at 512-byte sectors blkid
        // sees only the protective MBR (or nothing). Ask again with 4 KiB sectors, as systemd's
        // dissect probes the sector size before it attaches.
        if size >= 3 * 4096, disk == .nothing || disk.table == "PMBR" {
            let large = try DiskProbe.probe(fd, size: size, sectorSize: 4096)
            if large.table == "gpt" {
                disk = large
                sectorSize = 4096
            }
        }
        func filesystem(of p: ProbedPartition) throws(InspectorAnswer.Failure) -> FilesystemKind {
            let type = try DiskProbe.filesystemType(fd, start: p.start, length: p.length)
            guard let type, let kind = FilesystemKind(blkidType: type) else {
                throw invalid("partition \(p.number) holds \(type.map { "a \($0) filesystem, which is" } ?? "no filesystem") not one Berth mounts (\(FilesystemKind.names))")
            }
            return kind
        }

        var mounts: [Mount] = []
        switch disk {
        case .partitioned(table: "gpt", let partitions):
            let chosen = DiscoverablePartitions.select(from: partitions)
            guard chosen.root != nil || chosen.usr != nil else {
                throw invalid("the image has a GPT partition table but no root or /usr partition (Discoverable Partitions Specification)")
            }
            for (p, isUsr) in [(chosen.root, false), (chosen.usr, true)] {
                guard let p else { continue }
                mounts.append(Mount(partition: p, filesystem: try filesystem(of: p), isUsr: isUsr))
            }
        case .partitioned(table: "dos", let partitions):
            // What systemd also accepts as an OS image without GPT: a disk whose only partition
            // is a Linux one. With more, which one is the OS is anyone's guess.
            guard partitions.count == 1, let p = partitions.first, p.type == "0x83" else {
                throw invalid("the image has an MBR partition table but not exactly one partition, of type Linux (0x83)")
            }
            mounts.append(Mount(partition: p, filesystem: try filesystem(of: p), isUsr: false))
        case .partitioned(let table, _):
            throw invalid("the image has a partition table of type \(table), which Berth does not inspect (GPT or MBR)")
        case .filesystem(let type):
            guard let kind = FilesystemKind(blkidType: type) else {
                throw invalid("the image holds a \(type) filesystem, which Berth does not mount (\(FilesystemKind.names))")
            }
            mounts.append(Mount(partition: nil, filesystem: kind, isUsr: false))
        case .nothing:
            throw invalid("the image has neither a GPT partition table with a root partition, nor a filesystem Berth can mount, nor an MBR with one Linux partition")
        }
        return InspectionPlan(sectorSize: sectorSize, mounts: mounts)
    }

    private static func invalid(_ message: String) -> InspectorAnswer.Failure {
        InspectorAnswer.Failure(kind: .invalidImage, message: message)
    }
}

extension ProbedDisk {
    /// The partition table's type, if any.
    var table: String? {
        if case .partitioned(let table, _) = self { return table }
        return nil
    }
}
