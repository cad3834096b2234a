import Glibc
import Linux

/// The conversation between berthd's RawLoop backend and `berth-inspect`, the child that probes
/// and mounts a raw image in a mount namespace of its own.
///
/// berthd starts the child with the image open read-only as fd 3, the read end of a "hold" pipe
/// as fd 4 and the write end of an answer pipe as fd 5, and one argument: the folder under which
/// the child mounts (`--mount-base DIR`). The child answers exactly one line on fd 5, then either
/// exits (an error) or keeps the image mounted at `DIR/root` in its namespace until the hold pipe
/// reaches end of file (berthd closed it, or died), when it unmounts, detaches and exits.
///
/// The child parses a hostile image, so berthd treats its answer as hostile too: `parse` accepts
/// one short line of exactly the forms below and nothing else.
///
///     ready
///     error KIND CALL ERRNO MESSAGE
///
/// KIND is `invalid-image`, `not-supported` or `system`; CALL is the failing system call's name
/// (letters, digits, `_()`), or `-`; ERRNO is its errno (0 for none); MESSAGE is printable text.
public enum InspectorAnswer: Sendable, Equatable {
    /// The image's root is mounted at `DIR/root` in the child's namespace.
    case ready
    /// Nothing is mounted; the child exits.
    case failed(Failure)

    /// Why an inspection failed, as the child reports it.
    public struct Failure: Error, Sendable, Equatable {
        public enum Kind: String, Sendable, CaseIterable {
            case invalidImage = "invalid-image"
            case notSupported = "not-supported"
            case system = "system"
        }
        public var kind: Kind
        /// The failing system call, if one failed.
        public var call: String?
        /// Its errno, 0 if none.
        public var errno: Int32
        public var message: String

        public init(kind: Kind, call: String? = nil, errno: Int32 = 0, message: String) {
            self.kind = kind
            self.call = call
            self.errno = errno
            self.message = message
        }
    }

    /// The longest answer line, newline included: a longer one is refused unread.
    public static let maximumLength = 1024
    /// The longest message kept in an error line.
    public static let maximumMessageLength = 800

    /// The fds the child gets (`spawnProcess` numbers them from 3 in this order).
    public static let imageDescriptor: Int32 = 3
    public static let holdDescriptor: Int32 = 4
    public static let answerDescriptor: Int32 = 5
    /// The child's one option: the folder it mounts its private tmpfs on.
    public static let mountBaseOption = "--mount-base"
    /// Where, under the mount base, the image's root is mounted.
    public static let rootFolder = "root"

    /// The line the child writes, newline included. Control characters in the message become
    /// spaces and it is cut to `maximumMessageLength` bytes, so the line always parses.
    public var line: String {
        switch self {
        case .ready:
            return "ready\n"
        case .failed(let f):
            let call = f.call.flatMap { Self.isCallName($0) ? $0 : nil } ?? "-"
            var message = ""
            for scalar in f.message.unicodeScalars {
                let printable = scalar.value >= 0x20 && scalar.value != 0x7f
                let next = printable ? String(scalar) : " "
                if message.utf8.count + next.utf8.count > Self.maximumMessageLength { break }
                message += next
            }
            let errno = (0...4095).contains(f.errno) ? f.errno : 0
            return "error \(f.kind.rawValue) \(call) \(errno) \(message)\n"
        }
    }

    /// The answer in `bytes` (everything the child wrote before closing its end or exiting), or
    /// nil if it is anything but one well-formed line.
    public static func parse(_ bytes: [UInt8]) -> InspectorAnswer? {
        guard bytes.count <= maximumLength, bytes.last == UInt8(ascii: "\n") else { return nil }
        let body = bytes.dropLast()
        guard !body.contains(UInt8(ascii: "\n")), !body.contains(0),
              let text = String(validating: body, as: UTF8.self) else { return nil }
        if text == "ready" { return .ready }
        let fields = text.split(separator: " ", maxSplits: 4, omittingEmptySubsequences: false)
        guard fields.count == 5, fields[0] == "error",
              let kind = Failure.Kind(rawValue: String(fields[1])) else { return nil }
        let call = String(fields[2])
        guard call == "-" || isCallName(call) else { return nil }
        let errnoText = fields[3]
        guard !errnoText.isEmpty, errnoText.count <= 4, errnoText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let errno = Int32(errnoText), errno <= 4095 else { return nil }
        let message = String(fields[4])
        guard message.utf8.count <= maximumMessageLength,
              message.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7f }) else { return nil }
        return .failed(Failure(kind: kind, call: call == "-" ? nil : call, errno: errno, message: message))
    }

    /// A system call's name as Berth's errors spell it (`mount`, `ioctl(LOOP_CONFIGURE)`).
    static func isCallName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64 && s.utf8.allSatisfy { c in
            (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
                || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "_")
                || c == UInt8(ascii: "(") || c == UInt8(ascii: ")")
        }
    }
}
