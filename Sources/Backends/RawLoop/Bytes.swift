import Linux
import PoolAPI

/// Fixed-width integer loads from on-disk structures (qcow2's are big-endian). Callers check
/// bounds before loading: these trap on a bad offset.
extension Array where Element == UInt8 {
    func bigEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size { value = value << 8 | T(self[offset + i]) }
        return value
    }

    func matches(_ bytes: [UInt8], at offset: Int) -> Bool {
        guard offset >= 0, offset + bytes.count <= count else { return false }
        return self[offset..<(offset + bytes.count)].elementsEqual(bytes)
    }
}

extension FileDescriptor {
    /// Reads exactly `count` bytes at `offset` (pread(2), looping over short reads); fewer only
    /// at end of file.
    func readBytes(_ count: Int, at offset: UInt64) throws(SystemCallError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Swift.max(count, 1), alignment: 16)
        defer { buffer.deallocate() }
        var done = 0
        while done < count {
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<count]), at: Int64(offset) + Int64(done))
            if n == 0 { break }
            done += n
        }
        return Array(buffer[0..<done])
    }
}

/// Runs a block of system calls, turning its SystemCallError into a PoolError (ENOSPC becomes
/// `.noSpace` and so on, see `PoolError.from`).
@discardableResult
func io<T>(_ what: @autoclosure () -> String = "I/O error", _ body: () throws(SystemCallError) -> T) throws -> T {
    do {
        return try body()
    } catch {
        throw PoolError.from(error, what())
    }
}
