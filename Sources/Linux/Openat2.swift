import CLinux
import Glibc

/// How openat2(2) resolves a path (`RESOLVE_*` of `struct open_how`).
public struct PathResolution: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// RESOLVE_IN_ROOT: the directory fd acts as `/` for the whole lookup, `..` and absolute
    /// symlinks included, so a symlink inside an image can never lead outside it.
    public static let inRoot = PathResolution(rawValue: UInt64(RESOLVE_IN_ROOT))
    /// RESOLVE_BENEATH: fail (EXDEV) rather than leave the directory.
    public static let beneath = PathResolution(rawValue: UInt64(RESOLVE_BENEATH))
    /// RESOLVE_NO_MAGICLINKS: refuse /proc/…/fd style links.
    public static let noMagicLinks = PathResolution(rawValue: UInt64(RESOLVE_NO_MAGICLINKS))
    /// RESOLVE_NO_XDEV: refuse to cross mount points.
    public static let noCrossDevice = PathResolution(rawValue: UInt64(RESOLVE_NO_XDEV))
    /// RESOLVE_NO_SYMLINKS: refuse any symlink on the way.
    public static let noSymlinks = PathResolution(rawValue: UInt64(RESOLVE_NO_SYMLINKS))
}

extension FileDescriptor {
    /// openat2(2) relative to `dir` with `resolve` constraints (O_CLOEXEC added).
    /// Reading files of an image uses `.inRoot` with the image's root directory as `dir`.
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0, relativeTo dir: FileDescriptor,
                            resolve: PathResolution) throws(SystemCallError) -> FileDescriptor {
        var how = open_how()
        how.flags = UInt64(UInt32(bitPattern: flags | O_CLOEXEC))
        how.mode = (flags & O_CREAT) != 0 ? UInt64(mode) : 0
        how.resolve = resolve.rawValue
        let fd = try sys("openat2", path) { berth_openat2(dir.rawValue, path, &how, MemoryLayout<open_how>.size) }
        return FileDescriptor(owning: fd)
    }
}
