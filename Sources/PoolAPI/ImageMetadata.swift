import Glibc
import Linux

/// What machined reports about an image's contents: `GetImageHostname`, `GetImageMachineID`,
/// `GetImageMachineInfo`, `GetImageOSRelease`.
public struct ImageMetadata: Sendable, Equatable {
    /// /etc/hostname's name; "" if none.
    public var hostname: String
    /// /etc/machine-id as 16 bytes, or [] if none (missing, "uninitialized", malformed).
    public var machineID: [UInt8]
    /// /etc/machine-info's pairs.
    public var machineInfo: [String: String]
    /// /etc/os-release's pairs, else /usr/lib/os-release's.
    public var osRelease: [String: String]

    /// Metadata with the given parts; all empty by default.
    public init(hostname: String = "", machineID: [UInt8] = [], machineInfo: [String: String] = [:],
                osRelease: [String: String] = [:]) {
        self.hostname = hostname
        self.machineID = machineID
        self.machineInfo = machineInfo
        self.osRelease = osRelease
    }

    /// Reads the metadata files of the image root `root`. Every path is resolved with
    /// openat2(RESOLVE_IN_ROOT) on the root's fd, so a symlink in the image (`/etc/os-release →
    /// /etc/shadow` or `../../..`) resolves inside the image, never on the host.
    public static func read(imageRoot root: String) throws -> ImageMetadata {
        let dir = try FileDescriptor.openDirectory(root)
        var result = ImageMetadata()
        if let text = readFile("etc/hostname", in: dir) {
            result.hostname = parseHostname(text)
        }
        if let text = readFile("etc/machine-id", in: dir) {
            result.machineID = parseMachineID(text)
        }
        if let text = readFile("etc/machine-info", in: dir) {
            result.machineInfo = EnvironmentFile.parse(text)
        }
        if let text = readFile("etc/os-release", in: dir) ?? readFile("usr/lib/os-release", in: dir) {
            result.osRelease = EnvironmentFile.parse(text)
        }
        return result
    }

