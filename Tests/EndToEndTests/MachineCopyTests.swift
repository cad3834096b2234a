import Foundation
import Glibc
import Testing
import TestSupport

/// machine1's copy, id-mapping and address members, with the real systemd-nspawn registering a
/// busybox container with berthd on a private bus and the real machinectl and busctl driving
/// them: `machinectl copy-to/copy-from` (files, trees, --force, a `-U` container's shifted
/// ownership, hostile paths), MapFrom/ToMachineUser/Group, and addresses of a veth container.
@Suite(.serialized, .requires(nspawnRequirements))
struct MachineCopyTests {
    static let manager = ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager"]

    /// Starts a container and waits until machinectl lists it.
    func start(_ host: MachineRegistryTests.Host, name: String, options: String = "", command: String = "sleep 600") throws -> NspawnContainer {
        let container = try NspawnContainer(name: name, root: host.root.path, bus: host.bus.address, options: options, command: command)
        let listed = try waitUntil { try machinectl(host.bus, ["list", "--no-legend"]).stdout.contains(name) }
        if !listed { container.stop() }
        try #require(listed, "\(container.log)\n\(host.berthd.log)")
        return container
    }

    func owner(_ path: String) -> (uid: UInt32, gid: UInt32, mode: UInt32)? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return (st.st_uid, st.st_gid, st.st_mode & 0o7777)
    }

    func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// No `.#…` temp left in `directory`.
    func noTemp(in directory: String) -> Bool {
        !(((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).contains { $0.hasPrefix(".#") })
    }

    /// A host tree: file.txt (0640, 1234:2345), sub/deep.bin (0755), link → file.txt, sub/hard
    /// (a hardlink of file.txt).
    func makeHostTree(_ dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
        try "hello from the host\n".write(toFile: dir + "/file.txt", atomically: false, encoding: .utf8)
        chmod(dir + "/file.txt", 0o640)
        chown(dir + "/file.txt", 1234, 2345)
        try Data((0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: dir + "/sub/deep.bin"))
        chmod(dir + "/sub/deep.bin", 0o755)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link", withDestinationPath: "file.txt")
        #expect(link(dir + "/file.txt", dir + "/sub/hard") == 0)
        chmod(dir, 0o750)
        chown(dir, 42, 43)
    }

    @Test func machinectlCopiesFilesAndTreesBothWaysAndRefusesWhatWouldLeadOut() throws {
        let host = try MachineRegistryTests.Host()
        defer { host.stop() }
        let bus = host.bus, root = host.root.path
        try FileManager.default.createDirectory(atPath: root + "/srv", withIntermediateDirectories: true)
        // Hostile furniture inside the container: symlinks pointing at the host's /etc, absolute and relative.
        try FileManager.default.createSymbolicLink(atPath: root + "/srv/etc-link", withDestinationPath: "/etc")
        try FileManager.default.createSymbolicLink(atPath: root + "/srv/up", withDestinationPath: "../../../../../../../../etc")
        try FileManager.default.createSymbolicLink(atPath: root + "/srv/passwd-link", withDestinationPath: "/etc/passwd")
        let work = try TemporaryDirectory(prefix: "berth-copy")
        defer { work.remove() }
        try makeHostTree(work.appending("tree"))
        let container = try start(host, name: "bbcopy")
        defer { container.stop() }

        // A file in, with content, mode and owner.
        let file = work.appending("tree/file.txt")
        let toFile = try machinectl(bus, ["copy-to", "bbcopy", file, "/srv/file.txt"])
        #expect(toFile.succeeded, "\(toFile.stderr)\n\(host.berthd.log)")
        #expect((try? String(contentsOfFile: root + "/srv/file.txt", encoding: .utf8)) == "hello from the host\n")
        #expect(owner(root + "/srv/file.txt").map { [$0.uid, $0.gid, $0.mode] } == [1234, 2345, 0o640])
        // Again: the destination exists; refused without --force, replaced with it.
        try "changed\n".write(toFile: file, atomically: false, encoding: .utf8)
        let again = try machinectl(bus, ["copy-to", "bbcopy", file, "/srv/file.txt"])
        #expect(!again.succeeded && again.stderr.contains("File exists"), "\(again)")
        #expect((try? String(contentsOfFile: root + "/srv/file.txt", encoding: .utf8)) == "hello from the host\n")
        let forced = try machinectl(bus, ["copy-to", "--force", "bbcopy", file, "/srv/file.txt"])
        #expect(forced.succeeded, "\(forced.stderr)")
        #expect((try? String(contentsOfFile: root + "/srv/file.txt", encoding: .utf8)) == "changed\n")

        // A tree in, and back out: contents, modes, owners, the symlink verbatim.
        let toTree = try machinectl(bus, ["copy-to", "bbcopy", work.appending("tree"), "/srv/tree"])
        #expect(toTree.succeeded, "\(toTree.stderr)")
        #expect(owner(root + "/srv/tree").map { [$0.uid, $0.gid, $0.mode] } == [42, 43, 0o750])
        #expect(owner(root + "/srv/tree/sub/deep.bin")?.mode == 0o755)
        #expect(FileManager.default.contentsEqual(atPath: root + "/srv/tree/sub/deep.bin", andPath: work.appending("tree/sub/deep.bin")))
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/srv/tree/link")) == "file.txt")
        var a = stat(), b = stat()
        #expect(lstat(root + "/srv/tree/file.txt", &a) == 0 && lstat(root + "/srv/tree/sub/hard", &b) == 0 && a.st_ino == b.st_ino,
                "the hardlink was not kept")
        // A tree replaced whole with --force (the old one's extra file is gone).
        try "extra".write(toFile: root + "/srv/tree/extra", atomically: false, encoding: .utf8)
        #expect(try machinectl(bus, ["copy-to", "--force", "bbcopy", work.appending("tree"), "/srv/tree"]).succeeded)
        #expect(!exists(root + "/srv/tree/extra") && exists(root + "/srv/tree/sub/deep.bin"))
        let back = try machinectl(bus, ["copy-from", "bbcopy", "/srv/tree", work.appending("back")])
        #expect(back.succeeded, "\(back.stderr)")
        #expect(owner(work.appending("back/file.txt")).map { [$0.uid, $0.gid, $0.mode] } == [1234, 2345, 0o640])
        #expect(FileManager.default.contentsEqual(atPath: work.appending("back/sub/deep.bin"), andPath: work.appending("tree/sub/deep.bin")))
        // The container's own mounts: its /tmp is a tmpfs nspawn mounted, not the folder on the host.
        #expect(try machinectl(bus, ["copy-to", "bbcopy", file, "/tmp/in-tmpfs"]).succeeded)
        #expect(!exists(root + "/tmp/in-tmpfs"))
        #expect(try machinectl(bus, ["copy-from", "bbcopy", "/tmp/in-tmpfs", work.appending("from-tmpfs")]).succeeded)
        #expect((try? String(contentsOfFile: work.appending("from-tmpfs"), encoding: .utf8)) == "changed\n")
        #expect(noTemp(in: root + "/srv") && noTemp(in: work.path))

        // Hostile paths: `..` and symlinks (absolute, relative, in the middle or at the end) stay in the container.
        for (target, inside) in [("/../../../../etc/berth-dotdot", "/etc/berth-dotdot"), ("/srv/etc-link/berth-abs", "/etc/berth-abs"),
                                 ("/srv/up/berth-rel", "/etc/berth-rel")] {
            let r = try machinectl(bus, ["copy-to", "bbcopy", file, target])
            #expect(r.succeeded, "\(target): \(r.stderr)")
            #expect(exists(root + inside), "\(target) did not land at \(inside) inside the container")
            #expect(!exists(inside), "\(target) escaped to the host's \(inside)")
        }
        // The final component is never followed: a symlink at the destination is replaced, not written through.
        let hostPasswd = try String(contentsOfFile: "/etc/passwd", encoding: .utf8)
        #expect(try machinectl(bus, ["copy-to", "--force", "bbcopy", file, "/srv/passwd-link"]).succeeded)
        #expect(try String(contentsOfFile: "/etc/passwd", encoding: .utf8) == hostPasswd)
        #expect((try? String(contentsOfFile: root + "/srv/passwd-link", encoding: .utf8)) == "changed\n")
        // Copying out through a symlink to /etc reads the container's /etc, never the host's.
        let shadow = try machinectl(bus, ["copy-from", "bbcopy", "/srv/etc-link/shadow", work.appending("shadow")])
        #expect(!shadow.succeeded && !exists(work.appending("shadow")), "\(shadow)")
        #expect(try machinectl(bus, ["copy-from", "bbcopy", "/srv/etc-link", work.appending("etc-link")]).succeeded)
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: work.appending("etc-link"))) == "/etc")

        // Refusals, as machined 252 words them, with nothing written and no temp left.
        let missing = try machinectl(bus, ["copy-to", "bbcopy", work.appending("nope"), "/srv/nope"])
        #expect(!missing.succeeded && missing.stderr.contains("not found"), "\(missing)")
        #expect(!exists(root + "/srv/nope"))
        let missingInside = try machinectl(bus, ["copy-from", "bbcopy", "/srv/nope", work.appending("nope")])
        #expect(!missingInside.succeeded && !exists(work.appending("nope")))
        let noParent = try machinectl(bus, ["copy-to", "bbcopy", file, "/no/such/dir/x"])
        #expect(!noParent.succeeded)
        let relative = try busctl(bus, Self.manager + ["CopyToMachine", "sss", "bbcopy", "relative/file", "/srv/x"])
        #expect(!relative.succeeded && relative.stderr.contains("Source path must be absolute."), "\(relative.stderr)")
        let relativeDestination = try busctl(bus, Self.manager + ["CopyToMachine", "sss", "bbcopy", file, "srv/x"])
        #expect(!relativeDestination.succeeded && relativeDestination.stderr.contains("Destination path must be absolute."))
        let noName = try busctl(bus, Self.manager + ["CopyToMachine", "sss", "bbcopy", file, "/"])
        #expect(!noName.succeeded && noName.stderr.contains("Failed to extract file name of '/' path"), "\(noName.stderr)")
        let badFlags = try busctl(bus, Self.manager + ["CopyToMachineWithFlags", "ssst", "bbcopy", file, "/srv/flags", "2"])
        #expect(!badFlags.succeeded && badFlags.stderr.contains("Invalid argument") && !exists(root + "/srv/flags"), "\(badFlags.stderr)")
        let hostMachine = try busctl(bus, Self.manager + ["CopyToMachine", "sss", ".host", file, "/tmp/berth-host-copy"])
        #expect(!hostMachine.succeeded && hostMachine.stderr.contains("only supported on container machines"))
        let unknown = try busctl(bus, Self.manager + ["CopyToMachine", "sss", "nosuch", file, "/srv/x"])
        #expect(!unknown.succeeded && unknown.stderr.contains("No machine 'nosuch' known"))
        let nobody = try run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "busctl", "--address=\(bus.address)"]
                             + Self.manager + ["CopyToMachine", "sss", "bbcopy", "/etc/hostname", "/srv/by-nobody"])
        #expect(!nobody.succeeded && !exists(root + "/srv/by-nobody"), "\(nobody)")
        // The Machine object's own method, with flags.
        let objectCopy = try busctl(bus, ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine/bbcopy",
                                          "org.freedesktop.machine1.Machine", "CopyToWithFlags", "sst", file, "/srv/by-object", "1"])
        #expect(objectCopy.succeeded && exists(root + "/srv/by-object"), "\(objectCopy.stderr)")
        #expect(noTemp(in: root + "/srv") && noTemp(in: work.path) && noTemp(in: root + "/etc"))

        // No private network here: no addresses of its own, as machined answers.
        let addresses = try busctl(bus, Self.manager + ["GetMachineAddresses", "s", "bbcopy"])
        #expect(!addresses.succeeded && addresses.stderr.contains("does not use private networking"), "\(addresses.stderr)")
        // No user namespace: nothing to map either way.
        let mapFrom = try busctl(bus, Self.manager + ["MapFromMachineUser", "su", "bbcopy", "1000"])
        #expect(!mapFrom.succeeded && mapFrom.stderr.contains("has no matching user mappings"), "\(mapFrom.stderr)")
        let hostRange = try busctl(bus, Self.manager + ["MapToMachineGroup", "u", "1000"])
        #expect(!hostRange.succeeded && hostRange.stderr.contains("Group 1000 belongs to host GID range"), "\(hostRange.stderr)")
        let hostMap = try busctl(bus, Self.manager + ["MapFromMachineUser", "su", ".host", "0"])
        #expect(!hostMap.succeeded && hostMap.stderr.contains("Not supported for non-container machines."))
    }

    /// `-U` (nspawn 252: an idmapped mount of the root where the kernel has them, as here) and
    /// `--private-users-ownership=chown` (the tree chowned on disk) look the same from the host
    /// through the leader's root, which is where they are checked.
    @Test(arguments: ["-U", "--private-users=pick --private-users-ownership=chown"])
    func aPrivateUsersContainerGetsShiftedOwnershipAndMapsIds(_ options: String) throws {
        let host = try MachineRegistryTests.Host()
        defer { host.stop() }
        let bus = host.bus, root = host.root.path
        try FileManager.default.createDirectory(atPath: root + "/srv", withIntermediateDirectories: true)
        let work = try TemporaryDirectory(prefix: "berth-copy-u")
        defer { work.remove() }
        try makeHostTree(work.appending("tree"))
        let container = try start(host, name: "bbusers", options: options)
        defer { container.stop() }

        let shiftReply = try busctl(bus, Self.manager + ["GetMachineUIDShift", "s", "bbusers"]).stdout
        let shift = UInt32(shiftReply.split(separator: " ").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? "") ?? 0
        try #require(shift >= 0x10000, "\(shiftReply)\n\(container.log)")
        let leaderReply = try busctl(bus, ["get-property", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine/bbusers",
                                           "org.freedesktop.machine1.Machine", "Leader"]).stdout
        let leader = leaderReply.split(separator: " ").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
        let inside = "/proc/\(leader)/root"

        // In: host ids N become the container's N, i.e. shift+N as the host sees them.
        let r = try machinectl(bus, ["copy-to", "bbusers", work.appending("tree"), "/srv/tree"])
        #expect(r.succeeded, "\(r.stderr)\n\(host.berthd.log)")
        #expect(owner(inside + "/srv/tree/file.txt").map { [$0.uid, $0.gid, $0.mode] } == [shift + 1234, shift + 2345, 0o640])
        #expect(owner(inside + "/srv/tree").map { [$0.uid, $0.gid] } == [shift + 42, shift + 43])
        #expect(owner(inside + "/srv/tree/link").map { [$0.uid] } == [shift])
        // Out: mapped back.
        #expect(chown(inside + "/srv/tree/file.txt", shift + 7, shift + 8) == 0)
        let out = try machinectl(bus, ["copy-from", "bbusers", "/srv/tree/file.txt", work.appending("out.txt")])
        #expect(out.succeeded, "\(out.stderr)\n\(host.berthd.log)")
        #expect(owner(work.appending("out.txt")).map { [$0.uid, $0.gid] } == [7, 8])

        // MapFrom/To, users and groups, and an id no machine maps.
        let manager = Self.manager
        #expect(try busctl(bus, manager + ["MapFromMachineUser", "su", "bbusers", "1000"]).stdout == "u \(shift + 1000)\n")
        #expect(try busctl(bus, manager + ["MapFromMachineGroup", "su", "bbusers", "5"]).stdout == "u \(shift + 5)\n")
        #expect(try busctl(bus, manager + ["MapToMachineUser", "u", "\(shift + 1000)"]).stdout
                == "sou \"bbusers\" \"/org/freedesktop/machine1/machine/bbusers\" 1000\n")
        #expect(try busctl(bus, manager + ["MapToMachineGroup", "u", "\(shift + 5)"]).stdout
                == "sou \"bbusers\" \"/org/freedesktop/machine1/machine/bbusers\" 5\n")
        let unmapped = try busctl(bus, manager + ["MapToMachineUser", "u", "\(shift + 0x10000 + 3)"])
        #expect(!unmapped.succeeded && unmapped.stderr.contains("No matching user mapping for \(shift + 0x10000 + 3)."), "\(unmapped.stderr)")
        let outside = try busctl(bus, manager + ["MapFromMachineUser", "su", "bbusers", "\(0x10000 + 3)"])
        #expect(!outside.succeeded && outside.stderr.contains("has no matching user mappings"), "\(outside.stderr)")
        let invalid = try busctl(bus, manager + ["MapToMachineUser", "u", "65535"])
        #expect(!invalid.succeeded && invalid.stderr.contains("Invalid user ID 65535"))
    }

    @Test func machinectlStatusShowsTheAddressesOfAVethContainer() throws {
        let host = try MachineRegistryTests.Host()
        defer { host.stop() }
        let bus = host.bus
        let setup = "/bin/busybox ip link set lo up; /bin/busybox ip addr add 10.231.45.6/24 dev host0; /bin/busybox ip link set host0 up; exec sleep 600"
        let container = try start(host, name: "bbveth", options: "--network-veth", command: setup)
        defer { container.stop() }
        #expect(try waitUntil {
            try busctl(bus, Self.manager + ["GetMachineAddresses", "s", "bbveth"]).stdout.contains("2 4 10 231 45 6")
        }, "\(container.log)\n\(host.berthd.log)")
        // Loopback (host scope) is left out, as machined leaves it out.
        let reply = try busctl(bus, ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine/bbveth",
                                     "org.freedesktop.machine1.Machine", "GetAddresses"]).stdout
        #expect(reply.hasPrefix("a(iay) ") && !reply.contains("4 127 0 0 1"), "\(reply)")
        let status = try machinectl(bus, ["status", "bbveth"]).stdout
        #expect(status.contains("Address: 10.231.45.6"), "\(status)")
        // The host's own: berthd's namespace, without loopback.
        let hostReply = try busctl(bus, Self.manager + ["GetMachineAddresses", "s", ".host"])
        #expect(hostReply.succeeded && !hostReply.stdout.contains("4 127 0 0 1"), "\(hostReply)")
    }

    /// A copy runs on a worker thread: with the copy stuck in the kernel (its destination
    /// filesystem frozen with fsfreeze, so creating the file waits), berthd still answers.
    @Test func aCopyInProgressDoesNotHoldUpOtherCalls() throws {
        let host = try MachineRegistryTests.Host()
        defer { host.stop() }
        let bus = host.bus, root = host.root.path
        try FileManager.default.createDirectory(atPath: root + "/srv", withIntermediateDirectories: true)
        try "payload\n".write(toFile: root + "/srv/payload", atomically: false, encoding: .utf8)
        let frozen = try LoopbackFilesystem(.ext4, size: 64 << 20)
        defer { frozen.remove() }
        let container = try start(host, name: "bbfreeze")
        defer { container.stop() }

        try #require(run(["fsfreeze", "--freeze", frozen.mountPoint]).succeeded)
        var thawed = false
        defer { if !thawed { _ = try? run(["fsfreeze", "--unfreeze", frozen.mountPoint]) } }
        let copy = try spawn(["/usr/bin/machinectl", "copy-from", "bbfreeze", "/srv/payload", frozen.appending("payload")],
                             stdout: "/dev/null", stderr: nil, environment: ["DBUS_SYSTEM_BUS_ADDRESS": bus.address])
        // The copy is under way (its waitpid says it still runs) and machine1 answers meanwhile.
        var status: Int32 = 0
        #expect(try waitUntil { try busctl(bus, ["call", "org.freedesktop.machine1", "/org/freedesktop/machine1/machine/bbfreeze",
                                                 "org.freedesktop.machine1.Machine", "GetUIDShift"]).succeeded })
        #expect(try machinectl(bus, ["list", "--no-legend"]).stdout.contains("bbfreeze"))
        #expect(waitpid(copy, &status, WNOHANG) == 0, "the copy ended while its destination was frozen")
        #expect(try run(["fsfreeze", "--unfreeze", frozen.mountPoint]).succeeded)
        thawed = true
        #expect(waitUntil(60) { waitpid(copy, &status, WNOHANG) == copy })
        #expect(status == 0 && (try? String(contentsOfFile: frozen.appending("payload"), encoding: .utf8)) == "payload\n")
    }
}
