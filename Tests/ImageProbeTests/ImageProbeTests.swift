import Foundation
import Glibc
@testable import ImageProbe
import InspectProtocol
import Linux
import Testing
import TestSupport

// libblkid probing over real images made by sfdisk and the mkfs tools, on plain files (no loop
// device, no root), and the child's answer format that berthd parses strictly.

private let rootX86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
private let usrX86_64 = "8484680c-9521-48c6-9c11-b0720656f69e"
private let swapType = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"

/// A temp folder with a small tree to put in filesystems.
private final class Images {
    let temp: TemporaryDirectory
    let tree: String

    init() throws {
        temp = try TemporaryDirectory(prefix: "berth-probe")
        tree = temp.appending("tree")
        try FileManager.default.createDirectory(atPath: tree + "/etc", withIntermediateDirectories: true)
        try "ID=probe\n".write(toFile: tree + "/etc/os-release", atomically: false, encoding: .utf8)
    }

    func path(_ name: String) -> String { temp.appending(name) }

    /// A 64 MiB disk with `table` (sfdisk's script) whose first partition, 1 MiB in, holds ext4.
    func partitioned(_ name: String, table: String, ext4: Bool = true) throws -> String {
        let image = path(name)
        try run(["truncate", "-s", "64M", image], check: true)
        try run(["sfdisk", "-q", image], input: Data(table.utf8), check: true)
        if ext4 {
            try run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "offset=1048576", "-d", tree, image, "8192"], check: true)
        }
        return image
    }

    func plan(_ image: String) throws(InspectorAnswer.Failure) -> InspectionPlan {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(image, flags: O_RDONLY) } catch { throw .init(error, "open") }
        let size = (try? fd.stat().size).map { UInt64(max($0, 0)) } ?? 0
        return try InspectionPlan.make(image: fd, size: size)
    }

    deinit { temp.remove() }
}

extension InspectorAnswer.Failure {
    fileprivate init(_ error: SystemCallError, _ message: String) {
        self.init(kind: .system, call: error.call, errno: error.errno.rawValue, message: message)
    }
}

/// The failure a plan throws, or nil if it succeeds.
private func failure(_ body: () throws(InspectorAnswer.Failure) -> InspectionPlan) -> InspectorAnswer.Failure? {
    do { _ = try body(); return nil } catch { return error }
}

@Suite("libblkid probing")
struct DiskProbeTests {
    @Test func aGPTDiskWithADPSRootPartitionMountsThatPartition() throws {
        let i = try Images()
        let image = try i.partitioned("gpt.raw", table: "label: gpt\nstart=2048, size=98304, type=\(rootX86_64)\n")
        let plan = try i.plan(image)
        #expect(plan.sectorSize == 512)
        #expect(plan.mounts.count == 1)
        let m = try #require(plan.mounts.first)
        #expect(m.filesystem == .ext4 && !m.isUsr)
        #expect(m.partition?.number == 1)
        #expect(m.partition?.type == rootX86_64)
        #expect(m.partition?.start == 1 << 20)
        #expect(m.partition?.length == 48 << 20)
        #expect(plan.isPartitioned)
    }

