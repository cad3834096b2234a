import CLinux
import Glibc
import FileTree
import Linux
import PoolAPI

/// A reader of QEMU's qcow2 disk image format (versions 2 and 3, per QEMU's
/// docs/interop/qcow2.txt), enough to turn an imported `.qcow2` into a raw image: L1/L2 mapping,
/// extended L2 entries (subclusters), zero clusters and zlib-compressed clusters.
///
/// The file is untrusted input. Everything the header says is checked against the file's real
/// size before it is used, memory stays bounded (one L1 table no larger than the file and at
/// most 32 MiB, one cluster of at most 2 MiB at a time), and the work is bounded by the virtual
/// size: a hostile header cannot make it allocate gigabytes or loop forever. What it cannot read
/// faithfully it refuses with a `PoolError`: `.notSupported` for backing files, encryption,
/// external data files, non-zlib compression and unknown incompatible features;
/// `.invalidImage` for anything malformed or truncated.
public struct Qcow2Image: Sendable {
    /// "QFI\xfb", the first four bytes of every qcow2 file.
    public static let magic: [UInt8] = [0x51, 0x46, 0x49, 0xFB]
    /// The largest virtual size accepted: the 56-bit host offsets of L2 entries bound what an
    /// image can map (64 PiB); anything larger is a hostile or broken header.
    public static let maximumVirtualSize: UInt64 = 1 << 56
    /// QEMU's own limit on the L1 table (32 MiB), which bounds what reading it allocates.
    static let maximumL1Bytes: UInt64 = 32 << 20

    /// The format version, 2 or 3.
    public let version: UInt32
    /// The size of the disk the image holds, in bytes: the size of the raw image `convert` writes.
    public let virtualSize: UInt64
    /// Bytes per cluster (512 B to 2 MiB).
    public let clusterSize: UInt64

    private let file: FileDescriptor
    private let fileSize: UInt64
    private let clusterBits: UInt64
    private let extendedL2: Bool
    private let l1Table: [UInt64]

    /// Whether `fd` starts with the qcow2 magic "QFI\xfb" (pread(2) of 4 bytes at 0).
    public static func isQcow2(_ fd: FileDescriptor) -> Bool {
        guard let head = try? fd.readBytes(4, at: 0) else { return false }
        return head == magic
    }

