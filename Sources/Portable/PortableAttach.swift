import Glibc
import Linux
import PoolAPI
import struct SystemPackage.FilePath

/// One change attach or detach made, as portable1 reports it: `a(sss)` of type, path and source.
public struct PortableChange: Sendable, Equatable, CustomStringConvertible {
    /// The kinds of change, by the strings systemd-portabled uses.
    public enum Kind: String, Sendable {
        case mkdir, write, copy, symlink, unlink
    }

    public var kind: Kind
    /// What was made or removed.
    public var path: String
    /// What a copy or symlink was made from; "" otherwise.
    public var source: String

    public init(_ kind: Kind, _ path: String, source: String = "") {
        self.kind = kind
        self.path = path
        self.source = source
    }

    public var description: String { "\(kind.rawValue) \(path)\(source.isEmpty ? "" : " ← \(source)")" }
}

/// How attach places unit files and profile drop-ins (AttachImage's `copy_mode`).
public enum PortableCopyMode: String, Sendable, CaseIterable {
    /// `""`: unit files copied, the profile linked (systemd's default).
    case standard = ""
    /// Both copied, keeping their modification times.
    case copy
    /// Both linked (a unit file of a raw image, or one reached through a symlink in the image,
    /// is copied all the same: the host's systemd would read it on the host).
    case symlink
    /// What the host owns (the profile) linked, what the image owns (unit files) copied.
    case mixed
}

/// Why attach or detach refused, with portabled 252's words where it has them.
public struct PortableError: Error, Sendable, CustomStringConvertible {
    /// The kinds of refusal, each mapped to a D-Bus error name by the service.
    public enum Code: Sendable {
        /// A unit of that name is on the host already (`org.freedesktop.systemd1.UnitExists`).
        case unitExists
        /// Nothing of the image is attached (`org.freedesktop.systemd1.NoSuchUnit`).
        case noSuchUnit
        /// A bad argument: matches outside PORTABLE_PREFIXES, an unknown profile or copy mode.
        case invalidArgument
        /// The file system refused (the errno is in `cause`).
        case system
    }

    public var code: Code
    public var message: String
    public var cause: SystemCallError?

    public init(_ code: Code, _ message: String, cause: SystemCallError? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String { cause.map { "\(message): \($0)" } ?? message }
}

/// The image a portable attach is for, as the pool describes it.
public struct PortableImage: Sendable {
    /// The image name (`foo_1.0`), what `PORTABLE=` says.
    public var name: String
    /// The image's real path: what the drop-ins and the `/etc/portables` link point at.
    public var path: String
    /// Whether it is a disk image (RootImage=) rather than a tree (RootDirectory=).
    public var isDiskImage: Bool

    public init(name: String, path: String, isDiskImage: Bool) {
        self.name = name
        self.path = path
        self.isDiskImage = isDiskImage
    }

    /// The pool's image, by its real path: the drop-ins name the image itself, not a link to it
    /// in /etc/portables (252 names the link, and a reattach by name then deletes the link and
    /// loses the image).
    public init(_ image: Image) {
        self.init(name: image.name, path: ImagePool.realPath(image.path) ?? image.path,
                  isDiskImage: image.type == .raw || image.type == .block)
    }
}

/// Attaching and detaching portable service images, on the files alone, the way
/// systemd-portabled 252 lays them out (Tests/Fixtures/portable252/attach-reference.txt):
///
///     ROOT/etc/systemd/system.attached/             (ROOT/run/… when runtime)
///         foo.service                               the unit file, copied or linked
///         foo.service.d/20-portable.conf            marker line, then [Service] RootDirectory=…
///         foo.service.d/10-profile.conf             the profile's service.conf, linked or copied
///     ROOT/etc/portables/foo_1.0 → the image        (ROOT/run/portables when runtime)
///
/// Better than 252: all or nothing (a failure midway removes what this attach made, and nothing
/// that was there before is ever replaced: every file is created with O_EXCL), units in name
/// order (252 follows its hash table's order), and unit files are taken from what was read inside
/// the image rather than from host paths into it.
public enum PortableAttach {
    /// The host's unit folders under the root that a portable unit must not shadow.
    public static let hostUnitFolders = ["etc/systemd/system", "run/systemd/system", "run/systemd/transient",
                                         "usr/local/lib/systemd/system", "lib/systemd/system", "usr/lib/systemd/system",
                                         "etc/systemd/system.attached", "run/systemd/system.attached"]