    @Test func rootAndUsrPartitionsOfOneArchitectureAreBothMounted() throws {
        let i = try Images()
        let image = try i.partitioned("usr.raw", table: """
            label: gpt
            start=2048, size=40960, type=\(rootX86_64)
            start=43008, size=40960, type=\(usrX86_64)

            """)
        try run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "offset=\(43008 * 512)", image, "5120"], check: true)
        let plan = try i.plan(image)
        #expect(plan.mounts.map(\.isUsr) == [false, true])
        #expect(plan.mounts.map { $0.partition?.number } == [1, 2])
    }

    @Test func aRootFlaggedNoAutoIsNotDiscovered() throws {
        let i = try Images()
        let image = try i.partitioned("noauto.raw", table: "label: gpt\nstart=2048, size=98304, type=\(rootX86_64), attrs=\"GUID:63\"\n")
        let error = failure { () throws(InspectorAnswer.Failure) in try i.plan(image) }
        #expect(error?.kind == .invalidImage)
        #expect(error?.message.contains("no root or /usr partition") == true, "\(String(describing: error))")
    }

    @Test func aGPTDiskWithoutRootOrUsrIsRefused() throws {
        let i = try Images()
        let image = try i.partitioned("swap.raw", table: "label: gpt\nstart=2048, size=98304, type=\(swapType)\n", ext4: false)
        let error = failure { () throws(InspectorAnswer.Failure) in try i.plan(image) }
        #expect(error?.kind == .invalidImage)
        #expect(error?.message.contains("no root or /usr partition") == true)
    }

    @Test func anMBRDiskWithOneLinuxPartitionOnly() throws {
        let i = try Images()
        let one = try i.partitioned("mbr.raw", table: "label: dos\nstart=2048, size=65536, type=83\n")
        let plan = try i.plan(one)
        #expect(plan.mounts.map { $0.partition?.number } == [1])
        #expect(plan.mounts.first?.partition?.type == "0x83")
        #expect(plan.mounts.first?.filesystem == .ext4)

        let two = try i.partitioned("mbr2.raw", table: "label: dos\nstart=2048, size=65536, type=83\nstart=67584, size=8192, type=82\n")
        let error = failure { () throws(InspectorAnswer.Failure) in try i.plan(two) }
        #expect(error?.kind == .invalidImage)
        #expect(error?.message.contains("MBR") == true)
    }

    @Test(arguments: [
        (["mkfs.ext4", "-q", "-F", "-d"], FilesystemKind.ext4),
        (["mkfs.btrfs", "-q", "-f", "--rootdir"], .btrfs),
        (["mkfs.erofs"], .erofs),
        (["mksquashfs"], .squashfs),
    ])
    func aBareFilesystemIsMountedWhole(mkfs: [String], kind: FilesystemKind) throws {
        let i = try Images()
        let image = i.path("bare.raw")
        switch kind {
        case .squashfs: try run(["mksquashfs", i.tree, image, "-quiet", "-noappend"], check: true)
        case .erofs: try run(mkfs + [image, i.tree], check: true)
        default:
            try run(["truncate", "-s", "128M", image], check: true)
            try run(mkfs + [i.tree, image], check: true)
        }
        let plan = try i.plan(image)
        #expect(plan.mounts == [InspectionPlan.Mount(partition: nil, filesystem: kind, isUsr: false)])
        #expect(!plan.isPartitioned)
    }

    @Test func hostileImagesAreRefusedWithAReason() throws {
        let i = try Images()
        // 0 bytes.
        let empty = i.path("empty.raw")
        FileManager.default.createFile(atPath: empty, contents: nil)
        #expect(failure { () throws(InspectorAnswer.Failure) in try i.plan(empty) }?.message.contains("empty") == true)

        // Zeros, and random bytes: nothing to inspect.
        let zeros = i.path("zeros.raw")
        try run(["truncate", "-s", "8M", zeros], check: true)
        #expect(failure { () throws(InspectorAnswer.Failure) in try i.plan(zeros) }?.kind == .invalidImage)
        let noise = i.path("noise.raw")
        try Data((0..<(1 << 20)).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: noise))
        #expect(failure { () throws(InspectorAnswer.Failure) in try i.plan(noise) }?.kind == .invalidImage)

        // A GPT whose headers and entries are garbage behind a valid signature.
        let garbage = try i.partitioned("garbage.raw", table: "label: gpt\nstart=2048, size=98304, type=\(rootX86_64)\n", ext4: false)
        let fd = try FileDescriptor.open(garbage, flags: O_WRONLY)
        var junk = (0..<(32 << 10)).map { _ in UInt8.random(in: 0...255) }
        junk.replaceSubrange(512..<520, with: Array("EFI PART".utf8))
        try junk.withUnsafeBytes { try fd.writeAll($0, at: 0) }
        try junk.withUnsafeBytes { try fd.writeAll($0, at: Int64((64 << 20) - (32 << 10))) }
        fd.close()
        #expect(failure { () throws(InspectorAnswer.Failure) in try i.plan(garbage) }?.kind == .invalidImage)

        // Truncated: the table (and its backup) survive in part, the root partition points past
        // the end of what is left.
        let truncated = try i.partitioned("truncated.raw", table: "label: gpt\nstart=2048, size=98304, type=\(rootX86_64)\n")
        try run(["truncate", "-s", "4M", truncated], check: true)
        let error = failure { () throws(InspectorAnswer.Failure) in try i.plan(truncated) }
        #expect(error?.kind == .invalidImage, "\(String(describing: error))")
    }

    @Test func aPartitionPastTheEndIsSkipped() throws {
        let i = try Images()
        // sfdisk refuses to write such a table: take a valid one and move the root partition's
        // last LBA past the end of the disk, with the CRCs made right again, so only the entry
        // itself is wrong.
        let image = try i.partitioned("past.raw", table: "label: gpt\nstart=2048, size=98304, type=\(rootX86_64)\n")
        let fd = try FileDescriptor.open(image, flags: O_RDWR)
        defer { fd.close() }
        var header = [UInt8](repeating: 0, count: 512), entries = [UInt8](repeating: 0, count: 128 * 128)
        _ = try header.withUnsafeMutableBytes { try fd.read(into: $0, at: 512) }
        _ = try entries.withUnsafeMutableBytes { try fd.read(into: $0, at: 1024) }
        store(UInt64(1 << 40), in: &entries, at: 40)  // entry 0's last LBA: far past the 64 MiB disk
        store(crc32(entries), in: &header, at: 88)
        store(UInt32(0), in: &header, at: 16)
        store(crc32(Array(header[0..<92])), in: &header, at: 16)
        try header.withUnsafeBytes { try fd.writeAll($0, at: 512) }
        try entries.withUnsafeBytes { try fd.writeAll($0, at: 1024) }
        let error = failure { () throws(InspectorAnswer.Failure) in try i.plan(image) }
        #expect(error?.kind == .invalidImage, "a root partition past the end is not used: \(String(describing: error))")
        #expect(error?.message.contains("no root or /usr partition") == true, "\(String(describing: error))")
    }
}

