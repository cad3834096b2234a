import ArgumentParser
import Bus
import Foundation

// What berthctl's verbs share, whichever service they talk to: the connection, how failures and
// error replies are reported, how arguments are parsed and how results are printed.

/// A failure berthctl reports on stderr with exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }

    /// An error reply, as berthctl prints it: its message, then its D-Bus name.
    init(_ error: BusError) { self.init("\(error.message) (\(error.name))") }
}

/// Connects to the bus `global` names (the system bus by default).
func connectBus(_ global: GlobalOptions) throws -> BusClient {
    do { return try BusClient(address: global.busAddress) } catch { throw ValidationError("cannot reach the bus: \(error)") }
}

/// Runs `body`, printing a `CLIError` as `berthctl: …` and exiting 1.
func reporting(_ body: () throws -> Void) throws {
    do { try body() } catch let e as CLIError {
        FileHandle.standardError.write(Data("berthctl: \(e.description)\n".utf8))
        throw ExitCode(1)
    }
}

/// `value` as one line of JSON, keys sorted.
func jsonLine<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

/// Parses a size as machinectl and portablectl do: bytes, or with a K/M/G/T/P/E suffix
/// (1024-based); `infinity`, `none` or `-` for no limit (UINT64_MAX).
public func parseSize(_ text: String) throws -> UInt64 {
    if text == "infinity" || text == "none" || text == "-" { return .max }
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60]
    var digits = text.uppercased()
    if digits.hasSuffix("B") { digits.removeLast() }
    var factor: UInt64 = 1
    if let last = digits.last, let f = units[last] {
        factor = f
        digits.removeLast()
    }
    guard let n = UInt64(digits) else { throw ValidationError("invalid size '\(text)'") }
    let (product, overflow) = n.multipliedReportingOverflow(by: factor)
    guard !overflow else { throw ValidationError("size '\(text)' is too large") }
    return product
}

/// The arguments of a `set-limit` verb, `[NAME] SIZE`: the image (nil for the pool) and the size.
func parseLimitArguments(_ arguments: [String]) throws -> (name: String?, size: UInt64) {
    guard arguments.count == 1 || arguments.count == 2, let sizeText = arguments.last else {
        throw ValidationError("expected [NAME] SIZE")
    }
    return (arguments.count == 2 ? arguments[0] : nil, try parseSize(sizeText))
}

/// A yes/no argument as systemd's parse_boolean reads it.
func parseBoolean(_ text: String) throws -> Bool {
    switch text.lowercased() {
    case "yes", "y", "true", "t", "1", "on": return true
    case "no", "n", "false", "f", "0", "off": return false
    default: throw ValidationError("expected yes or no, not '\(text)'")
    }
}

/// Human-readable bytes as machinectl prints them (`8.0K`, `1.5G`); `-` for unknown.
func formatBytes(_ bytes: UInt64?) -> String {
    guard let bytes else { return "-" }
    let units = ["B", "K", "M", "G", "T", "P", "E"]
    var value = Double(bytes), i = 0
    while value >= 1024 && i < units.count - 1 {
        value /= 1024
        i += 1
    }
    return i == 0 ? "\(bytes)B" : String(format: "%.1f%@", value, units[i])
}

/// A µs timestamp as a date, `-` for 0.
func formatTimestamp(_ us: UInt64) -> String {
    guard us != 0 else { return "-" }
    let f = DateFormatter()
    f.dateFormat = "EEE yyyy-MM-dd HH:mm:ss zzz"
    f.locale = Locale(identifier: "en_US_POSIX")
    return f.string(from: Date(timeIntervalSince1970: Double(us) / 1_000_000))
}

/// Prints `rows` (the header first) as left-aligned columns one space apart, as systemd's tables.
func printTable(_ rows: [[String]]) {
    let columns = rows.map(\.count).max() ?? 0
    let widths = (0..<columns).map { c in rows.map { c < $0.count ? $0[c].count : 0 }.max() ?? 0 }
    for line in rows {
        print(zip(line, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: " ")
            .trimmingCharacters(in: .whitespaces))
    }
}
