import CBlkid
import Glibc
import InspectProtocol
import Linux

/// One partition of a probed disk, as libblkid reads its table.
public struct ProbedPartition: Sendable, Equatable {
    /// The kernel's partition number (loopNp<number>): a GPT entry's 1-based index, an MBR slot.
    public let number: Int
    /// A GPT partition type GUID in lower case, or an MBR type byte as `0x83`.
    public let type: String
    /// GPT attribute bits (DPS: bit 63 no-auto, bit 60 read-only); 0 for MBR.
    public let flags: UInt64
    /// Byte offset and length in the image.
    public let start: UInt64
    public let length: UInt64

    public init(number: Int, type: String, flags: UInt64, start: UInt64, length: UInt64) {
        self.number = number
        self.type = type
        self.flags = flags
        self.start = start
        self.length = length
    }

    /// DPS flag bit 63, "no-auto": the partition is not to be discovered automatically.
    public var noAuto: Bool { flags & (1 << 63) != 0 }
}

/// What libblkid finds on a disk image: a partition table, a filesystem without one, or neither.
public enum ProbedDisk: Sendable, Equatable {
    /// A partition table (`gpt`, `dos`) and its partitions that lie inside the image.
    case partitioned(table: String, partitions: [ProbedPartition])
    /// One filesystem over the whole image (blkid's TYPE: `ext4`, `squashfs`…).
    case filesystem(String)
    /// No table and no filesystem.
    case nothing
}

/// Probing with libblkid, the way systemd's dissect does it: superblocks (filesystems only, by
/// their USAGE) and partition tables at once, with `blkid_do_safeprobe`, which refuses a disk
/// where two signatures claim the same place instead of guessing.
public enum DiskProbe {
    /// Probes the `size` bytes of `fd` from `offset` (0: to its end) with `sectorSize`-byte
    /// sectors (how the partition table's LBAs count). Works on a regular file as on a block
    /// device. Throws `.invalidImage` for an ambiguous disk, `.system` where libblkid fails.
    public static func probe(_ fd: FileDescriptor, offset: UInt64 = 0, size: UInt64 = 0,
                             sectorSize: UInt32 = 512) throws(InspectorAnswer.Failure) -> ProbedDisk {
        let probe = try Probe(fd, offset: offset, size: size)
        blkid_probe_set_sectorsize(probe.handle, sectorSize)
        blkid_probe_enable_superblocks(probe.handle, 1)
        blkid_probe_set_superblocks_flags(probe.handle, BERTH_BLKID_SUBLKS)
        blkid_probe_filter_superblocks_usage(probe.handle, BLKID_FLTR_ONLYIN, BLKID_USAGE_FILESYSTEM)
        blkid_probe_enable_partitions(probe.handle, 1)
        blkid_probe_set_partitions_flags(probe.handle, BERTH_BLKID_PARTS)
        switch blkid_do_safeprobe(probe.handle) {
        case 0: break
        case 1: return .nothing
        case -2:
            throw .init(kind: .invalidImage, message: "the image carries several signatures at the same place (ambivalent probing result)")
        default:
            throw .init(kind: .system, call: "blkid_do_safeprobe", errno: errno, message: "libblkid cannot probe the image")
        }
        if let table = probe.value("PTTYPE") {
            guard let list = blkid_probe_get_partitions(probe.handle) else {
                throw .init(kind: .invalidImage, message: "libblkid found a \(table) partition table but cannot list it")
            }
            let end = size == 0 ? UInt64.max : size
            var partitions: [ProbedPartition] = []
            let count = blkid_partlist_numof_partitions(list)
            guard count >= 0, count <= 4096 else {
                throw .init(kind: .invalidImage, message: "the \(table) partition table lists \(count) partitions")
            }
            for i in 0..<count {
                guard let p = blkid_partlist_get_partition(list, i) else { continue }
                // libblkid counts in 512-byte sectors whatever the device's sector size.
                let start = blkid_partition_get_start(p), sectors = blkid_partition_get_size(p)
                let number = Int(blkid_partition_get_partno(p))
                guard start > 0, sectors > 0, number > 0 else { continue }
                let (byteStart, o1) = UInt64(start).multipliedReportingOverflow(by: 512)
                let (byteLength, o2) = UInt64(sectors).multipliedReportingOverflow(by: 512)
                let (byteEnd, o3) = byteStart.addingReportingOverflow(byteLength)
                // A partition that points past the end of the image cannot be used: skip it, as
                // the kernel does, rather than refuse the whole disk.
                guard !o1, !o2, !o3, byteEnd <= end else { continue }
                let type: String
                if let s = blkid_partition_get_type_string(p) {
                    type = String(cString: s).lowercased()
                } else {
                    type = "0x" + String(blkid_partition_get_type(p), radix: 16)
                }
                partitions.append(ProbedPartition(number: number, type: type, flags: blkid_partition_get_flags(p),
                                                  start: byteStart, length: byteLength))
            }
            return .partitioned(table: table, partitions: partitions)
        }
        if let type = probe.value("TYPE") { return .filesystem(type) }
        return .nothing
    }

