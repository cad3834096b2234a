import Foundation
import Glibc
import Linux
import PoolAPI
import RawLoopBackend
import Testing
import TestSupport

// The qcow2 reader against images made by qemu-img and qemu-io (qemu-utils), and against
// hand-broken headers. Unprivileged: plain files only.


private let virtualSize: UInt64 = (24 << 20) + 5 * 512  // not a multiple of any cluster size

private func write(_ bytes: [UInt8], to path: String, at offset: UInt64) throws {
    let fd = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT, mode: 0o644)
    try bytes.withUnsafeBytes { try fd.writeAll($0, at: Int64(offset)) }
}

/// A sparse raw disk with data at the start, across cluster boundaries, in its last partial
/// cluster, and a megabyte of explicit zeros that qemu-img stores as nothing.
private func makeSource(_ path: String) throws {
    try write(randomBytes(100_000), to: path, at: 0)
    try write(randomBytes((64 << 10) + 17), to: path, at: (5 << 20) - 3)
    try write([UInt8](repeating: 0, count: 1 << 20), to: path, at: 10 << 20)
    try write(Array(repeating: 0x42, count: 1 << 20), to: path, at: 16 << 20)  // compresses well
    try write(randomBytes(3000), to: path, at: virtualSize - 3000)
    try run(["truncate", "-s", String(virtualSize), path], check: true)
}

/// Converts `qcow2` with Berth's reader into `raw`.
@discardableResult
private func convert(_ qcow2: String, to raw: String) throws -> Qcow2Image {
    let input = try FileDescriptor.open(qcow2, flags: O_RDONLY)
    let image = try Qcow2Image(fd: input)
    let output = try FileDescriptor.open(raw, flags: O_RDWR | O_CREAT | O_TRUNC, mode: 0o644)
    try image.convert(to: output)
    return image
}

/// Opens and converts, returning the PoolError code it fails with (nil if it did not fail).
private func failure(_ qcow2: String, in dir: TemporaryDirectory) -> (code: PoolError.Code, message: String)? {
    do {
        try convert(qcow2, to: dir.appending("out.raw"))
        return nil
    } catch let error as PoolError {
        return (error.code, error.message)
    } catch {
        Issue.record("not a PoolError: \(error)")
        return nil
    }
}

/// Overwrites bytes of a file in place (to break headers on purpose).
private func patch(_ path: String, at offset: UInt64, _ bytes: [UInt8]) throws {
    let fd = try FileDescriptor.open(path, flags: O_WRONLY)
    try bytes.withUnsafeBytes { try fd.writeAll($0, at: Int64(offset)) }
}

private func bigEndian(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) } }
private func bigEndian(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) } }

private func readHeader(_ path: String) throws -> [UInt8] {
    Array(try Data(contentsOf: URL(fileURLWithPath: path)).prefix(112))
}

@Suite("qcow2 reader", .requires(.commands("qemu-img", "qemu-io")))
struct Qcow2Tests {
    @Test(arguments: [
        (["-o", "compat=0.10"], UInt32(2)),
        (["-o", "compat=1.1"], UInt32(3)),
        (["-c", "-o", "compat=0.10"], UInt32(2)),
        (["-c", "-o", "compat=1.1"], UInt32(3)),
        (["-o", "compat=1.1,cluster_size=512"], UInt32(3)),
        (["-c", "-o", "compat=1.1,cluster_size=2M"], UInt32(3)),
        (["-o", "compat=1.1,extended_l2=on,cluster_size=128k"], UInt32(3)),
    ])
    func convertsToAByteIdenticalSparseRawImage(options: [String], version: UInt32) throws {
        let dir = try TemporaryDirectory(prefix: "berth-qcow2")
        defer { dir.remove() }
        let source = dir.appending("source.raw"), qcow2 = dir.appending("image.qcow2"), out = dir.appending("out.raw")
        try makeSource(source)
        try run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2"] + options + [source, qcow2], check: true)
        #expect(Qcow2Image.isQcow2(try FileDescriptor.open(qcow2, flags: O_RDONLY)))
        #expect(!Qcow2Image.isQcow2(try FileDescriptor.open(source, flags: O_RDONLY)))

        let image = try convert(qcow2, to: out)
        #expect(image.version == version)
        #expect(image.virtualSize == virtualSize)
        #expect(try run(["cmp", source, out]).succeeded, "converted image differs from its source")
        let outStatus = try fileStatus(out), sourceStatus = try fileStatus(source)
        #expect(UInt64(outStatus.size) == virtualSize)
        #expect(outStatus.allocatedBytes <= sourceStatus.allocatedBytes, "the raw image is no denser than its source")
        #expect(outStatus.allocatedBytes < virtualSize / 4, "the raw image is sparse")
    }

