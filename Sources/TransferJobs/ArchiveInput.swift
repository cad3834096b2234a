import CLinux
import Glibc
import Transfer

/// The input of an import's libarchive reader: the blocks of a source (a file or pipe, a
/// download), with gzip inflated here, by zlib, so that every member's CRC-32 and length are
/// checked. libarchive's own gzip filter reads the 8-byte trailer and never compares it ("XXX
/// TODO: Verify the length and CRC" in archive_read_support_filter_gzip.c): a flipped bit in a
/// stored deflate block would land in the image unnoticed. Other compressions (xz, zstd, bzip2
/// carry and check their own) and plain data pass through to libarchive untouched.
///
/// Gzip streams may hold several members one after the other (`cat a.gz b.gz`), each checked;
/// bytes after the last member that do not start another are ignored, as gzip(1) and libarchive
/// do. A stream that ends inside a member fails.
/// `@unchecked Sendable`: used by one thread, the reader's.
final class ArchiveInput: ArchiveBlockSource, @unchecked Sendable {
    /// One block of the source, valid until the next call; `.end` at its end; `.failed` with
    /// the source's own error kept by the source.
    typealias Source = () -> BlockPipe.Next

    private let source: Source
    /// Source bytes taken so far (compressed bytes, for progress against the input's size).
    private(set) var sourceBytes: Int64 = 0
    /// Why the stream failed here (corrupt or truncated gzip data), if it did.
    private(set) var error: TransferError?
    /// Whether the stream is gzip, inflated here (known after the first read).
    var isGzip: Bool { output != nil }

    private enum State { case start, plain, gzip, done }
    private var state = State.start
    /// The first bytes, when the source handed on fewer than gzip's two magic bytes at first.
    private var head: [UInt8] = []
    /// `head`, once complete, in storage of its own that stays put until deinit.
    private var headStorage: UnsafeMutableRawBufferPointer?
    private var stream = z_stream()
    private var inMember = false
    private var output: UnsafeMutableRawBufferPointer?

    init(source: @escaping Source) { self.source = source }

    deinit {
        if let output {
            inflateEnd(&stream)
            output.deallocate()
        }
        headStorage?.deallocate()
    }

    /// The next block for libarchive: decompressed for gzip, the source's own otherwise.
    func next() -> BlockPipe.Next {
        switch state {
        case .start: return start()
        case .plain: return fetch()
        case .gzip: return inflateNext()
        case .done: return .end
        }
    }

    private func fetch() -> BlockPipe.Next {
        let block = source()
        if case .data(let bytes) = block { sourceBytes += Int64(bytes.count) }
        return block
    }

    private static func isGzipMagic(_ b: UnsafeRawBufferPointer) -> Bool { b[0] == 0x1f && b[1] == 0x8b }

    /// Reads until gzip's magic can be told (two bytes) or the stream ends, and picks the mode.
    private func start() -> BlockPipe.Next {
        while true {
            let first: UnsafeRawBufferPointer
            switch fetch() {
            case .failed: return .failed
            case .end:
                state = .done
                if head.isEmpty { return .end }
                return .data(keptHead())  // one byte: not gzip; the next read ends
            case .data(let bytes):
                if head.isEmpty && bytes.count >= 2 {
                    first = bytes
                } else {
                    head += bytes
                    if head.count < 2 { continue }
                    first = keptHead()
                }
            }
            guard Self.isGzipMagic(first) else {
                state = .plain
                return .data(first)
            }
            guard startInflating() else { return .failed }
            feed(first)
            return inflateNext()
        }
    }

    /// `head` copied into storage of its own, valid until deinit.
    private func keptHead() -> UnsafeRawBufferPointer {
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: head.count, alignment: 1)
        head.withUnsafeBytes { storage.copyMemory(from: $0) }
        headStorage = storage
        head = []
        return UnsafeRawBufferPointer(storage)
    }

    private func startInflating() -> Bool {
        // 15 + 16: a 32 KiB window and gzip framing, whose header and trailer zlib checks.
        guard berth_inflate_init_raw(&stream, 15 + 16) == Z_OK else {
            error = TransferError("cannot start decompressing gzip data (zlib)")
            state = .done
            return false
        }
        output = UnsafeMutableRawBufferPointer.allocate(byteCount: pipelineBlockSize, alignment: 4096)
        state = .gzip
        inMember = true
        return true
    }

    private func feed(_ bytes: UnsafeRawBufferPointer) {
        stream.next_in = UnsafeMutablePointer(mutating: bytes.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(bytes.count)
    }

    private func fail(_ message: String) -> BlockPipe.Next {
        error = TransferError(message)
        state = .done
        return .failed
    }

    /// Inflates until some output is ready, the stream ends, or it fails.
    private func inflateNext() -> BlockPipe.Next {
        guard let output else { return .failed }
        while true {
            if stream.avail_in == 0 {
                switch fetch() {
                case .failed: state = .done; return .failed
                case .end:
                    if inMember { return fail("the gzip data is truncated: the stream ends inside a member") }
                    state = .done
                    return .end
                case .data(let bytes):
                    if bytes.isEmpty { continue }
                    feed(bytes)
                }
            }
            if !inMember {
                // Between members: another starts only with gzip's first magic byte (zlib checks
                // the rest of its header); anything else is trailing bytes, ignored.
                guard stream.next_in[0] == 0x1f else {
                    state = .done
                    return .end
                }
                guard inflateReset(&stream) == Z_OK else { return fail("cannot restart gzip decompression") }
                inMember = true
            }
            stream.next_out = output.baseAddress?.assumingMemoryBound(to: Bytef.self)
            stream.avail_out = uInt(output.count)
            let r = inflate(&stream, Z_NO_FLUSH)
            let produced = output.count - Int(stream.avail_out)
            switch r {
            case Z_STREAM_END:
                inMember = false  // zlib has compared the member's CRC-32 and length with its trailer
            case Z_OK:
                break
            case Z_BUF_ERROR where stream.avail_in == 0:
                break  // needs more input
            default:
                let reason = stream.msg.map { String(cString: $0) } ?? "zlib status \(r)"
                return fail("the gzip data is corrupt: \(reason)")
            }
            if produced > 0 { return .data(UnsafeRawBufferPointer(start: output.baseAddress, count: produced)) }
        }
    }
}
