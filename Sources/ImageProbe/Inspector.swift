import Glibc
import InspectProtocol
import Linux

/// `berth-inspect`: the child berthd's RawLoop backend starts for each inspection of a raw image
/// (InspectorAnswer has the conversation). Everything that reads the untrusted image or changes
/// kernel state for it happens here, never in berthd: the libblkid probe (in a further child
/// without privileges, `UnprivilegedProbe`), the loop device, the mounts — in a mount namespace
/// of this process's own, so berthd's never sees them.
public enum Inspector {
    /// The child's entry: probes and mounts, answers, holds the mount until released, exits.
    public static func main(arguments: [String]) -> Never {
        if arguments == [UnprivilegedProbe.option] { UnprivilegedProbe.main() }
        // A closed answer pipe (berthd gone) is a write error here, not a silent death midway.
        signal(SIGPIPE, SIG_IGN)
        let answer = FileDescriptor(owning: InspectorAnswer.answerDescriptor)
        let image = FileDescriptor(owning: InspectorAnswer.imageDescriptor)
        let hold = FileDescriptor(owning: InspectorAnswer.holdDescriptor)
        func reply(_ a: InspectorAnswer) {
            let line = Array(a.line.utf8)
            line.withUnsafeBytes { _ = try? answer.writeAll($0) }
        }
        guard arguments.count == 2, arguments[0] == InspectorAnswer.mountBaseOption,
              let base = arguments.last, base.hasPrefix("/"), !pathClimbs(base) else {
            reply(.failed(.init(kind: .system, message: "berth-inspect: usage: \(InspectorAnswer.mountBaseOption) ABSOLUTE-FOLDER")))
            exit(2)
        }
        // Die with berthd: the hold pipe reaches end of file when berthd closes it or dies (berthd
        // keeps the only write end); berthd's pidfd covers a hold pipe someone else kept open.
        let parent = getppid()
        guard parent != 1, let parentFD = try? openProcessDescriptor(parent) else { exit(3) }
        do {
            let session = try Session(image: image, base: base)
            image.close()
            reply(.ready)
            waitForRelease(hold: hold, parent: parentFD)
            session.release()
            exit(0)
        } catch {
            reply(.failed(error))
            exit(1)
        }
    }

    /// Blocks until the hold pipe has news (end of file: berthd is done) or berthd exits.
    static func waitForRelease(hold: FileDescriptor, parent: FileDescriptor) {
        var fds = [pollfd(fd: hold.rawValue, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: parent.rawValue, events: Int16(POLLIN), revents: 0)]
        while poll(&fds, nfds_t(fds.count), -1) < 0 && errno == EINTR {}
    }

    /// The mounts of one inspection, made in a private mount namespace: a tmpfs over `base` (so
    /// nothing is made in the host's folders), the image's root at `base/root`, partition nodes
    /// the kernel did not make in `base/dev`.
    final class Session {
        private var loop: LoopDevice?
        private var mounts: [String] = []
        private let base: String

        init(image: FileDescriptor, base: String) throws(InspectorAnswer.Failure) {
            self.base = base
            let status: FileStatus
            do { status = try image.stat() } catch { throw .init(error, "cannot stat the image") }
            guard status.isRegular else { throw .init(kind: .invalidImage, message: "the image is not a regular file") }
            // Decide everything that reading the file can decide before any kernel state exists,
            // in a process without privileges: libblkid's parsers never run as root.
            let plan = try UnprivilegedProbe.run(image: image, size: UInt64(max(status.size, 0)))
            do {
                try enterPrivateMountNamespace()
            } catch {
                throw .init(error, "cannot make a private mount namespace")
            }
            do {
                try step("cannot mount a private tmpfs on \(base)") { () throws(SystemCallError) in
                    try mountFilesystem("tmpfs", at: base, type: "tmpfs", flags: [.noSetUID, .noExec], options: "mode=0700")
                }
                mounts.append(base)
                let root = joinPath(base, InspectorAnswer.rootFolder)
                try step("cannot make \(root)") { () throws(SystemCallError) in try makeDirectory(root, mode: 0o755) }
                let loop = try step("cannot attach the image to a loop device") { () throws(SystemCallError) in
                    try LoopDevice.attach(image, readOnly: true, partitionScan: plan.isPartitioned,
                                          blockSize: plan.sectorSize == 4096 ? 4096 : 0)
                }
                self.loop = loop
                for m in plan.mounts {
                    let device = try m.partition.map { p throws(InspectorAnswer.Failure) in try partitionNode(of: loop, partition: p) } ?? loop.path
                    var target = root
                    if m.isUsr {
                        target = joinPath(root, "usr")
                        if plan.mounts.count == 1 {
                            // A /usr-only image: the root is the tmpfs folder.
                            try step("cannot make \(target)") { () throws(SystemCallError) in try makeDirectory(target, mode: 0o755) }
                        } else if (try? fileStatus(target))?.isDirectory != true {
                            continue  // the root filesystem has no /usr to mount it on: inspect the root alone
                        }
                    }
                    try mount(device, at: target, kind: m.filesystem)
                }
            } catch {
                release()
                throw error
            }
        }

