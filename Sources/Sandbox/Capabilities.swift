import CSandbox
import Glibc
import Linux

/// A set of Linux capabilities (capabilities(7)), as the kernel's 64-bit masks hold them.
public struct CapabilitySet: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    private init(_ bit: Int) { rawValue = 1 << UInt64(bit) }

    /// CAP_CHOWN: change any file's owner (tar members keep their numeric owners).
    public static let chown = CapabilitySet(0)
    /// CAP_DAC_OVERRIDE: read, write and search whatever the permission bits say.
    public static let dacOverride = CapabilitySet(1)
    /// CAP_DAC_READ_SEARCH: read any file and search any directory (exports of other users' files).
    public static let dacReadSearch = CapabilitySet(2)
    /// CAP_FOWNER: modes, times, ACLs and hard links of files the process does not own.
    public static let fowner = CapabilitySet(3)
    /// CAP_FSETID: keep set-user/group-ID bits on files of other owners and groups.
    public static let fsetid = CapabilitySet(4)
    /// CAP_SETPCAP: change the bounding set and securebits (only while setting up).
    public static let setpcap = CapabilitySet(8)
    /// CAP_SYS_CHROOT: chroot(2) (the extraction thread confines itself to the image).
    public static let sysChroot = CapabilitySet(18)
    /// CAP_SYS_ADMIN: mounts, namespaces, btrfs subvolume deletion, trusted.* xattrs, and more.
    public static let sysAdmin = CapabilitySet(21)
    /// CAP_MKNOD: create device nodes (images hold /dev entries).
    public static let mknod = CapabilitySet(27)
    /// CAP_SETFCAP: set file capabilities (security.capability xattrs of an image's binaries).
    public static let setfcap = CapabilitySet(31)

    private static let names = [
        "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
        "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
        "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
        "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
        "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
        "checkpoint_restore",
    ]

    /// `cap_chown,cap_mknod`, in bit order (`none` for the empty set).
    public var description: String {
        let names = (0..<64).filter { rawValue & (1 << UInt64($0)) != 0 }
            .map { $0 < Self.names.count ? "cap_" + Self.names[$0] : "cap_\($0)" }
        return names.isEmpty ? "none" : names.joined(separator: ",")
    }
}

/// The highest capability this kernel knows (/proc/sys/kernel/cap_last_cap), read before the
/// view hides /proc/sys; 40 (CAP_CHECKPOINT_RESTORE) if it cannot be read.
func lastCapability() -> Int {
    guard let fd = try? FileDescriptor.open("/proc/sys/kernel/cap_last_cap", flags: O_RDONLY | O_CLOEXEC) else { return 40 }
    defer { fd.close() }
    let text = String(decoding: (try? fd.readToEnd(limit: 64)) ?? [], as: UTF8.self)
    return Int(text.filter(\.isNumber)) ?? 40
}

/// Leaves the calling thread (the process, as it is single-threaded) with exactly `keep`:
/// securebits so that execve gives root no capabilities back (SECBIT_NOROOT, locked), every
/// other capability dropped from the bounding set (PR_CAPBSET_DROP), no ambient ones, and
/// `keep` as the effective and permitted sets with an empty inheritable set (capset).
func restrictCapabilities(to keep: CapabilitySet, lastCapability last: Int) throws(SystemCallError) {
    try sys("prctl(PR_SET_SECUREBITS)") { berth_sandbox_prctl(PR_SET_SECUREBITS, BERTH_SANDBOX_SECUREBITS, 0) }
    for cap in 0...max(0, min(last, 63)) where keep.rawValue & (1 << UInt64(cap)) == 0 {
        try sys("prctl(PR_CAPBSET_DROP)", "capability \(cap)") { berth_sandbox_prctl(PR_CAPBSET_DROP, UInt(cap), 0) }
    }
    try sys("prctl(PR_CAP_AMBIENT_CLEAR_ALL)") {
        berth_sandbox_prctl(PR_CAP_AMBIENT, UInt(PR_CAP_AMBIENT_CLEAR_ALL), 0)
    }
    try sys("capset", keep.description) { berth_sandbox_capset(keep.rawValue, keep.rawValue, 0) }
}
