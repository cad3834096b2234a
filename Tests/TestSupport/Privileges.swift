import Foundation
import Glibc

/// What the test machine allows, and why a privileged test skips where it cannot run.
public enum Privileges {
    public static var isRoot: Bool { geteuid() == 0 }

    /// Whether this is a CI run (`CI=true`, as .ci/run is started). CI runs as root on a machine
    /// with loop devices, btrfs, namespaces and a bootable systemd: there a privileged test never
    /// skips (`.enabled(if: canRun || Privileges.underCI)`), so a missing capability fails it
    /// loudly instead of silently losing a tier.
    public static var underCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// Loop devices, mount and mkfs are there (root, /dev/loop-control, mkfs.btrfs, mkfs.ext4).
    public static var canMakeLoopFilesystems: Bool { loopSkipReason == nil }

    /// Why loopback filesystems cannot be made here, or nil if they can.
    public static var loopSkipReason: String? {
        if !isRoot { return "needs root to attach loop devices and mount filesystems" }
        if !FileManager.default.fileExists(atPath: "/dev/loop-control") { return "no /dev/loop-control on this machine" }
        for tool in ["mkfs.btrfs", "mkfs.ext4", "mount", "umount"] where !commandExists(tool) {
            return "\(tool) is not installed (apt-get install btrfs-progs e2fsprogs)"
        }
        return nil
    }
}
