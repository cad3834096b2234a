import Glibc
import Testing
import TestSupport
@testable import Linux

/// The mount wrappers: mount(2) with Berth's flags, umount2(2) plain and lazy, the mountinfo
/// reader, and the new mount API (open_tree clone made read-only, move_mount). Each test
/// mounts a tmpfs on a temporary folder of its own and leaves nothing mounted.
@Suite(.requires(.root))
struct MountTests {
    private func write(_ path: String) throws(SystemCallError) {
        let fd = try FileDescriptor.open(path, flags: O_CREAT | O_WRONLY, mode: 0o755)
        fd.close()
    }

    @Test func inspectionFlagsMakeAReadOnlyNoSuidNoDevNoExecMount() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let target = dir.appending("mnt")
        try makeDirectory(target)
        try mountFilesystem("tmpfs", at: target, type: "tmpfs", flags: .inspection, options: "size=1m,mode=0755")
        defer { _ = unmountOrDetach(target) }
        #expect(currentMountPoints().contains(target))
        let error = #expect(throws: SystemCallError.self) { try write(target + "/file") }
        #expect(error?.errno == .EROFS)
        var vfs = statvfs()
        #expect(statvfs(target, &vfs) == 0)
        // ST_RDONLY | ST_NOSUID | ST_NODEV | ST_NOEXEC (the last two GNU-only in glibc's headers).
        let wanted: UInt = 1 | 2 | 4 | 8
        #expect(vfs.f_flag & wanted == wanted)
        try unmountFilesystem(target)
        #expect(!currentMountPoints().contains(target))
    }

    /// currentMounts: source and type come after mountinfo's optional fields and their "-";
    /// a space in the mount point (written `\040`) is decoded.
    @Test func mountInfoEntriesNameSourceTargetAndType() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let target = dir.appending("with space")
        try makeDirectory(target)
        try mountFilesystem("berth-src", at: target, type: "tmpfs", flags: .inspection, options: "size=1m")
        defer { _ = unmountOrDetach(target) }
        let entry = currentMounts().last { $0.target == target }
        #expect(entry == MountInfoEntry(source: "berth-src", target: target, type: "tmpfs"), "\(String(describing: entry))")
    }

    @Test func mountFailureNamesTheCallAndWhatWasMounted() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let error = #expect(throws: SystemCallError.self) {
            try mountFilesystem("/nonexistent-device", at: dir.appending("missing"), type: "ext4", flags: .readOnly)
        }
        #expect(error?.call == "mount")
        #expect(error?.errno == .ENOENT)
        #expect(error?.subject?.contains("/nonexistent-device") == true)
    }

    @Test func aBusyMountIsDetachedLazilyAndANotMountedOneIsFine() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let target = dir.appending("mnt")
        try makeDirectory(target)
        try mountFilesystem("tmpfs", at: target, type: "tmpfs", flags: [], options: "size=1m")
        try write(target + "/held")
        let held = try FileDescriptor.open(target + "/held", flags: O_RDONLY)
        let error = #expect(throws: SystemCallError.self) { try unmountFilesystem(target) }
        #expect(error?.errno == .EBUSY)
        #expect(unmountOrDetach(target))
        #expect(!currentMountPoints().contains(target))
        #expect(try held.stat().isRegular, "the lazily detached filesystem lives on for its last user")
        held.close()
        #expect(unmountOrDetach(target), "not mounted any more: nothing to do")
    }

    @Test func aClonedTreeMovedElsewhereIsReadOnlyThere() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let source = dir.appending("source"), target = dir.appending("target")
        try makeDirectory(source)
        try makeDirectory(target)
        try mountFilesystem("tmpfs", at: source, type: "tmpfs", flags: [], options: "size=1m")
        defer { _ = unmountOrDetach(source) }
        try write(source + "/seen")
        let tree = try cloneMountTree(source, readOnly: true)
        defer { tree.close() }
        let onto = try FileDescriptor.open(target, flags: FileDescriptor.pathOnly | O_DIRECTORY)
        defer { onto.close() }
        try moveMount(tree, onto: onto, inNamespace: nil)
        defer { _ = unmountOrDetach(target) }
        #expect(access(target + "/seen", F_OK) == 0)
        let error = #expect(throws: SystemCallError.self) { try write(target + "/new") }
        #expect(error?.errno == .EROFS)
        // The source mount itself stays writable.
        try write(source + "/new")
    }
}