    /// The filesystem type (blkid's TYPE) in the `length` bytes of `fd` at `start`, or nil.
    public static func filesystemType(_ fd: FileDescriptor, start: UInt64, length: UInt64) throws(InspectorAnswer.Failure) -> String? {
        let probe = try Probe(fd, offset: start, size: length)
        blkid_probe_enable_superblocks(probe.handle, 1)
        blkid_probe_set_superblocks_flags(probe.handle, BERTH_BLKID_SUBLKS)
        blkid_probe_filter_superblocks_usage(probe.handle, BLKID_FLTR_ONLYIN, BLKID_USAGE_FILESYSTEM)
        blkid_probe_enable_partitions(probe.handle, 0)
        switch blkid_do_safeprobe(probe.handle) {
        case 0: return probe.value("TYPE")
        case 1: return nil
        case -2: throw .init(kind: .invalidImage, message: "a partition carries several filesystem signatures (ambivalent probing result)")
        default: throw .init(kind: .system, call: "blkid_do_safeprobe", errno: errno, message: "libblkid cannot probe a partition")
        }
    }

    /// A libblkid probe over a range of an fd; freed on deinit.
    /// `@unchecked Sendable` is not claimed: a probe lives and dies on one thread.
    private final class Probe {
        let handle: blkid_probe

        init(_ fd: FileDescriptor, offset: UInt64, size: UInt64) throws(InspectorAnswer.Failure) {
            guard let handle = blkid_new_probe() else {
                throw .init(kind: .system, call: "blkid_new_probe", errno: ENOMEM, message: "libblkid cannot make a probe")
            }
            self.handle = handle
            guard offset <= UInt64(Int64.max), size <= UInt64(Int64.max),
                  blkid_probe_set_device(handle, fd.rawValue, blkid_loff_t(offset), blkid_loff_t(size)) == 0 else {
                throw .init(kind: .system, call: "blkid_probe_set_device", errno: errno, message: "libblkid cannot read the image")
            }
        }

        /// A probing result's value (`TYPE`, `PTTYPE`), nil if absent or not UTF-8 text.
        func value(_ name: String) -> String? {
            var data: UnsafePointer<CChar>?
            var length = 0
            guard blkid_probe_lookup_value(handle, name, &data, &length) == 0, let data else { return nil }
            return String(validatingCString: data)
        }

        deinit { blkid_free_probe(handle) }
    }
}

extension InspectorAnswer.Failure {
    /// A failed system call in the child, classified the way berthd's PoolError.from does.
    init(_ error: SystemCallError, _ message: String, kind: Kind = .system) {
        self.init(kind: kind, call: error.call, errno: error.errno.rawValue, message: message)
    }
}
