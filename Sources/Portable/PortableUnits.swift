import Glibc
import Linux

/// The unit files a portable image offers, found the way systemd-portabled 252 finds them
/// (measured against it): the image's unit folders in systemd's search order, the first file of a
/// name wins, names that are valid unit names only, and a unit matches a prefix when its name is
/// the prefix or continues it with `.`, `-` or `@` (`foo` matches `foo.service`, `foo-web.socket`
/// and `foo@.service`, not `foobar.service`).
///
/// Unlike 252, every path is resolved inside the image (openat2 RESOLVE_IN_ROOT): a unit file that
/// is a symlink to `/etc/passwd` reads the image's `/etc/passwd`, never the host's (portabled 252
/// returns the host's file), and anything that does not resolve to a regular file is left out.
public enum PortableUnits {
    /// The image's unit folders, highest priority first, as a Debian system's lookup paths order
    /// them (`/lib/systemd/system` before `/usr/lib/systemd/system`).
    public static let folders = ["etc/systemd/system", "run/systemd/system", "usr/local/lib/systemd/system",
                                 "lib/systemd/system", "usr/lib/systemd/system"]

    /// The unit types systemd knows (unit_type_to_string).
    public static let types: Set<String> = ["service", "socket", "target", "device", "mount", "automount", "swap",
                                            "timer", "path", "slice", "scope"]

    /// Largest unit file read (1 MiB, as for os-release): a bigger one is no unit file.
    public static let maximumFileSize = 1 << 20

    /// One unit file of an image.
    public struct UnitFile: Sendable, Equatable {
        /// The unit name, `foo.service`.
        public var name: String
        /// The file's bytes.
        public var contents: [UInt8]
        /// Where it was found inside the image, `usr/lib/systemd/system/foo.service`.
        public var pathInImage: String
        /// The file's modification time (kept by the `copy` copy mode).
        public var modificationTime: timespec
        /// Whether `pathInImage` reaches the file with no symbolic link on the way: only such a
        /// unit may be attached as a symlink into a tree image, since the host's systemd would
        /// follow a link in the image on the host.
        public var isLinkable: Bool

        /// The path of the extension image it comes from; nil when it is the image's own.
        public var origin: String? = nil

        /// The unit type, `service` for `foo.service`.
        public var type: Substring { name[name.index(after: name.lastIndex(of: ".") ?? name.startIndex)...] }

        public static func == (a: UnitFile, b: UnitFile) -> Bool {
            a.name == b.name && a.contents == b.contents && a.pathInImage == b.pathInImage && a.isLinkable == b.isLinkable
                && a.origin == b.origin
                && a.modificationTime.tv_sec == b.modificationTime.tv_sec && a.modificationTime.tv_nsec == b.modificationTime.tv_nsec
        }
    }

    /// Whether `unit` is `match` or continues it with `.`, `-` or `@`.
    public static func unit(_ unit: String, matches match: String) -> Bool {
        guard unit.hasPrefix(match) else { return false }
        let rest = unit.utf8.dropFirst(match.utf8.count)
        guard let next = rest.first else { return true }
        return next == UInt8(ascii: ".") || next == UInt8(ascii: "-") || next == UInt8(ascii: "@")
    }

    /// Whether `unit` matches any of `matches`; every unit matches an empty list.
    public static func unit(_ unit: String, matchesAny matches: [String]) -> Bool {
        matches.isEmpty || matches.contains { self.unit(unit, matches: $0) }
    }

    /// A plain, template or instance unit name: `prefix[@instance].type`, at most 255 bytes, of
    /// the characters systemd allows (letters, digits, `:-_.\`, and `@` once).
    public static func isValidUnitName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard bytes.count <= 255, let dot = bytes.lastIndex(of: UInt8(ascii: ".")), dot > 0,
              types.contains(String(decoding: bytes[(dot + 1)...], as: UTF8.self)) else { return false }
        let stem = bytes[..<dot]
        guard stem.filter({ $0 == UInt8(ascii: "@") }).count <= 1, stem.first != UInt8(ascii: "@") else { return false }
        return stem.allSatisfy { c in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c)
                || [UInt8(ascii: ":"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "\\"),
                    UInt8(ascii: "@")].contains(c)
        }
    }

    /// The unit files of the image whose root folder is `root` that match `matches`, sorted by name.
    public static func read(imageRoot root: String, matches: [String]) throws(SystemCallError) -> [UnitFile] {
        let rootFD = try FileDescriptor.openDirectory(root)
        defer { rootFD.close() }
        var found: [String: UnitFile] = [:]
        for folder in folders {
            guard let dir = try? FileDescriptor.open(folder, flags: O_RDONLY | O_DIRECTORY, relativeTo: rootFD,
                                                     resolve: [.inRoot, .noMagicLinks]) else { continue }
            defer { dir.close() }
            let names = (try? directoryEntries(of: dir)) ?? []
            for name in names where found[name] == nil && isValidUnitName(name) && unit(name, matchesAny: matches) {
                let path = folder + "/" + name
                guard let file = regularFile(path, in: rootFD) else { continue }
                let linkable = (try? FileDescriptor.open(path, flags: O_RDONLY | O_NOCTTY | O_NONBLOCK, relativeTo: rootFD,
                                                         resolve: [.inRoot, .noSymlinks]))
                    .map { fd in defer { fd.close() }; return true } ?? false
                found[name] = UnitFile(name: name, contents: file.contents, pathInImage: path,
                                       modificationTime: file.status.modificationTime, isLinkable: linkable)
            }
        }
        return found.values.sorted { $0.name < $1.name }
    }

    /// The bytes and status of `path` resolved inside the image, or nil if it is not a regular
    /// file there (or is larger than `maximumFileSize`).
    static func regularFile(_ path: String, in root: FileDescriptor) -> (contents: [UInt8], status: FileStatus)? {
        guard let fd = try? FileDescriptor.open(path, flags: O_RDONLY | O_NOCTTY | O_NONBLOCK, relativeTo: root,
                                                resolve: [.inRoot, .noMagicLinks]) else { return nil }
        defer { fd.close() }
        guard let st = try? fd.stat(), st.isRegular, st.size <= Int64(maximumFileSize),
              let bytes = try? fd.readToEnd(limit: maximumFileSize) else { return nil }
        return (bytes, st)
    }
}

/// What GetImageMetadata returns of an image: its os-release file as it is, and its unit files.
public struct PortableMetadata: Sendable {
    /// The bytes of the image's `/etc/os-release`, else `/usr/lib/os-release`; empty if neither.
    public var osRelease: [UInt8]
    /// The matching unit files, sorted by name.
    public var units: [PortableUnits.UnitFile]

    /// Reads the metadata of the image whose root folder is `root`.
    public static func read(imageRoot root: String, matches: [String]) throws(SystemCallError) -> PortableMetadata {
        let units = try PortableUnits.read(imageRoot: root, matches: matches)
        let rootFD = try FileDescriptor.openDirectory(root)
        defer { rootFD.close() }
        let osRelease = PortableUnits.regularFile("etc/os-release", in: rootFD)?.contents
            ?? PortableUnits.regularFile("usr/lib/os-release", in: rootFD)?.contents ?? []
        return PortableMetadata(osRelease: osRelease, units: units)
    }
}