    /// Reads and checks the header and the L1 table of the qcow2 image open at `fd`.
    /// - Throws: `PoolError` (`.invalidImage`, `.notSupported`, or a system error).
    public init(fd: FileDescriptor) throws {
        file = fd
        let status = try io("cannot stat the qcow2 image") { () throws(SystemCallError) in try fd.stat() }
        fileSize = UInt64(max(status.size, 0))
        let h = try io("cannot read the qcow2 header") { () throws(SystemCallError) in try fd.readBytes(112, at: 0) }
        guard h.count >= 4, h.matches(Qcow2Image.magic, at: 0) else {
            throw PoolError(.invalidImage, "not a qcow2 image (no QFI\\xfb magic)")
        }
        guard h.count >= 72 else { throw PoolError(.invalidImage, "truncated qcow2 image: the header is incomplete") }

        version = h.bigEndian(UInt32.self, at: 4)
        guard version == 2 || version == 3 else {
            throw PoolError(.notSupported, "qcow2 version \(version) is not supported (only 2 and 3)")
        }
        if h.bigEndian(UInt64.self, at: 8) != 0 {
            throw PoolError(.notSupported, "qcow2 images with a backing file are not supported: convert it to a standalone image first")
        }
        let bits = h.bigEndian(UInt32.self, at: 20)
        guard (9...21).contains(bits) else {
            throw PoolError(.invalidImage, "qcow2 cluster_bits \(bits) is out of range (9…21)")
        }
        clusterBits = UInt64(bits)
        clusterSize = 1 << clusterBits
        virtualSize = h.bigEndian(UInt64.self, at: 24)
        let cryptMethod = h.bigEndian(UInt32.self, at: 32)
        if cryptMethod != 0 {
            throw PoolError(.notSupported, "encrypted qcow2 images are not supported (crypt_method \(cryptMethod))")
        }
        let l1Entries = UInt64(h.bigEndian(UInt32.self, at: 36))
        let l1Offset = h.bigEndian(UInt64.self, at: 40)

        var extended = false
        if version == 3 {
            guard h.count >= 104 else { throw PoolError(.invalidImage, "truncated qcow2 image: the v3 header is incomplete") }
            let headerLength = UInt64(h.bigEndian(UInt32.self, at: 100))
            guard headerLength >= 104, headerLength % 8 == 0, headerLength <= clusterSize, headerLength <= fileSize else {
                throw PoolError(.invalidImage, "qcow2 header_length \(headerLength) is invalid")
            }
            let incompatible = h.bigEndian(UInt64.self, at: 72)
            let known: UInt64 = 0b11111
            if incompatible & ~known != 0 {
                throw PoolError(.notSupported, "qcow2 image uses unknown incompatible features (0x\(String(incompatible & ~known, radix: 16)))")
            }
            if incompatible & (1 << 1) != 0 {
                throw PoolError(.invalidImage, "qcow2 image is marked corrupt: repair it with qemu-img check -r all first")
            }
            if incompatible & (1 << 2) != 0 {
                throw PoolError(.notSupported, "qcow2 images with an external data file are not supported")
            }
            // Bit 0 (dirty) only says the refcounts may be stale; reading does not use them.
            let compressionType: UInt8 = headerLength > 104 ? h[104] : 0
            if incompatible & (1 << 3) != 0 || compressionType != 0 {
                let name = compressionType == 1 ? "zstd" : "type \(compressionType)"
                throw PoolError(.notSupported, "qcow2 compression \(name) is not supported (only zlib)")
            }
            if incompatible & (1 << 4) != 0 {
                guard clusterBits >= 14 else {
                    throw PoolError(.invalidImage, "qcow2 extended L2 entries need clusters of at least 16 KiB")
                }
                extended = true
            }
            guard h.bigEndian(UInt32.self, at: 96) <= 6 else { throw PoolError(.invalidImage, "qcow2 refcount_order is out of range") }
        }
        extendedL2 = extended

        guard virtualSize <= Qcow2Image.maximumVirtualSize else {
            throw PoolError(.invalidImage, "qcow2 virtual size \(virtualSize) is absurd (over 64 PiB)")
        }
        // How many L1 entries the virtual size needs; the table may be longer, never shorter.
        let l2Entries = clusterSize / (extended ? 16 : 8)
        let bytesPerL1Entry = clusterSize * l2Entries
        let needed = virtualSize / bytesPerL1Entry + (virtualSize % bytesPerL1Entry == 0 ? 0 : 1)
        guard l1Entries >= needed else {
            throw PoolError(.invalidImage, "qcow2 L1 table (\(l1Entries) entries) is too small for the virtual size")
        }
        guard l1Entries * 8 <= Qcow2Image.maximumL1Bytes else {
            throw PoolError(.invalidImage, "qcow2 L1 table of \(l1Entries) entries is absurd (over 32 MiB)")
        }
        if needed > 0 {
            guard l1Offset % clusterSize == 0, l1Offset != 0 else {
                throw PoolError(.invalidImage, "qcow2 L1 table offset \(l1Offset) is not cluster-aligned")
            }
            guard l1Offset < fileSize, needed * 8 <= fileSize - l1Offset else {
                throw PoolError(.invalidImage, "truncated qcow2 image: the L1 table lies beyond the end of the file")
            }
        }
        let raw = try io("cannot read the qcow2 L1 table") { () throws(SystemCallError) in
            try fd.readBytes(Int(needed * 8), at: l1Offset)
        }
        guard UInt64(raw.count) == needed * 8 else { throw PoolError(.invalidImage, "truncated qcow2 image: short L1 table") }
        l1Table = (0..<Int(needed)).map { raw.bigEndian(UInt64.self, at: $0 * 8) }
    }

