import Glibc
import Linux
import PoolAPI
import struct SystemPackage.FilePath
import Synchronization

/// A raw image's root filesystem, mounted read-only from a read-only loop device in a private
/// folder. `close()` (or deinit) unmounts, removes the folder and detaches the loop device.
///
/// Layout of the private folder `<runtime>/inspect/XXXXXX` (mode 0700):
/// `root/` is the mount point handed out, `dev/` holds partition nodes Berth had to make itself.
final class LoopInspectionRoot: InspectionRoot {
    let root: FilePath
    private let folder: String
    private struct State: ~Copyable {
        var loop: LoopDevice?
        /// Mount points, in the order they were mounted.
        var mounts: [String] = []
        /// Folders and nodes made inside `folder`, removed in reverse order.
        var made: [String] = []
        var closed = false
    }
    private let state = Mutex(State())

    /// Makes the private folder under `runtimeDirectory/inspect`.
    init(runtimeDirectory: String) throws {
        let parent = joinPath(runtimeDirectory, "inspect")
        try io("cannot make \(parent)") { () throws(SystemCallError) in try makeDirectories(parent, mode: 0o700) }
        var template = Array(joinPath(parent, "XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw PoolError.from(SystemCallError("mkdtemp", .current, subject: parent), "cannot make an inspection folder")
        }
        folder = String(cString: made)
        root = FilePath(folder).appending("root")
        do {
            try io("cannot make \(root)") { () throws(SystemCallError) in try makeDirectory(root.string, mode: 0o755) }
        } catch {
            rmdir(folder)
            throw error
        }
        state.withLock { $0.made.append(root.string) }
    }

    /// Takes ownership of the loop device, so that `close()` detaches it.
    func adopt(_ loop: LoopDevice) {
        state.withLock { $0.loop = loop }
    }

    /// A block node for `device` inside the private folder, for a partition devtmpfs did not make.
    func makeNode(named name: String, device: dev_t) throws -> String {
        let dev = joinPath(folder, "dev")
        let exists = state.withLock { $0.made.contains(dev) }
        if !exists {
            try io("cannot make \(dev)") { () throws(SystemCallError) in try makeDirectory(dev, mode: 0o700) }
            state.withLock { $0.made.append(dev) }
        }
        let node = joinPath(dev, name)
        try io("cannot make the device node \(node)") { () throws(SystemCallError) in try makeBlockDeviceNode(node, device: device) }
        state.withLock { $0.made.append(node) }
        return node
    }

    /// Makes folder `path` (inside the private folder, on no mounted filesystem) for a mount point.
    func makeMountPoint(_ path: String) throws {
        try io("cannot make \(path)") { () throws(SystemCallError) in try makeDirectory(path, mode: 0o755) }
        state.withLock { $0.made.append(path) }
    }

    /// mount(2) of `device` at `target`, read-only, nosuid, nodev, noexec; a filesystem whose
    /// journal needs replaying is mounted again without replay, which a read-only device forbids.
    func mount(_ device: String, at target: String, kind: FilesystemKind) throws {
        do {
            try mountFilesystem(device, at: target, type: kind.mountType, flags: .inspection)
        } catch let first {
            guard let option = kind.noRecoveryOption,
                  (try? mountFilesystem(device, at: target, type: kind.mountType, flags: .inspection, options: option)) != nil else {
                let code: PoolError.Code = [.EPERM, .EACCES, .ENOMEM].contains(first.errno) ? .system : .invalidImage
                throw PoolError(code, "cannot mount the image's \(kind.rawValue) filesystem read-only", cause: first)
            }
        }
        state.withLock { $0.mounts.append(target) }
    }

    /// Unmounts (lazily where busy), removes what was made and detaches the loop device.
    /// Idempotent; also run on every error path of `openForInspection`.
    func close() {
        state.withLock { s in
            guard !s.closed else { return }
            s.closed = true
            for target in s.mounts.reversed() { unmountOrDetach(target) }
            s.mounts.removeAll()
            for path in s.made.reversed() {
                if unlink(path) != 0 { rmdir(path) }
            }
            s.made.removeAll()
            rmdir(folder)
            // After the unmount the device has no other user: LOOP_CLR_FD unbinds it at once,
            // or, if a lazy unmount still holds it, autoclear unbinds it when that lets go.
            s.loop?.detach()
            s.loop = nil
        }
    }

    deinit { close() }
}

extension RawLoopBackend {
    /// Unmounts and removes whatever inspections a previous run of the daemon left under
    /// `runtimeDirectory/inspect` (it crashed between mounting and `close()`); their loop devices
    /// are autoclear and go with the last unmount. Call once at start-up, before any inspection.
    public func cleanUpStaleInspections() {
        let parent = runtimeDirectory.appending("inspect").string
        let stale = currentMountPoints().filter { $0.hasPrefix(parent + "/") }
        // Deepest first, so that /usr comes off before the root it is mounted on.
        for target in stale.sorted(by: { $0.count > $1.count }) { unmountOrDetach(target) }
        for folder in (try? directoryEntries(parent)) ?? [] {
            let base = joinPath(parent, folder)
            for node in (try? directoryEntries(joinPath(base, "dev"))) ?? [] { unlink(joinPath(base, "dev", node)) }
            for path in [joinPath(base, "root", "usr"), joinPath(base, "root"), joinPath(base, "dev"), base] { rmdir(path) }
        }
    }

