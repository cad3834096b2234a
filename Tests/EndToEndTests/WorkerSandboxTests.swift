import Foundation
import Glibc
import Linux
import Testing
import TestSupport

/// The real berthd's transfer worker, found while `machinectl import-tar` holds it on a FIFO
/// that never sends a byte, is confined (docs/security.md): compared with berthd itself.
@Suite(.serialized, .requires(import1Requirements))
struct WorkerSandboxEndToEndTests {
    /// The mount points of /proc/PID/mountinfo.
    private func mountPoints(_ pid: String) -> Set<String> {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8)) ?? ""
        return Set(text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            return fields.count > 4 ? String(fields[4]) : nil
        })
    }

    /// The children of `pid` (all its threads') named berth-transfer.
    private func workers(of pid: pid_t) -> [String] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.flatMap { task -> [String] in
            let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? ""
            return children.split(separator: " ").map(String.init).filter {
                (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8))?.hasPrefix("berth-transfer") == true
            }
        }
    }

    @Test("machinectl import-tar held on a FIFO: berthd's worker has no_new_privs, seccomp, fewer capabilities than berthd, its own mount and network namespaces, and a view of its temp entry but not of berthd's mounts")
    func heldImportWorkerIsConfined() throws {
        let site = try Import1Site()
        defer { site.close() }
        let berthd = try #require(site.berthd?.processIdentifier)
        let fifo = site.folder.appending("import.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        // Opened read-write, the FIFO has a writer at once (machinectl's open for reading does not
        // block) and never sends anything: the worker waits for its first byte.
        let holder = open(fifo, O_RDWR | O_CLOEXEC)
        #expect(holder >= 0)
        var closed = false
        defer { if !closed { close(holder) } }
        let importing = try Background(["machinectl", "import-tar", fifo, "held"], environment: site.bus.environment,
                                       output: site.folder.appending("import.out"))
        defer { importing.wait(timeout: 0) }
        var worker: String?
        #expect(eventually {
            worker = workers(of: berthd).first { processStatus($0)["Seccomp"] == "2" }
            return worker != nil
        }, "no confined worker under berthd: \(importing.output)\n\(site.log)")
        let pid = try #require(worker)
        let w = processStatus(pid), b = processStatus("\(berthd)")
        #expect(w["NoNewPrivs"] == "1" && w["Seccomp"] == "2", "\(w)")
        #expect(b["NoNewPrivs"] == "0" && b["Seccomp"] == "0", "berthd itself: \(b)")
        let workerCaps = UInt64(w["CapEff"] ?? "", radix: 16), berthdCaps = UInt64(b["CapEff"] ?? "", radix: 16)
        #expect(workerCaps != nil && berthdCaps != nil && workerCaps != berthdCaps && (workerCaps ?? 0) & ~(berthdCaps ?? 0) == 0,
                "worker \(w["CapEff"] ?? "?") against berthd \(b["CapEff"] ?? "?")")
        #expect(w["CapBnd"] == w["CapEff"], "\(w)")
        // CAP_SYS_ADMIN (bit 21) is not among them.
        #expect((workerCaps ?? 0) & (1 << 21) == 0)
        for ns in ["mnt", "net"] {
            #expect(try readLink("/proc/\(pid)/ns/\(ns)") != readLink("/proc/\(berthd)/ns/\(ns)"), "the worker shares berthd's \(ns) namespace")
        }
        let view = mountPoints(pid), berthdMounts = mountPoints("\(berthd)")
        let temp = try #require(try site.tempEntries().first { !$0.hasSuffix(".lck") })
        #expect(view.contains(site.poolPath + "/" + temp), "\(view.sorted())")
        #expect(!view.contains(site.poolPath), "the pool folder itself is in the view")
        for point in berthdMounts where !["/", "/usr", "/proc", "/tmp"].contains(point) && !point.hasPrefix("/usr/") && !point.hasPrefix("/dev/") {
            #expect(!view.contains(point), "berthd's mount \(point) is in the worker's view")
        }
        // The end of the input: an empty archive, a failed import, nothing installed.
        close(holder)
        closed = true
        #expect(importing.wait() != 0)
        #expect(try eventually { try site.tempEntries().filter { !$0.hasSuffix(".lck") }.isEmpty })
        #expect(!FileManager.default.fileExists(atPath: site.poolPath + "/held"))
    }
}