/// Stores `value` little-endian at `offset`.
private func store<T: FixedWidthInteger>(_ value: T, in bytes: inout [UInt8], at offset: Int) {
    for k in 0..<MemoryLayout<T>.size { bytes[offset + k] = UInt8(truncatingIfNeeded: value >> (8 * k)) }
}

/// The CRC-32 (IEEE, reflected) GPT uses for its header and entry array.
private func crc32(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        crc ^= UInt32(b)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }
    return ~crc
}

@Suite("berth-inspect's answer")
struct InspectorAnswerTests {
    @Test func readyAndErrorLinesRoundTrip() {
        #expect(InspectorAnswer.ready.line == "ready\n")
        #expect(InspectorAnswer.parse(Array("ready\n".utf8)) == .ready)
        let f = InspectorAnswer.Failure(kind: .invalidImage, call: "mount", errno: EINVAL, message: "cannot mount the image's ext4 filesystem")
        let line = InspectorAnswer.failed(f).line
        #expect(line == "error invalid-image mount 22 cannot mount the image's ext4 filesystem\n")
        #expect(InspectorAnswer.parse(Array(line.utf8)) == .failed(f))
        let none = InspectorAnswer.Failure(kind: .system, message: "x")
        #expect(InspectorAnswer.parse(Array(InspectorAnswer.failed(none).line.utf8)) == .failed(none))
    }

    @Test func controlCharactersAndOverlongMessagesAreMadeSafeWhenWritten() {
        let f = InspectorAnswer.Failure(kind: .system, call: "bad call\n", errno: 99999,
                                        message: "a\nb\u{1b}[31m" + String(repeating: "é", count: 2000))
        let line = InspectorAnswer.failed(f).line
        #expect(line.utf8.count <= InspectorAnswer.maximumLength)
        guard case .failed(let back)? = InspectorAnswer.parse(Array(line.utf8)) else {
            Issue.record("the child's own line must parse: \(line)")
            return
        }
        #expect(back.call == nil)
        #expect(back.errno == 0)
        #expect(back.message.hasPrefix("a b [31m"))
    }

    @Test(arguments: [
        "", "ready", "ready\nready\n", "READY\n", " ready\n", "ready \n", "error\n", "error invalid-image\n",
        "error bogus - 0 x\n", "error system - -1 x\n", "error system - 4096 x\n", "error system - 12345 x\n",
        "error system - 1e3 x\n", "error system mount() 1\n", "error system mo unt 1 x\n", "error system - 0 a\u{7}b\n",
        "error system - 0 a\u{0}b\n", "error system ;rm 1 x\n",
    ])
    func anythingElseIsRefused(text: String) {
        #expect(InspectorAnswer.parse(Array(text.utf8)) == nil, "\(text.debugDescription)")
    }

    @Test func overlongAndInvalidUTF8AnswersAreRefused() {
        #expect(InspectorAnswer.parse(Array(("error system - 0 " + String(repeating: "x", count: 2000) + "\n").utf8)) == nil)
        #expect(InspectorAnswer.parse(Array("error system - 0 ".utf8) + [0xff, 0xfe, 0x0a]) == nil)
    }
}

