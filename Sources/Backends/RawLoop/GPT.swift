import CLinux
import Linux
import PoolAPI

/// A GPT partition type or partition UUID, in the canonical lower-case text form.
struct GUID: Hashable, Sendable, CustomStringConvertible {
    let text: String

    init(_ text: String) { self.text = text.lowercased() }

    /// GPT stores the first three fields little-endian and the last two as bytes.
    init(gptBytes b: ArraySlice<UInt8>) {
        let a = Array(b)
        func hex(_ bytes: [UInt8]) -> String {
            bytes.map { let s = String($0, radix: 16); return s.count == 1 ? "0" + s : s }.joined()
        }
        text = [hex(a[0..<4].reversed()), hex(a[4..<6].reversed()), hex(a[6..<8].reversed()),
                hex(Array(a[8..<10])), hex(Array(a[10..<16]))].joined(separator: "-")
    }

    static let zero = GUID("00000000-0000-0000-0000-000000000000")
    var description: String { text }
}

/// One used entry of a GPT partition entry array.
struct GPTPartition: Sendable, Equatable {
    /// The kernel's partition number: the entry's 1-based index in the array (loopNp<index>).
    let index: Int
    let type: GUID
    let uuid: GUID
    let firstLBA: UInt64
    let lastLBA: UInt64
    let attributes: UInt64
    let name: String

    /// DPS flag bit 63, "no-auto": the partition is not to be discovered automatically.
    var noAuto: Bool { attributes & (1 << 63) != 0 }
}

/// A GUID Partition Table, read and CRC-checked in Swift (UEFI spec §5.3).
struct GPTTable: Sendable {
    /// The sector size the table was found with (512 or 4096): LBAs count in these.
    let sectorSize: UInt64
    let partitions: [GPTPartition]

    func byteRange(of p: GPTPartition) -> (start: UInt64, length: UInt64) {
        (p.firstLBA * sectorSize, (p.lastLBA - p.firstLBA + 1) * sectorSize)
    }

    private static let signature = Array("EFI PART".utf8)
    /// More than any real table (128 entries × 128 bytes is the usual 16 KiB): a hostile header
    /// must not make us read megabytes.
    private static let maximumEntryArrayBytes: UInt64 = 1 << 20

    /// Reads the GPT of the disk image `fd` (`size` bytes). nil if there is none (no signature at
    /// LBA 1 for 512- or 4096-byte sectors); throws `.invalidImage` if there is a signature but
    /// neither the primary nor the backup header and entry array pass their CRC checks.
    static func read(_ fd: FileDescriptor, size: UInt64) throws -> GPTTable? {
        for sectorSize: UInt64 in [512, 4096] where size >= sectorSize * 3 {
            let primary = try io { () throws(SystemCallError) in try fd.readBytes(Int(sectorSize), at: sectorSize) }
            guard primary.matches(signature, at: 0) else { continue }
            if let table = try parse(fd, header: primary, lba: 1, sectorSize: sectorSize, diskSize: size) {
                return table
            }
            // The primary is damaged: the backup header sits in the disk's last sector.
            let lastLBA = size / sectorSize - 1
            let backup = try io { () throws(SystemCallError) in try fd.readBytes(Int(sectorSize), at: lastLBA * sectorSize) }
            if backup.matches(signature, at: 0),
               let table = try parse(fd, header: backup, lba: lastLBA, sectorSize: sectorSize, diskSize: size) {
                return table
            }
            throw PoolError(.invalidImage, "the GPT partition table is damaged (primary and backup headers fail their checks)")
        }
        return nil
    }

