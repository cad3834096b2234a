import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport

// Issue 15's proof for raw images: berthd reads them through berth-inspect children, and its own
// mount namespace never holds an inspection mount; hostile images get a clear D-Bus error and
// leave no loop device, mount or child behind.


/// berthd (machine1, portable1) under --root on a private bus, with raw images in its pools.
private final class InspectionSite: @unchecked Sendable {  // immutable after init; the watcher only reads
    let bus: PrivateDBusDaemon
    let berthd: BerthdProcess
    let machines: String
    let portables: String
    let scratch: TemporaryDirectory

    init() throws {
        bus = try PrivateDBusDaemon()
        berthd = try BerthdProcess(bus: bus, services: ["machine1", "portable1"])
        machines = berthd.root + "/var/lib/machines"
        portables = berthd.root + "/var/lib/portables"
        scratch = try TemporaryDirectory(prefix: "berth-inspect-e2e")
        for folder in [machines, portables] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
    }

    /// A GPT disk at `path` whose DPS x86-64 root partition holds an ext4 made from `files`
    /// (path → content; a content starting with "->" makes a symlink to the rest).
    func gptImage(_ path: String, files: [String: String], size: String = "16M") throws {
        let tree = scratch.appending(UUID().uuidString)
        for (file, content) in files {
            let full = tree + "/" + file
            try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            if content.hasPrefix("->") {
                try FileManager.default.createSymbolicLink(atPath: full, withDestinationPath: String(content.dropFirst(2)))
            } else {
                try content.write(toFile: full, atomically: false, encoding: .utf8)
            }
        }
        let part = scratch.appending(UUID().uuidString + ".img")
        try run(["mkfs.ext4", "-q", "-F", "-d", tree, part, size], check: true)
        let partBytes = try FileManager.default.attributesOfItem(atPath: part)[.size] as? Int ?? 0
        try run(["truncate", "-s", String(partBytes + (2 << 20)), path], check: true)
        try run(["sfdisk", "-q", path], input: Data("label: gpt\nstart=2048, size=\(partBytes / 512), type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709\n".utf8),
                check: true)
        try run(["dd", "if=\(part)", "of=\(path)", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"], check: true)
    }

    func busctl(_ args: [String]) throws -> CommandResult {
        try run(["busctl", "--address=\(bus.address)"] + args)
    }

    func osRelease(_ image: String) throws -> CommandResult {
        try busctl(["call", "org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager",
                    "GetImageOSRelease", "s", image])
    }

    /// What of an inspection shows in berthd's mount namespace: mount points under its runtime
    /// folder's inspect/, and mounts of loop devices bound to files under its root.
    func inspectionMountsInBerthd() -> [String] {
        guard let text = try? String(contentsOfFile: "/proc/\(berthd.pid)/mountinfo", encoding: .utf8) else { return [] }
        let ourLoops = Set(boundLoopDevices())
        return text.split(separator: "\n").map(String.init).filter { line in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return false }
            if fields[4].contains(berthd.root + "/run/berth/inspect") { return true }
            guard let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { return false }
            let source = fields[dash + 2]
            return ourLoops.contains { source == "/dev/\($0)" || source.hasPrefix("/dev/\($0)p") }
        }
    }

    /// Loop devices (loopN) whose backing file is under berthd's root.
    func boundLoopDevices() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return names.filter { name in
            guard name.hasPrefix("loop"),
                  let backing = try? String(contentsOfFile: "/sys/block/\(name)/loop/backing_file", encoding: .utf8) else { return false }
            return backing.hasPrefix(berthd.root)
        }
    }

    /// berth-inspect children of berthd.
    func inspectors() -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return stat.contains("(berth-inspect)") && fields.count > 1 && Int32(fields[1]) == berthd.pid
        }
    }

    /// Nothing left: no loop device on our images, no child (a bounded wait for the kernel's
    /// autoclear rundown and the child's exit).
    func settled() -> (loops: [String], children: [pid_t]) {
        var state = (boundLoopDevices(), inspectors())
        for _ in 0..<200 where !state.0.isEmpty || !state.1.isEmpty {
            usleep(20_000)
            state = (boundLoopDevices(), inspectors())
        }
        return state
    }

    func close() {
        _ = berthd.terminate()
        berthd.stop()
        bus.stop()
        scratch.remove()
    }
}

/// What the mountinfo watcher found, shared with its thread.
private final class Watch: Sendable {
    let seen = Mutex<[String]>([])
    let samples = Atomic<Int>(0)
    let stop = Atomic<Bool>(false)
}

