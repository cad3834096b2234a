#ifndef BERTH_CLINUX_SHIM_H
#define BERTH_CLINUX_SHIM_H
/* No _GNU_SOURCE here: it changes glibc's structs against Swift's Glibc module. GNU-only
 * declarations this layer needs are declared below by hand. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <malloc.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>
#include <linux/magic.h>
#include <linux/blkpg.h>
#include <linux/stat.h>

/* statx(2): glibc declares it only under _GNU_SOURCE. */
extern int statx(int, const char *, int, unsigned int, struct statx *);
/* copy_file_range(2): likewise GNU-only in glibc's headers. */
extern ssize_t copy_file_range(int, loff_t *, int, loff_t *, size_t, unsigned int);
static const int BERTH_SEEK_DATA = 3;
static const int BERTH_SEEK_HOLE = 4;

/* ioctl(2) is variadic: fixed-arity forms so Swift can call it checked by the compiler. */
static inline int berth_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
static inline int berth_ioctl_int(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }

/* _IO/_IOW-style request numbers, exported as typed constants. */
static const unsigned long BERTH_FICLONE = FICLONE;
static const unsigned long BERTH_FICLONERANGE = FICLONERANGE;
static const unsigned long BERTH_FS_IOC_GETFLAGS = FS_IOC_GETFLAGS;
static const unsigned long BERTH_FS_IOC_SETFLAGS = FS_IOC_SETFLAGS;
static const unsigned int BERTH_FS_IMMUTABLE_FL = FS_IMMUTABLE_FL;
static const unsigned long BERTH_BLKGETSIZE64 = BLKGETSIZE64;
static const unsigned long BERTH_BLKRRPART = BLKRRPART;
static const unsigned long BERTH_BLKPG = BLKPG;
static const unsigned long BERTH_LOOP_CTL_GET_FREE = LOOP_CTL_GET_FREE;
static const unsigned long BERTH_LOOP_CONFIGURE = LOOP_CONFIGURE;
static const unsigned long BERTH_LOOP_SET_FD = LOOP_SET_FD;
static const unsigned long BERTH_LOOP_CLR_FD = LOOP_CLR_FD;
static const unsigned long BERTH_LOOP_SET_STATUS64 = LOOP_SET_STATUS64;
static const unsigned long BERTH_LOOP_GET_STATUS64 = LOOP_GET_STATUS64;
static const unsigned int BERTH_LO_FLAGS_READ_ONLY = LO_FLAGS_READ_ONLY;
static const unsigned int BERTH_LO_FLAGS_AUTOCLEAR = LO_FLAGS_AUTOCLEAR;
static const unsigned int BERTH_LO_FLAGS_PARTSCAN = LO_FLAGS_PARTSCAN;
/* RawLoop backend: zlib for qcow2's deflate clusters (link "z" is set on
 * the RawLoopBackend target). inflateInit2 is a macro: Swift calls inflateInit2_ through this. */
