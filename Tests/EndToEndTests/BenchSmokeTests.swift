import Foundation
import Glibc
import Testing
import TestSupport

/// scripts/bench.sh still runs end to end (tiny inputs: BENCH_TINY=1) against berthd and systemd
/// 252's daemons. It checks that every item produced a figure for both — never how fast
/// anything was.
@Suite(.serialized, .requires(.loopFilesystems, .referenceDaemons, .commands("dbus-daemon")))
struct BenchSmokeTests {
    @Test func benchScriptRunsOnTinyInputs() throws {
        let berthd = try BerthdProcess.binaryPath()
        let bin = (berthd as NSString).deletingLastPathComponent
        try #require(FileManager.default.isExecutableFile(atPath: bin + "/berth-bench"), "berth-bench is not built in \(bin)")
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let r = try run([repo.path + "/scripts/bench.sh"],
                        environment: ["BENCH_TINY": "1", "BENCH_BIN": bin, "BENCH_PORT": "18735"])
        #expect(r.succeeded, "bench.sh exited \(r.status): \(r.stderr)\n\(r.stdout)")
        let rows = r.stdout.split(separator: "\n").filter { $0.hasPrefix("| ") && !$0.hasPrefix("| item") }
        let items = ["resident memory, idle", "anonymous memory (RssAnon), idle", "ListImages", "GetImage + GetAll",
                     "CloneImage ×", "RemoveImage ×", "ImportTar plain", "ImportTar gzip", "ExportTar", "PullTar",
                     "resident memory, at the end", "anonymous memory (RssAnon), at the end", "CloneImage directory"]
        for item in items {
            let row = rows.first { $0.hasPrefix("| \(item)") }
            #expect(row != nil, "no row for \(item) in\n\(r.stdout)")
            guard let row else { continue }
            let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            // cells: item, Berth, systemd, ratio, reference, ratio, target
            #expect(cells.count == 7, "\(row)")
            guard cells.count == 7 else { continue }
            // Both do every item: a figure, never "n/a" or a failure.
            #expect(cells[2].hasSuffix(" s") || cells[2].hasSuffix(" MiB"), "systemd: \(row)")
            #expect(cells[1].hasSuffix(" s") || cells[1].hasSuffix(" MiB"), "berthd: \(row)")
        }
        // PullOci (systemd 252 has none): Berth's figure beside skopeo + umoci's.
        #expect(rows.contains { $0.hasPrefix("| PullOci") && $0.contains(" s |") && $0.contains("skopeo+umoci: ") }, "\(r.stdout)")
        // Physical references beside import, the subvolume clones and the ext4 clone.
        #expect(rows.contains { $0.hasPrefix("| ImportTar plain") && $0.contains("tar -x: ") })
        #expect(rows.contains { $0.hasPrefix("| CloneImage directory") && $0.contains("cp -a: ") })
        #expect(rows.contains { $0.hasPrefix("| CloneImage ×") && $0.contains("snapshot ioctl: ") })
        #expect(rows.contains { $0.hasPrefix("| RemoveImage ×") && $0.contains("delete ioctl: ") })
        // The machine registry row: berthd's figure; machined 252 registers nothing where PID 1 is
        // not systemd, and its cell says what it answered.
        let machines = rows.first { $0.hasPrefix("| RegisterMachine + TerminateMachine ×") && !$0.contains(", daemon CPU") }
        let machineCells = machines?.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) } ?? []
        #expect(machineCells.count == 7 && machineCells[1].hasSuffix(" s"), "no machine registry row in\n\(r.stdout)")
        #expect(machineCells.count == 7 && (machineCells[2].hasSuffix(" s") || machineCells[2].hasPrefix("failed: cannot register")),
                "\(machines ?? "")")
        // The daemons' own CPU time beside the bus items, without a target of its own.
        for item in ["ListImages", "GetImage + GetAll", "RegisterMachine + TerminateMachine"] {
            let row = rows.first { $0.hasPrefix("| \(item)") && $0.contains(", daemon CPU") }
            #expect(row?.hasSuffix("| – |") == true, "no CPU row for \(item) in\n\(r.stdout)")
        }
    }
}
