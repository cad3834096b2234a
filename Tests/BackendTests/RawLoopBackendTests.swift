import Foundation
import Glibc
import Linux
import PoolAPI
import RawLoopBackend
import Testing
import TestSupport
import struct SystemPackage.FilePath

// The RawLoop backend against real files, real loop devices and real mounts. Tests that attach
// loop devices or make filesystems run as root (as in CI) and skip, saying why, elsewhere.


/// A folder with a pool folder and a runtime folder, removed after the test.
private final class RawFixture {
    let temp: TemporaryDirectory
    let pool: String
    let runtime: String
    let backend: RawLoopBackend

    init(in parent: String = NSTemporaryDirectory()) throws {
        temp = try TemporaryDirectory(prefix: "berth-raw", in: parent)
        pool = temp.appending("pool")
        runtime = temp.appending("run/berth")
        try FileManager.default.createDirectory(atPath: pool, withIntermediateDirectories: true)
        backend = RawLoopBackend(runtimeDirectory: FilePath(runtime))
    }

    func path(_ name: String) -> String { (pool as NSString).appendingPathComponent(name) }

    deinit { temp.remove() }
}

/// Writes `bytes` at `offset` of `path`, creating it.
private func write(_ bytes: [UInt8], to path: String, at offset: UInt64) throws {
    let fd = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT, mode: 0o644)
    try bytes.withUnsafeBytes { try fd.writeAll($0, at: Int64(offset)) }
}

private func allocated(_ path: String) throws -> UInt64 { try fileStatus(path).allocatedBytes }

/// What the kernel holds for one image: mounts under the runtime folder and loop devices bound
/// to the image file (by sysfs and by `losetup -a`). Loop devices of other tests and other
/// programs running at the same time are left out of the comparison on purpose.
private struct KernelState: Equatable {
    var mounts: [String]
    var loops: [String]
    var losetupMentions: Bool

    init(image: String, runtime: String) throws {
        let real = (image as NSString).resolvingSymlinksInPath
        mounts = currentMountPoints().filter { $0.hasPrefix(runtime) }
        loops = LoopDevice.boundDevices().filter { $0.backingFile == real || $0.backingFile == image }.map(\.device)
        let listing = try run(["losetup", "-a"]).stdout
        losetupMentions = listing.contains(real) || listing.contains(image)
        inspectors = inspectorChildren(runtime: runtime)
    }

    var isEmpty: Bool { mounts.isEmpty && loops.isEmpty && !losetupMentions && inspectors.isEmpty }

    /// berth-inspect children of this process for this runtime folder, running or not yet reaped.
    var inspectors: [pid_t] = []
}

/// The berth-inspect processes whose parent is `parent` (/proc/N/stat) and that mount under
/// `runtime` (their command line): tests run in parallel, each with its own runtime folder.
func inspectorChildren(of parent: pid_t = getpid(), runtime: String) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let comm = stat[stat.index(after: stat.firstIndex(of: "(") ?? stat.startIndex)..<close]
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard comm == "berth-inspect", fields.count > 1, Int32(fields[1]) == parent,
              let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return String(decoding: cmdline, as: UTF8.self).contains(runtime + "/inspect")
    }
}

/// The mount at `target` in `pid`'s mount namespace: its per-mount options, or nil if none.
func mountOptions(at target: String, in pid: String) -> [Substring]? {
    guard let mountinfo = try? String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8) else { return nil }
    guard let line = mountinfo.split(separator: "\n").last(where: { $0.split(separator: " ")[4] == target }) else { return nil }
    return line.split(separator: " ")[5].split(separator: ",")
}

/// Waits briefly for an autocleared loop device to be unbound (the kernel may finish the
/// rundown after the last close returns), then returns what is left.
private func settledState(image: String, runtime: String) throws -> KernelState {
    var state = try KernelState(image: image, runtime: runtime)
    for _ in 0..<100 where !state.isEmpty {
        usleep(20_000)
        state = try KernelState(image: image, runtime: runtime)
    }
    return state
}

/// The OS files an inspection must find.
private let osFiles: [String: String] = [
    "etc/os-release": "ID=berthtest\nNAME=\"Berth Test OS\"\nVERSION_ID=42\n",
    "etc/hostname": "berth-guest\n",
    "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "etc/machine-info": "PRETTY_HOSTNAME=\"Berth Guest\"\n",
]