@Suite(.serialized, .requires(.loopFilesystems, .privateBus, .commands("sfdisk")))
struct InspectionSandboxTests {
    @Test("GetImageOSRelease and portable1's GetImageMetadata of raw images never mount in berthd's namespace")
    func inspectionsNeverMountInBerthdsNamespace() throws {
        let site = try InspectionSite()
        defer { site.close() }
        try site.gptImage(site.machines + "/guest.raw", files: ["etc/os-release": "ID=sandboxed\nNAME=\"Sandboxed\"\n"])
        try site.gptImage(site.portables + "/svc.raw", files: [
            "usr/lib/os-release": "ID=portable\nPORTABLE_PREFIXES=svc\n",
            "usr/lib/systemd/system/svc.service": "[Service]\nExecStart=/bin/true\n",
        ])

        // A watcher samples berthd's mountinfo as fast as it can while the inspections run.
        let watch = Watch()
        let watcher = Thread {
            while !watch.stop.load(ordering: .relaxed) {
                let found = site.inspectionMountsInBerthd()
                if !found.isEmpty { watch.seen.withLock { $0 += found } }
                watch.samples.add(1, ordering: .relaxed)
            }
        }
        watcher.start()
        for round in 0..<8 {
            let r = try site.osRelease("guest")
            #expect(r.succeeded && r.stdout.contains("\"ID\" \"sandboxed\""), "round \(round): \(r.stdout) \(r.stderr)")
            let m = try site.busctl(["call", "org.freedesktop.portable1", "/org/freedesktop/portable1",
                                     "org.freedesktop.portable1.Manager", "GetImageMetadata", "sas", "svc", "0"])
            #expect(m.succeeded && m.stdout.contains("svc.service"), "round \(round): \(m.stdout) \(m.stderr)")
        }
        watch.stop.store(true, ordering: .relaxed)
        while !watcher.isFinished { usleep(1_000) }
        #expect(watch.samples.load(ordering: .relaxed) > 8, "the watcher looked while the inspections ran")
        #expect(watch.seen.withLock { $0 }.isEmpty, "berthd's namespace held an inspection mount: \(watch.seen.withLock { $0 })")
        let left = site.settled()
        #expect(left.loops.isEmpty, "loop devices left on the images: \(left.loops)")
        #expect(left.children.isEmpty, "berth-inspect children left: \(left.children)")
    }

    @Test("hostile raw images get a clear D-Bus error or nothing of the host, and leave nothing behind")
    func hostileImagesLeaveNothingBehind() throws {
        let site = try InspectionSite()
        defer { site.close() }
        let pool = site.machines
        // 0 bytes; zeros; a GPT signature with garbage behind it; a disk cut short.
        FileManager.default.createFile(atPath: pool + "/empty.raw", contents: nil)
        try run(["truncate", "-s", "8M", pool + "/zeros.raw"], check: true)
        var garbage = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255) }
        garbage.replaceSubrange(512..<520, with: Array("EFI PART".utf8))
        try Data(garbage).write(to: URL(fileURLWithPath: pool + "/garbage.raw"))
        try site.gptImage(pool + "/cut.raw", files: ["etc/os-release": "ID=cut\n"])
        try run(["truncate", "-s", "3M", pool + "/cut.raw"], check: true)
        for name in ["empty", "zeros", "garbage", "cut"] {
            let r = try site.osRelease(name)
            #expect(!r.succeeded, "\(name): \(r.stdout)")
            #expect(r.stderr.contains("Failed to read image metadata"), "\(name): \(r.stderr)")
        }

        // os-release a symlink to the host's /etc/shadow (resolved inside the image: nothing),
        // and one of 8 MiB (read no further than 1 MiB).
        try site.gptImage(pool + "/shadow.raw", files: ["etc/os-release": "->/etc/shadow", "etc/hostname": "->../../../../etc/hostname"])
        let shadow = try site.osRelease("shadow")
        #expect(shadow.succeeded && !shadow.stdout.contains("root"), "\(shadow.stdout) \(shadow.stderr)")
        let huge = String(repeating: "X=\(String(repeating: "y", count: 1000))\n", count: 8 << 10)
        try site.gptImage(pool + "/huge.raw", files: ["etc/os-release": huge], size: "24M")
        let big = try site.osRelease("huge")
        #expect(big.stdout.utf8.count < 2 << 20, "at most what 1 MiB of os-release holds")

        // berthd is still there and answers; nothing lingers.
        #expect(try site.busctl(["call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                                 "org.freedesktop.machine1.Manager", "ListImages"]).succeeded)
        #expect(site.inspectionMountsInBerthd().isEmpty)
        let left = site.settled()
        #expect(left.loops.isEmpty, "loop devices left on the images: \(left.loops)")
        #expect(left.children.isEmpty, "berth-inspect children left: \(left.children)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: site.berthd.root + "/run/berth/inspect").isEmpty)
    }
}
