import CLinux
import Glibc

/// unshare(CLONE_NEWNS), then mount(2) of `/` with MS_REC|MS_PRIVATE: the calling process gets
/// a mount namespace of its own, and nothing it mounts or unmounts from then on propagates to
/// the namespace it came from (nor the other way). The mounts die with the namespace, that is
/// with the last process in it. unshare(2) refuses this to a process whose threads share their
/// filesystem information, so call it before starting any thread.
public func enterPrivateMountNamespace() throws(SystemCallError) {
    // CLONE_NEWNS (<sched.h>, GNU-only in glibc's headers).
    let newMountNamespace: Int32 = 0x0002_0000
    try sys("unshare(CLONE_NEWNS)") { unshare(newMountNamespace) }
    try sys("mount(MS_REC|MS_PRIVATE)", "/") { Glibc.mount(nil, "/", nil, UInt(MS_REC | MS_PRIVATE), nil) }
}