/// A folder holding `osFiles`, for `mkfs.ext4 -d`.
private func makeTree(in dir: String, files: [String: String] = osFiles) throws -> String {
    let tree = (dir as NSString).appendingPathComponent("tree")
    for (path, text) in files {
        let full = (tree as NSString).appendingPathComponent(path)
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: full, atomically: false, encoding: .utf8)
    }
    try FileManager.default.createDirectory(atPath: (tree as NSString).appendingPathComponent("usr"), withIntermediateDirectories: true)
    return tree
}

/// A 64 MiB GPT disk image whose one partition (type `type`, 1 MiB in, 48 MiB long) holds an
/// ext4 filesystem with 4 KiB blocks made from `tree`. Made by sfdisk and mkfs.ext4 -E offset,
/// without a loop device.
private func makeGPTDisk(at path: String, type: String, tree: String?, sectorSize: Int = 512) throws {
    try run(["truncate", "-s", "64M", path], check: true)
    let table = "label: gpt\nstart=\((1 << 20) / sectorSize), size=\((48 << 20) / sectorSize), type=\(type)\n"
    if sectorSize == 512 {
        try run(["sfdisk", "-q", path], input: Data(table.utf8), check: true)
    } else {
        // sfdisk takes a regular file's sectors as 512 bytes: partition a loop device that has
        // the wanted logical block size instead.
        let device = try run(["losetup", "-b", String(sectorSize), "--show", "-f", path], check: true)
            .stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? run(["losetup", "-d", device]) }
        try run(["sfdisk", "-q", device], input: Data(table.utf8), check: true)
    }
    var mkfs = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "offset=1048576"]
    if let tree { mkfs += ["-d", tree] }
    try run(mkfs + [path, "12288"], check: true)
}

private let rootX86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"

@Suite("RawLoop backend")
struct RawLoopBackendTests {
    @Test func identifiesItselfAsRawWithReflinkOnly() {
        let b = RawLoopBackend(runtimeDirectory: "/run/berth")
        #expect(b.identifier == "raw")
        #expect(b.imageType == .raw)
        #expect(b.capabilities == [.reflink, .blockBacked, .enforcedReadOnly])
        #expect(b.entryName(forImage: "fedora") == "fedora.raw")
        #expect(b.canCreate(in: FilePath(NSTemporaryDirectory())))
        #expect(!b.canCreate(in: "/nonexistent-berth-dir"))
    }

    @Test func claimsOnlyRegularFilesNamedDotRaw() throws {
        let f = try RawFixture()
        try write([1], to: f.path("debian.raw"), at: 0)
        try write([1], to: f.path(".raw"), at: 0)
        try write([1], to: f.path("disk.img"), at: 0)
        try FileManager.default.createDirectory(atPath: f.path("tree.raw"), withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: f.path("link.raw"), withDestinationPath: f.path("debian.raw"))
        func claim(_ name: String) -> String? { f.backend.claim(PoolEntry(directory: FilePath(f.pool), fileName: name)) }
        #expect(claim("debian.raw") == "debian")
        #expect(claim(".raw") == nil)
        #expect(claim("disk.img") == nil)
        #expect(claim("tree.raw") == nil)
        #expect(claim("link.raw") == nil)
        #expect(claim("missing.raw") == nil)
    }

    @Test func createEmptyMakesAnEmpty0644FileAndNeverReplaces() throws {
        let f = try RawFixture()
        let path = f.path("new.raw")
        try f.backend.createEmpty(at: FilePath(path))
        let st = try fileStatus(path)
        #expect(st.isRegular)
        #expect(st.size == 0)
        #expect(st.mode & 0o7777 == 0o644)
        #expect(throws: PoolError.self) { try f.backend.createEmpty(at: FilePath(path)) }
    }

