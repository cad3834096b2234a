import Glibc
import Linux
import Synchronization

/// The line protocol on the status pipe from a worker to berthd:
/// `P <fraction>` progress, `L <priority> <text>` a log line, `E <text>` why it failed,
/// `D <0|1> <etag>` what a pull's server said of its download (1: not modified, reuse the kept copy).
/// Lines are short (< PIPE_BUF), so writes from the worker's threads never interleave.
enum StatusLine: Equatable {
    case progress(Double)
    case log(Int32, String)
    case error(String)
    case download(DownloadNote)

    var encoded: String {
        switch self {
        case .progress(let p): "P \(p)\n"
        case .log(let priority, let text): "L \(priority) \(Self.flatten(text))\n"
        case .error(let text): "E \(Self.flatten(text))\n"
        case .download(let note): "D \(note.notModified ? 1 : 0) \(Self.flatten(note.etag))\n"
        }
    }

    init?(decoding line: Substring) {
        guard line.count >= 2 else { return nil }
        let body = line.dropFirst(2)
        switch line.first {
        case "P":
            guard let p = Double(body), p.isFinite else { return nil }
            self = .progress(min(max(p, 0), 1))
        case "L":
            guard let space = body.firstIndex(of: " "), let priority = Int32(body[..<space]) else { return nil }
            self = .log(min(max(priority, 0), 7), String(body[body.index(after: space)...]))
        case "E":
            self = .error(String(body))
        case "D":
            guard body.count >= 2, let flag = body.first, flag == "0" || flag == "1", body.dropFirst().first == " " else { return nil }
            self = .download(DownloadNote(etag: String(body.dropFirst(2)), notModified: flag == "1"))
        default:
            return nil
        }
    }

    /// One line each, bounded so a write stays atomic on a pipe.
    private static func flatten(_ text: String) -> String {
        var s = String(text.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
        if s.utf8.count > 3000 { s = String(decoding: s.utf8.prefix(3000), as: UTF8.self) }
        return s
    }
}

/// berthd's side of the status pipe: splits what the worker wrote into lines, holding at most
/// one unfinished line of at most `maxLineLength` bytes. A worker writes lines of a few KiB
/// (`StatusLine` caps its text at 3000 bytes): a longer one is a misbehaving worker, whose
/// transfer fails rather than berthd's memory growing with whatever it sends.
struct StatusLineSplitter {
    /// The longest line accepted, newline excluded.
    static let maxLineLength = 8192

    /// A line over `maxLineLength`.
    struct LineTooLong: Error {}

    private var pending: [UInt8] = []

    /// Calls `line` for each complete line in `bytes` (after what came before), keeping the
    /// unfinished rest. Only the new bytes are scanned for newlines.
    mutating func feed(_ bytes: UnsafeRawBufferPointer, _ line: (Substring) -> Void) throws(LineTooLong) {
        var start = 0
        while let newline = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) {
            let piece = UnsafeRawBufferPointer(rebasing: bytes[start..<newline])
            if pending.count + piece.count > Self.maxLineLength { throw LineTooLong() }
            if pending.isEmpty {
                line(Substring(String(decoding: piece, as: UTF8.self)))
            } else {
                pending.append(contentsOf: piece)
                line(Substring(String(decoding: pending, as: UTF8.self)))
                pending.removeAll(keepingCapacity: true)
            }
            start = newline + 1
        }
        if pending.count + (bytes.count - start) > Self.maxLineLength { throw LineTooLong() }
        pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start...]))
    }
}

/// Bounds the log lines a worker can turn into Transfer.LogMessage signals: a burst, then a
/// steady rate (a token bucket); what goes beyond is counted and reported as one line,
/// "N log messages … suppressed", before the next line that passes, or at the end.
struct LogRateLimiter {
    private let burst: Double
    private let perSecond: Double
    private var tokens: Double
    private var last: Double?
    private var suppressed = 0