    /// One header and its entry array, or nil if anything fails its checks.
    private static func parse(_ fd: FileDescriptor, header h: [UInt8], lba: UInt64, sectorSize: UInt64,
                              diskSize: UInt64) throws -> GPTTable? {
        let headerSize = Int(h.littleEndian(UInt32.self, at: 12))
        guard headerSize >= 92, headerSize <= h.count else { return nil }
        var zeroed = Array(h[0..<headerSize])
        zeroed.replaceSubrange(16..<20, with: [0, 0, 0, 0])
        guard crc32(of: zeroed[...]) == h.littleEndian(UInt32.self, at: 16) else { return nil }
        guard h.littleEndian(UInt64.self, at: 24) == lba else { return nil }

        let entriesLBA = h.littleEndian(UInt64.self, at: 72)
        let count = UInt64(h.littleEndian(UInt32.self, at: 80))
        let entrySize = UInt64(h.littleEndian(UInt32.self, at: 84))
        guard entrySize >= 128, entrySize % 8 == 0, count <= maximumEntryArrayBytes / entrySize else { return nil }
        let arrayBytes = count * entrySize
        let sectors = diskSize / sectorSize
        guard entriesLBA >= 1, entriesLBA < sectors, arrayBytes <= (sectors - entriesLBA) * sectorSize else { return nil }
        let array = try io { () throws(SystemCallError) in try fd.readBytes(Int(arrayBytes), at: entriesLBA * sectorSize) }
        guard UInt64(array.count) == arrayBytes, crc32(of: array[...]) == h.littleEndian(UInt32.self, at: 88) else {
            return nil
        }

        var partitions: [GPTPartition] = []
        for i in 0..<Int(count) {
            let base = i * Int(entrySize)
            let type = GUID(gptBytes: array[base..<(base + 16)])
            if type == .zero { continue }
            let first = array.littleEndian(UInt64.self, at: base + 32)
            let last = array.littleEndian(UInt64.self, at: base + 40)
            // An entry outside the disk cannot be used; skip it rather than refuse the disk.
            guard first >= 1, first <= last, last < sectors else { continue }
            var units: [UInt16] = []
            for k in stride(from: 56, to: 128, by: 2) {
                let u = array.littleEndian(UInt16.self, at: base + k)
                if u == 0 { break }
                units.append(u)
            }
            partitions.append(GPTPartition(
                index: i + 1, type: type, uuid: GUID(gptBytes: array[(base + 16)..<(base + 32)]),
                firstLBA: first, lastLBA: last, attributes: array.littleEndian(UInt64.self, at: base + 48),
                name: String(decoding: units, as: UTF16.self)))
        }
        return GPTTable(sectorSize: sectorSize, partitions: partitions)
    }

    /// zlib's crc32(3): the CRC-32 the UEFI spec prescribes for headers and entry arrays.
    static func crc32(of bytes: ArraySlice<UInt8>) -> UInt32 {
        bytes.withUnsafeBufferPointer { b in UInt32(truncatingIfNeeded: CLinux.crc32(0, b.baseAddress, UInt32(b.count))) }
    }
}

/// The partition types of the Discoverable Partitions Specification (uapi-group) that hold an
/// OS tree: the root and /usr partitions of each architecture.
enum DiscoverablePartitions {
    struct Architecture: Sendable {
        let name: String
        let root: GUID
        let usr: GUID
    }

