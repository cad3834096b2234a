import FoundationEssentials
import Glibc
import Transfer

/// Media types of the OCI image spec and Docker's v2 schema 2 that a pull understands.
enum OciMediaType {
    static let index = "application/vnd.oci.image.index.v1+json"
    static let manifest = "application/vnd.oci.image.manifest.v1+json"
    static let dockerList = "application/vnd.docker.distribution.manifest.list.v2+json"
    static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"

    /// Layer types applied as tar streams (compression is detected from the bytes, so a
    /// mislabelled one still applies; the digest already vouches for the bytes).
    static let layers: Set<String> = [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ]
}

/// Bounds on what a registry may send (a hostile one must not exhaust the worker).
enum OciLimits {
    /// A manifest or index, in memory.
    static let manifestBytes = 4 << 20
    /// The image config, in memory.
    static let configBytes = 8 << 20
    /// Layers of one image.
    static let layers = 512
    /// Entries of an index.
    static let indexEntries = 1024
}

/// One content descriptor (`mediaType`, `digest`, `size`, and `platform` in an index).
package struct OciDescriptor: Decodable, Sendable, Equatable {
    var mediaType: String?
    var digest: String
    var size: Int64
    var platform: OciPlatform?
}

/// An index entry's platform.
struct OciPlatform: Decodable, Sendable, Equatable {
    var architecture: String
    var os: String
    var variant: String?
}

/// An index (manifest list) or an image manifest: which one is told by its fields.
package struct OciManifestDocument: Decodable, Sendable {
    var schemaVersion: Int?
    var mediaType: String?
    var manifests: [OciDescriptor]?
    var config: OciDescriptor?
    var layers: [OciDescriptor]?
}

/// The parts of the image config a container needs to run it.
package struct OciImageConfig: Decodable, Sendable {
    struct Exec: Decodable, Sendable {
        var Env: [String]?
        var Entrypoint: [String]?
        var Cmd: [String]?
        var WorkingDir: String?
        var User: String?
    }
    var architecture: String?
    var os: String?
    var config: Exec?
}

package enum OciJSON {
    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], what: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch {
            throw TransferError("the \(what) is not valid JSON of the expected shape: \(error)")
        }
    }

    /// `token` or `access_token` of a token service's answer.
    package static func token(_ bytes: [UInt8]) -> String? {
        struct Answer: Decodable {
            var token: String?
            var access_token: String?
        }
        guard let a = try? JSONDecoder().decode(Answer.self, from: Data(bytes)) else { return nil }
        let t = a.token ?? a.access_token
        // Goes into a header line: no control characters.
        guard let t, !t.isEmpty, t.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }) else { return nil }
        return t
    }

    /// The first message of a registry's `{"errors":[{"code":…,"message":…}]}`.
    package static func errorMessage(_ bytes: [UInt8]) -> String? {
        struct Answer: Decodable {
            struct E: Decodable {
                var code: String?
                var message: String?
            }
            var errors: [E]?
        }
        guard let e = (try? JSONDecoder().decode(Answer.self, from: Data(bytes)))?.errors?.first else { return nil }
        let text = [e.code, e.message].compactMap { $0 }.joined(separator: ": ")
        return text.isEmpty ? nil : String(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7f })
    }
}

/// The host's platform as OCI names it (uname's machine mapped to GOARCH names).
enum OciHostPlatform {
    static var architecture: String {
        var u = utsname()
        uname(&u)
        let machine = withUnsafePointer(to: u.machine) {
            $0.withMemoryRebound(to: CChar.self, capacity: 65) { String(cString: $0) }
        }
        return architecture(forMachine: machine)
    }

    static func architecture(forMachine machine: String) -> String {
        switch machine {
        case "x86_64": "amd64"
        case "aarch64", "arm64": "arm64"
        case "i386", "i486", "i586", "i686": "386"
        case "ppc64le": "ppc64le"
        case "s390x": "s390x"
        case "riscv64": "riscv64"
        case let m where m.hasPrefix("armv"): "arm"
        default: machine
        }
    }
}
