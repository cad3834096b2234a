import Glibc
import Linux
import Synchronization

/// The line protocol on the status pipe from a worker to berthd:
/// `P <fraction>` progress, `L <priority> <text>` a log line, `E <text>` why it failed.
/// Lines are short (< PIPE_BUF), so writes from the worker's threads never interleave.
enum StatusLine: Equatable {
    case progress(Double)
    case log(Int32, String)
    case error(String)

    var encoded: String {
        switch self {
        case .progress(let p): "P \(p)\n"
        case .log(let priority, let text): "L \(priority) \(Self.flatten(text))\n"
        case .error(let text): "E \(Self.flatten(text))\n"
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
