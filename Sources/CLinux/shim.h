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
/* RawLoop backend: zlib for qcow2's deflate clusters and the GPT header CRC32 (link "z" is set on
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
#endif
