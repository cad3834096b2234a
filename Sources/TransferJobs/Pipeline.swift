import CArchive
import CLinux
import Glibc
import Linux
import Synchronization
import Transfer

/// Size of the blocks the stages of an import hand on: big enough that the hand-over costs
/// nothing next to the work, small enough that progress (counted in blocks) moves smoothly.
let pipelineBlockSize = 256 << 10

/// A bounded queue of byte blocks from one producer thread to one consumer thread, so the
/// stages of a transfer (download, decompression, extraction) run on cores of their own.
/// Blocks are allocated once and recycled: the producer copies into an empty block, the
/// consumer reads a full one and hands it back when it asks for the next (libarchive's
/// read-callback contract: the data stays valid until the next call). A consumer that would
/// wait takes the producer's partly filled block instead, so a slow source (a stalled pipe, a
/// trickling download) still reaches the disk as it comes; while the consumer is busy, blocks
/// fill up and are handed on whole.
///
/// Either side can stop the other: the producer ends the stream with `finish(_:)` (an error
/// reaches the consumer as a failed read, never as a clean end, so a truncated stream cannot
/// pass for a complete one); the consumer gives up with `cancel()`, after which the producer's
/// `write` returns false and it stops.
/// `@unchecked Sendable`: every shared field is guarded by `lock`; `held` is the consumer's.
final class BlockPipe: @unchecked Sendable {
    /// What the consumer gets from `next()`.
    enum Next {
        case data(UnsafeRawBufferPointer)
        case end
        case failed
    }

    let blockSize: Int
    // A pthread mutex and condition variable, not Synchronization.Mutex (used everywhere else):
    // both sides sleep until the other changes something (pthread_cond_wait releases the lock
    // while it waits), and Synchronization has no condition variable to wait with. Allocated
    // once so their addresses never move.
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var blocks: [UnsafeMutableRawPointer] = []
    private var empty: [UnsafeMutableRawPointer] = []
    private var full: [(block: UnsafeMutableRawPointer, count: Int, sourceEnd: Int64)] = []
    private var current: UnsafeMutableRawPointer?  // being filled by the producer
    private var currentCount = 0
    private var finished = false
    private var canceled = false
    private var failure: (any Error)?
    private var held: (block: UnsafeMutableRawPointer, sourceEnd: Int64)?  // consumer only

    /// Input bytes the producer has read from its own source so far; set by the producer
    /// before each `write`, so each block knows where in the source it ends.
    let sourceBytes = Atomic<Int64>(0)
    /// Input bytes whose output the consumer has finished with: progress as the last stage
    /// sees it (the producer runs up to a few blocks ahead).
    let consumedSourceBytes = Atomic<Int64>(0)
    /// Readable once the consumer cancelled: a producer blocked reading its own input (a pipe
    /// from a client that went quiet) polls it too, so it stops at once.
    let cancelEvent: Int32

