import Glibc
import Linux
import PoolAPI

/// Portable extensions: images overlaid on a portable image's /usr (systemd-sysext's format),
/// each saying in `usr/lib/extension-release.d/extension-release.NAME` which images it extends.
public enum PortableExtensions {
    /// Where an extension's release file lives inside it.
    public static let releaseFolder = "usr/lib/extension-release.d"

    /// An extension's release file, as read inside it.
    public struct Release: Sendable {
        /// The file's name, `extension-release.NAME`.
        public var fileName: String
        /// Its bytes, as GetImageMetadataWithExtensions returns them.
        public var contents: [UInt8]
        /// Its pairs.
        public var fields: [String: String]
    }

    /// The release file of the extension `name` whose root is `root`: `extension-release.NAME`
    /// for its name, or for its name without a version (`foo` of `foo_2`). With `force`, any one
    /// `extension-release.*` file will do (FORCE_EXTENSION: the file's name need not match).
    public static func release(imageRoot root: String, name: String, force: Bool) throws(PortableError) -> Release {
        let rootFD: FileDescriptor
        do { rootFD = try FileDescriptor.openDirectory(root) } catch {
            throw PortableError(.system, "Failed to open extension '\(name)'", cause: error)
        }
        defer { rootFD.close() }
        var candidates = ["extension-release.\(name)"]
        let base = String(PortableState.baseName(name))
        if base != name { candidates.append("extension-release.\(base)") }
        if force, let dir = try? FileDescriptor.open(releaseFolder, flags: O_RDONLY | O_DIRECTORY, relativeTo: rootFD,
                                                      resolve: [.inRoot, .noMagicLinks]) {
            defer { dir.close() }
            candidates += ((try? directoryEntries(of: dir)) ?? []).filter { $0.hasPrefix("extension-release.") }.sorted()
        }
        for file in candidates {
            if let found = PortableUnits.regularFile(releaseFolder + "/" + file, in: rootFD) {
                let text = String(decoding: found.contents, as: UTF8.self)
                return Release(fileName: file, contents: found.contents, fields: EnvironmentFile.parse(text))
            }
        }
        throw PortableError(.invalidArgument, "Extension image '\(name)' has no \(releaseFolder)/extension-release.\(base), refusing.")
    }

    /// Refuses an extension that is not for the image whose os-release is `osRelease`: its ID
    /// must be the image's (or `_any`), then its SYSEXT_LEVEL the image's if it names one, else
    /// its VERSION_ID the image's if it names one, as systemd-sysext and portabled check.
    public static func check(_ release: Release, extension name: String, imageOSRelease osRelease: [String: String],
                             imagePath: String) throws(PortableError) {
        guard let id = release.fields["ID"], !id.isEmpty else {
            throw PortableError(.invalidArgument, "Extension image '\(name)' names no ID in \(release.fileName), refusing.")
        }
        if id == "_any" { return }
        guard id == osRelease["ID"] else {
            throw PortableError(.invalidArgument, "Extension image '\(name)' is for ID=\(id), image '\(imagePath)' is "
                + "ID=\(osRelease["ID"] ?? ""), refusing.")
        }
        if let level = release.fields["SYSEXT_LEVEL"], !level.isEmpty {
            guard level == osRelease["SYSEXT_LEVEL"] else {
                throw PortableError(.invalidArgument, "Extension image '\(name)' is for SYSEXT_LEVEL=\(level), image "
                    + "'\(imagePath)' has \(osRelease["SYSEXT_LEVEL"].map { "SYSEXT_LEVEL=\($0)" } ?? "none"), refusing.")
            }
        } else if let version = release.fields["VERSION_ID"], !version.isEmpty {
            guard version == osRelease["VERSION_ID"] else {
                throw PortableError(.invalidArgument, "Extension image '\(name)' is for VERSION_ID=\(version), image "
                    + "'\(imagePath)' is VERSION_ID=\(osRelease["VERSION_ID"] ?? ""), refusing.")
            }
        }
    }
}