#include <zlib.h>
static inline int berth_inflate_init_raw(z_stream *strm, int window_bits) {
    return inflateInit2_(strm, window_bits, ZLIB_VERSION, (int)sizeof(z_stream));
}
static const unsigned long BERTH_BTRFS_IOC_QUOTA_CTL = BTRFS_IOC_QUOTA_CTL;
static const unsigned long BERTH_BTRFS_IOC_QGROUP_LIMIT = BTRFS_IOC_QGROUP_LIMIT;
static const unsigned long BERTH_BTRFS_IOC_QGROUP_CREATE = BTRFS_IOC_QGROUP_CREATE;
static const unsigned long BERTH_BTRFS_IOC_QGROUP_ASSIGN = BTRFS_IOC_QGROUP_ASSIGN;
static const unsigned long BERTH_BTRFS_IOC_QUOTA_RESCAN = BTRFS_IOC_QUOTA_RESCAN;
static const unsigned long BERTH_BTRFS_IOC_QUOTA_RESCAN_STATUS = BTRFS_IOC_QUOTA_RESCAN_STATUS;
static const unsigned long BERTH_BTRFS_IOC_QUOTA_RESCAN_WAIT = BTRFS_IOC_QUOTA_RESCAN_WAIT;
static const unsigned long BERTH_BTRFS_IOC_TREE_SEARCH = BTRFS_IOC_TREE_SEARCH;
static const unsigned long BERTH_BTRFS_IOC_FS_INFO = BTRFS_IOC_FS_INFO;
static const unsigned long BERTH_BTRFS_IOC_SYNC = BTRFS_IOC_SYNC;
static const unsigned long long BERTH_BTRFS_MAGIC = BTRFS_SUPER_MAGIC;
/* Btrfs quota-tree keys and flags (linux/btrfs_tree.h), as typed constants for Sources/Linux/BtrfsQuota.swift. */
static const unsigned long long BERTH_BTRFS_QUOTA_TREE_OBJECTID = BTRFS_QUOTA_TREE_OBJECTID;
static const unsigned int BERTH_BTRFS_QGROUP_STATUS_KEY = BTRFS_QGROUP_STATUS_KEY;
static const unsigned int BERTH_BTRFS_QGROUP_INFO_KEY = BTRFS_QGROUP_INFO_KEY;
static const unsigned int BERTH_BTRFS_QGROUP_LIMIT_KEY = BTRFS_QGROUP_LIMIT_KEY;
static const unsigned int BERTH_BTRFS_QGROUP_RELATION_KEY = BTRFS_QGROUP_RELATION_KEY;
static const unsigned long long BERTH_BTRFS_QGROUP_STATUS_FLAG_ON = BTRFS_QGROUP_STATUS_FLAG_ON;
static const unsigned long long BERTH_BTRFS_QGROUP_STATUS_FLAG_RESCAN = BTRFS_QGROUP_STATUS_FLAG_RESCAN;
static const unsigned long long BERTH_BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT = BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT;
static const unsigned long long BERTH_BTRFS_QGROUP_LIMIT_MAX_RFER = BTRFS_QGROUP_LIMIT_MAX_RFER;
static const unsigned long long BERTH_BTRFS_QGROUP_LIMIT_MAX_EXCL = BTRFS_QGROUP_LIMIT_MAX_EXCL;
static const unsigned long long BERTH_BTRFS_QUOTA_CTL_ENABLE = BTRFS_QUOTA_CTL_ENABLE;
/* BTRFS_IOC_SUBVOL_SYNC_WAIT (Linux 6.13) is newer than Debian 12's 6.1 headers: declared by hand. */
struct berth_btrfs_ioctl_subvol_wait { __u64 subvolid; __u32 mode; __u32 count; };
static const unsigned long BERTH_BTRFS_IOC_SUBVOL_SYNC_WAIT = _IOW(BTRFS_IOCTL_MAGIC, 65, struct berth_btrfs_ioctl_subvol_wait);
static const unsigned int BERTH_BTRFS_SUBVOL_SYNC_WAIT_FOR_ONE = 0;
static const unsigned long long BERTH_EXT4_MAGIC = EXT4_SUPER_MAGIC;

/* renameat2(2): glibc declares it only under _GNU_SOURCE. */
extern int renameat2(int, const char *, int, const char *, unsigned int);
static const unsigned int BERTH_RENAME_NOREPLACE = RENAME_NOREPLACE;
static const unsigned int BERTH_RENAME_EXCHANGE = RENAME_EXCHANGE;
static inline int berth_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}
static inline unsigned int berth_major(dev_t d) { return major(d); }
static inline unsigned int berth_minor(dev_t d) { return minor(d); }
static inline dev_t berth_makedev(unsigned int ma, unsigned int mi) { return makedev(ma, mi); }
/* open(2)/openat(2) with a mode are variadic too. */
static inline int berth_openat(int dirfd, const char *path, int flags, mode_t mode) { return openat(dirfd, path, flags, mode); }
static inline int berth_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }
/* openat2(2) (Berth: Sources/Linux/Openat2.swift): no glibc wrapper, and syscall(2) is variadic. */
#include <linux/openat2.h>
static inline int berth_openat2(int dirfd, const char *path, struct open_how *how, size_t size) {
    return (int)syscall(SYS_openat2, dirfd, path, how, size);
}
/* Machine addresses (Sources/Linux/Netlink.swift): rtnetlink's structures and constants, and
   setns(2) into a network namespace for the calling thread only (glibc declares setns only
   under _GNU_SOURCE; CLONE_NEWNET likewise). */
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_addr.h>
static inline int berth_enter_network_namespace(int fd) { return (int)syscall(SYS_setns, fd, 0x40000000 /* CLONE_NEWNET */); }
/* Open file description locks (fcntl F_OFD_SETLK/F_OFD_SETLKW), systemd's lock-file locks:
 * glibc defines the commands only under _GNU_SOURCE. */
