import CLinux
import Glibc
import InspectProtocol
import Linux

/// libblkid reads the untrusted image in a process of its own with no privileges at all: the
/// root child (which must stay root to attach and mount) starts `berth-inspect --probe` with the
/// image as fd 3 and a pipe as fd 4; that process drops to uid/gid 65534 with no capabilities
/// and no_new_privs before it reads a byte, probes, and writes the plan as a few lines, which the
/// root child parses as strictly as berthd parses the root child's answer.
///
///     plan SECTOR-SIZE
///     mount NUMBER START LENGTH FSTYPE ROLE     (1 or 2 of these; NUMBER 0: the whole image)
///     end
///
/// or one `error …` line as in `InspectorAnswer`.
enum UnprivilegedProbe {
    /// The option that runs `berth-inspect` as the probe.
    static let option = "--probe"
    /// The uid and gid the probe runs as (the overflow id, `nobody` on Debian).
    static let nobody: UInt32 = 65534
    /// The longest plan: a few short lines.
    static let maximumLength = 512

    /// The probe's entry: confine, probe, answer, exit.
    static func main() -> Never {
        signal(SIGPIPE, SIG_IGN)
        let image = FileDescriptor(owning: 3)
        let out = FileDescriptor(owning: 4)
        func send(_ text: String) { Array(text.utf8).withUnsafeBytes { _ = try? out.writeAll($0) } }
        do throws(InspectorAnswer.Failure) {
            try confine()
            let status: FileStatus
            do { status = try image.stat() } catch { throw InspectorAnswer.Failure(error, "cannot stat the image") }
            let plan = try InspectionPlan.make(image: image, size: UInt64(max(status.size, 0)))
            send(plan.wire)
            exit(0)
        } catch {
            send(InspectorAnswer.failed(error).line)
            exit(1)
        }
    }

    /// no_new_privs, no supplementary groups, gid and uid 65534 (which empties every capability
    /// set, as no SECBIT_KEEP_CAPS is set); then checks that it worked, and refuses to probe if
    /// not: the probe never runs with privileges by accident.
    static func confine() throws(InspectorAnswer.Failure) {
        func check(_ ok: Bool, _ call: String) throws(InspectorAnswer.Failure) {
            if !ok { throw .init(kind: .system, call: call, errno: errno, message: "cannot drop the probe's privileges") }
        }
        try check(berth_prctl_int(PR_SET_NO_NEW_PRIVS, 1) == 0, "prctl")
        try check(setgroups(0, nil) == 0, "setgroups")
        try check(setgid(nobody) == 0, "setgid")
        try check(setuid(nobody) == 0, "setuid")
        let status = (try? FileDescriptor.open("/proc/self/status", flags: O_RDONLY).readToEnd(limit: 16384))
            .map { String(decoding: $0, as: UTF8.self) } ?? ""
        let lines = status.split(separator: "\n")
        let confined = getuid() == nobody && geteuid() == nobody && getgid() == nobody && getegid() == nobody
            && lines.contains("CapEff:\t0000000000000000") && lines.contains("CapPrm:\t0000000000000000")
            && lines.contains("NoNewPrivs:\t1")
        if !confined { throw .init(kind: .system, message: "the probe still has privileges after dropping them; not probing") }
    }

