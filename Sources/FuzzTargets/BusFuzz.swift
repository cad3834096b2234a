import Bus
import Glibc
import Linux
import Machines
import PoolAPI
import Portable
import Services
import Transfer
import TransferJobs

extension FuzzTargets {
    /// The object-path prefixes whose children name images and machines.
    private static let pathPrefixes: [ObjectPath] = ["/org/freedesktop/machine1/image", "/org/freedesktop/machine1/machine", "/"]

    /// The bytes as an object path a caller sends (decoded under each prefix; a name that
    /// decodes encodes to a path that decodes to it again), and as a name to encode (which
    /// must decode back to itself).
    static func objectPath(_ data: UnsafeRawBufferPointer) {
        let text = FuzzInput(data).text
        for prefix in pathPrefixes {
            if let name = ObjectPath(text).unescapedName(under: prefix) {
                FuzzCheck.require(!name.utf8.contains(0), "decoded name with a NUL")
                let again = prefix.appending(escaped: name)
                FuzzCheck.require(again.unescapedName(under: prefix) == name, "'\(again)' does not decode to the name of '\(text)'")
            }
        }
        // Names reach sd_bus_path_encode as C strings: one with a NUL never gets there (the
        // name rules refuse control characters first).
        guard let name = String(validating: Array(data), as: UTF8.self), !name.utf8.contains(0) else { return }
        for prefix in pathPrefixes {
            let path = prefix.appending(escaped: name)
            FuzzCheck.require(path.unescapedName(under: prefix) == name, "'\(path)' does not decode back")
            FuzzCheck.require(path.isDescendant(of: prefix), "'\(path)' is not below \(prefix)")
        }
    }

    /// The bytes (and each line of them) as the names and small arguments callers and images
    /// give: image names, machine names, unit names, kept-download names, BindMountMachine
    /// paths, OpenShell environments, PullTar URLs and the paths of tar entries in OCI layers.
    static func names(_ data: UnsafeRawBufferPointer) {
        let text = FuzzInput(data).text
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for name in [text] + lines.prefix(64) {
            if (try? ImagePool.validateName(name)) != nil {
                FuzzCheck.require(!name.isEmpty && !name.contains("/") && name != "." && name != ".."
                                  && name.utf8.count <= ImagePool.maximumNameBytes, "image name '\(name)' accepted")
            }
            if MachineName.isValid(name) {
                let unit = MachineName.scopeUnit(name)
                FuzzCheck.require(unit.hasPrefix("machine-") && unit.hasSuffix(".scope"), "scope unit '\(unit)'")
            }
            if PortableUnits.isValidUnitName(name) {
                FuzzCheck.require(PortableUnits.unit(name, matches: name), "unit '\(name)' does not match itself")
            }
            let escaped = KeptDownloads.escape(name)
            FuzzCheck.require(!escaped.contains("/") && !escaped.unicodeScalars.contains { $0.value < 0x20 }, "kept-download escape '\(escaped)'")
            FuzzCheck.require(KeptDownloads.unescape(escaped) == name, "kept-download name does not unescape back")
            _ = KeptDownloads.unescape(name)
            if Machine1Service.isNormalizedAbsolute(name) {
                FuzzCheck.require(name.hasPrefix("/") && !pathClimbs(name), "path '\(name)' accepted")
            }
            if let path = OciLayers.normalize(name) {
                FuzzCheck.require(!path.hasPrefix("/") && !pathClimbs(path), "layer path '\(path)'")
            }
            _ = Pull.isValidURL(name)
        }
        _ = Machine1Service.validEnvironment(lines)
    }

    /// The bytes as one recv of an rtnetlink RTM_GETADDR dump, and as one RTM_NEWADDR payload.
    static func netlink(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        var found: [InterfaceAddress] = []
        _ = try? NetworkAddresses.walk(bytes, count: bytes.count, into: &found)
        for address in found + [NetworkAddresses.parse(bytes)].compactMap({ $0 }) {
            FuzzCheck.require(address.address.count == (address.family == AF_INET ? 4 : 16), "address of \(address.address.count) bytes")
        }
    }
}