static const int BERTH_F_OFD_GETLK = 36;
static const int BERTH_F_OFD_SETLK = 37;
static const int BERTH_F_OFD_SETLKW = 38;
static inline int berth_fcntl_lock(int fd, int cmd, struct flock *lock) { return fcntl(fd, cmd, lock); }
/* prctl(2) is variadic: one fixed-arity wrapper (transfer workers: PR_SET_PDEATHSIG). */
/* ioprio_set(2) of the calling thread (IOPRIO_WHO_PROCESS with id 0) to IOPRIO_CLASS_IDLE;
   glibc has no wrapper. */
static inline int berth_ioprio_set_idle(void) { return (int)syscall(SYS_ioprio_set, 1, 0, 3 << 13); }
static inline int berth_prctl_int(int option, unsigned long arg) { return prctl(option, arg, 0UL, 0UL, 0UL); }
/* pidfd_open(2), pidfd_send_signal(2) (no glibc wrapper before 2.36's <sys/pidfd.h>) and
   waitid(P_PIDFD): a transfer worker is waited for and signalled through its pidfd, never by a
   pid that could be recycled. The waitid form decodes siginfo's union here, as Swift cannot. */
static inline int berth_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
static inline int berth_pidfd_send_signal(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, (void *)0, 0); }
static inline int berth_waitid_pidfd(int pidfd, int options, int *code, int *status) {
    siginfo_t info;
    info.si_pid = 0;
    int r = waitid((idtype_t)3 /* P_PIDFD */, (id_t)pidfd, &info, options);
    if (r == 0) { *code = info.si_code; *status = info.si_status; if (info.si_pid == 0) *code = 0; }
    return r;
}
/* posix_spawn_file_actions_addclosefrom_np is declared only under _GNU_SOURCE (glibc 2.34+). */
#include <spawn.h>
extern int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *, int);
/* Transfer workers: GNU-only declarations and constants glibc hides without _GNU_SOURCE. */
extern int unshare(int);
extern int pipe2(int[2], int);
static const int BERTH_CLONE_FS = 0x00000200;
static const int BERTH_O_TMPFILE = __O_TMPFILE;
/* O_PATH (GNU-only in glibc): descriptors that name a file without opening it (machine roots, mount targets). */
static const int BERTH_O_PATH = __O_PATH;
/* Reaching into a machine (Sources/Linux/MachineProcess.swift). berthd is multithreaded, so a
 * child forked from it may run only async-signal-safe code until it execs: these routines are
 * that code, in C, touching nothing but raw system calls and the memory the parent prepared
 * (no malloc, no locks, no Swift runtime). setns(CLONE_NEWNS) and setns(CLONE_NEWUSER) are
 * refused to a thread that shares its fs struct or its process with others, so they can only
 * be made in a fresh single-threaded child anyway. */
