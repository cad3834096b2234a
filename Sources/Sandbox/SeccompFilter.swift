import CSandbox
import Glibc
import Linux

/// The seccomp deny-list of a confined process (libseccomp): every other system call is
/// allowed. A denied call fails with EPERM — never a kill — so a library that tries one gets an
/// error its caller reports, and the transfer fails with a message instead of a dead worker.
/// The filter is inherited across fork and execve (gpg, started by gpgme, runs under it too).
public enum SeccompFilter {
    /// Calls no confined process needs: changing the mount table or namespaces (the view is
    /// built before the filter goes on), reaching into other processes, the kernel's own
    /// state (modules, kexec, clocks, swap, reboot, accounting, quotas, keyrings, BPF, perf),
    /// raw I/O ports, file handles (open_by_handle_at walks past any mount view) and
    /// io_uring (whose operations this filter would not see).
    public static let deniedCalls = [
        "mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
        "fspick", "mount_setattr", "setns", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
        "pidfd_getfd", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf",
        "perf_event_open", "keyctl", "add_key", "request_key", "reboot", "swapon", "swapoff", "acct",
        "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl",
        "ioperm", "quotactl", "quotactl_fd", "lookup_dcookie", "userfaultfd", "open_by_handle_at",
        "name_to_handle_at", "syslog", "vhangup", "uselib", "nfsservctl", "io_uring_setup", "io_uring_enter",
        "io_uring_register", "fanotify_init",
    ]

    /// Namespace flags refused to unshare(2) and clone(2): unshare(CLONE_FS) alone, which the
    /// extracting thread uses to chroot itself, stays allowed.
    static let namespaceFlags: [UInt64] = [
        BERTH_SANDBOX_CLONE_NEWNS, BERTH_SANDBOX_CLONE_NEWUSER, BERTH_SANDBOX_CLONE_NEWNET, BERTH_SANDBOX_CLONE_NEWPID,
        BERTH_SANDBOX_CLONE_NEWIPC, BERTH_SANDBOX_CLONE_NEWUTS, BERTH_SANDBOX_CLONE_NEWCGROUP, BERTH_SANDBOX_CLONE_NEWTIME,
    ].map { UInt64($0) }

    /// TIOCSTI and TIOCLINUX: typing into (or reading) a terminal the process may have inherited.
    static let deniedIoctls: [UInt64] = [0x5412, 0x541C]

    /// Names of `deniedCalls` that libseccomp does not know at all (a typo would deny nothing).
    public static var unknownCalls: [String] {
        (deniedCalls + ["unshare", "clone", "clone3", "ioctl"]).filter { seccomp_syscall_resolve_name($0) == __NR_SCMP_ERROR }
    }

    /// Loads the filter on every thread of the process (SECCOMP_FILTER_FLAG_TSYNC). Needs
    /// no_new_privs (or CAP_SYS_ADMIN) set before.
    /// - Throws: `SystemCallError` naming the libseccomp call that failed.
    public static func install() throws(SystemCallError) {
        guard let context = seccomp_init(SCMP_ACT_ALLOW) else { throw SystemCallError("seccomp_init", .ENOMEM) }
        defer { seccomp_release(context) }
        func check(_ r: Int32, _ what: String, _ subject: String? = nil) throws(SystemCallError) {
            if r < 0 { throw SystemCallError(what, Errno(-r), subject: subject) }
        }
        try check(seccomp_attr_set(context, SCMP_FLTATR_CTL_TSYNC, 1), "seccomp_attr_set(TSYNC)")
        let eperm = berth_seccomp_errno(EPERM)
        for name in deniedCalls {
            let number = seccomp_syscall_resolve_name(name)
            // A name libseccomp does not know (tests check there is none); a call this
            // architecture lacks resolves to a pseudo-number that libseccomp itself ignores.
            if number == __NR_SCMP_ERROR { continue }
            try check(berth_seccomp_rule(context, eperm, number), "seccomp_rule_add", name)
        }
        for name in ["unshare", "clone"] {
            let number = seccomp_syscall_resolve_name(name)
            if number == __NR_SCMP_ERROR { continue }
            for flag in namespaceFlags {
                try check(berth_seccomp_rule_masked(context, eperm, number, 0, flag, flag), "seccomp_rule_add", name)
            }
        }
        // clone3 passes its flags in memory the filter cannot read: ENOSYS makes glibc fall back
        // to clone, whose flags it can.
        let clone3 = seccomp_syscall_resolve_name("clone3")
        if clone3 != __NR_SCMP_ERROR {
            try check(berth_seccomp_rule(context, berth_seccomp_errno(ENOSYS), clone3), "seccomp_rule_add", "clone3")
        }
        let ioctl = seccomp_syscall_resolve_name("ioctl")
        for request in deniedIoctls {
            try check(berth_seccomp_rule_equal(context, eperm, ioctl, 1, request), "seccomp_rule_add", "ioctl")
        }
        try check(seccomp_load(context), "seccomp_load")
    }
}