    /// Up to `burst` lines at once, then `perSecond` lines a second.
    init(burst: Int = 200, perSecond: Double = 50) {
        self.burst = Double(burst)
        self.perSecond = perSecond
        tokens = Double(burst)
    }

    /// The lines to pass on for the line `text` arriving at `now` (monotonic seconds): none if
    /// it is suppressed; it, preceded by the suppression note if lines were dropped before.
    mutating func admit(_ priority: Int32, _ text: String, now: Double) -> [(Int32, String)] {
        if let last { tokens = min(burst, tokens + max(now - last, 0) * perSecond) }
        last = now
        guard tokens >= 1 else {
            suppressed += 1
            return []
        }
        tokens -= 1
        return flush() + [(priority, text)]
    }

    /// The suppression note, if lines were dropped since the last one passed.
    mutating func flush() -> [(Int32, String)] {
        guard suppressed > 0 else { return [] }
        defer { suppressed = 0 }
        return [(LogPriority.warning, "\(suppressed) log messages of the transfer worker suppressed")]
    }
}

/// The worker side of the status pipe: progress (throttled to 0.5 % steps) and log lines.
/// In-process callers (unit tests) pass a closure instead of a pipe.
public final class StatusReporter: Sendable {
    private let sink: @Sendable (String) -> Void
    private let lastProgress = Mutex<Double>(-1)

    /// Reports through `sink`, one encoded line per call.
    package init(sink: @escaping @Sendable (String) -> Void) { self.sink = sink }

    /// Reports on `fd` (the worker's status pipe); write errors are ignored (berthd gone).
    package convenience init(fd: Int32) {
        self.init { line in
            var line = line
            line.withUTF8 { buffer in _ = Glibc.write(fd, buffer.baseAddress, buffer.count) }
        }
    }

    /// A reporter that drops everything.
    public static let silent = StatusReporter { _ in }

    /// A reporter calling `progress` and `log` in-process (tests of the worker logic).
    public static func callbacks(progress: @escaping @Sendable (Double) -> Void = { _ in },
                                 log: @escaping @Sendable (Int32, String) -> Void = { _, _ in }) -> StatusReporter {
        StatusReporter { line in
            switch StatusLine(decoding: Substring(line.dropLast())) {
            case .progress(let p): progress(p)
            case .log(let priority, let text): log(priority, text)
            default: break
            }
        }
    }

    /// Progress `fraction` (0…1); sent only when it moved by at least 0.5 % or reached 1.
    package func progress(_ fraction: Double) {
        guard fraction.isFinite else { return }
        let p = min(max(fraction, 0), 1)
        let send = lastProgress.withLock { last -> Bool in
            if p - last >= 0.005 || (p >= 1 && last < 1) { last = p; return true }
            return false
        }
        if send { sink(StatusLine.progress(p).encoded) }
    }

    /// A log line at syslog `priority`.
    package func log(_ priority: Int32, _ text: String) { sink(StatusLine.log(priority, text).encoded) }

    /// What the server said of a pull's download: its ETag, and whether it answered 304 Not
    /// Modified to one of the kept downloads' ETags (then nothing was written to the target).
    package func download(_ note: DownloadNote) { sink(StatusLine.download(note).encoded) }

    /// The reason the worker fails, sent last.
    package func fail(_ text: String) { sink(StatusLine.error(text).encoded) }
}

/// Why a worker operation failed, with a message meant for the transfer's log.
public struct TransferError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, for Transfer.LogMessage and the failed result.
    public let message: String
    /// An error with `message`.
    public init(_ message: String) { self.message = message }
    /// The message.
    public var description: String { message }
}

/// A pull's download as the server described it (keep-download): its entity tag, and whether
/// the server answered a conditional request with 304 Not Modified.
public struct DownloadNote: Sendable, Equatable {
    /// The ETag header, as sent (quotes included).
    public var etag: String
    /// 304: the kept download of this ETag is current; the worker wrote nothing.
    public var notModified: Bool

    public init(etag: String, notModified: Bool) {
        self.etag = etag
        self.notModified = notModified
    }
}