    /// The work behind `openForInspection`: find the filesystem to mount (a DPS root and/or /usr
    /// partition of a GPT disk, or a bare filesystem), attach the file read-only to a loop
    /// device, wait for the partition's device node, mount. Any failure undoes all of it.
    func inspect(path: String) throws -> any InspectionRoot {
        let file = try io("cannot open \(path)") { () throws(SystemCallError) in
            try FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW | O_NOCTTY)
        }
        defer { file.close() }
        let status = try io("cannot stat \(path)") { () throws(SystemCallError) in try file.stat() }
        guard status.isRegular else { throw PoolError(.invalidImage, "\(path) is not a regular file") }
        let size = UInt64(max(status.size, 0))
        if Qcow2Image.isQcow2(file) {
            throw PoolError(.notSupported, "\(path) is a qcow2 image; only raw images can be inspected")
        }

        // Decide everything that reading the file can decide before any kernel state exists.
        var plans: [(partition: DiskPartition?, kind: FilesystemKind, isUsr: Bool)] = []
        var sectorSize: UInt64 = 512
        func probe(_ p: DiskPartition) throws -> FilesystemKind {
            guard let kind = try FilesystemKind.probe(file, at: p.start) else {
                throw PoolError(.invalidImage, "partition \(p.index) of \(path) holds no filesystem Berth can mount (ext4, btrfs, xfs, vfat, squashfs, erofs)")
            }
            return kind
        }
        if let table = try GPTTable.read(file, size: size) {
            sectorSize = table.sectorSize
            let chosen = DiscoverablePartitions.select(from: table)
            guard chosen.root != nil || chosen.usr != nil else {
                throw PoolError(.invalidImage, "\(path) has a GPT partition table but no root or /usr partition (Discoverable Partitions Specification)")
            }
            for (p, isUsr) in [(chosen.root, false), (chosen.usr, true)] {
                guard let p else { continue }
                let partition = DiskPartition(gpt: p, in: table)
                plans.append((partition, try probe(partition), isUsr))
            }
        } else if let kind = try FilesystemKind.probe(file, at: 0) {
            plans.append((nil, kind, false))
        } else if let partition = try MBRTable.singleLinuxPartition(file, size: size) {
            plans.append((partition, try probe(partition), false))
        } else {
            throw PoolError(.invalidImage, "\(path) has neither a GPT partition table with a root partition, nor a filesystem Berth can mount, nor an MBR with one Linux partition")
        }
        let partitioned = plans.contains { $0.partition != nil }

        let inspection = try LoopInspectionRoot(runtimeDirectory: runtimeDirectory.string)
        do {
            let loop = try io("cannot attach \(path) to a loop device") { () throws(SystemCallError) in
                try LoopDevice.attach(file, readOnly: true, partitionScan: partitioned,
                                      blockSize: sectorSize == 4096 ? 4096 : 0)
            }
            inspection.adopt(loop)
            for plan in plans {
                let device: String
                if let p = plan.partition {
                    device = try partitionNode(of: loop, partition: p, inspection: inspection)
                } else {
                    device = loop.path
                }
                var target = inspection.root.string
                if plan.isUsr {
                    target = joinPath(inspection.root.string, "usr")
                    if plans.count == 1 {
                        try inspection.makeMountPoint(target)  // a /usr-only image: root is our folder
                    } else if (try? fileStatus(target))?.isDirectory != true {
                        continue  // the root filesystem has no /usr to mount it on: inspect the root alone
                    }
                }
                try inspection.mount(device, at: target, kind: plan.kind)
            }
            return inspection
        } catch {
            inspection.close()
            throw error
        }
    }

    /// The device node of partition `p` of `loop`: /dev/loopNpM as devtmpfs makes it once the
    /// kernel's partition scan has registered it. Where the kernel did not register it, Berth
    /// adds it (BLKPG_ADD_PARTITION); where no node appears (a /dev without devtmpfs or udev),
    /// Berth makes one in its private folder.
    private func partitionNode(of loop: LoopDevice, partition p: DiskPartition,
                               inspection: LoopInspectionRoot) throws -> String {
        let name = loop.partitionName(p.index)
        let node = "/dev/\(name)"
        var added = false
        for attempt in 0..<150 {
            if let dev = loop.partitionDeviceNumber(p.index) {
                if let st = try? fileStatus(node), st.isBlockDevice, st.rdev == UInt64(dev) { return node }
                if attempt >= 100 { return try inspection.makeNode(named: name, device: dev) }
            } else if !added, attempt >= 5 {
                // LOOP_CONFIGURE scans the table before it returns, so a partition still missing
                // now is one the kernel cannot see (a kernel built without GPT support, as on
                // some VM kernels): tell it where the partition is.
                do {
                    try loop.addPartition(p.index, start: p.start, length: p.length)
                } catch where error.errno == .EBUSY {
                    // A late partition scan registered it after all: keep waiting for its node.
                } catch {
                    throw PoolError.from(error, "cannot add partition \(p.index) to \(loop.path)")
                }
                added = true
            }
            usleep(10_000)
        }
        throw PoolError(.system, "partition \(p.index) of \(loop.path) did not appear")
    }
}