    @Test func metadataReportsAllocatedUsageAndFileSizeLimit() throws {
        let f = try RawFixture()
        let path = f.path("sparse.raw")
        try write(randomBytes(8192), to: path, at: 1 << 20)
        try run(["truncate", "-s", "32M", path], check: true)
        let image = try f.backend.image(named: "sparse", at: FilePath(path))
        let st = try fileStatus(path)
        #expect(image.name == "sparse")
        #expect(image.path == path)
        #expect(image.type == .raw)
        #expect(!image.readOnly)
        #expect(image.usage == UInt64(st.blocks) * 512)
        #expect(image.usageExclusive == image.usage)
        #expect(image.usage < 1 << 20, "a sparse file's usage is what is allocated, not its size")
        #expect(image.limit == 32 << 20)
        #expect(image.limitExclusive == 32 << 20)
        #expect(image.modificationTimestamp == st.modificationMicroseconds)
        #expect(image.creationTimestamp == birthTimeMicroseconds(path))
        if birthTimeMicroseconds(path) != 0 { #expect(image.creationTimestamp > 0) }
        #expect(throws: PoolError.self) { try f.backend.image(named: "gone", at: FilePath(f.path("gone.raw"))) }
    }

    @Test func aFileWithoutWriteBitsIsReadOnlyUntilMadeWritable() throws {
        let f = try RawFixture()
        let path = f.path("ro.raw")
        try write([7], to: path, at: 0)
        chmod(path, 0o444)
        #expect(try f.backend.image(named: "ro", at: FilePath(path)).readOnly)
        try f.backend.setReadOnly(false, at: FilePath(path))
        #expect(try !f.backend.image(named: "ro", at: FilePath(path)).readOnly)
        #expect(try fileStatus(path).mode & 0o200 != 0)
    }

    // On a fresh ext4, whose immutable flag behaves the same on every kernel (unlike tmpfs).
    @Test(.requires(.loopFilesystems))
    func readOnlyIsTheImmutableFlagWhichRootCannotWriteThrough() throws {
        let fs = try LoopbackFilesystem(.ext4, size: 64 << 20)
        defer { fs.remove() }
        let f = try RawFixture(in: fs.mountPoint)
        let path = f.path("locked.raw")
        try write([1, 2, 3], to: path, at: 0)
        try f.backend.setReadOnly(true, at: FilePath(path))
        #expect(try f.backend.image(named: "locked", at: FilePath(path)).readOnly)
        #expect(try FileDescriptor.open(path, flags: O_RDONLY).isImmutable())
        // We are root here, and still cannot open it for writing.
        do {
            _ = try FileDescriptor.open(path, flags: O_WRONLY)
            Issue.record("root opened an immutable image for writing")
        } catch {
            #expect(error.errno == .EPERM)
        }
        try f.backend.setReadOnly(false, at: FilePath(path))
        #expect(try !f.backend.image(named: "locked", at: FilePath(path)).readOnly)
        _ = try FileDescriptor.open(path, flags: O_WRONLY)
    }

    @Test(.requires(.loopFilesystems))
    func renameAndRemoveWorkOnReadOnlyImages() throws {
        let fs = try LoopbackFilesystem(.ext4, size: 64 << 20)
        defer { fs.remove() }
        let f = try RawFixture(in: fs.mountPoint)
        let a = f.path("a.raw"), b = f.path("b.raw"), c = f.path("c.raw")
        try write([1], to: a, at: 0)
        try write([2], to: c, at: 0)
        try f.backend.setReadOnly(true, at: FilePath(a))
        try f.backend.rename(from: FilePath(a), to: FilePath(b))
        #expect(!FileManager.default.fileExists(atPath: a))
        #expect(try f.backend.image(named: "b", at: FilePath(b)).readOnly, "the immutable flag survives the rename")
        #expect(try FileDescriptor.open(b, flags: O_RDONLY).isImmutable())

        // Never replaces, and a failed rename leaves the source as it was.
        let error = #expect(throws: PoolError.self) { try f.backend.rename(from: FilePath(b), to: FilePath(c)) }
        #expect(error?.code == .imageExists)
        #expect(try FileDescriptor.open(b, flags: O_RDONLY).isImmutable())
        #expect(try Data(contentsOf: URL(fileURLWithPath: c)) == Data([2]))

        try f.backend.remove(at: FilePath(b))
        #expect(!FileManager.default.fileExists(atPath: b))
        let missing = #expect(throws: PoolError.self) { try f.backend.remove(at: FilePath(b)) }
        #expect(missing?.code == .noSuchImage)
        let noSource = #expect(throws: PoolError.self) { try f.backend.rename(from: FilePath(b), to: FilePath(a)) }
        #expect(noSource?.code == .noSuchImage)
    }

    @Test func setLimitIsNotSupported() throws {
        let f = try RawFixture()
        try write([1], to: f.path("x.raw"), at: 0)
        let error = #expect(throws: PoolError.self) { try f.backend.setLimit(1 << 30, at: FilePath(f.path("x.raw"))) }
        #expect(error?.code == .notSupported)
    }

    @Test(.requires(.loopFilesystems))
    func cloneOnExt4StaysSparseAndKeepsMode() throws {
        let fs = try LoopbackFilesystem(.ext4, size: 256 << 20)
        defer { fs.remove() }
        let f = try RawFixture(in: fs.mountPoint)
        let source = f.path("src.raw"), clone = f.path("dst.raw")
        try write(randomBytes(64 << 10), to: source, at: 0)
        try write(randomBytes(100_000), to: source, at: 20 << 20)
        try write(randomBytes(4096), to: source, at: (100 << 20) - 4096)
        chmod(source, 0o640)
        chown(source, 1234, 5678)
        try run(["setfattr", "-n", "user.berth", "-v", "kept", source], check: true)
        var times = [timespec(tv_sec: 1_000_000_000, tv_nsec: 123_456_789), timespec(tv_sec: 1_100_000_000, tv_nsec: 987_654_321)]
        utimensat(AT_FDCWD, source, &times, 0)
        try f.backend.setReadOnly(true, at: FilePath(source))
        let sourceBefore = try fileStatus(source)
        try f.backend.clone(from: FilePath(source), to: FilePath(clone))
        #expect(try !f.backend.image(named: "dst", at: FilePath(clone)).readOnly, "the immutable flag is not cloned")
        let cloned = try fileStatus(clone), sourceAfter = try fileStatus(source)
        #expect(sourceAfter.accessTime == sourceBefore.accessTime, "cloning does not move the source's atime")
        #expect(cloned.accessTime == sourceBefore.accessTime)
        #expect(cloned.modificationTime == sourceBefore.modificationTime)
        #expect(cloned.uid == 1234 && cloned.gid == 5678)
        #expect(try run(["getfattr", "--only-values", "-n", "user.berth", clone]).stdout == "kept")

        #expect(try run(["cmp", source, clone]).succeeded)
        #expect(try fileStatus(clone).size == 100 << 20)
        #expect(try allocated(clone) == allocated(source), "a sparse image stays sparse")
        #expect(try allocated(clone) < 1 << 20)
        #expect(try fileStatus(clone).mode & 0o7777 == 0o640)
        #expect(throws: PoolError.self) { try f.backend.clone(from: FilePath(source), to: FilePath(clone)) }
    }

    @Test(.requires(.loopFilesystems))
    func cloneOnBtrfsSharesExtents() throws {
        let fs = try LoopbackFilesystem(.btrfs, size: 256 << 20)
        defer { fs.remove() }
        let f = try RawFixture(in: fs.mountPoint)
        let source = f.path("src.raw"), clone = f.path("dst.raw")
        try write(randomBytes(4 << 20), to: source, at: 0)
        try f.backend.clone(from: FilePath(source), to: FilePath(clone))
        #expect(try run(["cmp", source, clone]).succeeded)
        try run(["sync"], check: true)
        let extents = try run(["filefrag", "-v", clone], check: true).stdout
        #expect(extents.contains("shared"), "FICLONE shares the source's extents: \(extents)")
    }

    @Test(.requires(.loopFilesystems))
    func cloneThatRunsOutOfSpaceLeavesNothingBehind() throws {
        let small = try LoopbackFilesystem(.ext4, size: 16 << 20)
        defer { small.remove() }
        let f = try RawFixture()
        let source = f.path("big.raw")
        try write(randomBytes(40 << 20), to: source, at: 0)
        let destination = (small.mountPoint as NSString).appendingPathComponent("big.raw")
        let error = #expect(throws: PoolError.self) { try f.backend.clone(from: FilePath(source), to: FilePath(destination)) }
        #expect(error?.code == .noSpace)
        #expect(!FileManager.default.fileExists(atPath: destination))
    }

    @Test(.requires(.loopFilesystems))
    func inspectsTheDPSRootPartitionOfAGPTDiskAndLeavesNothingBehind() throws {
        let f = try RawFixture()
        let image = f.path("guest.raw")
        try makeGPTDisk(at: image, type: rootX86_64, tree: makeTree(in: f.temp.path))
        try f.backend.setReadOnly(true, at: FilePath(image))  // inspection never needs write access
        let before = try KernelState(image: image, runtime: f.runtime)
        #expect(before.isEmpty)

        let root = try f.backend.openForInspection(at: FilePath(image))
        for (path, text) in osFiles {
            let read = try String(contentsOfFile: (root.root.string as NSString).appendingPathComponent(path), encoding: .utf8)
            #expect(read == text, "\(path)")
        }
        let during = try KernelState(image: image, runtime: f.runtime)
        #expect(during.mounts.isEmpty, "nothing is mounted in this (berthd's) namespace: \(during.mounts)")
        #expect(during.loops.count == 1)
        #expect(during.inspectors.count == 1, "one berth-inspect child holds the inspection")
        // Mounted read-only, nosuid, nodev, noexec — in the child's namespace only.
        let target = f.runtime + "/inspect/root"
        #expect(mountOptions(at: target, in: "self") == nil)
        let child = try #require(during.inspectors.first)
        let options = try #require(mountOptions(at: target, in: "\(child)"), "the child's namespace has the mount")
        for flag in ["ro", "nosuid", "nodev", "noexec"] {
            #expect(options.contains(Substring(flag)), "mount options \(options)")
        }
        #expect(try readLink("/proc/\(child)/ns/mnt") != readLink("/proc/self/ns/mnt"), "the child has a mount namespace of its own")
        #expect(FileManager.default.createFile(atPath: (root.root.string as NSString).appendingPathComponent("x"), contents: nil) == false)

        root.close()
        root.close()  // idempotent
        #expect(try settledState(image: image, runtime: f.runtime).isEmpty)
        #expect(try directoryEntries((f.runtime as NSString).appendingPathComponent("inspect")).isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func startUpCleanUpRemovesInspectionMountsAnOlderDaemonLeft() throws {
        // Before berth-inspect, inspections were mounted in berthd's namespace at
        // <runtime>/inspect/XXXXXX/root, and a crash left them there.
        let f = try RawFixture()
        let folder = f.runtime + "/inspect/AbC123"
        try FileManager.default.createDirectory(atPath: folder + "/root", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: folder + "/dev", withIntermediateDirectories: true)
        try run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", folder + "/root"], check: true)
        #expect(currentMountPoints().contains(folder + "/root"))
        RawLoopBackend(runtimeDirectory: FilePath(f.runtime)).cleanUpStaleInspections()
        #expect(!currentMountPoints().contains(folder + "/root"))
        #expect(try directoryEntries((f.runtime as NSString).appendingPathComponent("inspect")).isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func aKilledInspectorTakesItsMountAndLoopDeviceAlong() throws {
        let f = try RawFixture()
        let image = f.path("killed.raw")
        try makeGPTDisk(at: image, type: rootX86_64, tree: makeTree(in: f.temp.path))
        let root = try f.backend.openForInspection(at: FilePath(image))
        let child = try #require(inspectorChildren(runtime: f.runtime).first)
        #expect(try KernelState(image: image, runtime: f.runtime).loops.count == 1)
        kill(child, SIGKILL)
        // Only berthd's open root folder still pins the mount; closing it lets everything go.
        root.close()
        #expect(try settledState(image: image, runtime: f.runtime).isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func theInspectorEndsWhenItsParentDies() throws {
        // A stand-in berthd (a shell) starts berth-inspect and is killed while the inspection is
        // held; this process keeps the hold pipe's write end, so only the parent's death (its
        // pidfd) can tell the child to go.
        let f = try RawFixture()
        let image = f.path("orphan.raw")
        try makeGPTDisk(at: image, type: rootX86_64, tree: makeTree(in: f.temp.path))
        let base = f.runtime + "/inspect"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        let file = try FileDescriptor.open(image, flags: O_RDONLY)
        var hold: [Int32] = [-1, -1], answer: [Int32] = [-1, -1]
        #expect(pipe(&hold) == 0 && pipe(&answer) == 0)
        defer { for fd in hold + answer where fd >= 0 { Glibc.close(fd) } }
        let shell = try spawnProcess("/bin/sh", arguments: ["-c", "'\(f.backend.inspectorExecutable)' --mount-base '\(base)' & wait"],
                                     descriptors: [file.rawValue, hold[0], answer[1]])
        file.close()
        Glibc.close(answer[1]); answer[1] = -1
        var line = [UInt8](repeating: 0, count: 64)
        let n = read(answer[0], &line, line.count)
        #expect(n > 0 && String(decoding: line[0..<max(n, 0)], as: UTF8.self) == "ready\n")
        let orphan = try #require(inspectorChildren(of: shell, runtime: f.runtime).first)
        #expect(try KernelState(image: image, runtime: f.runtime).loops.count == 1)
        kill(shell, SIGKILL)
        _ = try waitForExit(shell)
        var gone = false
        for _ in 0..<500 where !gone {
            gone = kill(orphan, 0) != 0 || (try? String(contentsOfFile: "/proc/\(orphan)/stat", encoding: .utf8))?.contains(") Z ") == true
            if !gone { usleep(10_000) }
        }
        #expect(gone, "berth-inspect ended with its parent")
        #expect(try settledState(image: image, runtime: f.runtime).loops.isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func inspectsABareFilesystemImage() throws {
        let f = try RawFixture()
        let image = f.path("bare.raw")
        try run(["truncate", "-s", "32M", image], check: true)
        try run(["mkfs.ext4", "-q", "-F", "-d", makeTree(in: f.temp.path), image], check: true)
        let root = try f.backend.openForInspection(at: FilePath(image))
        let osRelease = try String(contentsOfFile: (root.root.string as NSString).appendingPathComponent("etc/os-release"), encoding: .utf8)
        #expect(osRelease.contains("ID=berthtest"))
        #expect(try KernelState(image: image, runtime: f.runtime).mounts.isEmpty)
        root.close()
        #expect(try settledState(image: image, runtime: f.runtime).isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func inspectsAUsrOnlyImageUnderUsr() throws {
        let f = try RawFixture()
        let image = f.path("usronly.raw")
        let tree = try makeTree(in: f.temp.path, files: ["lib/os-release": "ID=usronly\n"])
        try makeGPTDisk(at: image, type: "8484680c-9521-48c6-9c11-b0720656f69e", tree: tree)
        let root = try f.backend.openForInspection(at: FilePath(image))
        let text = try String(contentsOfFile: (root.root.string as NSString).appendingPathComponent("usr/lib/os-release"), encoding: .utf8)
        #expect(text == "ID=usronly\n")
        root.close()
        #expect(try settledState(image: image, runtime: f.runtime).isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func aDiskWithoutARootPartitionFailsAndLeavesNothingBehind() throws {
        let f = try RawFixture()
        let image = f.path("swap.raw")
        // A swap partition only: nothing to inspect.
        try makeGPTDisk(at: image, type: "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", tree: nil)
        let error = #expect(throws: PoolError.self) { try f.backend.openForInspection(at: FilePath(image)) }
        #expect(error?.code == .invalidImage)
        #expect(try settledState(image: image, runtime: f.runtime).isEmpty)

        let empty = f.path("zeros.raw")
        try run(["truncate", "-s", "8M", empty], check: true)
        let none = #expect(throws: PoolError.self) { try f.backend.openForInspection(at: FilePath(empty)) }
        #expect(none?.code == .invalidImage)
    }

    @Test(.requires(.loopFilesystems))
    func aRootFilesystemThatWillNotMountFailsAfterAttachingAndLeavesNothingBehind() throws {
        let f = try RawFixture()
        let image = f.path("broken.raw")
        try makeGPTDisk(at: image, type: rootX86_64, tree: makeTree(in: f.temp.path))
        // Keep the ext4 magic but destroy the group descriptors (block 1 of the filesystem):
        // the probe says ext4, the loop device is attached, and mount(2) then refuses.
        try write([UInt8](repeating: 0xA5, count: 4096), to: image, at: (1 << 20) + 4096)
        let error = #expect(throws: PoolError.self) { try f.backend.openForInspection(at: FilePath(image)) }
        #expect(error?.code == .invalidImage)
        #expect((error?.cause as? SystemCallError)?.call == "mount", "it failed in mount(2), after attaching")
        #expect(try settledState(image: image, runtime: f.runtime).isEmpty)
        #expect(try directoryEntries((f.runtime as NSString).appendingPathComponent("inspect")).isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func inspectsAGPTDiskWith4096ByteSectors() throws {
        let f = try RawFixture()
        let image = f.path("4k.raw")
        try makeGPTDisk(at: image, type: rootX86_64, tree: makeTree(in: f.temp.path), sectorSize: 4096)
        let root = try f.backend.openForInspection(at: FilePath(image))
        let hostname = try String(contentsOfFile: (root.root.string as NSString).appendingPathComponent("etc/hostname"), encoding: .utf8)
        #expect(hostname == "berth-guest\n")
        root.close()
        #expect(try settledState(image: image, runtime: f.runtime).isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func inspectsAnMBRDiskWithOneLinuxPartitionOnly() throws {
        let f = try RawFixture()
        let tree = try makeTree(in: f.temp.path)
        func mbrDisk(_ name: String, _ table: String) throws -> String {
            let image = f.path(name)
            try run(["truncate", "-s", "64M", image], check: true)
            try run(["sfdisk", "-q", image], input: Data(table.utf8), check: true)
            try run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "offset=1048576", "-d", tree, image, "8192"], check: true)
            return image
        }
        let one = try mbrDisk("mbr.raw", "label: dos\nstart=2048, size=65536, type=83\n")
        let root = try f.backend.openForInspection(at: FilePath(one))
        let machineID = try String(contentsOfFile: (root.root.string as NSString).appendingPathComponent("etc/machine-id"), encoding: .utf8)
        #expect(machineID == osFiles["etc/machine-id"])
        root.close()
        #expect(try settledState(image: one, runtime: f.runtime).isEmpty)

