import ArgumentParser
import Bus
import Foundation
import Glibc

/// `berth-bench`: one subcommand per measured item (scripts/bench.sh calls each once per row),
/// plus `time` and `rss` for references and memory, and `table` for the report.
///
/// Adding a row: a method on `Bench` (Items.swift) and a subcommand here taking `Run` (the
/// results file and the filesystems to settle) and, for the daemons' items, `Daemons`.
@main
struct BerthBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "berth-bench",
        abstract: "Times the same machine1/import1 work against berthd and systemd 252's daemons.",
        subcommands: [
            List.self, Get.self, Clone.self, CloneOne.self, SnapshotRef.self, Import.self, Export.self, Pull.self,
            Machines.self, Time.self, Rss.self, Table.self,
        ])

    /// ParsableCommand's `main`, after giving this process the default signal mask: a test
    /// runner may start it with signals blocked, and the machine leaders spawned here would
    /// inherit that, ignoring TerminateMachine's SIGTERM.
    static func main() {
        var none = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, nil)
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}

/// Where a run's figures go, and what settles before each timed run.
struct Run: ParsableArguments {
    @Option(help: "The results file; one `item<TAB>who<TAB>outcome` line per figure is appended.")
    var results: String?

    @Option(help: ArgumentHelp("A btrfs filesystem to let settle (btrfs subvolume sync) before each timed run that starts with cold caches (repeatable).",
                               valueName: "path"))
    var settle: [String] = []

    /// The run these options describe.
    var bench: Bench { Bench(results: results, settlePaths: settle) }
}

/// The daemons under test and how many rounds to run.
struct Daemons: ParsableArguments {
    @Option(help: "berthd's bus address.")
    var berth: String?

    @Option(help: "The bus address of systemd 252's machined and importd.")
    var systemd: String?

    @Option(name: .customLong("berth-pid"), help: "berthd's pid, whose CPU time list, get and machines also record.")
    var berthPID: Int32?

    @Option(name: .customLong("systemd-pid"), help: "systemd-machined's pid, as --berth-pid.")
    var systemdPID: Int32?

    @Option(name: .customLong("repeat"), help: "Rounds per daemon, the daemons' order alternating.")
    var rounds = 1

    /// One connection per daemon given, repeated for `rounds` rounds in alternating order (berth
    /// first, then systemd first…), so neither always runs on the caches or the disk state the
    /// other left. One daemon alone is fine where only one can run at a time (the machine
    /// registry under a booted systemd, where berthd and machined take turns on the system bus).
    func ordered() throws -> [Daemon] {
        var pair: [Daemon] = []
        if let berth { pair.append(Daemon(who: "berth", client: try BusClient(address: berth), pid: berthPID)) }
        if let systemd { pair.append(Daemon(who: "systemd", client: try BusClient(address: systemd), pid: systemdPID)) }
        guard !pair.isEmpty else { throw ValidationError("give --berth or --systemd (or both)") }
        return (0..<max(rounds, 1)).flatMap { r in r % 2 == 0 ? pair : pair.reversed() }
    }
}

/// Images named by a printf pattern: `--pattern img%04d --count N`.
struct NumberedImages: ParsableArguments {
    @Option(help: ArgumentHelp("A printf pattern of the image names.", valueName: "img%04d"))
    var pattern: String

    @Option(help: "How many images.")
    var count: Int

    var names: [String] { (0..<count).map { String(format: pattern, $0) } }
}