    /// The attached-units folder and the portables-link folder, persistent or runtime.
    public static func folders(root: String, runtime: Bool) -> (units: String, links: String) {
        runtime ? (joinPath(root, "run/systemd/system.attached"), joinPath(root, "run/portables"))
            : (joinPath(root, "etc/systemd/system.attached"), joinPath(root, "etc/portables"))
    }

    /// The prefixes a match may use: PORTABLE_PREFIXES of the image's os-release, else the image
    /// name up to its first `_` (`foo` of `foo_1.0`).
    public static func acceptablePrefixes(osRelease: [String: String], imageName: String) -> [String] {
        if let listed = osRelease["PORTABLE_PREFIXES"] {
            let prefixes = listed.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            if !prefixes.isEmpty { return prefixes }
        }
        return [String(imageName.split(separator: "_", maxSplits: 1).first ?? Substring(imageName))]
    }

    /// Refuses matches that no acceptable prefix covers, with 252's message.
    public static func checkMatches(_ matches: [String], prefixes: [String], imagePath: String) throws(PortableError) {
        let refused = matches.filter { match in !prefixes.contains { PortableUnits.unit(match, matches: $0) } }
        guard refused.isEmpty else {
            throw PortableError(.invalidArgument, "Selected matches '\(refused.joined(separator: " "))' are not compatible with "
                + "portable service image '\(imagePath)', refusing. (Acceptable prefix matches are: \(prefixes.joined(separator: " ")))")
        }
    }

    /// The profile folder `name` under the root's profile folders, highest priority first; an
    /// unknown profile is refused with the list of those there are (252 attaches it unsandboxed).
    public static func profileFolder(_ name: String, in folders: [String]) throws(PortableError) -> String {
        if !name.isEmpty, !name.contains("/"), name != ".", name != ".." {
            for folder in folders {
                let candidate = joinPath(folder, name)
                if (try? fileStatus(candidate))?.isDirectory == true { return candidate }
            }
        }
        let known = Set(folders.flatMap { folder in
            ((try? directoryEntries(folder)) ?? []).filter { (try? fileStatus(joinPath(folder, $0)))?.isDirectory == true }
        }).sorted()
        throw PortableError(.invalidArgument, "Unknown portable profile '\(name)' (available: \(known.joined(separator: ", "))).")
    }

    /// Refuses the attach if any unit (or its drop-in folder) is already on the host.
    public static func checkConflicts(_ units: [PortableUnits.UnitFile], root: String) throws(PortableError) {
        for unit in units {
            for folder in hostUnitFolders {
                for entry in [unit.name, unit.name + ".d"] {
                    if (try? fileStatus(joinPath(root, folder, entry), followSymlinks: false)) != nil {
                        throw PortableError(.unitExists, "Unit file '\(unit.name)' exists on the host already, refusing.")
                    }
                }
            }
        }
    }

    /// The text of a unit's `20-portable.conf`: the marker, and for services the root and the
    /// portable environment; a service that comes from an extension gets the extensions
    /// overlaid (`ExtensionDirectories=` for trees, `ExtensionImages=` for disk images).
    public static func portableDropIn(for unit: PortableUnits.UnitFile, image: PortableImage,
                                      extensions: [PortableImage] = []) -> String {
        var text = "\(PortableState.markerPrefix)\(image.path)\(PortableState.markerSuffix)\n"
        guard unit.type == "service" else { return text }
        text += "\n[Service]\n"
        text += image.isDiskImage ? "RootImage=\(image.path)\n" : "RootDirectory=\(image.path)\n"
        if unit.origin != nil {
            let trees = extensions.filter { !$0.isDiskImage }.map(\.path)
            let disks = extensions.filter(\.isDiskImage).map(\.path)
            if !trees.isEmpty { text += "\(extensionDirectoriesKey)=\(trees.joined(separator: " "))\n" }
            if !disks.isEmpty { text += "\(extensionImagesKey)=\(disks.joined(separator: " "))\n" }
        }
        text += "Environment=PORTABLE=\(image.name)\n"
        text += "BindReadOnlyPaths=/etc/os-release:/run/host/os-release\n"
        text += "LogExtraFields=PORTABLE=\(image.name)\n"
        return text
    }

    static let extensionDirectoriesKey = "ExtensionDirectories"
    static let extensionImagesKey = "ExtensionImages"