    // L1 entry: bits 9–55 are the L2 table's offset; 1–8 and 56–62 are reserved.
    private static let offsetMask: UInt64 = 0x00FF_FFFF_FFFF_FE00
    private static let l1Reserved: UInt64 = 0x7F00_0000_0000_01FF
    // Standard cluster descriptor: bit 0 "reads as zeros" (v3), 1–8 and 56–61 reserved.
    private static let standardReserved: UInt64 = 0x3F00_0000_0000_01FE
    private static let compressedFlag: UInt64 = 1 << 62

    /// Writes the disk as a sparse raw image to `output`, which is truncated first: unallocated
    /// and zero clusters (and all-zero blocks of data clusters) stay holes, and the file ends up
    /// exactly `virtualSize` bytes long.
    /// - Parameter progress: called after each L2 table with the bytes of the virtual disk done so
    ///   far and the total.
    /// - Throws: `PoolError`; `.noSpace` when the output filesystem fills up.
    public func convert(to output: FileDescriptor, progress: (_ done: UInt64, _ total: UInt64) -> Void = { _, _ in }) throws {
        try io("cannot size the raw image") { () throws(SystemCallError) in
            try output.truncate(to: 0)
            try output.truncate(to: Int64(virtualSize))
        }
        let l2Entries = clusterSize / (extendedL2 ? 16 : 8)
        let entrySize = extendedL2 ? 16 : 8
        let bytesPerL1Entry = clusterSize * l2Entries
        let cluster = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(clusterSize), alignment: 4096)
        defer { cluster.deallocate() }

