import Glibc
import Linux
import struct SystemPackage.FilePath

/// GetImageState from the files: whether units of an image are attached, persistently
/// (`ROOT/etc/systemd/system.attached`) or for this boot (`ROOT/run/systemd/system.attached`).
///
/// A unit belongs to an image when its `<unit>.d/20-portable.conf` starts with the marker attach
/// writes, `# Drop-in created for image '<path>', do not edit.`, and the file name of that path,
/// a `.raw` suffix dropped, is the image's name, as systemd-portabled 252 compares them (measured:
/// a path given to GetImageState is compared by its file name too). The state of an image that is
/// not there is computed the same way (its units may outlive it), so a name nobody knows is
/// `detached`, as in 252.
public enum PortableState {
    /// The states of GetImageState that files alone can tell.
    public enum FileState: String, Sendable {
        case detached
        case attached
        case attachedRuntime = "attached-runtime"
    }

    /// The marker line's prefix; the image path and `', do not edit.` follow.
    public static let markerPrefix = "# Drop-in created for image '"
    public static let markerSuffix = "', do not edit."

    /// The attached-units folders under `root`: persistent first, then runtime.
    public static func attachedFolders(root: String) -> [(folder: String, runtime: Bool)] {
        [(joinPath(root, "etc/systemd/system.attached"), false), (joinPath(root, "run/systemd/system.attached"), true)]
    }

    /// The units attached from the image `nameOrPath`, per folder (persistent, runtime).
    /// One attached unit: its name, the image path its marker names, and whether it is attached
    /// for this boot only.
    public struct AttachedUnit: Sendable, Equatable {
        public var unit: String
        public var image: String
        public var runtime: Bool
    }

    /// Every unit attached under `root` that carries a marker: read once, for a listing of many images.
    public static func attached(root: String) -> [AttachedUnit] {
        var result: [AttachedUnit] = []
        for (folder, runtime) in attachedFolders(root: root) {
            let names = ((try? directoryEntries(folder)) ?? []).filter { PortableUnits.isValidUnitName($0) }
            for unit in names.sorted() {
                guard let image = markedImage(joinPath(folder, unit + ".d/20-portable.conf")) else { continue }
                result.append(AttachedUnit(unit: unit, image: image, runtime: runtime))
            }
        }
        return result
    }

    /// The units of `attached` (default: what is attached under `root` now) that belong to the
    /// image `nameOrPath`, persistent and runtime. With `anyVersion`, units of every version of the
    /// image count (`foo_1.0` and `foo_2.0` both are `foo`): what a reattach to a newer version replaces.
    public static func attachedUnits(of nameOrPath: String, root: String, anyVersion: Bool = false,
                                     among attached: [AttachedUnit]? = nil) -> (persistent: [String], runtime: [String]) {
        var result: (persistent: [String], runtime: [String]) = ([], [])
        for entry in attached ?? Self.attached(root: root)
        where anyVersion ? baseName(entry.image) == baseName(nameOrPath) : belongs(entry.image, to: nameOrPath) {
            if entry.runtime { result.runtime.append(entry.unit) } else { result.persistent.append(entry.unit) }
        }
        return result
    }

    /// The state of image `nameOrPath` as the files under `root` say.
    public static func fileState(of nameOrPath: String, root: String) -> FileState {
        let units = attachedUnits(of: nameOrPath, root: root)
        if !units.persistent.isEmpty { return .attached }
        if !units.runtime.isEmpty { return .attachedRuntime }
        return .detached
    }

    /// The image path named by the marker of the drop-in at `path`, or nil if it has none.
    static func markedImage(_ path: String) -> String? {
        guard let fd = try? FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK) else { return nil }
        defer { fd.close() }
        guard let st = try? fd.stat(), st.isRegular, let bytes = try? fd.readToEnd(limit: 8192) else { return nil }
        let firstLine = String(decoding: bytes.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
        guard firstLine.hasPrefix(markerPrefix), firstLine.hasSuffix(markerSuffix) else { return nil }
        return String(firstLine.dropFirst(markerPrefix.count).dropLast(markerSuffix.count))
    }

    /// Whether the image path of a marker is the image `nameOrPath`.
    static func belongs(_ markedPath: String, to nameOrPath: String) -> Bool {
        imageName(markedPath) == imageName(nameOrPath)
    }

    /// The image name without its version: `foo` of `foo_1.0` and `/x/foo_2.0.raw`.
    public static func baseName(_ nameOrPath: String) -> Substring {
        let name = imageName(nameOrPath)
        return name.split(separator: "_", maxSplits: 1, omittingEmptySubsequences: false).first ?? name
    }

    /// The image name a path stands for: its file name without `.raw`.
    public static func imageName(_ path: String) -> Substring {
        var base = Substring(FilePath(path).lastComponent?.string ?? "")
        if base.hasSuffix(".raw") { base = base.dropLast(4) }
        return base
    }
}