#include <errno.h>
#include <signal.h>
#include <termios.h>
struct berth_machine_spec {
    int ns_fds[7];          /* /proc/LEADER/ns/{user,cgroup,ipc,uts,net,pid,mnt}, joined in this order; -1 skips */
    int cgroup_fds[4];      /* cgroup.procs files of the machine's groups: "0" is written to each; -1 skips */
    int root_fd;            /* the machine's root (O_PATH): chroot'ed into after the mount namespace; -1 keeps / */
    int tty_fd;             /* the pty slave: stdin, stdout, stderr and controlling terminal */
    int error_fd;           /* write end of a CLOEXEC pipe: (step, errno) is written there on failure */
    unsigned int uid, gid;
    unsigned long long keep_caps; /* capability bounding set to keep (the leader's): the rest is dropped */
    int last_cap;           /* /proc/sys/kernel/cap_last_cap; -1 keeps the bounding set as it is */
    int no_new_privs;       /* PR_SET_NO_NEW_PRIVS, as the leader has it */
    const char *directory;  /* working directory, inside the machine; "/" if it cannot be entered */
    const char *path;       /* the program, resolved inside the machine */
    char *const *argv;
    char *const *envp;
};
static const int BERTH_MACHINE_STEP_CGROUP = 1, BERTH_MACHINE_STEP_SETNS = 2, BERTH_MACHINE_STEP_ROOT = 3,
    BERTH_MACHINE_STEP_FORK = 4, BERTH_MACHINE_STEP_TTY = 5, BERTH_MACHINE_STEP_IDS = 6, BERTH_MACHINE_STEP_EXEC = 7,
    BERTH_MACHINE_STEP_CAPS = 8;
static inline void berth_machine_fail(int fd, int step) {
    int report[2] = { step, errno };
    if (fd >= 0) (void)!write(fd, report, sizeof report);
    _exit(127);
}
/* Every signal back to its default and unblocked: berthd's handlers are Swift code that must
 * not run in the child, and its blocked signals must not stay blocked in the shell. */
static inline void berth_machine_reset_signals(void) {
    struct sigaction dfl;
    for (unsigned i = 0; i < sizeof dfl; i++) ((char *)&dfl)[i] = 0;
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < 65; sig++) (void)sigaction(sig, &dfl, (void *)0);
    sigset_t none;
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, (void *)0);
}
/* Closes every fd of the child but 0-2 and the ones in `keep` (unsorted, -1 entries ignored). */
static inline void berth_machine_close_others(const int *keep, int count) {
    int lo = 3;
    for (;;) {
        int next = -1;
        for (int i = 0; i < count; i++) if (keep[i] >= lo && (next < 0 || keep[i] < next)) next = keep[i];
        if (next < 0) break;
        if (next > lo) (void)syscall(SYS_close_range, lo, next - 1, 0);
        lo = next + 1;
    }
    (void)syscall(SYS_close_range, lo, ~0U, 0);
}
/* Forks a child that joins the machine (groups, namespaces, root) and forks again, so that the
 * program is really in the machine's pid namespace (setns(CLONE_NEWPID) only moves children);
 * the first child waits for it and exits with its status, so berthd reaps one process whose
 * exit is the program's. The grandchild takes the pty as its session's controlling terminal,
 * drops to uid/gid and execs. Returns the first child's pid, or -errno. */
