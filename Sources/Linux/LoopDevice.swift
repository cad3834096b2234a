import CLinux
import Glibc

/// A loop block device bound to a backing file (loop(4)), owned by this process.
///
/// Attached with `LO_FLAGS_AUTOCLEAR`, so the kernel unbinds it on the last close of the device
/// even if `detach()` is never reached (a crash): nothing stays attached behind Berth's back.
/// `@unchecked Sendable`: it wraps the device's fd and immutable facts about it; the one mutable
/// bit, whether `detach()` ran, is touched only by the single owner that detaches it (callers
/// that share it serialise `detach()`; berth-inspect's one session owns its device alone).
public final class LoopDevice: @unchecked Sendable {
    /// N in /dev/loopN.
    public let number: Int32
    /// The open device, kept open for as long as the device is used.
    public let descriptor: FileDescriptor

    /// `/dev/loopN`.
    public var path: String { "/dev/loop\(number)" }
    /// `loopN`, the device's name in /sys/block.
    public var name: String { "loop\(number)" }

    private init(number: Int32, descriptor: FileDescriptor) {
        self.number = number
        self.descriptor = descriptor
    }

    /// Binds `file` to a free loop device: LOOP_CTL_GET_FREE on /dev/loop-control, then
    /// LOOP_CONFIGURE on /dev/loopN, retrying when another process takes the same free device
    /// between the two calls (EBUSY) or the device node is not there yet (ENOENT).
    /// - Parameters:
    ///   - readOnly: LO_FLAGS_READ_ONLY: the device refuses writes whatever the file allows.
    ///   - partitionScan: LO_FLAGS_PARTSCAN: the kernel reads the partition table and makes loopNpM.
    ///   - offset, sizeLimit: expose only this byte range of the file (0: all of it).
    ///   - blockSize: the logical block size (0: the kernel's default, 512).
    public static func attach(_ file: FileDescriptor, readOnly: Bool, partitionScan: Bool = false,
                              offset: UInt64 = 0, sizeLimit: UInt64 = 0, blockSize: UInt32 = 0) throws(SystemCallError) -> LoopDevice {
        let control = try FileDescriptor.open("/dev/loop-control", flags: O_RDWR)
        defer { control.close() }
        var flags = BERTH_LO_FLAGS_AUTOCLEAR
        if readOnly { flags |= BERTH_LO_FLAGS_READ_ONLY }
        if partitionScan { flags |= BERTH_LO_FLAGS_PARTSCAN }

        var lastError = SystemCallError("ioctl(LOOP_CONFIGURE)", .EBUSY)
        for attempt in 0..<100 {
            if attempt > 0 { usleep(UInt32(min(attempt, 10)) * 2_000) }
            let number = try control.ioctl(BERTH_LOOP_CTL_GET_FREE, "LOOP_CTL_GET_FREE", value: 0)
            let device: FileDescriptor
            do {
                device = try FileDescriptor.open("/dev/loop\(number)", flags: (readOnly ? O_RDONLY : O_RDWR))
            } catch where error.errno == .ENOENT {
                // devtmpfs has not made the node of a device the kernel just created: try again.
                lastError = error
                continue
            }
            var config = loop_config()
            config.fd = UInt32(bitPattern: file.rawValue)
            config.block_size = blockSize
            config.info.lo_flags = flags
            config.info.lo_offset = offset
            config.info.lo_sizelimit = sizeLimit
            do {
                try device.ioctl(BERTH_LOOP_CONFIGURE, "LOOP_CONFIGURE", &config)
                return LoopDevice(number: number, descriptor: device)
            } catch where error.errno == .EBUSY {
                // Someone else bound this device since LOOP_CTL_GET_FREE answered: ask again.
                device.close()
                lastError = error
                continue
            }
        }
        throw lastError
    }

    /// LOOP_CLR_FD, then close. If the device is still open elsewhere (a mounted partition that
    /// had to be detached lazily), the kernel only marks it autoclear and unbinds it when the last
    /// user goes. ENXIO (already unbound) is not an error.
    public func detach() {
        if !isClosed {
            _ = berth_ioctl_int(descriptor.rawValue, BERTH_LOOP_CLR_FD, 0)
        }
        descriptor.close()
        isClosed = true
    }

    private var isClosed = false

    /// The backing file the kernel reports for loop device `name` (`/sys/block/NAME/loop/backing_file`),
    /// or nil if it is not bound.
    public static func backingFile(ofDevice name: String) -> String? {
        guard let text = readSysfs("/sys/block/\(name)/loop/backing_file") else { return nil }
        return text.isEmpty ? nil : text
    }

    /// The names of all bound loop devices (`loopN` with a backing file), from sysfs.
    public static func boundDevices() -> [(device: String, backingFile: String)] {
        let names = (try? directoryEntries("/sys/block")) ?? []
        return names.filter { $0.hasPrefix("loop") }.sorted().compactMap { name in
            backingFile(ofDevice: name).map { (name, $0) }
        }
    }

    /// `loopNpM`: the kernel's name for partition M of this device.
    public func partitionName(_ partition: Int) -> String { "\(name)p\(partition)" }

    /// The device number of partition `partition` as the kernel registered it in sysfs, or nil
    /// if the kernel has not (yet) made it.
    public func partitionDeviceNumber(_ partition: Int) -> dev_t? {
        guard let text = LoopDevice.readSysfs("/sys/class/block/\(partitionName(partition))/dev") else { return nil }
        let parts = text.split(separator: ":")
        guard parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]) else { return nil }
        return berth_makedev(major, minor)
    }

    /// BLKPG_ADD_PARTITION: registers partition `partition` at byte `start`, `length` bytes long,
    /// for when the kernel's own partition scan did not (e.g. a table it does not read).
    public func addPartition(_ partition: Int, start: UInt64, length: UInt64) throws(SystemCallError) {
        var part = blkpg_partition()
        part.start = Int64(start)
        part.length = Int64(length)
        part.pno = Int32(partition)
        try withUnsafeMutablePointer(to: &part) { (p) throws(SystemCallError) in
            var arg = blkpg_ioctl_arg()
            arg.op = BLKPG_ADD_PARTITION
            arg.datalen = Int32(MemoryLayout<blkpg_partition>.size)
            arg.data = UnsafeMutableRawPointer(p)
            try descriptor.ioctl(BERTH_BLKPG, "BLKPG_ADD_PARTITION", &arg)
        }
    }

    /// BLKGETSIZE64: the device's size in bytes.
    public func size() throws(SystemCallError) -> UInt64 {
        var bytes: UInt64 = 0
        try descriptor.ioctl(BERTH_BLKGETSIZE64, "BLKGETSIZE64", &bytes)
        return bytes
    }

    static func readSysfs(_ path: String) -> String? {
        guard var text = readSmall(path) else { return nil }
        while text.last == "\n" { text.removeLast() }
        return text
    }
}

/// mknodat(2) of a block device node, for when devtmpfs has not made one for a partition.
public func makeBlockDeviceNode(_ path: String, device: dev_t, mode: mode_t = 0o600) throws(SystemCallError) {
    try sys("mknodat", path) { mknodat(AT_FDCWD, path, S_IFBLK | mode, device) }
}
