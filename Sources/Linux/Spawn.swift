import CLinux
import Glibc

/// posix_spawn(3) of `executable` with `arguments` (argv[1…]); `descriptors[i]` becomes fd
/// `3 + i` in the child, stdin is /dev/null, stdout/stderr are inherited, every other fd is
/// closed (posix_spawn_file_actions_addclosefrom_np) and all signals start at their defaults
/// with an empty mask. Returns the child's pid; reap it with `waitForExit`.
public func spawnProcess(_ executable: String, arguments: [String], descriptors: [Int32]) throws(SystemCallError) -> pid_t {
    // Sources are first moved above any target number, so mapping 4→3 and 3→4 cannot clobber.
    var lifted: [Int32] = []
    defer { for fd in lifted { _ = Glibc.close(fd) } }
    for fd in descriptors {
        lifted.append(try sys("fcntl(F_DUPFD_CLOEXEC)") { berth_fcntl_int(fd, F_DUPFD_CLOEXEC, 64) })
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    for (i, fd) in lifted.enumerated() {
        posix_spawn_file_actions_adddup2(&actions, fd, Int32(3 + i))
    }
    posix_spawn_file_actions_addclosefrom_np(&actions, Int32(3 + lifted.count))

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var empty = sigset_t()
    sigemptyset(&empty)
    var all = sigset_t()
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attributes, &empty)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    var argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let r = argv.withUnsafeMutableBufferPointer { buffer -> Int32 in
        guard let base = buffer.baseAddress else { return EINVAL }
        return posix_spawn(&pid, executable, &actions, &attributes, base, environ)
    }
    if r != 0 { throw SystemCallError("posix_spawn", Errno(r), subject: executable) }
    return pid
}

/// How a child process ended (waitpid(2)'s status, decoded).
public enum ProcessExit: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): "exited with status \(code)"
        case .signaled(let signal): "killed by signal \(signal) (\(String(cString: strsignal(signal))))"
        }
    }
}

/// waitpid(2) for `pid`, blocking, EINTR retried.
public func waitForExit(_ pid: pid_t) throws(SystemCallError) -> ProcessExit {
    var status: Int32 = 0
    _ = try sys("waitpid", "\(pid)") { waitpid(pid, &status, 0) }
    // WIFEXITED/WTERMSIG are macros Swift does not import.
    let signal = status & 0x7f
    if signal == 0 { return .exited((status >> 8) & 0xff) }
    return .signaled(signal)
}

/// waitpid(2) with WNOHANG: nil while `pid` still runs.
public func pollExit(_ pid: pid_t) throws(SystemCallError) -> ProcessExit? {
    var status: Int32 = 0
    let r = try sys("waitpid", "\(pid)") { waitpid(pid, &status, WNOHANG) }
    if r == 0 { return nil }
    let signal = status & 0x7f
    if signal == 0 { return .exited((status >> 8) & 0xff) }
    return .signaled(signal)
}

/// prctl(PR_SET_PDEATHSIG, `signal`): this process gets `signal` when the thread that spawned
/// it exits. Call first thing in a worker, then compare getppid() with the expected parent to
/// close the race of a parent that died before the call.
public func setParentDeathSignal(_ signal: Int32) throws(SystemCallError) {
    _ = try sys("prctl(PR_SET_PDEATHSIG)") { berth_prctl_int(PR_SET_PDEATHSIG, UInt(signal)) }
}

/// pidfd_open(2) of `pid`: a descriptor that becomes readable when the process exits, for
/// poll(2) beside other descriptors, and that signals and waits for exactly that process.
public func openProcessDescriptor(_ pid: pid_t) throws(SystemCallError) -> FileDescriptor {
    FileDescriptor(owning: try sys("pidfd_open", "\(pid)") { berth_pidfd_open(pid) })
}

/// pidfd_send_signal(2): `signal` to the process of `pidfd` (ESRCH once it has exited).
public func sendSignal(_ signal: Int32, toProcess pidfd: FileDescriptor) throws(SystemCallError) {
    _ = try sys("pidfd_send_signal") { berth_pidfd_send_signal(pidfd.rawValue, signal) }
}

/// waitid(P_PIDFD, `pidfd`, WEXITED | WNOHANG): reaps the process of `pidfd`; nil while it
/// runs. Throws (ECHILD…) if it cannot be waited for, e.g. because someone else reaped it.
public func pollExit(processDescriptor pidfd: FileDescriptor) throws(SystemCallError) -> ProcessExit? {
    var code: Int32 = 0, status: Int32 = 0
    _ = try sys("waitid(P_PIDFD)") { berth_waitid_pidfd(pidfd.rawValue, WEXITED | WNOHANG, &code, &status) }
    switch code {
    case 0: return nil
    case 1: return .exited(status)  // CLD_EXITED
    default: return .signaled(status)  // CLD_KILLED, CLD_DUMPED
    }
}
