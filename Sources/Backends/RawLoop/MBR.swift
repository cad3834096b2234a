import Linux

/// A partition to mount, wherever its table came from: the kernel's partition number and its
/// byte range in the image.
struct DiskPartition: Sendable, Equatable {
    /// The kernel's partition number (loopNp<index>).
    let index: Int
    let start: UInt64
    let length: UInt64

    init(index: Int, start: UInt64, length: UInt64) {
        self.index = index
        self.start = start
        self.length = length
    }

    init(gpt p: GPTPartition, in table: GPTTable) {
        let range = table.byteRange(of: p)
        self.init(index: p.index, start: range.start, length: range.length)
    }
}

/// The classic DOS partition table, read only far enough to find what systemd also accepts as
/// an OS image without GPT: a disk whose only partition is a Linux one (type 0x83).
enum MBRTable {
    /// The one Linux partition of an MBR disk, or nil if `fd` has no MBR or not exactly one.
    /// Called after the bare-filesystem probe, as a FAT boot sector has the same 0x55AA mark.
    static func singleLinuxPartition(_ fd: FileDescriptor, size: UInt64) throws -> DiskPartition? {
        let sector = try io { () throws(SystemCallError) in try fd.readBytes(512, at: 0) }
        guard sector.count == 512, sector[510] == 0x55, sector[511] == 0xAA else { return nil }
        var used: [DiskPartition] = []
        var linux: [DiskPartition] = []
        for i in 0..<4 {
            let entry = 446 + 16 * i
            let status = sector[entry], type = sector[entry + 4]
            // Status is 0x00 or 0x80 in a real table; anything else is not an MBR at all.
            guard status == 0 || status == 0x80 else { return nil }
            if type == 0 { continue }
            let first = UInt64(sector.littleEndian(UInt32.self, at: entry + 8))
            let count = UInt64(sector.littleEndian(UInt32.self, at: entry + 12))
            guard first > 0, count > 0, (first + count) * 512 <= size else { continue }
            let p = DiskPartition(index: i + 1, start: first * 512, length: count * 512)
            used.append(p)
            if type == 0x83 { linux.append(p) }
        }
        // 0xEE is GPT's protective entry: a GPT that failed to parse is not an MBR disk.
        if (0..<4).contains(where: { sector[446 + 16 * $0 + 4] == 0xEE }) { return nil }
        return used.count == 1 && linux.count == 1 ? linux[0] : nil
    }
}
