import CLinux
import Glibc

/// Flags of mount(2) that Berth uses.
public struct MountFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }

    /// MS_RDONLY.
    public static let readOnly = MountFlags(rawValue: UInt(MS_RDONLY))
    /// MS_NOSUID: set-user-ID bits of the image's files are ignored.
    public static let noSetUID = MountFlags(rawValue: UInt(MS_NOSUID))
    /// MS_NODEV: device nodes in the image cannot be opened.
    public static let noDevices = MountFlags(rawValue: UInt(MS_NODEV))
    /// MS_NOEXEC: nothing in the image can be executed.
    public static let noExec = MountFlags(rawValue: UInt(MS_NOEXEC))

    /// What an untrusted image is mounted with for inspection.
    public static let inspection: MountFlags = [.readOnly, .noSetUID, .noDevices, .noExec]
}

/// mount(2) of the filesystem on `source` (a block device) at `target`.
/// - Parameter options: the filesystem-specific data string (`norecovery`…), or nil.
public func mountFilesystem(_ source: String, at target: String, type: String, flags: MountFlags,
                            options: String? = nil) throws(SystemCallError) {
    let r: Int32
    if let options {
        r = options.withCString { data in Glibc.mount(source, target, type, flags.rawValue, data) }
    } else {
        r = Glibc.mount(source, target, type, flags.rawValue, nil)
    }
    if r != 0 { throw SystemCallError("mount", .current, subject: "\(source) on \(target) (\(type))") }
}

/// umount2(2) with UMOUNT_NOFOLLOW; `detach` adds MNT_DETACH (lazy: gone from the namespace now,
/// released when the last user lets go).
public func unmountFilesystem(_ target: String, detach: Bool = false) throws(SystemCallError) {
    let flags = Int32(UMOUNT_NOFOLLOW) | (detach ? Int32(MNT_DETACH) : 0)
    try sys("umount2", target) { umount2(target, flags) }
}

/// Unmounts `target`, lazily where it is busy. Returns false only if both failed.
@discardableResult
public func unmountOrDetach(_ target: String) -> Bool {
    do {
        try unmountFilesystem(target)
        return true
    } catch {
        if error.errno == .EINVAL || error.errno == .ENOENT { return true }  // not mounted (any more)
        return (try? unmountFilesystem(target, detach: true)) != nil
    }
}

/// One line of /proc/self/mountinfo: what is mounted where.
public struct MountInfoEntry: Sendable, Equatable {
    /// The mount source (field 10: a device, `rbd-fuse`, `tmpfs`…).
    public var source: String
    /// The mount point (field 5).
    public var target: String
    /// The filesystem type (field 9: `ext4`, `fuse`, `fuse.rbd-fuse`…).
    public var type: String
}

/// /proc/self/mountinfo in mount order, octal escapes of paths decoded.
public func currentMounts() -> [MountInfoEntry] {
    guard let fd = try? FileDescriptor.open("/proc/self/mountinfo", flags: O_RDONLY),
          let bytes = try? fd.readToEnd(limit: 16 << 20) else { return [] }
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line in
        // Optional fields run up to a lone "-"; the type and source follow it.
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count > 4, let dash = fields.firstIndex(of: "-"), dash >= 6, dash + 2 < fields.count else { return nil }
        return MountInfoEntry(source: decodeMountInfoEscapes(String(fields[dash + 2])),
                              target: decodeMountInfoEscapes(String(fields[4])), type: String(fields[dash + 1]))
    }
}

/// The mount points in /proc/self/mountinfo (field 5, octal escapes decoded).
public func currentMountPoints() -> [String] { currentMounts().map(\.target) }

/// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
private func decodeMountInfoEscapes(_ s: String) -> String {
    guard s.contains("\\") else { return s }
    var out: [UInt8] = []
    let b = Array(s.utf8)
    var i = 0
    while i < b.count {
        if b[i] == UInt8(ascii: "\\"), i + 3 < b.count,
           let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
            out.append(v)
            i += 4
        } else {
            out.append(b[i])
            i += 1
        }
    }
    return String(decoding: out, as: UTF8.self)
}
