import Linux
import PoolAPI

import struct SystemPackage.FilePath

/// An RBD image's root filesystem for inspection (GetImageOSRelease and friends): the image
/// mounted read-only as a file by rbd-fuse, then inspected by whatever a file-based inspector
/// does with a raw disk (RawLoopBackend's read-only loop device + read-only mount).
/// `close()` undoes both, the loop side first: rbd-fuse must not go while a loop device reads it.
public final class RbdInspectionRoot: InspectionRoot {
    public let root: FilePath
    private let inner: any InspectionRoot
    private let mount: RbdFuseMount

    init(inner: any InspectionRoot, mount: RbdFuseMount) {
        self.inner = inner
        self.mount = mount
        root = inner.root
    }

    public func close() {
        inner.close()
        mount.close()
    }

    deinit { close() }
}

extension RbdFuse {
    /// Opens `image` for inspection: mounts it read-only with rbd-fuse and hands the image file
    /// to `inspectFile` (e.g. `RawLoopBackend.openForInspection(at:)`). Nothing stays mounted if
    /// this throws.
    public static func openForInspection(image: String, client: Client, runtimeDirectory: String,
                                         inspectFile: (String) throws -> any InspectionRoot) throws -> any InspectionRoot {
        let mount = try mount(image: image, client: client, runtimeDirectory: runtimeDirectory)
        do {
            return RbdInspectionRoot(inner: try inspectFile(mount.imageFile), mount: mount)
        } catch {
            mount.close()
            throw error
        }
    }
}