        // Two partitions: which one is the OS is anyone's guess, so none is.
        let two = try mbrDisk("mbr2.raw", "label: dos\nstart=2048, size=65536, type=83\nstart=67584, size=8192, type=82\n")
        let error = #expect(throws: PoolError.self) { try f.backend.openForInspection(at: FilePath(two)) }
        #expect(error?.code == .invalidImage)
        #expect(try settledState(image: two, runtime: f.runtime).isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func concurrentInspectionsEachGetTheirOwnLoopDevice() async throws {
        let f = try RawFixture()
        let image = f.path("shared.raw")
        try makeGPTDisk(at: image, type: rootX86_64, tree: makeTree(in: f.temp.path))
        let backend = f.backend
        // Several LOOP_CTL_GET_FREE at once hand out the same free device: the losers must retry.
        let roots = try await withThrowingTaskGroup(of: (any InspectionRoot).self) { group in
            for _ in 0..<4 { group.addTask { try backend.openForInspection(at: FilePath(image)) } }
            var all: [any InspectionRoot] = []
            for try await root in group { all.append(root) }
            return all
        }
        #expect(Set(roots.map(\.root)).count == 4)
        for root in roots {
            #expect(FileManager.default.fileExists(atPath: (root.root.string as NSString).appendingPathComponent("etc/os-release")))
        }
        #expect(try KernelState(image: image, runtime: f.runtime).loops.count == 4)
        for root in roots { root.close() }
        #expect(try settledState(image: image, runtime: f.runtime).isEmpty)
    }

    @Test(.requires(.loopFilesystems))
    func aDamagedPrimaryGPTHeaderFallsBackToTheBackup() throws {
        let f = try RawFixture()
        let image = f.path("backup.raw")
        try makeGPTDisk(at: image, type: rootX86_64, tree: makeTree(in: f.temp.path))
        try write([0xFF, 0xFF, 0xFF, 0xFF], to: image, at: 512 + 16)  // the primary header's CRC
        let root = try f.backend.openForInspection(at: FilePath(image))
        #expect(FileManager.default.fileExists(atPath: (root.root.string as NSString).appendingPathComponent("etc/machine-id")))
        root.close()
        #expect(try settledState(image: image, runtime: f.runtime).isEmpty)
    }
}
