import CLinux
import Glibc
import Linux

/// One fuzz target: a parser of outside input driven with arbitrary bytes. `run` must never
/// trap, whatever the bytes: the parser refuses them or reads them within bounds. Where a
/// parser's result has a property that must hold (a name that round-trips, a size the image
/// promised), `run` checks it with `FuzzCheck.require`, so a wrong answer is a crash too.
///
/// The same functions serve libFuzzer (the `berth-fuzz` executable, built only by
/// scripts/fuzz.sh) and the normal test suite (FuzzReplayTests replays the kept corpus).
public struct FuzzTarget: Sendable {
    /// The target's name: its corpus folder under Tests/Fixtures/fuzz and BERTH_FUZZ_TARGET.
    public let name: String
    /// What it parses, for `berth-fuzz`'s list.
    public let summary: String
    /// Drives the parser with one input.
    public let run: @Sendable (UnsafeRawBufferPointer) -> Void
}

/// Every fuzz target of Berth's parsers of outside input.
public enum FuzzTargets {
    /// The targets, by name.
    public static let all: [FuzzTarget] = [
        FuzzTarget(name: "qcow2", summary: "qcow2 header, L1/L2 tables and clusters (Qcow2Image, then convert)", run: qcow2),
        FuzzTarget(name: "image-metadata", summary: "os-release/machine-info env files, hostname, machine-id", run: imageMetadata),
        FuzzTarget(name: "machine-store", summary: "machine registry state files (MachineStore.parse)", run: machineStore),
        FuzzTarget(name: "status-protocol", summary: "a worker's status pipe as berthd reads it (StatusReader)", run: statusProtocol),
        FuzzTarget(name: "object-path", summary: "object-path decoding and encoding (ObjectPath)", run: objectPath),
        FuzzTarget(name: "names", summary: "image, machine and unit names, kept-download names, bus arguments, tar paths", run: names),
        FuzzTarget(name: "sha256sums", summary: "SHA256SUMS lines and .sha256 files", run: sha256Sums),
        FuzzTarget(name: "oci-manifest", summary: "OCI/Docker manifest and index JSON", run: ociManifest),
        FuzzTarget(name: "oci-config", summary: "OCI image config JSON to nspawn settings, token and error answers", run: ociConfig),
        FuzzTarget(name: "oci-reference", summary: "OCI image references (OciReference)", run: ociReference),
        FuzzTarget(name: "www-authenticate", summary: "a registry's WWW-Authenticate Bearer challenge", run: wwwAuthenticate),
        FuzzTarget(name: "netlink", summary: "rtnetlink RTM_NEWADDR dumps (NetworkAddresses.walk/parse)", run: netlink),
        FuzzTarget(name: "uid-map", summary: "uid_map/gid_map lines (IDMapping) and translation", run: uidMap),
        FuzzTarget(name: "passwd", summary: "a machine's /etc/passwd (PasswdEntry.find)", run: passwd),
        FuzzTarget(name: "inspector", summary: "berth-inspect's answer and its libblkid probe's plan, as berthd and the child read them", run: inspector),
    ]

    /// The target called `name`, if there is one.
    public static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }
}

/// Checks of what a parser answered.
enum FuzzCheck {
    /// Traps (the fuzzer's crash) with `message` unless `condition` holds.
    static func require(_ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
        if !condition { fatalError("fuzz invariant broken: \(message())", file: file, line: line) }
    }
}

/// Splits one input into parts, so a target can take a name and a text from it: the first
/// line, then the rest.
struct FuzzInput {
    let bytes: [UInt8]

    init(_ data: UnsafeRawBufferPointer) { bytes = Array(data) }

    var text: String { String(decoding: bytes, as: UTF8.self) }

    /// The first line (without its newline) and everything after it.
    var firstLineAndRest: (String, String) {
        guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return (text, "") }
        return (String(decoding: bytes[..<newline], as: UTF8.self), String(decoding: bytes[(newline + 1)...], as: UTF8.self))
    }
}

/// An unnamed temporary file (O_TMPFILE: nothing is left behind, even if the fuzzer dies)
/// holding `bytes`, on tmpfs where there is one.
func scratchFile(_ bytes: UnsafeRawBufferPointer) -> FileDescriptor {
    for folder in ["/dev/shm", "/tmp"] {
        guard let fd = try? FileDescriptor.open(folder, flags: O_RDWR | BERTH_O_TMPFILE | O_CLOEXEC, mode: 0o600) else { continue }
        do {
            if bytes.count > 0 { try fd.writeAll(bytes, at: 0) }
            return fd
        } catch {
            fd.close()
            fatalError("cannot write the fuzz input to a temporary file: \(error)")
        }
    }
    fatalError("cannot make a temporary file in /dev/shm or /tmp")
}