    /// A regular file's text inside the image, or nil if missing or not a regular file.
    static func readFile(_ path: String, in root: FileDescriptor) -> String? {
        guard let fd = try? FileDescriptor.open(path, flags: O_RDONLY | O_NOCTTY | O_NONBLOCK, relativeTo: root,
                                                resolve: [.inRoot, .noMagicLinks]),
              let st = try? fd.stat(), st.isRegular,
              let bytes = try? fd.readToEnd(limit: 1 << 20) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// /etc/hostname as systemd reads it (read_etc_hostname): the first line that is neither
    /// empty nor a comment, stripped of spaces, tabs and line ends, then cleaned up as a hostname
    /// (`cleanedHostname`); "" when what is left is no valid hostname. Lines end at `\n`, `\r`
    /// or NUL, split as scalars: "\r\n" is one Character in Swift, which a Character split on
    /// either would not break at (fuzzing found a CRLF file's comment and name coming back as one
    /// "line" with a newline in it).
    package static func parseHostname(_ text: String) -> String {
        let isSpace: (Unicode.Scalar) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        for line in text.unicodeScalars.split(whereSeparator: { $0 == "\n" || $0 == "\r" || $0 == "\0" }) {
            guard let first = line.firstIndex(where: { !isSpace($0) }), let last = line.lastIndex(where: { !isSpace($0) }) else { continue }
            let stripped = line[first...last]
            if stripped.first == "#" { continue }
            return cleanedHostname(String(String.UnicodeScalarView(stripped)))
        }
        return ""
    }

    /// A hostname as systemd 252 cleans it (hostname_cleanup) and then accepts it
    /// (hostname_is_valid): characters other than ASCII letters, digits, `-` and `.` dropped, a
    /// `.` or `-` where a label cannot have one dropped (leading, doubled, `.-`), at most 64
    /// characters, one trailing `.` or `-` dropped; "" if the rest is still no valid hostname.
    /// Matched against machined 252's GetImageHostname (Machine1Tests.imageHostnamesMatchMachined).
    static func cleanedHostname(_ text: String) -> String {
        let hostNameMax = 64
        var out: [UInt8] = []
        var dot = true, hyphen = true
        for c in text.utf8 where out.count < hostNameMax {
            switch c {
            case UInt8(ascii: "."):
                if dot || hyphen { continue }
                out.append(c)
                (dot, hyphen) = (true, false)
            case UInt8(ascii: "-"):
                if dot { continue }
                out.append(c)
                (dot, hyphen) = (false, true)
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                out.append(c)
                (dot, hyphen) = (false, false)
            default:
                continue
            }
        }
        if let last = out.last, last == UInt8(ascii: ".") || last == UInt8(ascii: "-") { out.removeLast() }
        // What hostname_is_valid (trailing dot allowed) would still refuse after the clean-up.
        guard let end = out.last, end != UInt8(ascii: "-"), end != UInt8(ascii: ".") || out.filter({ $0 == UInt8(ascii: ".") }).count >= 2
        else { return "" }
        return String(decoding: out, as: UTF8.self)
    }

    /// 32 hex digits (plain form); anything else, "uninitialized" included, is no ID.
    public static func parseMachineID(_ text: String) -> [UInt8] {
        let t = text.trimmingWhitespace()
        guard t.utf8.count == 32 else { return [] }
        var bytes: [UInt8] = []
        var it = t.utf8.makeIterator()
        while let hi = it.next(), let lo = it.next() {
            guard let h = hexValue(hi), let l = hexValue(lo) else { return [] }
            bytes.append(h << 4 | l)
        }
        return bytes.allSatisfy { $0 == 0 } ? [] : bytes
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// The KEY=VALUE format of os-release(5) and machine-info(5), read the way systemd's env-file
/// parser reads it: comments (`#`, `;`) at line starts, whitespace around keys and unquoted
/// values dropped, 'single quotes' literal, "double quotes" with backslash escapes of `"\`$`
/// (other backslashes kept), backslash escapes in unquoted values, backslash-newline joins lines,
/// invalid keys skipped, a later assignment wins.
public enum EnvironmentFile {
    /// Parses `text` into pairs.
    public static func parse(_ text: String) -> [String: String] {
        enum State { case preKey, key, preValue, value, valueEscape, single, double, doubleEscape, comment, commentEscape }
        var result: [String: String] = [:]
        var state = State.preKey
        var key = "", value = ""
        var lastValueWhitespace = 0  // trailing whitespace of an unquoted value, stripped at the end

        func commit() {
            var v = value
            if lastValueWhitespace > 0 { v.removeLast(min(lastValueWhitespace, v.count)) }
            let k = key.trimmingWhitespace()
            if isValidKey(k) { result[k] = v }
            key = ""; value = ""; lastValueWhitespace = 0
        }

        for c in text {
            switch state {
            case .preKey:
                if c == "#" || c == ";" { state = .comment }
                else if c.isNewline || c == " " || c == "\t" { continue }
                else { key = String(c); state = .key }
            case .key:
                if c.isNewline { key = ""; state = .preKey }  // no '=': ignored
                else if c == "=" { state = .preValue; value = ""; lastValueWhitespace = 0 }
                else { key.append(c) }
            case .preValue:
                if c.isNewline { commit(); state = .preKey }
                else if c == "'" { state = .single }
                else if c == "\"" { state = .double }
                else if c == "\\" { state = .valueEscape }
                else if c == " " || c == "\t" { continue }
                else { value.append(c); state = .value }
            case .value:
                if c.isNewline { commit(); state = .preKey }
                else if c == "\\" { state = .valueEscape; lastValueWhitespace = 0 }
                else {
                    value.append(c)
                    lastValueWhitespace = (c == " " || c == "\t") ? lastValueWhitespace + 1 : 0
                }
            case .valueEscape:
                // backslash-newline continues the line; any other escaped character is itself.
                if !c.isNewline { value.append(c) }
                state = .value
            case .single:
                if c == "'" { state = .preValue } else { value.append(c) }
            case .double:
                if c == "\"" { state = .preValue }
                else if c == "\\" { state = .doubleEscape }
                else { value.append(c) }
            case .doubleEscape:
                if c.isNewline { /* continuation */ }
                else if "\"\\`$".contains(c) { value.append(c) }
                else { value.append("\\"); value.append(c) }
                state = .double
            case .comment:
                if c == "\\" { state = .commentEscape }
                else if c.isNewline { state = .preKey }
            case .commentEscape:
                state = .comment
            }
        }
        switch state {
        case .preValue, .value, .valueEscape, .single, .double, .doubleEscape: commit()
        default: break
        }
        return result
    }

    /// Environment variable names: ASCII letters, digits and `_`, not starting with a digit.
    static func isValidKey(_ k: String) -> Bool {
        guard let first = k.utf8.first, !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else { return false }
        return k.utf8.allSatisfy { c in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || c == UInt8(ascii: "_")
        }
    }
}