    /// Attaches `units` of `image` (and of its `extensions`, by each unit's `origin`) under `root`,
    /// all or nothing: returns the changes made, in the order made; on any failure removes what
    /// it made and throws.
    public static func attach(_ image: PortableImage, extensions: [PortableImage] = [], units: [PortableUnits.UnitFile],
                              profile: String, runtime: Bool, copyMode: PortableCopyMode,
                              root: String) throws(PortableError) -> [PortableChange] {
        try checkConflicts(units, root: root)
        let (unitFolder, linkFolder) = folders(root: root, runtime: runtime)
        var made = Journal()
        do {
            if try makeFolderIfMissing(unitFolder) { made.record(.mkdir, unitFolder) }
            for unit in units.sorted(by: { $0.name < $1.name }) {
                let dropIns = joinPath(unitFolder, unit.name + ".d")
                try makeDirectory(dropIns, mode: 0o755)
                made.record(.mkdir, dropIns)
                let portable = joinPath(dropIns, "20-portable.conf")
                try writeNew(portable, Array(portableDropIn(for: unit, image: image, extensions: extensions).utf8),
                             modificationTime: nil)
                made.record(.write, portable)
                let profileFile = joinPath(profile, "\(unit.type).conf")
                if let status = try? fileStatus(profileFile), status.isRegular {
                    let target = joinPath(dropIns, "10-profile.conf")
                    if copyMode == .copy {
                        let bytes = try readAll(profileFile)
                        try writeNew(target, bytes, modificationTime: status.modificationTime)
                        made.record(.copy, target, source: profileFile)
                    } else {
                        try makeSymbolicLink(target, pointingTo: profileFile)
                        made.record(.symlink, target, source: profileFile)
                    }
                }
                let unitPath = joinPath(unitFolder, unit.name)
                let origin = unit.origin.flatMap { path in extensions.first { $0.path == path } } ?? image
                let source = joinPath(origin.path, unit.pathInImage)
                if copyMode == .symlink && !origin.isDiskImage && unit.isLinkable {
                    try makeSymbolicLink(unitPath, pointingTo: source)
                    made.record(.symlink, unitPath, source: source)
                } else {
                    try writeNew(unitPath, unit.contents, modificationTime: copyMode == .copy ? unit.modificationTime : nil)
                    made.record(.copy, unitPath, source: source)
                }
            }
            if try makeFolderIfMissing(linkFolder) { made.recordSilently(.mkdir, linkFolder) }
            for linked in [image] + extensions where !linkFolderHoldsImage(linked.path, linkFolder) {
                let link = joinPath(linkFolder, fileName(of: linked.path))
                if (try? readLink(link)) == linked.path {
                    // Left by an earlier attach of the same image (the other copy of its units, or a
                    // detach killed midway): it already says what it should.
                } else {
                    try makeSymbolicLink(link, pointingTo: linked.path)
                    made.record(.symlink, link, source: linked.path)
                }
            }
        } catch {
            made.undo()
            if error.errno == .EEXIST {
                throw PortableError(.unitExists, "\(error.subject ?? "A file") exists on the host already, refusing.", cause: error)
            }
            throw PortableError(.system, "Failed to attach image '\(image.name)'", cause: error)
        }
        return made.changes
    }

    /// Detaches every unit attached from the image `nameOrPath` in the persistent or runtime
    /// folder; `.noSuchUnit` if there is none, with 252's message.
    /// With `anyVersion`, the units of any version of the image go (a reattach to a newer one).
    public static func detach(_ nameOrPath: String, runtime: Bool, root: String,
                              anyVersion: Bool = false) throws(PortableError) -> [PortableChange] {
        let attached = PortableState.attachedUnits(of: nameOrPath, root: root, anyVersion: anyVersion)
        let units = runtime ? attached.runtime : attached.persistent
        guard !units.isEmpty else {
            throw PortableError(.noSuchUnit, "No unit files associated with '\(nameOrPath)' found attached to the system. Image not attached?")
        }
        let (unitFolder, linkFolder) = folders(root: root, runtime: runtime)
        var changes: [PortableChange] = []
        var images = Set<String>()
        func remove(_ path: String, directory: Bool = false) throws(SystemCallError) {
            do {
                if directory { try removeDirectory(path) } else { try removeFile(path) }
                changes.append(PortableChange(.unlink, path))
            } catch where error.errno == .ENOENT {
                // Gone already (a detach killed midway): nothing to undo.
            }
        }
        do {
            for unit in units.sorted() {
                let dropIns = joinPath(unitFolder, unit + ".d")
                let portable = joinPath(dropIns, "20-portable.conf")
                if let image = PortableState.markedImage(portable) { images.insert(image) }
                images.formUnion(extensionPaths(inDropIn: portable))
                try remove(joinPath(unitFolder, unit))
                for file in ["10-profile.conf", "20-portable.conf"] { try remove(joinPath(dropIns, file)) }
                do { try remove(dropIns, directory: true) } catch where error.errno == .ENOTEMPTY {
                    // An admin's own drop-in is in there: it stays, and so does its folder.
                }
            }
            for image in images.sorted() {
                let link = joinPath(linkFolder, fileName(of: image))
                if (try? readLink(link)) == image, !stillAttached(image, root: root) { try remove(link) }
            }
            if ((try? directoryEntries(unitFolder)) ?? [""]).isEmpty { try remove(unitFolder, directory: true) }
        } catch {
            throw PortableError(.system, "Failed to detach image '\(nameOrPath)'", cause: error)
        }
        return changes
    }

