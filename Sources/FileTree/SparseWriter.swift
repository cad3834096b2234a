import Glibc
import Linux

/// Writes data into a file leaving holes where whole blocks are zero: the one sparse writer, for
/// a raw image streamed in (ImportRaw, PullRaw, ExportRaw into a file) and a qcow2 image
/// converted to raw. The output must read as zeros where nothing is written: a file freshly
/// created or truncated, or extended by `finish`.
///
/// Blocks are `blockSize` bytes counted from the start of each piece of data handed in; a run
/// of non-zero blocks goes out in one pwrite(2).
public final class SparseWriter {
    /// How much of a piece of data must be zero to be left a hole.
    public static let blockSize = 4096

    private let fd: Int32
    private let base: Int64
    /// Bytes of the stream so far (the file offset is `base + offset`).
    public private(set) var offset: Int64 = 0

    /// A writer of a stream into `fd` (not owned: the caller closes it) from file offset `base`.
    public init(fd: Int32, base: Int64 = 0) {
        self.fd = fd
        self.base = base
    }

    /// A hole of `count` bytes: the stream moves on without writing.
    public func advance(by count: Int64) { offset += count }

    /// Writes `data` at the stream's offset, skipping its zero blocks, and moves on past it.
    public func write(_ data: UnsafeRawBufferPointer) throws(SystemCallError) {
        try Self.write(data, to: fd, at: base + offset)
        offset += Int64(data.count)
    }

    /// ftruncate(2) to where the stream ended, so trailing zeros (and holes) are holes too.
    public func finish() throws(SystemCallError) {
        try sys("ftruncate") { ftruncate(fd, off_t(base + offset)) }
    }

    /// Writes `data` at `position` of `fd` (pwrite(2), short writes continued) except its
    /// all-zero blocks, which stay holes.
    public static func write(_ data: UnsafeRawBufferPointer, to fd: Int32, at position: Int64) throws(SystemCallError) {
        try forEachNonZeroRun(of: data) { (run: Range<Int>) throws(SystemCallError) in
            try Linux.writeAll(UnsafeRawBufferPointer(rebasing: data[run]), to: fd, at: position + Int64(run.lowerBound))
        }
    }

    /// Calls `body` with each run of `data` that is not all-zero blocks, in order: what a sparse
    /// output writes (a file here, an RBD image in the transfer worker), leaving the rest holes.
    public static func forEachNonZeroRun<E: Error>(of data: UnsafeRawBufferPointer, _ body: (Range<Int>) throws(E) -> Void) throws(E) {
        var start = 0
        while start < data.count {
            let end = min(start + blockSize, data.count)
            if isZero(UnsafeRawBufferPointer(rebasing: data[start..<end])) {
                start = end
                continue
            }
            var runEnd = end
            while runEnd < data.count {
                let next = min(runEnd + blockSize, data.count)
                if isZero(UnsafeRawBufferPointer(rebasing: data[runEnd..<next])) { break }
                runEnd = next
            }
            try body(start..<runEnd)
            start = runEnd
        }
    }

    /// Whether every byte of `data` is zero (eight at a time, then the tail).
    public static func isZero(_ data: UnsafeRawBufferPointer) -> Bool {
        let words = data.count / 8
        var i = 0
        while i < words {
            if data.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) != 0 { return false }
            i += 1
        }
        for j in (words * 8)..<data.count where data[j] != 0 { return false }
        return true
    }
}