@Suite("the unprivileged probe's plan")
struct ProbePlanWireTests {
    private let root = ProbedPartition(number: 1, type: "", flags: 0, start: 1 << 20, length: 48 << 20)
    private let usr = ProbedPartition(number: 2, type: "", flags: 0, start: 49 << 20, length: 8 << 20)

    @Test func plansRoundTrip() {
        let plans = [
            InspectionPlan(sectorSize: 512, mounts: [.init(partition: root, filesystem: .ext4, isUsr: false)]),
            InspectionPlan(sectorSize: 4096, mounts: [.init(partition: root, filesystem: .btrfs, isUsr: false),
                                                      .init(partition: usr, filesystem: .erofs, isUsr: true)]),
            InspectionPlan(sectorSize: 512, mounts: [.init(partition: usr, filesystem: .squashfs, isUsr: true)]),
            InspectionPlan(sectorSize: 512, mounts: [.init(partition: nil, filesystem: .xfs, isUsr: false)]),
        ]
        for plan in plans {
            #expect(InspectionPlan(wire: Array(plan.wire.utf8), imageSize: 64 << 20) == plan, "\(plan.wire)")
        }
    }

    @Test(arguments: [
        "", "plan 512\nend\n", "plan 513\nmount 1 1048576 1048576 ext4 root\nend\n",
        "plan 512\nmount 1 1048576 1048576 ext4 root\n", "plan 512\nmount 1 1048576 1048576 ext4 root\nend",
        "plan 512\nmount 1 67108864 1 ext4 root\nend\n",  // past the end of a 64 MiB image
        "plan 512\nmount 1 1 18446744073709551615 ext4 root\nend\n",  // overflows
        "plan 512\nmount 1 1048576 0 ext4 root\nend\n", "plan 512\nmount 1 1048576 1048576 ntfs root\nend\n",
        "plan 512\nmount 1 1048576 1048576 ext4 boot\nend\n", "plan 512\nmount 70000 1048576 1048576 ext4 root\nend\n",
        "plan 512\nmount 1 1048576 1048576 ext4 root\nmount 2 2097152 1048576 ext4 root\nend\n",
        "plan 512\nmount 2 2097152 1048576 ext4 usr\nmount 1 1048576 1048576 ext4 root\nend\n",
        "plan 512\nmount 0 0 0 ext4 root\nmount 2 2097152 1048576 ext4 usr\nend\n", "plan 512\nmount 0 512 0 ext4 root\nend\n",
        "plan 512\nmount -1 1048576 1048576 ext4 root\nend\n", "plan 512\nmount +1 1048576 1048576 ext4 root\nend\n",
        "plan 512\nmount 1  1048576 1048576 ext4 root\nend\n", "plan 512\r\nmount 1 1048576 1048576 ext4 root\nend\n",
        "plan 512\nmount 1 1048576 1048576 ext4 root\nend\nend\n",
    ])
    func malformedPlansAreRefused(text: String) {
        #expect(InspectionPlan(wire: Array(text.utf8), imageSize: 64 << 20) == nil, "\(text.debugDescription)")
    }
}

@Suite("berth-inspect --probe")
struct UnprivilegedProbeProcessTests {
    /// The probe refuses to read the image unless it is uid/gid 65534 with empty capability sets
    /// and no_new_privs (it checks /proc/self/status), so a plan from it is a plan made unprivileged.
    @Test(.requires(.root))
    func theProbeAnswersAPlanOnlyAfterDroppingEveryPrivilege() throws {
        let i = try Images()
        let image = try i.partitioned("probe.raw", table: "label: gpt\nstart=2048, size=98304, type=\(rootX86_64)\n")
        let file = try FileDescriptor.open(image, flags: O_RDONLY)
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        let pid = try spawnProcess(try BerthdProcess.binaryPath("berth-inspect"), arguments: ["--probe"],
                                   descriptors: [file.rawValue, fds[1]])
        Glibc.close(fds[1])
        let out = FileDescriptor(owning: fds[0])
        let answer = String(decoding: try out.readToEnd(limit: 4096), as: UTF8.self)
        #expect(try waitForExit(pid) == .exited(0), "\(answer)")
        #expect(answer == "plan 512\nmount 1 1048576 50331648 ext4 root\nend\n")
    }
}
