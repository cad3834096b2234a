import Foundation

/// A real filesystem on a loop device, made for one test and removed after it.
///
/// The backing file is sparse, so a 1 GiB filesystem costs only what is written. Mounting with
/// `-o loop` lets the kernel detach the loop device on unmount (autoclear), so nothing stays behind.
public final class LoopbackFilesystem: @unchecked Sendable {
    public enum Kind: String, Sendable, CaseIterable, CustomStringConvertible {
        case btrfs, ext4
        public var description: String { rawValue }
    }

    public let kind: Kind
    /// Where the filesystem is mounted.
    public let mountPoint: String
    private let workspace: TemporaryDirectory
    private let backingFile: String
    private var mounted = false

    /// Makes and mounts a `kind` filesystem of `size` bytes (btrfs needs at least 114 MiB).
    public init(_ kind: Kind, size: UInt64 = 512 << 20) throws {
        if let why = Privileges.loopSkipReason { throw TestSupportError("cannot make a loopback \(kind): \(why)") }
        self.kind = kind
        workspace = try TemporaryDirectory(prefix: "berth-\(kind)")
        backingFile = workspace.appending("backing.img")
        mountPoint = workspace.appending("mnt")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        guard FileManager.default.createFile(atPath: backingFile, contents: nil) else {
            throw TestSupportError("cannot create \(backingFile)")
        }
        try run(["truncate", "-s", String(size), backingFile], check: true)
        switch kind {
        case .btrfs: try run(["mkfs.btrfs", "-q", "-f", backingFile], check: true)
        case .ext4: try run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", backingFile], check: true)
        }
        try run(["mount", "-o", "loop", backingFile, mountPoint], check: true)
        mounted = true
    }

    /// `mountPoint/component`.
    public func appending(_ component: String) -> String { (mountPoint as NSString).appendingPathComponent(component) }

    /// Unmounts (lazily if busy), detaching the loop device, and removes the backing file.
    public func remove() {
        if mounted {
            _ = try? run(["chattr", "-R", "-i", mountPoint])
            if (try? run(["umount", mountPoint]))?.succeeded != true {
                _ = try? run(["umount", "-l", mountPoint])
            }
            mounted = false
        }
        workspace.remove()
    }

    deinit { remove() }
}