    // MARK: helpers

    /// The extension images a `20-portable.conf` overlays, so detach removes their links too.
    static func extensionPaths(inDropIn path: String) -> [String] {
        guard let fd = try? FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK) else { return [] }
        defer { fd.close() }
        guard let bytes = try? fd.readToEnd(limit: 65536) else { return [] }
        var paths: [String] = []
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            for key in [extensionDirectoriesKey, extensionImagesKey] where line.hasPrefix(key + "=") {
                paths += line.dropFirst(key.count + 1).split(separator: " ").map(String.init)
            }
        }
        return paths
    }

    /// Whether any unit of the image whose marker says `path` is still attached (the other of
    /// persistent and runtime): its `/etc/portables` link stays then.
    private static func stillAttached(_ path: String, root: String) -> Bool {
        let units = PortableState.attachedUnits(of: path, root: root)
        return !(units.persistent.isEmpty && units.runtime.isEmpty)
    }

    /// Whether the image lies in the link folder itself (an image in /etc/portables needs no link).
    private static func linkFolderHoldsImage(_ imagePath: String, _ linkFolder: String) -> Bool {
        imagePath.hasPrefix(linkFolder + "/") && !imagePath.dropFirst(linkFolder.count + 1).contains("/")
    }

    private static func fileName(of path: String) -> String {
        FilePath(path).lastComponent?.string ?? path
    }

    /// Makes `path` (and its parents) if it is not there; true if this call made `path` itself.
    private static func makeFolderIfMissing(_ path: String) throws(SystemCallError) -> Bool {
        if (try? fileStatus(path))?.isDirectory == true { return false }
        let parent = FilePath(path).removingLastComponent()
        if !parent.isEmpty { try makeDirectories(parent.string) }
        try makeDirectory(path, mode: 0o755)
        return true
    }

    /// Creates `path` (never replacing anything: O_EXCL, no symlink followed) with `bytes`,
    /// mode 0644, and the modification time given.
    private static func writeNew(_ path: String, _ bytes: [UInt8], modificationTime: timespec?) throws(SystemCallError) {
        let fd = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode: 0o644)
        defer { fd.close() }
        let written = bytes.withUnsafeBytes { buffer in Result { () throws(SystemCallError) in try fd.writeAll(buffer) } }
        try written.get()
        try fd.setMode(0o644)
        if let modificationTime { try fd.setTimes(access: modificationTime, modification: modificationTime) }
    }

    private static func readAll(_ path: String) throws(SystemCallError) -> [UInt8] {
        let fd = try FileDescriptor.open(path, flags: O_RDONLY | O_CLOEXEC | O_NOCTTY)
        defer { fd.close() }
        return try fd.readToEnd(limit: PortableUnits.maximumFileSize)
    }

    /// What an attach made, in order, to report it or take it back.
    private struct Journal {
        private(set) var changes: [PortableChange] = []
        /// Made but not reported (252 does not list the portables folder it makes).
        private var silent: [String] = []
        private var order: [(path: String, isDirectory: Bool)] = []

        mutating func record(_ kind: PortableChange.Kind, _ path: String, source: String = "") {
            changes.append(PortableChange(kind, path, source: source))
            order.append((path, kind == .mkdir))
        }

        mutating func recordSilently(_ kind: PortableChange.Kind, _ path: String) {
            silent.append(path)
            order.append((path, kind == .mkdir))
        }

        /// Removes everything made, newest first.
        func undo() {
            for entry in order.reversed() {
                if entry.isDirectory { try? removeDirectory(entry.path) } else { try? removeFile(entry.path) }
            }
        }
    }
}