        /// mount(2) read-only, nosuid, nodev, noexec; a filesystem whose journal needs replaying
        /// is mounted again without replay, which a read-only device forbids.
        private func mount(_ device: String, at target: String, kind: FilesystemKind) throws(InspectorAnswer.Failure) {
            do {
                try mountFilesystem(device, at: target, type: kind.mountType, flags: .inspection)
            } catch let first {
                guard let option = kind.noRecoveryOption,
                      (try? mountFilesystem(device, at: target, type: kind.mountType, flags: .inspection, options: option)) != nil else {
                    let system = [Errno.EPERM, .EACCES, .ENOMEM].contains(first.errno)
                    throw .init(first, "cannot mount the image's \(kind.rawValue) filesystem read-only",
                                kind: system ? .system : .invalidImage)
                }
            }
            mounts.append(target)
        }

        /// The device node of partition `p` of `loop`: /dev/loopNpM as devtmpfs makes it once the
        /// kernel's partition scan has registered it. Where the kernel did not register it, it is
        /// added (BLKPG_ADD_PARTITION); where no node appears (a /dev without devtmpfs or udev),
        /// one is made in the private tmpfs.
        private func partitionNode(of loop: LoopDevice, partition p: ProbedPartition) throws(InspectorAnswer.Failure) -> String {
            let name = loop.partitionName(p.number)
            let node = "/dev/\(name)"
            var added = false
            for attempt in 0..<150 {
                if let dev = loop.partitionDeviceNumber(p.number) {
                    if let st = try? fileStatus(node), st.isBlockDevice, st.rdev == UInt64(dev) { return node }
                    if attempt >= 100 {
                        let folder = joinPath(base, "dev"), made = joinPath(base, "dev", name)
                        try step("cannot make the device node \(made)") { () throws(SystemCallError) in
                            if (try? fileStatus(folder)) == nil { try makeDirectory(folder, mode: 0o700) }
                            try makeBlockDeviceNode(made, device: dev)
                        }
                        return made
                    }
                } else if !added, attempt >= 5 {
                    // LOOP_CONFIGURE scans the table before it returns, so a partition still
                    // missing now is one the kernel cannot see (a kernel built without GPT
                    // support): tell it where the partition is.
                    do {
                        try loop.addPartition(p.number, start: p.start, length: p.length)
                    } catch where error.errno == .EBUSY {
                        // A late partition scan registered it after all: keep waiting for its node.
                    } catch {
                        throw .init(error, "cannot add partition \(p.number) to \(loop.path)")
                    }
                    added = true
                }
                usleep(10_000)
            }
            throw .init(kind: .system, message: "partition \(p.number) of \(loop.path) did not appear")
        }

        /// Unmounts (lazily where busy) and detaches the loop device. The namespace's end would
        /// do both anyway; doing it first means they are gone when berthd reaps this process.
        func release() {
            for target in mounts.reversed() { unmountOrDetach(target) }
            mounts.removeAll()
            loop?.detach()
            loop = nil
        }
    }
}

/// Runs system calls, turning a failure into the child's answer with `message`.
@discardableResult
private func step<T>(_ message: @autoclosure () -> String, _ body: () throws(SystemCallError) -> T) throws(InspectorAnswer.Failure) -> T {
    do {
        return try body()
    } catch {
        throw InspectorAnswer.Failure(error, message())
    }
}
