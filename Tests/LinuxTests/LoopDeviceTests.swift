import Glibc
import Testing
import TestSupport
@testable import Linux

/// LoopDevice on a real file: attach (LOOP_CONFIGURE), what the kernel reports, read-only
/// enforced by the device, detach.
@Suite(.requires(.loopFilesystems))
struct LoopDeviceTests {
    /// An 8 MiB file whose every 4 KiB block starts with its own number.
    private func makeBackingFile(_ dir: TemporaryDirectory) throws -> String {
        let path = dir.appending("disk.img")
        let fd = try FileDescriptor.open(path, flags: O_CREAT | O_RDWR, mode: 0o644)
        defer { fd.close() }
        try fd.truncate(to: 8 << 20)
        for block in 0..<(8 << 20) / 4096 {
            var tag = UInt64(block)
            try withUnsafeBytes(of: &tag) { try fd.writeAll($0, at: Int64(block) * 4096) }
        }
        return path
    }

    private func readTag(_ fd: FileDescriptor, block: Int) throws -> UInt64 {
        var tag: UInt64 = 0
        _ = try withUnsafeMutableBytes(of: &tag) { try fd.read(into: $0, at: Int64(block) * 4096) }
        return tag
    }

    /// Runs `body` with the backing file's path and a descriptor of it opened with `flags`.
    private func withBackingFile(_ flags: Int32, _ body: (String, FileDescriptor) throws -> Void) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = try makeBackingFile(dir)
        let file = try FileDescriptor.open(path, flags: flags)
        defer { file.close() }
        try body(path, file)
    }

    @Test func attachShowsTheFileAsABlockDeviceAndDetachUnbindsIt() throws {
        try withBackingFile(O_RDWR) { path, file in
            let loop = try LoopDevice.attach(file, readOnly: false)
            var detached = false
            defer { if !detached { loop.detach() } }
            #expect(try loop.size() == 8 << 20)
            #expect(LoopDevice.backingFile(ofDevice: loop.name) == path)
            #expect(LoopDevice.boundDevices().contains { $0.device == loop.name && $0.backingFile == path })
            let device = try FileDescriptor.open(loop.path, flags: O_RDWR)
            #expect(try readTag(device, block: 1000) == 1000)
            // Written through the device, seen in the file.
            var tag: UInt64 = 0xB0B
            try withUnsafeBytes(of: &tag) { try device.writeAll($0, at: 7 * 4096) }
            try device.sync()
            device.close()
            #expect(try readTag(file, block: 7) == 0xB0B)
            loop.detach()
            detached = true
            #expect(LoopDevice.backingFile(ofDevice: loop.name) != path)
        }
    }

    @Test func aReadOnlyDeviceRefusesWritesWhateverTheFileAllows() throws {
        try withBackingFile(O_RDWR) { _, file in
            let loop = try LoopDevice.attach(file, readOnly: true)
            defer { loop.detach() }
            #expect(readSmall("/sys/block/\(loop.name)/ro")?.hasPrefix("1") == true)
            // Either the open for writing or the write itself is refused by the block layer.
            var refusal: Errno?
            do throws(SystemCallError) {
                let device = try FileDescriptor.open(loop.path, flags: O_RDWR)
                defer { device.close() }
                let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
                defer { block.deallocate() }
                block.initializeMemory(as: UInt8.self, repeating: 0xFF)
                try device.writeAll(UnsafeRawBufferPointer(block), at: 0)
                try device.sync()
            } catch {
                refusal = error.errno
            }
            let refused = refusal.map { [Errno.EROFS, .EPERM, .EACCES].contains($0) } ?? false
            #expect(refused, "refused with \(refusal.map(\.name) ?? "nothing")")
            #expect(try readTag(file, block: 0) == 0, "the file is unchanged")
        }
    }

    @Test func offsetAndSizeLimitExposeOneRange() throws {
        try withBackingFile(O_RDONLY) { _, file in
            let loop = try LoopDevice.attach(file, readOnly: true, offset: 1 << 20, sizeLimit: 2 << 20)
            defer { loop.detach() }
            #expect(try loop.size() == 2 << 20)
            let device = try FileDescriptor.open(loop.path, flags: O_RDONLY)
            defer { device.close() }
            #expect(try readTag(device, block: 0) == UInt64((1 << 20) / 4096))
        }
    }
}
