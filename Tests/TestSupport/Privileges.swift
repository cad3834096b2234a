import Foundation
import Glibc
import Testing

/// What the test machine allows, and why a privileged test skips where it cannot run.
///
/// A test or suite that needs root, loop devices, btrfs, a tool, the reference daemons, a booted
/// systemd or a private bus says so with one trait, `.requires(…)`:
///
///     @Suite(.serialized, .requires(.loopFilesystems, .commands("qemu-img")))
///
/// Outside CI a missing requirement skips the test, saying which one. Under CI (`CI=true`, which
/// runs as root on a machine that has everything) it FAILS the test, naming what is missing: a CI
/// run never loses a tier silently. Do not gate tests with `.enabled(if:)` or an early `return`.
public enum Privileges {
    public static var isRoot: Bool { geteuid() == 0 }

    /// Whether this is a CI run (`CI=true`, as .ci/run is started). CI runs as root on a machine
    /// with loop devices, btrfs, namespaces and a bootable systemd: there a privileged test never
    /// skips (see `Trait.requires`), so a missing capability fails it loudly.
    public static var underCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// Loop devices, mount and mkfs are there (root, /dev/loop-control, mkfs.btrfs, mkfs.ext4).
    public static var canMakeLoopFilesystems: Bool { loopSkipReason == nil }

    /// Why loopback filesystems cannot be made here, or nil if they can.
    public static var loopSkipReason: String? { Requirement.loopFilesystems.missing() }

    /// Why `requirements` cannot all be met here (the first one missing), or nil if they can.
    public static func missing(_ requirements: [Requirement]) -> String? {
        for r in requirements { if let why = r.missing() { return why } }
        return nil
    }
}

/// One thing a privileged test needs, and how to tell whether this machine has it.
public struct Requirement: Sendable, CustomStringConvertible {
    /// What is needed, for the skip comment ("root", "mkfs.btrfs").
    public let description: String
    /// Why it is missing here (naming the tool or condition), or nil if it is there. Evaluated
    /// when the test is about to run, so it sees the test process's PATH at that moment.
    public let missing: @Sendable () -> String?

    /// A requirement named `description`, missing for the reason `missing` returns.
    public init(_ description: String, missing: @escaping @Sendable () -> String?) {
        self.description = description
        self.missing = missing
    }

    /// The effective user is root.
    public static let root = Requirement("root") {
        Privileges.isRoot ? nil : "needs root (euid is \(geteuid()))"
    }

    /// Every command in `names` is an executable in PATH.
    public static func commands(_ names: String...) -> Requirement {
        Requirement(names.joined(separator: ", ")) {
            names.first { !commandExists($0) }.map { "\($0) is not installed or not in PATH (scripts/install-packages.sh)" }
        }
    }

    /// Loopback filesystems can be made: root, /dev/loop-control, mkfs.btrfs, mkfs.ext4, mount.
    public static let loopFilesystems = Requirement("root, loop devices, mkfs.btrfs and mkfs.ext4") {
        if !Privileges.isRoot { return "needs root to attach loop devices and mount filesystems" }
        if !FileManager.default.fileExists(atPath: "/dev/loop-control") { return "no /dev/loop-control on this machine" }
        for tool in ["mkfs.btrfs", "mkfs.ext4", "mount", "umount"] where !commandExists(tool) {
            return "\(tool) is not installed or not in PATH (apt-get install btrfs-progs e2fsprogs)"
        }
        return nil
    }

    /// A private bus can be started and spoken to: dbus-daemon, busctl and gdbus.
    public static let privateBus = Requirement("dbus-daemon, busctl and gdbus") {
        for tool in ["dbus-daemon", "busctl", "gdbus"] where !commandExists(tool) {
            return "\(tool) is not installed or not in PATH (apt-get install dbus systemd libglib2.0-bin)"
        }
        return nil
    }

    /// Debian's systemd 252 daemons can run beside berthd (`ReferenceDaemon`).
    public static let referenceDaemons = Requirement("systemd 252's reference daemons") { ReferenceDaemon.skipReason }

    /// A systemd can be booted in a container (`BootedSystemd`).
    public static let bootedSystemd = Requirement("a booted systemd in a container") { BootedSystemd.skipReason }

    /// python3 with its D-Bus binding (python3-dbus), for clients berthd must survive.
    public static let python3DBus = Requirement("python3-dbus") {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") else { return "python3 is not installed" }
        let probe = try? run(["/usr/bin/python3", "-c", "import dbus"])
        return probe?.succeeded == true ? nil : "python3-dbus is not installed (apt-get install python3-dbus)"
    }

    /// A one-node Ceph cluster can be started here (`CephCluster`): root, Ceph's daemons and
    /// tools, rbd-fuse and /dev/fuse.
    public static let cephCluster = Requirement("a one-node Ceph cluster (ceph-mon, ceph-mgr, ceph-osd, rbd-fuse)") {
        CephCluster.skipReason
    }

    /// `path` exists (a file a test reads, such as busybox).
    public static func file(_ path: String) -> Requirement {
        Requirement(path) { FileManager.default.fileExists(atPath: path) ? nil : "\(path) does not exist" }
    }
}

/// A requirement of a test that is missing under CI, where it must not be.
public struct MissingRequirement: Error, CustomStringConvertible {
    public let description: String
}

extension Trait where Self == ConditionTrait {
    /// The gate of a test or suite that needs `requirements` (root, loop devices, tools, …).
    ///
    /// Where one is missing the test skips, printing which one; under CI (`Privileges.underCI`)
    /// it fails instead, with an issue naming what is missing, so a CI run never passes with a
    /// privileged tier skipped.
    public static func requires(_ requirements: Requirement..., sourceLocation: SourceLocation = #_sourceLocation) -> Self {
        requires(requirements, sourceLocation: sourceLocation)
    }

    /// `requires(…)` for a list kept in one place (e.g. what every import1 end-to-end suite needs).
    public static func requires(_ requirements: [Requirement], sourceLocation: SourceLocation = #_sourceLocation) -> Self {
        let needs = "needs " + requirements.map(\.description).joined(separator: "; ")
        // The comment is fixed when tests are discovered: name the actual gap if it is already known.
        let comment = Privileges.missing(requirements).map { "\(needs): \($0)" } ?? needs
        return .enabled(Comment(rawValue: comment), sourceLocation: sourceLocation) {
            guard let why = Privileges.missing(requirements) else { return true }
            if Privileges.underCI {
                throw MissingRequirement(description: "CI=true: a privileged test may not skip, but \(why)")
            }
            print("⤼ skipped: \(why)")
            return false
        }
    }
}