    static let architectures: [Architecture] = [
        .init(name: "x86-64", root: GUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"), usr: GUID("8484680c-9521-48c6-9c11-b0720656f69e")),
        .init(name: "x86", root: GUID("44479540-f297-41b2-9af7-d131d5f0458a"), usr: GUID("75250d76-8cc6-458e-bd66-bd47cc81a812")),
        .init(name: "arm64", root: GUID("b921b045-1df0-41c3-af44-4c6f280d3fae"), usr: GUID("b0e01050-ee5f-4390-949a-9101b17104e9")),
        .init(name: "arm", root: GUID("69dad710-2ce4-4e3c-b16c-21a1d49abed3"), usr: GUID("7d0359a3-02b3-4f0a-865c-654403e70625")),
        .init(name: "riscv64", root: GUID("72ec70a6-cf74-40e6-bd49-4bda08e8f224"), usr: GUID("beaec34b-8442-439b-a40b-984381ed097d")),
        .init(name: "riscv32", root: GUID("60d5a7fe-8e7d-435c-b714-3dd8162144e1"), usr: GUID("b933fb22-5c3f-4f91-af90-e2bb0fa50702")),
        .init(name: "loongarch64", root: GUID("77055800-792c-4f94-b39a-98c91b762bb6"), usr: GUID("e611c702-575c-4cbe-9a46-434fa0bf7e3f")),
        .init(name: "ppc64-le", root: GUID("c31c45e6-3f39-412e-80fb-4809c4980599"), usr: GUID("15bb03af-77e7-4d4a-b12b-c0d084f7491c")),
        .init(name: "ppc64", root: GUID("912ade1d-a839-4913-8964-a10eee08fbd2"), usr: GUID("2c9739e2-f068-46b3-9fd0-01c5a9afbcca")),
        .init(name: "ppc", root: GUID("1de3f1ef-fa98-47b5-8dcd-4a860a654d78"), usr: GUID("7d14fec5-cc71-415d-9d6c-06bf0b3c3eaf")),
        .init(name: "s390x", root: GUID("5eead9a9-fe09-4a1e-a1d7-520d00531306"), usr: GUID("8a4f5770-50aa-4ed3-874a-99b710db6fea")),
        .init(name: "s390", root: GUID("08a7acea-624c-4a20-91e8-6e0fa67d23f9"), usr: GUID("cd0f869b-d0fb-4ca0-b141-9ea87cc78d66")),
        .init(name: "ia64", root: GUID("993d8d3d-f80e-4225-855a-9daf8ed7ea97"), usr: GUID("4301d2a6-4e3b-4b2a-bb94-9e0b2c4225ea")),
        .init(name: "mips64-le", root: GUID("700bda43-7a34-4507-b179-eeb93d7a7ca3"), usr: GUID("c97c1f32-ba06-40b4-9f22-236061b08aa8")),
        .init(name: "mips-le", root: GUID("37c58c8a-d913-4156-a25f-48b1b64e07f0"), usr: GUID("0f4868e9-9952-4706-979f-3ed3a473e947")),
        .init(name: "parisc", root: GUID("1aacdb3b-5444-4138-bd9e-e5c2239b2346"), usr: GUID("dc4a4480-6917-4262-a4ec-db9384949f25")),
        .init(name: "alpha", root: GUID("6523f8ae-3eb1-4e2a-a05a-18b695ae656f"), usr: GUID("e18cf08c-33ec-4c0d-8246-c6c6fb3da024")),
        .init(name: "arc", root: GUID("d27f46ed-2919-4cb8-bd25-9531f3c16534"), usr: GUID("7978a683-6316-4922-bbee-38bff5a2fecc")),
        .init(name: "m68k", root: GUID("0cf191c8-3b54-433a-b715-68c6fa4086de"), usr: GUID("a639b810-a02d-44bc-b579-d23e7bffdede")),
        .init(name: "sparc64", root: GUID("f7b4d167-1e51-42a9-8151-ec96c2e99478"), usr: GUID("db8ce399-787c-460a-80e3-69104c1ce375")),
        .init(name: "sh4", root: GUID("7b8f86b1-397a-4e1c-9eb0-850983baedc4"), usr: GUID("0b6d8f08-1548-4183-a6fa-22fe95bc5422")),
        .init(name: "tilegx", root: GUID("c50cdd70-3862-4cc3-90e1-809a8c93ee2c"), usr: GUID("55497029-c7c1-44cc-aa39-815ed1558630")),
    ]

    /// The "Linux filesystem data" type, which predates the DPS. systemd takes a disk's only such
    /// partition as its root when there is no DPS root; so does Berth.
    static let genericLinux = GUID("0fc63daf-8483-4772-8e79-3d69d8477de4")

    /// The host's architecture first (and its 32-bit sibling), then all others: an image is
    /// only read here, never run, so a foreign architecture's root is still worth inspecting.
    static var preferenceOrder: [Architecture] {
        #if arch(x86_64)
        let native = ["x86-64", "x86"]
        #elseif arch(arm64)
        let native = ["arm64", "arm"]
        #elseif arch(riscv64)
        let native = ["riscv64"]
        #else
        let native: [String] = []
        #endif
        let first = native.compactMap { n in architectures.first { $0.name == n } }
        return first + architectures.filter { !native.contains($0.name) }
    }

    /// The partitions to mount for inspection: a root and/or a /usr partition of one
    /// architecture, skipping those flagged no-auto.
    static func select(from table: GPTTable) -> (root: GPTPartition?, usr: GPTPartition?) {
        let usable = table.partitions.filter { !$0.noAuto }
        for arch in preferenceOrder {
            let root = usable.first { $0.type == arch.root }
            let usr = usable.first { $0.type == arch.usr }
            if root != nil || usr != nil { return (root, usr) }
        }
        let generic = usable.filter { $0.type == genericLinux }
        if generic.count == 1 { return (generic[0], nil) }
        return (nil, nil)
    }
}