static inline int berth_machine_spawn(const struct berth_machine_spec *s) {
    pid_t child = fork();
    if (child < 0) return -errno;
    if (child > 0) return child;
    berth_machine_reset_signals();
    int keep[14], n = 0;
    for (int i = 0; i < 7; i++) keep[n++] = s->ns_fds[i];
    for (int i = 0; i < 4; i++) keep[n++] = s->cgroup_fds[i];
    keep[n++] = s->root_fd; keep[n++] = s->tty_fd; keep[n++] = s->error_fd;
    berth_machine_close_others(keep, n);
    for (int i = 0; i < 4; i++)
        if (s->cgroup_fds[i] >= 0 && write(s->cgroup_fds[i], "0\n", 2) < 0) berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_CGROUP);
    for (int i = 0; i < 7; i++)
        if (s->ns_fds[i] >= 0 && syscall(SYS_setns, s->ns_fds[i], 0) < 0) berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_SETNS);
    if (s->root_fd >= 0 && (fchdir(s->root_fd) < 0 || chroot(".") < 0)) berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_ROOT);
    pid_t shell = fork();
    if (shell < 0) berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_FORK);
    if (shell == 0) {
        if (setsid() < 0 || ioctl(s->tty_fd, TIOCSCTTY, 0) < 0) berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_TTY);
        for (int fd = 0; fd < 3; fd++) if (dup2(s->tty_fd, fd) < 0) berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_TTY);
        /* No more privilege than the machine's own processes: berthd's full capability set in
         * their pid namespace would let the machine's root ptrace the shell and use it. */
        for (int cap = 0; cap <= s->last_cap && cap < 64; cap++)
            if (!((s->keep_caps >> cap) & 1ULL) && prctl(PR_CAPBSET_DROP, (unsigned long)cap, 0UL, 0UL, 0UL) < 0)
                berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_CAPS);
        (void)prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0UL, 0UL, 0UL);
        if (s->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL) < 0) berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_CAPS);
        gid_t groups[1] = { s->gid };
        if (syscall(SYS_setgroups, 1, groups) < 0 || syscall(SYS_setresgid, s->gid, s->gid, s->gid) < 0
            || syscall(SYS_setresuid, s->uid, s->uid, s->uid) < 0) berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_IDS);
        umask(022);  /* as systemd starts a service, not berthd's own */
        if (chdir(s->directory) < 0) (void)!chdir("/");
        execve(s->path, s->argv, s->envp);
        berth_machine_fail(s->error_fd, BERTH_MACHINE_STEP_EXEC);
    }
    /* Only the grandchild reports: berthd's read of the pipe ends at its exec. */
    close(s->error_fd);
    close(s->tty_fd);
    for (int i = 0; i < 7; i++) if (s->ns_fds[i] >= 0) close(s->ns_fds[i]);
    for (int i = 0; i < 4; i++) if (s->cgroup_fds[i] >= 0) close(s->cgroup_fds[i]);
    if (s->root_fd >= 0) close(s->root_fd);
    int status = 0;
    while (waitpid(shell, &status, 0) < 0) if (errno != EINTR) _exit(127);
    if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
    _exit(128 + WTERMSIG(status));
}
/* move_mount(2) of the detached tree `tree_fd` (open_tree OPEN_TREE_CLONE) onto `target_fd` (an
 * O_PATH fd of a directory or file inside the machine), from a child that joined the mount
 * namespace `mnt_fd`: the kernel moves a mount only into the caller's own namespace. Waits for
 * the child; returns 0 or -errno. */
static inline int berth_machine_move_mount(int mnt_fd, int tree_fd, int target_fd) {
    pid_t child = fork();
    if (child < 0) return -errno;
    if (child == 0) {
        berth_machine_reset_signals();
        int keep[3] = { mnt_fd, tree_fd, target_fd };  /* -1 entries are ignored */
        berth_machine_close_others(keep, 3);
        if (mnt_fd >= 0 && syscall(SYS_setns, mnt_fd, 0) < 0) _exit(errno & 0xff);
        if (syscall(SYS_move_mount, tree_fd, "", target_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0) _exit(errno & 0xff);
        _exit(0);
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0) if (errno != EINTR) return -errno;
    if (WIFEXITED(status)) return -WEXITSTATUS(status);
    return -EIO;
}
/* open_tree(2) with OPEN_TREE_CLONE|AT_RECURSIVE (a detached copy of the mount tree at `path`)
 * and mount_setattr(2) of MOUNT_ATTR_RDONLY over a whole detached tree: raw syscalls, as
 * AT_RECURSIVE and AT_EMPTY_PATH are GNU-only in glibc's headers. */
static const unsigned int BERTH_AT_RECURSIVE = 0x8000;
static const unsigned int BERTH_AT_EMPTY_PATH = 0x1000;
static inline int berth_open_tree_clone(const char *path) {
    return (int)syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | BERTH_AT_RECURSIVE);
}
static inline int berth_mount_set_read_only(int tree_fd) {
    struct mount_attr attr = { MOUNT_ATTR_RDONLY, 0, 0, 0 };
    return (int)syscall(SYS_mount_setattr, tree_fd, "", BERTH_AT_EMPTY_PATH | BERTH_AT_RECURSIVE, &attr, sizeof attr);
}
/* The pty ioctls: unlock (TIOCSPTLCK), number (TIOCGPTN), and the peer opened through the
 * master (TIOCGPTPEER), which needs no path lookup in the machine's /dev/pts. */
static inline int berth_pty_unlock(int master) { int zero = 0; return ioctl(master, TIOCSPTLCK, &zero); }
static inline int berth_pty_number(int master, unsigned int *number) { return ioctl(master, TIOCGPTN, number); }
static inline int berth_pty_peer(int master) { return ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC); }
#endif
