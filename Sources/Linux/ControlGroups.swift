import Glibc

/// The control-group hierarchies a process can be tracked by, as this host mounts them: the
/// unified (v2) one at /sys/fs/cgroup, or systemd's hybrid layout (v2 at /sys/fs/cgroup/unified
/// beside the v1 `name=systemd` one at /sys/fs/cgroup/systemd). berthd makes a machine's group in
/// each, so that both its own bookkeeping and anything that reads `name=systemd` find the machine.
public struct ControlGroups: Sendable {
    /// One mounted hierarchy: its mount point and whether it is cgroup v2.
    public struct Hierarchy: Sendable, Equatable {
        public var mount: String
        public var isUnified: Bool
    }

    public let hierarchies: [Hierarchy]

    /// The hierarchies mounted under `base` (default /sys/fs/cgroup).
    public init(base: String = "/sys/fs/cgroup") {
        if access(base + "/cgroup.controllers", F_OK) == 0 {
            hierarchies = [Hierarchy(mount: base, isUnified: true)]
            return
        }
        var found: [Hierarchy] = []
        if access(base + "/unified/cgroup.controllers", F_OK) == 0 { found.append(Hierarchy(mount: base + "/unified", isUnified: true)) }
        if access(base + "/systemd/cgroup.procs", F_OK) == 0 { found.append(Hierarchy(mount: base + "/systemd", isUnified: false)) }
        hierarchies = found
    }

    /// Makes the group `path` (relative, `machine.slice/machine-x.scope`) in every hierarchy and
    /// moves `pid` into it.
    public func create(_ path: String, moving pid: pid_t) throws(SystemCallError) {
        guard !hierarchies.isEmpty else { throw SystemCallError("cgroup", .ENOSYS, subject: "no control-group hierarchy mounted") }
        for h in hierarchies {
            let dir = h.mount + "/" + path
            try makeDirectories(dir)
            try writeSmall(dir + "/cgroup.procs", "\(pid)\n")
        }
    }

    /// The pids in the group `path` and the groups below it (from the first hierarchy).
    public func processes(_ path: String) -> [pid_t] {
        guard let h = hierarchies.first else { return [] }
        var result: [pid_t] = []
        func collect(_ dir: String) {
            if let text = readSmall(dir + "/cgroup.procs") {
                result += text.split(separator: "\n").compactMap { pid_t($0) }
            }
            for entry in (try? directoryEntries(dir)) ?? [] {
                if (try? fileStatus(dir + "/" + entry, followSymlinks: false))?.isDirectory == true { collect(dir + "/" + entry) }
            }
        }
        collect(h.mount + "/" + path)
        return result
    }

    /// Sends `signal` to every process of the group `path`.
    public func signal(_ path: String, _ signal: Int32) {
        for pid in processes(path) { _ = kill(pid, signal) }
    }

    /// Removes the group `path` (and empty groups below it) from every hierarchy; a group that
    /// still has processes stays (EBUSY).
    public func remove(_ path: String) {
        for h in hierarchies { removeTree(h.mount + "/" + path) }
    }

    private func removeTree(_ dir: String) {
        for entry in (try? directoryEntries(dir)) ?? [] where (try? fileStatus(dir + "/" + entry, followSymlinks: false))?.isDirectory == true {
            removeTree(dir + "/" + entry)
        }
        _ = rmdir(dir)
    }

    /// The group of `pid` in the first hierarchy, from /proc/PID/cgroup (`/machine.slice/…`).
    public func group(of pid: pid_t) -> String? {
        guard let h = hierarchies.first, let text = readSmall("/proc/\(pid)/cgroup") else { return nil }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            if h.isUnified ? parts[0] == "0" : parts[1] == "name=systemd" { return String(parts[2]) }
        }
        return nil
    }
}

/// The start time of process `pid` (field 22 of /proc/PID/stat, clock ticks since boot), nil if
/// there is no such process: with the pid it names one process, where a pid alone may be reused.
public func processStartTime(_ pid: pid_t) -> UInt64? {
    guard let text = readSmall("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // After the command: field 3 (state) is fields[0], so field 22 is fields[19].
    guard fields.count > 19 else { return nil }
    return UInt64(fields[19])
}

/// A small file's text (/proc, /sys), nil if it cannot be read.
public func readSmall(_ path: String) -> String? {
    guard let fd = try? FileDescriptor.open(path, flags: O_RDONLY | O_CLOEXEC | O_NOCTTY) else { return nil }
    defer { fd.close() }
    guard let bytes = try? fd.readToEnd(limit: 1 << 20) else { return nil }
    return String(decoding: bytes, as: UTF8.self)
}

/// Writes `text` to an existing file in one write (a /sys or /proc control file).
public func writeSmall(_ path: String, _ text: String) throws(SystemCallError) {
    let fd = try FileDescriptor.open(path, flags: O_WRONLY | O_CLOEXEC | O_NOCTTY)
    defer { fd.close() }
    let bytes = Array(text.utf8)
    let result = bytes.withUnsafeBytes { buffer in Result { () throws(SystemCallError) in try fd.writeAll(buffer) } }
    try result.get()
}
