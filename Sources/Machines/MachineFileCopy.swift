import FileTree
import Glibc
import Linux

/// machine1's CopyToMachine / CopyFromMachine: one file or tree between the host and a running
/// machine, through the machine's root as its leader sees it (`/proc/LEADER/root`).
///
/// The machine's side is resolved with openat2(2) RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS from
/// that root, so `..` and symlinks (absolute or relative, at any depth) stay inside the machine
/// whatever they say, as they would for a process in it; the final component is never followed
/// (a symlink is copied as a symlink, and one at the destination is replaced, not written
/// through). The host's side is a host path as root gives it.
///
/// The copy is made under a temp name (`.#NAME…`) in the destination's directory and renamed
/// into place only when complete, so a failed copy leaves nothing at the destination, and the
/// temp is removed. An existing destination is refused (EEXIST) unless `replace`, which swaps
/// the new copy in atomically (renameat2 RENAME_EXCHANGE) and then removes the old one.
///
/// Ownership across a user namespace (a container started with `--private-users`): copying in,
/// a file owned by host id N is given the machine's id N (its host id through the machine's
/// map); copying out, the machine's ids are mapped back. Ids with no counterpart become the
/// overflow id (65534) of the other side. Without a user namespace, ids are kept.
public enum MachineFileCopy {
    /// Which way a copy goes.
    public enum Direction: Sendable { case toMachine, fromMachine }

    /// Copies `source` to `destination` (both absolute; the machine's path is the source for
    /// `.fromMachine`, the destination for `.toMachine`) for the machine whose leader is `leader`
    /// (started at `leaderStartTime`, field 22 of /proc/PID/stat). Blocks: call it off the bus thread.
    public static func copy(leader: pid_t, leaderStartTime: UInt64, direction: Direction, source: String, destination: String,
                            replace: Bool) throws(SystemCallError) {
        let root = try FileDescriptor.open("/proc/\(leader)/root", flags: O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { root.close() }
        // The pid could have been reused between the lookup and the open: the start time tells.
        guard processStartTime(leader) == leaderStartTime else { throw SystemCallError("open", .ESRCH, subject: "/proc/\(leader)/root") }
        let users = IDMapping.of(process: leader, groups: false)
        let groups = IDMapping.of(process: leader, groups: true)
        let ownership = ownershipMap(users: users, groups: groups, direction: direction)

        let (machinePath, hostPath) = direction == .toMachine ? (destination, source) : (source, destination)
        let machineSplit = try split(machinePath)
        let hostSplit = try split(hostPath)
        let machineDirectory = try FileDescriptor.open(machineSplit.directory, flags: O_RDONLY | O_DIRECTORY, relativeTo: root,
                                                       resolve: [.inRoot, .noMagicLinks])
        defer { machineDirectory.close() }
        let hostDirectory = try FileDescriptor.open(hostSplit.directory, flags: O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { hostDirectory.close() }
        let (from, to) = direction == .toMachine ? ((hostDirectory, hostSplit.name), (machineDirectory, machineSplit.name))
                                                 : ((machineDirectory, machineSplit.name), (hostDirectory, hostSplit.name))
        try copyItem(from.1, in: from.0, to: to.1, in: to.0, replace: replace, ownership: ownership)
    }

    /// The directory and final name of an absolute path; EADDRNOTAVAIL for `/` (no name), EINVAL
    /// for a final `.` or `..`, as systemd's path_extract_filename answers.
    public static func split(_ path: String) throws(SystemCallError) -> (directory: String, name: String) {
        var parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard let name = parts.popLast() else { throw SystemCallError("path_extract_filename", Errno(Glibc.EADDRNOTAVAIL), subject: path) }
        guard name != "." && name != ".." else { throw SystemCallError("path_extract_filename", .EINVAL, subject: path) }
        return ("/" + parts.joined(separator: "/"), name)
    }

    /// Copies `name` in `sourceDirectory` to `target` in `destinationDirectory` through a temp name.
    static func copyItem(_ name: String, in sourceDirectory: FileDescriptor, to target: String, in destinationDirectory: FileDescriptor,
                         replace: Bool, ownership: (@Sendable (uid_t, gid_t) -> (uid: uid_t, gid: gid_t))?) throws(SystemCallError) {
        _ = try fileStatus(name, relativeTo: sourceDirectory, followSymlinks: false)
        if !replace, (try? fileStatus(target, relativeTo: destinationDirectory, followSymlinks: false)) != nil {
            throw SystemCallError("copy", .EEXIST, subject: target)
        }
        let temp = temporaryName(for: target)
        do {
            try TreeCopy.copyItem(name, in: sourceDirectory, to: temp, in: destinationDirectory,
                                  options: TreeCopy.Options(ownership: ownership))
            try place(temp, as: target, in: destinationDirectory, replace: replace)
        } catch {
            try? TreeRemoval.remove(temp, in: destinationDirectory)
            throw (error as? SystemCallError) ?? SystemCallError("copy", .EIO, subject: "\(error)")
        }
        // Whatever is left under the temp name now is the replaced destination (or nothing).
        try? TreeRemoval.remove(temp, in: destinationDirectory)
    }

    /// Renames the finished copy `temp` to `target`: never over an existing entry, unless
    /// `replace`, where the two are swapped at once and the old one is left under `temp`.
    private static func place(_ temp: String, as target: String, in directory: FileDescriptor, replace: Bool) throws(SystemCallError) {
        do {
            try renameNoReplace(temp, target, fromDirectory: directory, toDirectory: directory)
            return
        } catch {
            guard replace && error.errno == .EEXIST else { throw error }
        }
        try renameExchange(temp, in: directory, with: target, in: directory)
    }

    /// `.#NAME` and 16 random hex digits, as systemd names temp files (a short stand-in for
    /// NAME where the whole would not fit in a file name).
    static func temporaryName(for name: String) -> String {
        let stem = name.utf8.count <= 200 ? name : "copy"
        let random = UInt64.random(in: 0...UInt64.max)
        let hex = String(random, radix: 16)
        return ".#" + stem + String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The ownership a copy gives across the machine's user namespace; nil when there is none.
    static func ownershipMap(users: IDMapping?, groups: IDMapping?, direction: Direction)
        -> (@Sendable (uid_t, gid_t) -> (uid: uid_t, gid: gid_t))? {
        let u = users ?? IDMapping(ranges: []), g = groups ?? IDMapping(ranges: [])
        if u.isIdentity && g.isIdentity { return nil }
        let nobody = IDMapping.overflowID
        switch direction {
        case .toMachine:
            let uidNobody = u.outside(nobody) ?? nobody, gidNobody = g.outside(nobody) ?? nobody
            return { uid, gid in (u.outside(uid) ?? uidNobody, g.outside(gid) ?? gidNobody) }
        case .fromMachine:
            return { uid, gid in (u.inside(uid) ?? nobody, g.inside(gid) ?? nobody) }
        }
    }
}