        for (i, l1Entry) in l1Table.enumerated() {
            let base = UInt64(i) * bytesPerL1Entry
            defer { progress(min(base + bytesPerL1Entry, virtualSize), virtualSize) }
            guard l1Entry & Qcow2Image.l1Reserved == 0 else {
                throw PoolError(.invalidImage, "qcow2 L1 entry \(i) has reserved bits set")
            }
            let l2Offset = l1Entry & Qcow2Image.offsetMask
            if l2Offset == 0 { continue }  // the whole range is unallocated: a hole
            try checkCluster(at: l2Offset, length: clusterSize, what: "L2 table")
            let l2 = try io("cannot read a qcow2 L2 table") { () throws(SystemCallError) in
                try file.readBytes(Int(clusterSize), at: l2Offset)
            }

            for j in 0..<Int(l2Entries) {
                let guestOffset = base + UInt64(j) * clusterSize
                if guestOffset >= virtualSize { break }
                let length = min(clusterSize, virtualSize - guestOffset)
                let entry = l2.bigEndian(UInt64.self, at: j * entrySize)
                let bitmap: UInt64 = extendedL2 ? l2.bigEndian(UInt64.self, at: j * entrySize + 8) : 0

                if entry & Qcow2Image.compressedFlag != 0 {
                    guard bitmap == 0 else { throw PoolError(.invalidImage, "qcow2 compressed cluster has a subcluster bitmap") }
                    try decompressCluster(entry, into: cluster)
                    try writeNonZero(UnsafeRawBufferPointer(rebasing: cluster[0..<Int(length)]), to: output, at: guestOffset)
                    continue
                }
                guard entry & Qcow2Image.standardReserved == 0, entry & (1 << 0) == 0 || version == 3 && !extendedL2 else {
                    throw PoolError(.invalidImage, "qcow2 L2 entry for offset \(guestOffset) has reserved bits set")
                }
                let hostOffset = entry & Qcow2Image.offsetMask
                if extendedL2 {
                    let allocated = bitmap & 0xFFFF_FFFF, zeroes = bitmap >> 32
                    guard allocated & zeroes == 0 else {
                        throw PoolError(.invalidImage, "qcow2 subcluster both allocated and zero at offset \(guestOffset)")
                    }
                    if allocated == 0 { continue }
                    let sub = clusterSize / 32
                    for k in 0..<UInt64(32) where allocated & (1 << k) != 0 {
                        let at = guestOffset + k * sub
                        if at >= virtualSize { break }
                        let n = min(sub, virtualSize - at)
                        // Only allocated subclusters need be in the file: it may end before the cluster does.
                        try checkCluster(at: hostOffset, length: k * sub + n, what: "data cluster")
                        try readExactly(UnsafeMutableRawBufferPointer(rebasing: cluster[0..<Int(n)]), at: hostOffset + k * sub)
                        try writeNonZero(UnsafeRawBufferPointer(rebasing: cluster[0..<Int(n)]), to: output, at: at)
                    }
                    continue
                }
                if entry & (1 << 0) != 0 { continue }  // v3 zero cluster: a hole
                if hostOffset == 0 { continue }        // unallocated, and there is no backing file: zeros
                try checkCluster(at: hostOffset, length: length, what: "data cluster")
                try readExactly(UnsafeMutableRawBufferPointer(rebasing: cluster[0..<Int(length)]), at: hostOffset)
                try writeNonZero(UnsafeRawBufferPointer(rebasing: cluster[0..<Int(length)]), to: output, at: guestOffset)
            }
        }
    }

    /// A cluster-aligned host range that must lie wholly inside the file.
    private func checkCluster(at offset: UInt64, length: UInt64, what: String) throws {
        guard offset != 0, offset % clusterSize == 0 else {
            throw PoolError(.invalidImage, "qcow2 \(what) offset \(offset) is not cluster-aligned")
        }
        guard offset < fileSize, length <= fileSize - offset else {
            throw PoolError(.invalidImage, "truncated qcow2 image: a \(what) lies beyond the end of the file")
        }
    }

    private func readExactly(_ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = try io("cannot read the qcow2 image") { () throws(SystemCallError) in
                try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), at: Int64(offset) + Int64(done))
            }
            guard n > 0 else { throw PoolError(.invalidImage, "truncated qcow2 image: data ends early") }
            done += n
        }
    }

    /// Inflates one compressed cluster (raw deflate, no zlib header) into `buffer`, which
    /// must come out exactly full, as QEMU requires.
    private func decompressCluster(_ entry: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        // Descriptor: the low x bits are the host byte offset, bits x…61 the count of additional
        // 512-byte sectors, with x = 62 - (cluster_bits - 8).
        let x = 62 - (clusterBits - 8)
        let offset = entry & ((1 << x) - 1)
        let extraSectors = (entry >> x) & ((1 << (clusterBits - 8)) - 1)
        guard offset < (1 << 56), offset < fileSize else {
            throw PoolError(.invalidImage, "truncated qcow2 image: a compressed cluster lies beyond the end of the file")
        }
        // At most 2 × cluster size by construction, and never past the end of the file.
        let span = min((extraSectors + 1) * 512 - (offset & 511), fileSize - offset)
        var input = try io("cannot read the qcow2 image") { () throws(SystemCallError) in
            try file.readBytes(Int(span), at: offset)
        }
        var stream = z_stream()
        guard berth_inflate_init_raw(&stream, -15) == Z_OK else {
            throw PoolError(.system, "zlib inflateInit2 failed")
        }
        defer { inflateEnd(&stream) }
        let status = input.withUnsafeMutableBufferPointer { inBuf -> Int32 in
            stream.next_in = inBuf.baseAddress
            stream.avail_in = UInt32(inBuf.count)
            stream.next_out = buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
            stream.avail_out = UInt32(buffer.count)
            return inflate(&stream, Z_FINISH)
        }
        guard status == Z_STREAM_END || status == Z_BUF_ERROR || status == Z_OK, stream.avail_out == 0 else {
            throw PoolError(.invalidImage, "qcow2 compressed cluster does not inflate to a whole cluster (zlib status \(status))")
        }
    }

    /// Writes `data` at `offset` except its all-zero blocks, which stay holes of the freshly
    /// truncated output (`SparseWriter`).
    private func writeNonZero(_ data: UnsafeRawBufferPointer, to output: FileDescriptor, at offset: UInt64) throws {
        try io("cannot write the raw image") { () throws(SystemCallError) in
            try SparseWriter.write(data, to: output.rawValue, at: Int64(offset))
        }
    }
}
