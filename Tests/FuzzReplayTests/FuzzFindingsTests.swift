import Glibc
import Linux
import PoolAPI
import Testing
import TransferJobs

/// What fuzzing found, stated as the behaviour each fix gives (the crashing inputs themselves
/// are in the corpus that FuzzReplayTests replays).
@Suite("Fuzz findings")
struct FuzzFindingsTests {
    @Test("an /etc/hostname with CRLF line ends: the comment is skipped and the name has no line break")
    func hostnameWithCRLF() {
        #expect(ImageMetadata.parseHostname("# written on Windows\r\nbox\r\n") == "box")
        #expect(ImageMetadata.parseHostname("\r\n\r\n  box \r\nother\r\n") == "box")
    }

    /// One netlink message: a 16-byte nlmsghdr of `type` with `payload`.
    private static func message(type: UInt16, payload: [UInt8]) -> [UInt8] {
        let length = UInt32(16 + payload.count)
        var bytes = withUnsafeBytes(of: length.littleEndian) { Array($0) }
        bytes += withUnsafeBytes(of: type.littleEndian) { Array($0) }
        bytes += [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        return bytes + payload
    }

    /// The errno `walk` throws for `bytes`, nil if it throws none.
    private static func walkErrno(_ bytes: [UInt8]) -> Errno? {
        var found: [InterfaceAddress] = []
        do {
            _ = try NetworkAddresses.walk(bytes, count: bytes.count, into: &found)
            return nil
        } catch {
            return error.errno
        }
    }

    @Test("a netlink error message with no errno, or one that is no negative errno, is EIO, not a trap")
    func netlinkErrors() {
        let errorType: UInt16 = 2  // NLMSG_ERROR
        func int32(_ v: Int32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        for payload in [[], int32(Int32.min), int32(5)] {
            #expect(Self.walkErrno(Self.message(type: errorType, payload: payload)) == .EIO)
        }
        #expect(Self.walkErrno(Self.message(type: errorType, payload: int32(-ENOENT))) == .ENOENT)
    }

    @Test("an image config's User with DEL is left out of the nspawn settings, with a warning")
    func userWithDelete() throws {
        let config = try OciPull.imageConfig(Array(#"{"os":"linux","config":{"User":"app\u007f"}}"#.utf8))
        let settings = OciSettings.nspawn(config, reference: "registry.example/a:b")
        #expect(!settings.text.contains("User="))
        #expect(settings.warnings.count == 1)
        let plain = OciSettings.nspawn(try OciPull.imageConfig(Array(#"{"config":{"User":"app"}}"#.utf8)), reference: "r")
        #expect(plain.text.contains("User=app\n"))
    }
}