    /// Runs the probe on `image` and returns its plan, checked against the image's `size`.
    static func run(image: FileDescriptor, size: UInt64) throws(InspectorAnswer.Failure) -> InspectionPlan {
        let input: FileDescriptor, output: FileDescriptor
        do {
            (input, output) = try makePipe()
        } catch {
            throw .init(kind: .system, call: error.call, errno: error.errno.rawValue, message: "cannot make a pipe")
        }
        let executable = (try? readLink("/proc/self/exe")) ?? CommandLine.arguments[0]
        let pid: pid_t
        do {
            pid = try spawnProcess(executable, arguments: [option], descriptors: [image.rawValue, output.rawValue])
        } catch {
            throw .init(error, "cannot start the libblkid probe")
        }
        output.close()
        // Read everything (the probe exits after writing), at most a little more than a plan,
        // for at most 90 seconds (berthd gives the whole inspection 120).
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 256)
        var waited: Int32 = 0
        while bytes.count <= maximumLength, waited < 90_000 {
            var p = pollfd(fd: input.rawValue, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, 1000)
            if r < 0 && errno == EINTR { continue }
            if r == 0 { waited += 1000; continue }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(input.rawValue, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        kill(pid, SIGKILL)  // gone already unless it overran; either way it is reaped here
        let exit = try? waitForExit(pid)
        if bytes.starts(with: Array("error ".utf8)), case .failed(let failure)? = InspectorAnswer.parse(bytes) {
            throw failure
        }
        if exit == .exited(0), let plan = InspectionPlan(wire: bytes, imageSize: size) { return plan }
        if case .signaled(let s)? = exit, s != SIGKILL || bytes.isEmpty {
            throw .init(kind: .invalidImage, message: "the libblkid probe died (signal \(s)) reading the image")
        }
        throw .init(kind: .system, message: "the libblkid probe answered something malformed")
    }
}

extension InspectionPlan {
    /// The plan as the probe writes it.
    package var wire: String {
        var text = "plan \(sectorSize)\n"
        for m in mounts {
            let p = m.partition
            text += "mount \(p?.number ?? 0) \(p?.start ?? 0) \(p?.length ?? 0) \(m.filesystem.rawValue) \(m.isUsr ? "usr" : "root")\n"
        }
        return text + "end\n"
    }

    /// A plan read from the probe: exactly the lines `wire` writes, each value in range for an
    /// image of `imageSize` bytes (a partition inside it, the whole image only alone), or nil.
    package init?(wire bytes: [UInt8], imageSize: UInt64) {
        guard bytes.count <= UnprivilegedProbe.maximumLength, bytes.last == UInt8(ascii: "\n"),
              bytes.allSatisfy({ $0 == 0x0a || ($0 >= 0x20 && $0 < 0x7f) }) else { return nil }
        let lines = String(decoding: bytes.dropLast(), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count >= 3, lines.count <= 4, lines.last == "end" else { return nil }
        func number(_ s: Substring) -> UInt64? {
            guard !s.isEmpty, s.count <= 20, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
            return UInt64(s)
        }
        let head = lines[0].split(separator: " ", omittingEmptySubsequences: false)
        guard head.count == 2, head[0] == "plan", let sector = number(head[1]), sector == 512 || sector == 4096 else { return nil }
        var mounts: [Mount] = []
        for line in lines[1..<(lines.count - 1)] {
            let f = line.split(separator: " ", omittingEmptySubsequences: false)
            guard f.count == 6, f[0] == "mount", let n = number(f[1]), n <= 65535, let start = number(f[2]),
                  let length = number(f[3]), let kind = FilesystemKind(rawValue: String(f[4])), f[5] == "root" || f[5] == "usr" else {
                return nil
            }
            let isUsr = f[5] == "usr"
            guard !mounts.contains(where: { $0.isUsr == isUsr }) else { return nil }
            if n == 0 {
                guard start == 0, length == 0, !isUsr, lines.count == 3 else { return nil }
                mounts.append(Mount(partition: nil, filesystem: kind, isUsr: false))
            } else {
                let (end, overflow) = start.addingReportingOverflow(length)
                guard length > 0, !overflow, end <= imageSize else { return nil }
                mounts.append(Mount(partition: ProbedPartition(number: Int(n), type: "", flags: 0, start: start, length: length),
                                    filesystem: kind, isUsr: isUsr))
            }
        }
        // Root before /usr, as `make` orders them.
        guard mounts.first.map({ !$0.isUsr || mounts.count == 1 }) == true else { return nil }
        self.init(sectorSize: UInt32(sector), mounts: mounts)
    }
}