extension BerthBench {
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "ListImages N times over one connection.")
        @OptionGroup var output: Run
        @OptionGroup var daemons: Daemons
        @Option(help: "How many calls.") var calls: Int
        @Option(help: "The images each reply must list at least.") var expect: Int
        func run() throws { output.bench.benchList(try daemons.ordered(), calls: calls, expect: expect) }
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "GetImage + Properties.GetAll of N images.")
        @OptionGroup var output: Run
        @OptionGroup var daemons: Daemons
        @OptionGroup var images: NumberedImages
        func run() throws { output.bench.benchGet(try daemons.ordered(), names: images.names) }
    }

    struct Clone: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "CloneImage, then RemoveImage of the clones, of N images.")
        @OptionGroup var output: Run
        @OptionGroup var daemons: Daemons
        @OptionGroup var images: NumberedImages
        @Option(help: "The row's label.") var label: String
        func run() throws { output.bench.benchCloneRemove(try daemons.ordered(), names: images.names, label: label) }
    }

    struct CloneOne: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "clone-one", abstract: "CloneImage of one image, cold caches.")
        @OptionGroup var output: Run
        @OptionGroup var daemons: Daemons
        @Option(help: "The image.") var name: String
        @Option(help: "The row's label.") var label: String
        func run() throws { output.bench.benchCloneOne(try daemons.ordered(), name: name, label: label) }
    }

    struct SnapshotRef: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "snapshot-ref",
            abstract: "The clone items' reference: the snapshot and delete ioctls alone, in a pool folder.")
        @OptionGroup var output: Run
        @OptionGroup var images: NumberedImages
        @Option(help: "The btrfs pool folder holding the images.") var pool: String
        @Option(help: "The row's label.") var label: String
        @Option(name: .customLong("repeat"), help: "Rounds.") var rounds = 1
        func run() throws { output.bench.benchSnapshotReference(pool: pool, names: images.names, label: label, rounds: rounds) }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "ImportTar, until the transfer ends.")
        @OptionGroup var output: Run
        @OptionGroup var daemons: Daemons
        @Option(help: "The tar archive.") var archive: String
        @Option(help: "The image name.") var name: String
        @Option(help: "The row's label.") var label: String
        func run() throws { output.bench.benchImport(try daemons.ordered(), archive: archive, name: name, label: label) }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "ExportTar, until the transfer ends.")
        @OptionGroup var output: Run
        @OptionGroup var daemons: Daemons
        @Option(help: "The image.") var name: String
        @Option(name: .customLong("out-dir"), help: "Where the archive is written.") var outDirectory: String
        @Option(help: "The compression (empty: none).") var format = ""
        func run() throws { output.bench.benchExport(try daemons.ordered(), name: name, outDir: outDirectory, format: format) }
    }

    struct Pull: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "PullTar with verify=checksum, until the transfer ends.")
        @OptionGroup var output: Run
        @OptionGroup var daemons: Daemons
        @Option(help: "The archive's URL.") var url: String
        @Option(help: "The image name.") var name: String
        func run() throws { output.bench.benchPull(try daemons.ordered(), url: url, name: name) }
    }

    struct Machines: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "RegisterMachine of N sleeping leaders, then TerminateMachine of each until MachineRemoved for all.")
        @OptionGroup var output: Run
        @OptionGroup var daemons: Daemons
        @Option(help: "How many machines.") var count: Int
        @Option(name: .customLong("leaders-in-units"),
                help: "yes: each leader a service of its own (systemd-run), for a booted systemd, where machined needs one unit per machine.")
        var leadersInUnits = "no"
        func validate() throws {
            guard ["yes", "no"].contains(leadersInUnits) else { throw ValidationError("--leaders-in-units is yes or no") }
        }
        func run() throws { output.bench.benchMachines(try daemons.ordered(), count: count, inUnits: leadersInUnits == "yes") }
    }

    struct Time: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Times a command (a physical reference) with cold caches: time … -- COMMAND…")
        @OptionGroup var output: Run
        @Option(help: "The row.") var item: String
        @Option(help: ArgumentHelp("Whose figure it is.", valueName: "ref:label")) var who: String
        @Argument(parsing: .postTerminator, help: "The command.") var command: [String] = []
        func validate() throws {
            guard !command.isEmpty else { throw ValidationError("give the command after --") }
        }
        func run() throws { output.bench.benchCommand(item: item, who: who, argv: command) }
    }

    struct Rss: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Records the daemons' memory from /proc/PID/status.")
        @OptionGroup var output: Run
        @Option(help: "The row.") var item: String
        @Option(help: ArgumentHelp("A daemon's processes, summed: systemd=PID,PID (repeatable).", valueName: "who=pid[,pid…]"))
        var pid: [String] = []
        @Option(help: "The /proc/PID/status line to sum.") var field = "VmRSS"
        func run() throws {
            let bench = output.bench
            for spec in pid {
                let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { throw ValidationError("--pid WHO=PID[,PID...]") }
                var total = 0
                var missing: String? = nil
                for p in parts[1].split(separator: ",") {
                    if let pid = Int32(p), let k = residentKiB(pid, field: field) { total += k } else { missing = String(p) }
                }
                bench.record(item: item, who: parts[0], missing.map { .failed("no process \($0)") } ?? .kibibytes(total))
            }
        }
    }

    struct Table: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Prints a results file as a Markdown table.")
        @Argument(help: "The results file.") var file: String
        func run() throws { try printTable(file) }
    }
}