    @Test func readsZeroClustersAsHoles() throws {
        let dir = try TemporaryDirectory(prefix: "berth-qcow2")
        defer { dir.remove() }
        let source = dir.appending("source.raw"), qcow2 = dir.appending("z.qcow2")
        let ours = dir.appending("ours.raw"), qemus = dir.appending("qemu.raw")
        try makeSource(source)
        try run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", source, qcow2], check: true)
        // Zero flag on allocated clusters (kept allocated), and zeroing with unmap.
        try run(["qemu-io", "-f", "qcow2", "-c", "write -z 0 64k", "-c", "write -z -u 16M 128k", qcow2], check: true)
        try convert(qcow2, to: ours)
        try run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, qemus], check: true)
        #expect(try run(["cmp", ours, qemus]).succeeded, "Berth and qemu-img disagree on the zeroed image")
        let head = try Data(contentsOf: URL(fileURLWithPath: ours)).prefix(64 << 10)
        #expect(head.allSatisfy { $0 == 0 })
        #expect(try fileStatus(ours).allocatedBytes <= fileStatus(qemus).allocatedBytes)
    }

    @Test func anEmptyImageBecomesAHoleOfItsVirtualSize() throws {
        let dir = try TemporaryDirectory(prefix: "berth-qcow2")
        defer { dir.remove() }
        let qcow2 = dir.appending("empty.qcow2"), out = dir.appending("out.raw")
        try run(["qemu-img", "create", "-q", "-f", "qcow2", qcow2, "1G"], check: true)
        try convert(qcow2, to: out)
        #expect(try fileStatus(out).size == 1 << 30)
        #expect(try fileStatus(out).allocatedBytes == 0)
    }

    @Test func refusesBackingFiles() throws {
        let dir = try TemporaryDirectory(prefix: "berth-qcow2")
        defer { dir.remove() }
        try run(["qemu-img", "create", "-q", "-f", "qcow2", dir.appending("base.qcow2"), "16M"], check: true)
        try run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", dir.appending("base.qcow2"), "-F", "qcow2",
                 dir.appending("overlay.qcow2")], check: true)
        let f = failure(dir.appending("overlay.qcow2"), in: dir)
        #expect(f?.code == .notSupported)
        #expect(f?.message.contains("backing file") == true)
    }

    @Test func refusesEncryptedImages() throws {
        let dir = try TemporaryDirectory(prefix: "berth-qcow2")
        defer { dir.remove() }
        let path = dir.appending("luks.qcow2")
        // qemu-img times its LUKS key derivation with getrusage and gives up ("Unable to get
        // accurate CPU usage") when the machine is busy: the fixture is retried, the check is not.
        for attempt in 1...5 {
            let made = try run(["qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=berth",
                                "-o", "encrypt.format=luks,encrypt.key-secret=sec0", path, "16M"], check: attempt == 5)
            if made.succeeded { break }
            unlink(path)
        }
        let f = failure(path, in: dir)
        #expect(f?.code == .notSupported)
        #expect(f?.message.contains("encrypted") == true)
    }

    @Test func refusesZstdCompression() throws {
        let dir = try TemporaryDirectory(prefix: "berth-qcow2")
        defer { dir.remove() }
        let path = dir.appending("zstd.qcow2")
        try run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", path, "16M"], check: true)
        let f = failure(path, in: dir)
        #expect(f?.code == .notSupported)
        #expect(f?.message.contains("zstd") == true)
    }

    @Test func refusesHostileAndTruncatedImagesCleanly() throws {
        let dir = try TemporaryDirectory(prefix: "berth-qcow2")
        defer { dir.remove() }
        let source = dir.appending("source.raw"), good = dir.appending("good.qcow2")
        try makeSource(source)
        try run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", source, good], check: true)
        let header = try readHeader(good)
        let l1Offset = header[40..<48].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let fileSize = UInt64(try fileStatus(good).size)

        /// A copy of the good image with `change` applied, and the failure it leads to.
        func broken(_ name: String, _ change: (String) throws -> Void) throws -> (code: PoolError.Code, message: String)? {
            let path = dir.appending(name)
            try? FileManager.default.removeItem(atPath: path)
            try FileManager.default.copyItem(atPath: good, toPath: path)
            try change(path)
            return failure(path, in: dir)
        }

        // Sizes that would make a naive reader allocate or loop without end.
        #expect(try broken("size.qcow2") { try patch($0, at: 24, bigEndian(UInt64.max)) }?.code == .invalidImage)
        #expect(try broken("l1size.qcow2") { try patch($0, at: 36, bigEndian(UInt32.max)) }?.code == .invalidImage)
        #expect(try broken("bits.qcow2") { try patch($0, at: 20, bigEndian(UInt32(40))) }?.code == .invalidImage)
        #expect(try broken("l1far.qcow2") { try patch($0, at: 40, bigEndian(UInt64(1) << 50)) }?.code == .invalidImage)
        #expect(try broken("l1odd.qcow2") { try patch($0, at: 40, bigEndian(l1Offset + 8)) }?.code == .invalidImage)
        // An L2 table beyond the end of the file.
        #expect(try broken("l2far.qcow2") {
            try patch($0, at: l1Offset, bigEndian((UInt64(1) << 63) | ((fileSize + (1 << 20)) & ~0xFFFF)))
        }?.code == .invalidImage)
        // Feature bits: unknown, corrupt, external data file.
        #expect(try broken("unknown.qcow2") { try patch($0, at: 72, bigEndian(UInt64(1) << 5)) }?.code == .notSupported)
        #expect(try broken("corrupt.qcow2") { try patch($0, at: 72, bigEndian(UInt64(1) << 1)) }?.code == .invalidImage)
        #expect(try broken("external.qcow2") { try patch($0, at: 72, bigEndian(UInt64(1) << 2)) }?.code == .notSupported)
        #expect(try broken("version.qcow2") { try patch($0, at: 4, bigEndian(UInt32(4))) }?.code == .notSupported)
        // Truncated: data clusters missing, and the header itself cut short.
        #expect(try broken("half.qcow2") { try run(["truncate", "-s", String(fileSize / 2), $0], check: true) }?.code == .invalidImage)
        #expect(try broken("header.qcow2") { try run(["truncate", "-s", "50", $0], check: true) }?.code == .invalidImage)
        // Not qcow2 at all.
        let notQcow2 = failure(source, in: dir)
        #expect(notQcow2?.code == .invalidImage)
    }

    @Test func refusesACompressedClusterThatDoesNotInflate() throws {
        let dir = try TemporaryDirectory(prefix: "berth-qcow2")
        defer { dir.remove() }
        let source = dir.appending("source.raw"), path = dir.appending("c.qcow2")
        // Compressible text, so that qemu-img really stores compressed clusters.
        let text = (0..<(1 << 16)).map { "berth line \($0)\n" }.joined()
        try write(Array(text.utf8.prefix(1 << 20)), to: source, at: 0)
        try run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", source, path], check: true)
        try convert(path, to: dir.appending("intact.raw"))
        #expect(try run(["cmp", source, dir.appending("intact.raw")]).succeeded)
        // The compressed data comes last in the file: overwrite its end with garbage.
        let size = UInt64(try fileStatus(path).size)
        try patch(path, at: size - (32 << 10), [UInt8](repeating: 0xFF, count: 32 << 10))
        #expect(failure(path, in: dir)?.code == .invalidImage)
    }
}
