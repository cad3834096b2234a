#ifndef BERTH_CSANDBOX_SHIM_H
#define BERTH_CSANDBOX_SHIM_H
/* The system calls a process needs to confine itself (Sources/Sandbox), and libseccomp.
 * Raw syscall(2) wrappers: unshare, pivot_root, capset, close_range and the new mount API are
 * GNU-only or missing in glibc's headers, and the macros of seccomp.h (SCMP_ACT_ERRNO, the
 * variadic seccomp_rule_add) cannot be called from Swift. Kept apart from CLinux because
 * only the sandboxed processes link libseccomp. */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <seccomp.h>

/* clone(2) namespace flags (sched.h hides them without _GNU_SOURCE). */
static const unsigned long BERTH_SANDBOX_CLONE_FS = 0x00000200UL;
static const unsigned long BERTH_SANDBOX_CLONE_NEWTIME = 0x00000080UL;
static const unsigned long BERTH_SANDBOX_CLONE_NEWNS = 0x00020000UL;
static const unsigned long BERTH_SANDBOX_CLONE_NEWCGROUP = 0x02000000UL;
static const unsigned long BERTH_SANDBOX_CLONE_NEWUTS = 0x04000000UL;
static const unsigned long BERTH_SANDBOX_CLONE_NEWIPC = 0x08000000UL;
static const unsigned long BERTH_SANDBOX_CLONE_NEWUSER = 0x10000000UL;
static const unsigned long BERTH_SANDBOX_CLONE_NEWPID = 0x20000000UL;
static const unsigned long BERTH_SANDBOX_CLONE_NEWNET = 0x40000000UL;

/* mount(2)/umount2(2) flags, and the new mount API's (linux/mount.h clashes with sys/mount.h). */
static const unsigned long BERTH_SANDBOX_MS_RDONLY = 1UL, BERTH_SANDBOX_MS_NOSUID = 2UL, BERTH_SANDBOX_MS_NODEV = 4UL,
    BERTH_SANDBOX_MS_NOEXEC = 8UL, BERTH_SANDBOX_MS_REMOUNT = 32UL, BERTH_SANDBOX_MS_BIND = 4096UL,
    BERTH_SANDBOX_MS_REC = 16384UL, BERTH_SANDBOX_MS_PRIVATE = 1UL << 18;
static const int BERTH_SANDBOX_MNT_DETACH = 2;
static const unsigned int BERTH_SANDBOX_OPEN_TREE_CLONE = 1, BERTH_SANDBOX_OPEN_TREE_CLOEXEC = 02000000,
    BERTH_SANDBOX_AT_RECURSIVE = 0x8000, BERTH_SANDBOX_AT_EMPTY_PATH = 0x1000, BERTH_SANDBOX_AT_SYMLINK_NOFOLLOW = 0x100;
static const unsigned int BERTH_SANDBOX_MOVE_MOUNT_F_EMPTY_PATH = 0x4;
static const uint64_t BERTH_SANDBOX_MOUNT_ATTR_RDONLY = 0x1, BERTH_SANDBOX_MOUNT_ATTR_NOSUID = 0x2,
    BERTH_SANDBOX_MOUNT_ATTR_NODEV = 0x4, BERTH_SANDBOX_MOUNT_ATTR_NOEXEC = 0x8;

static inline int berth_sandbox_unshare(unsigned long flags) { return (int)syscall(SYS_unshare, flags); }
static inline int berth_sandbox_mount(const char *source, const char *target, const char *type, unsigned long flags, const char *data) {
    return (int)syscall(SYS_mount, source, target, type, flags, data);
}
static inline int berth_sandbox_umount2(const char *target, int flags) { return (int)syscall(SYS_umount2, target, flags); }
static inline int berth_sandbox_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}
/* open_tree(2): with OPEN_TREE_CLONE a detached copy of the mount (tree) at dirfd/path. */
static inline int berth_sandbox_open_tree(int dirfd, const char *path, unsigned int flags) {
    return (int)syscall(SYS_open_tree, dirfd, path, flags);
}
/* move_mount(2) of the detached tree `tree_fd` onto to_dirfd/to_path. */
static inline int berth_sandbox_move_mount(int tree_fd, int to_dirfd, const char *to_path) {
    return (int)syscall(SYS_move_mount, tree_fd, "", to_dirfd, to_path, BERTH_SANDBOX_MOVE_MOUNT_F_EMPTY_PATH);
}
/* mount_setattr(2) over the whole tree of `tree_fd`: attributes set, cleared, and propagation. */
static inline int berth_sandbox_mount_setattr(int tree_fd, uint64_t set, uint64_t clear, uint64_t propagation) {
    struct { uint64_t attr_set, attr_clr, propagation, userns_fd; } attr = { set, clear, propagation, 0 };
    return (int)syscall(SYS_mount_setattr, tree_fd, "", BERTH_SANDBOX_AT_EMPTY_PATH | BERTH_SANDBOX_AT_RECURSIVE, &attr, sizeof attr);
}
static inline int berth_sandbox_close_range(unsigned int first, unsigned int last) {
    return (int)syscall(SYS_close_range, first, last, 0);
}
static inline int berth_sandbox_prctl(int option, unsigned long arg2, unsigned long arg3) {
    return prctl(option, arg2, arg3, 0UL, 0UL);
}
/* capset(2), version 3: the calling thread's effective, permitted and inheritable sets. */
static inline int berth_sandbox_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2] = {
        { (uint32_t)effective, (uint32_t)permitted, (uint32_t)inheritable },
        { (uint32_t)(effective >> 32), (uint32_t)(permitted >> 32), (uint32_t)(inheritable >> 32) },
    };
    return (int)syscall(SYS_capset, &header, data);
}
/* Securebits for a confined root: execve never grants capabilities to uid 0 (NOROOT), uid
 * changes never touch them (NO_SETUID_FIXUP), both locked. */
static const unsigned long BERTH_SANDBOX_SECUREBITS = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED
    | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED;

/* libseccomp: SCMP_ACT_ERRNO is a macro; rules with argument checks go through the array form. */
static inline uint32_t berth_seccomp_errno(int error) { return SCMP_ACT_ERRNO(error); }
static inline int berth_seccomp_rule(scmp_filter_ctx ctx, uint32_t action, int nr) {
    return seccomp_rule_add_array(ctx, action, nr, 0, (const struct scmp_arg_cmp *)0);
}
/* A rule that matches when (argument `arg` & mask) == datum. */
static inline int berth_seccomp_rule_masked(scmp_filter_ctx ctx, uint32_t action, int nr, unsigned int arg,
                                            uint64_t mask, uint64_t datum) {
    struct scmp_arg_cmp cmp = { arg, SCMP_CMP_MASKED_EQ, mask, datum };
    return seccomp_rule_add_array(ctx, action, nr, 1, &cmp);
}
/* A rule that matches when argument `arg` == value. */
static inline int berth_seccomp_rule_equal(scmp_filter_ctx ctx, uint32_t action, int nr, unsigned int arg, uint64_t value) {
    struct scmp_arg_cmp cmp = { arg, SCMP_CMP_EQ, value, 0 };
    return seccomp_rule_add_array(ctx, action, nr, 1, &cmp);
}
#endif
