import ArgumentParser
import Bus
import Foundation
import Services

/// berthctl: Berth's command-line client. `@main` lives in the berthctl target; the commands are
/// here so tests can call them.
public struct Berthctl: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "berthctl",
        abstract: "Talk to berthd.",
        discussion: """
            The machine verbs (list, status NAME, show, kill, terminate, shell, login, copy-to, copy-from, \
            bind) are machinectl's; the image verbs are list-images, image-status, clone, …; the portable \
            service verbs are under `berthctl portable`. Without a verb, or `status` without a name: which \
            services answer. Options go after the verb: `berthctl list --bus-address ADDR`.
            """,
        subcommands: [Status.self, ListMachines.self, Show.self, Kill.self, Terminate.self, Shell.self, Login.self, CopyTo.self,
                      CopyFrom.self, Bind.self, ListImages.self, ImageStatus.self, Clone.self, Rename.self, Remove.self, ReadOnly.self,
                      SetLimit.self, Clean.self, ListTransfers.self, CancelTransfer.self, ImportTar.self, ImportRaw.self,
                      ImportFileSystem.self, ExportTar.self, ExportRaw.self, PullTar.self, PullRaw.self, PullOci.self, PortableCommand.self],
        defaultSubcommand: Status.self)

    public init() {}
}

/// Options every berthctl command takes.
public struct GlobalOptions: ParsableArguments {
    @Option(help: "D-Bus address of the bus berthd serves on (default: the system bus).")
    public var busAddress: String?

    @Flag(help: "Print JSON instead of a table.")
    public var json = false

    public init() {}
}

/// `berthctl status`: which of the three services answer, the pool path, berthd's version; with
/// machine names, those machines' status as `machinectl status` shows it (as `systemctl status`
/// shows the system without a unit and the unit with one).
public struct Status: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Show machines' status, or without a name which services answer, the pool path and berthd's version.")

    @OptionGroup public var global: GlobalOptions

    @Argument(help: "Machine names.") public var names: [String] = []

    public init() {}

    public func validate() throws {
        // `berthctl --bus-address X list` lands here (status is the default verb): say where
        // the options go rather than looking for a machine called "list".
        if let verb = names.first, Berthctl.configuration.subcommands.contains(where: { $0._commandName == verb }) {
            throw ValidationError("options go after the verb: berthctl \(verb) [OPTIONS] …")
        }
    }

    public func run() throws {
        if !names.isEmpty {
            try MachineStatusVerb.run(global, names)
            return
        }
        let client: BusClient
        do {
            client = try BusClient(address: global.busAddress)
        } catch {
            throw ValidationError("cannot reach the bus: \(error)")
        }
        let report = StatusReport.gather(client)
        print(global.json ? try report.json() : report.table())
        if !report.services.contains(where: \.answers) { throw ExitCode(3) }
    }
}

/// What `berthctl status` finds out.
public struct StatusReport: Codable, Sendable, Equatable {
    /// One bus API.
    public struct Service: Codable, Sendable, Equatable {
        /// Its bus name.
        public var name: String
        /// Whether Ping on its manager object was answered.
        public var answers: Bool
        /// Whether the answering daemon is berthd (it has `io.berth.Daemon`).
        public var berth: Bool
    }

    public var services: [Service]
    /// machine1's PoolPath, if machine1 answers.
    public var poolPath: String?
    /// berthd's version (`io.berth.Daemon.Version`), if a berthd answers.
    public var version: String?

    /// Asks each service's manager object for Ping, machine1 for PoolPath, and berthd for its version.
    public static func gather(_ client: BusClient) -> StatusReport {
        var report = StatusReport(services: [], poolPath: nil, version: nil)
        for kind in ServiceKind.allCases {
            let answers = client.ping(destination: kind.busName, path: kind.managerPath)
            var berth = false
            if answers, let v = try? client.property(destination: kind.busName, path: kind.managerPath,
                                                     interface: BerthDaemon.name, name: BerthDaemon.Property.version.rawValue) {
                berth = true
                report.version = report.version ?? v.stringValue
            }
            report.services.append(Service(name: kind.busName, answers: answers, berth: berth))
        }
        if report.services.first(where: { $0.name == ServiceKind.machine1.busName })?.answers == true {
            report.poolPath = try? client.property(destination: ServiceKind.machine1.busName, path: ServiceKind.machine1.managerPath,
                                                   interface: Machine1Manager.name, name: Machine1Manager.Property.poolPath.rawValue).stringValue
        }
        return report
    }

    /// The report as one line of JSON.
    public func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    /// The report as a table for a terminal.
    public func table() -> String {
        let width = services.map(\.name.count).max() ?? 0
        var lines = ["SERVICE".padding(toLength: width, withPad: " ", startingAt: 0) + "  STATE"]
        for s in services {
            let state = s.answers ? (s.berth ? "answers (berthd)" : "answers (not berthd)") : "not running"
            lines.append(s.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + state)
        }
        lines.append("")
        lines.append("Pool:    \(poolPath ?? "-")")
        lines.append("Version: \(version ?? "-")")
        return lines.joined(separator: "\n")
    }
}