    init(blockSize: Int = pipelineBlockSize, blocks count: Int = 16) {
        self.blockSize = blockSize
        cancelEvent = eventfd(0, Int32(EFD_CLOEXEC))
        pthread_mutex_init(lock, nil)
        pthread_cond_init(changed, nil)
        for _ in 0..<max(count, 2) {
            let block = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 4096)
            blocks.append(block)
            empty.append(block)
        }
    }

    deinit {
        for block in blocks { block.deallocate() }
        if cancelEvent >= 0 { close(cancelEvent) }
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(lock)
        lock.deallocate()
        changed.deallocate()
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }

    /// Under `lock`: queues the partly or wholly filled block.
    private func commitCurrent() {
        guard let block = current else { return }
        if currentCount > 0 {
            full.append((block, currentCount, sourceBytes.load(ordering: .relaxed)))
        } else {
            empty.append(block)
        }
        current = nil
        currentCount = 0
        pthread_cond_broadcast(changed)
    }

    // MARK: producer

    /// Copies `bytes` into the stream (waiting for room); false once the consumer cancelled.
    func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let source = bytes.baseAddress else { return !locked { canceled } }
        return locked {
            var done = 0
            while done < bytes.count {
                while current == nil && empty.isEmpty && !canceled { pthread_cond_wait(changed, lock) }
                if canceled { return false }
                if current == nil {
                    current = empty.removeLast()
                    currentCount = 0
                }
                guard let block = current else { return false }
                // The copy is under the lock (so the consumer may take a partial block at any
                // time); it is a memcpy of at most a block, next to which the lock is nothing.
                let n = min(blockSize - currentCount, bytes.count - done)
                (block + currentCount).copyMemory(from: source + done, byteCount: n)
                currentCount += n
                done += n
                if currentCount == blockSize {
                    commitCurrent()
                } else if full.isEmpty {
                    // The consumer may be waiting for anything at all.
                    pthread_cond_broadcast(changed)
                }
            }
            return true
        }
    }

    /// Ends the stream: cleanly with nil, else with `error`, which the consumer sees as a
    /// failed read and the owner gets back from `producerError`.
    func finish(_ error: (any Error)?) {
        locked {
            commitCurrent()
            finished = true
            if failure == nil { failure = error }
            pthread_cond_broadcast(changed)
        }
    }

    // MARK: consumer

    /// The next block of data (the previous one goes back to the producer); `.end` when the
    /// producer finished cleanly, `.failed` when it failed or the pipe was cancelled.
    func next() -> Next {
        locked {
            if let held {
                empty.append(held.block)
                consumedSourceBytes.store(held.sourceEnd, ordering: .relaxed)
                self.held = nil
                pthread_cond_broadcast(changed)
            }
            while full.isEmpty && !finished && !canceled {
                if currentCount > 0 {
                    commitCurrent()  // rather than wait: take what the producer has so far
                } else {
                    pthread_cond_wait(changed, lock)
                }
            }
            if canceled { return .failed }
            if !full.isEmpty {
                let (block, count, sourceEnd) = full.removeFirst()
                held = (block, sourceEnd)
                return .data(UnsafeRawBufferPointer(start: block, count: count))
            }
            return failure == nil ? .end : .failed
        }
    }

    /// The consumer stops: the producer's next `write` fails and it stops too.
    func cancel() {
        locked {
            canceled = true
            pthread_cond_broadcast(changed)
        }
        var one: UInt64 = 1
        if cancelEvent >= 0 { _ = Glibc.write(cancelEvent, &one, 8) }
    }

    /// The producer's error, if it finished with one.
    var producerError: (any Error)? { locked { failure } }

    /// Has the consumer given up? (A producer's failure after that is only the consequence.)
    var isCanceled: Bool { locked { canceled } }

    /// Opens `writer` with this pipe as its output (the producer side), in big blocks and
    /// with the last block unpadded, as archive_write_open_fd does for a file or pipe.
    func openForWriting(_ writer: ArchiveHandle) throws {
        try writer.check(archive_write_set_bytes_per_block(writer.pointer, Int32(blockSize)), "block size")
        try writer.check(archive_write_set_bytes_in_last_block(writer.pointer, 1), "block size")
        let me = Unmanaged.passUnretained(self).toOpaque()
        try writer.check(archive_write_open(writer.pointer, me, nil, { _, client, buffer, length in
            guard let client else { return -1 }
            let pipe = Unmanaged<BlockPipe>.fromOpaque(client).takeUnretainedValue()
            return pipe.write(UnsafeRawBufferPointer(start: buffer, count: length)) ? length : -1
        }, nil), "cannot open the output")
    }
}

/// Where a libarchive reader gets its bytes: a block at a time, each valid until the next.
protocol ArchiveBlockSource: AnyObject {
    func next() -> BlockPipe.Next
}

extension BlockPipe: ArchiveBlockSource {}

extension ArchiveBlockSource {
    /// Opens `reader` on this source through libarchive's read callback (for a pipe, its
    /// consumer side). The source must outlive the reader's use of it.
    func open(_ reader: ArchiveHandle) throws {
        let me = Unmanaged.passUnretained(self as AnyObject).toOpaque()
        try reader.check(archive_read_open(reader.pointer, me, nil, { _, client, out in
            guard let client, let out,
                  let source = Unmanaged<AnyObject>.fromOpaque(client).takeUnretainedValue() as? any ArchiveBlockSource
            else { return -1 }
            switch source.next() {
            case .data(let bytes):
                out.pointee = bytes.baseAddress
                return bytes.count
            case .end:
                out.pointee = nil
                return 0
            case .failed:
                return -1
            }
        }, nil), "cannot read the archive")
    }
}

/// Decompression on a thread of its own: `ArchiveInput` (gzip) and libarchive's "raw" format
/// with every other import filter turn the compressed stream (gzip, bzip2, xz, zstd, or none)
/// into plain bytes for the tar reader, which then runs on another core. The compressed stream is read to its end, so
/// everything libarchive checks is checked (a corrupt or truncated tail fails the import);
/// bytes after its end are left unread.
enum Decompressor {
    /// Reads the file, pipe or socket `input` to its end, decompressed, into `pipe`.
    static func pump(from input: Int32, into pipe: BlockPipe) {
        let source = CancellableInput(fd: input, cancelEvent: pipe.cancelEvent)
        pump(from: ArchiveInput(source: source.next), into: pipe, readError: { source.error })
    }

    /// Reads the stream of `source` (a download's pipe) to its end, decompressed, into `pipe`.
    static func pump(from source: BlockPipe, into pipe: BlockPipe) {
        pump(from: ArchiveInput(source: source.next), into: pipe)
    }

    /// Reads `input` to its end, decompressed, into `pipe`; finishes the pipe (with the error,
    /// if any: `input`'s own (corrupt gzip data) or `readError`, the source's, say more than
    /// libarchive's). Returns quietly if the consumer cancelled.
    private static func pump(from input: ArchiveInput, into pipe: BlockPipe, readError: () -> (any Error)? = { nil }) {
        do {
            let reader = try ArchiveHandle.reader()
            try reader.supportImportCompressions()
            try reader.check(archive_read_support_format_raw(reader.pointer), "raw support")
            try input.open(reader)
            var entry: OpaquePointer?
            let r = archive_read_next_header(reader.pointer, &entry)
            if r == ARCHIVE_EOF {
                pipe.finish(nil)
                return
            }
            try reader.check(r, "cannot read the archive")
            var block: UnsafeRawPointer?
            var size = 0
            var offset: la_int64_t = 0
            while true {
                let r = archive_read_data_block(reader.pointer, &block, &size, &offset)
                if r == ARCHIVE_EOF { break }
                try reader.check(r, "cannot read the archive")
                pipe.sourceBytes.store(input.sourceBytes, ordering: .relaxed)
                // The raw format's blocks are whatever the filters had ready: no waiting for more.
                guard pipe.write(UnsafeRawBufferPointer(start: block, count: size)) else { return }
            }
            try reader.check(archive_read_close(reader.pointer), "cannot finish reading the archive")
            pipe.finish(nil)
        } catch {
            // Stopped because the consumer gave up: its error is the one that counts.
            if pipe.isCanceled { return }
            pipe.finish(input.error ?? readError() ?? error)
        }
    }
}

/// A file descriptor read for libarchive in big blocks, that gives up when `cancelEvent`
/// becomes readable instead of waiting on a quiet pipe for ever.
/// `@unchecked Sendable`: used by the decompressing thread only.
final class CancellableInput: @unchecked Sendable {
    let fd: Int32
    let cancelEvent: Int32
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: pipelineBlockSize, alignment: 4096)
    /// Why the last read failed (a read error; "cancelled"), if it did.
    private(set) var error: (any Error)?

    init(fd: Int32, cancelEvent: Int32) {
        self.fd = fd
        self.cancelEvent = cancelEvent
    }

    deinit { buffer.deallocate() }

    /// The next block read (valid until the next call), the end, or a failure (`error` says why).
    func next() -> BlockPipe.Next {
        guard let n = read() else { return .failed }
        return n == 0 ? .end : .data(UnsafeRawBufferPointer(start: buffer.baseAddress, count: n))
    }

    /// One read(2) of up to a block (0 at the end); nil on error or cancel.
    private func read() -> Int? {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: cancelEvent, events: Int16(POLLIN), revents: 0)]
        while true {
            if cancelEvent >= 0 {
                let r = poll(&fds, 2, -1)
                if r < 0 {
                    if errno == EINTR { continue }
                    error = SystemCallError("poll", .current)
                    return nil
                }
                if fds[1].revents != 0 {
                    error = TransferError("cancelled")
                    return nil
                }
            }
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno == EINTR || errno == EAGAIN { continue }
            error = SystemCallError("read", .current)
            return nil
        }
    }
}

extension Result {
    /// The error, if this is a failure.
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
