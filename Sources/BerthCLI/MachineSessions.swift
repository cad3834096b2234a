import ArgumentParser
import Bus
import Foundation
import Glibc
import Services

// berthctl shell and login: OpenMachineShell / OpenMachineLogin, then the pty master berthd
// returns is forwarded to berthctl's own terminal (PTYForwarder) until the session ends.

/// What `berthctl shell` sends to OpenMachineShell, worked out from its arguments as machinectl
/// 252 does: `[[USER@]NAME [PATH [ARGS…]]]`.
public struct ShellRequest: Equatable, Sendable {
    /// The machine; `.host` when none is given.
    public var machine: String
    /// The user; "" for berthd's default (root).
    public var user: String
    /// The program; "" for berthd's default (the user's shell).
    public var path: String
    /// Its argv, PATH first; empty when only PATH (or nothing) was given, so berthd picks the
    /// default arguments (a login shell).
    public var arguments: [String]
    /// VAR=VALUE for the environment, with the caller's TERM added when not set.
    public var environment: [String]

    /// Reads `positional` (`[[USER@]NAME [PATH [ARGS…]]]`), `--uid` and `--setenv`; `callerTerm`
    /// is berthctl's own $TERM. `USER@` wins over `--uid`; `@NAME` is refused, as ssh does.
    public static func parse(_ positional: [String], uid: String?, setenv: [String], callerTerm: String?) throws -> ShellRequest {
        // A leading `--` only ends berthctl's options (the passthrough argument keeps it).
        let positional = positional.first == "--" ? Array(positional.dropFirst()) : positional
        var machine = positional.first ?? ""
        var user = uid ?? ""
        if let at = machine.firstIndex(of: "@") {
            guard at != machine.startIndex else { throw ValidationError("Failed to parse machine specification '\(machine)': no user before '@'") }
            user = String(machine[..<at])
            machine = String(machine[machine.index(after: at)...])
        }
        if machine.isEmpty { machine = ".host" }
        for assignment in setenv {
            guard let eq = assignment.firstIndex(of: "="), eq != assignment.startIndex else {
                throw ValidationError("Invalid --setenv '\(assignment)': expected VAR=VALUE")
            }
        }
        var environment = setenv
        if !setenv.contains(where: { $0.hasPrefix("TERM=") }), let callerTerm { environment.append("TERM=\(callerTerm)") }
        let path = positional.count >= 2 ? positional[1] : ""
        let arguments = positional.count > 2 ? Array(positional[1...]) : []
        return ShellRequest(machine: machine, user: user, path: path, arguments: arguments, environment: environment)
    }
}

/// `berthctl shell [[USER@]NAME [PATH [ARGS…]]]`: a shell (or PATH with ARGS) in a machine, in
/// this terminal.
public struct Shell: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Open a shell (or run a program) in a machine, in this terminal.",
        discussion: """
            As machinectl shell: without a name the host (.host); USER@NAME runs as USER (default root). \
            Options go before NAME: everything from NAME on is the machine's command line. \
            Press ^] three times within a second to leave. When stdin is not a terminal its content is \
            sent and then an end-of-file (^D), so `echo cmd | berthctl shell NAME` ends by itself.
            """)
    @OptionGroup public var global: GlobalOptions
    @Option(name: .customLong("uid"), help: "The user to run as (USER@NAME wins).") public var uid: String?
    @Option(name: [.customShort("E"), .customLong("setenv")], help: "VAR=VALUE for the machine's command (may be repeated).")
    public var setenv: [String] = []
    @Flag(name: .shortAndLong, help: "Print no messages about the session.") public var quiet = false
    @Argument(parsing: .captureForPassthrough, help: "[USER@]NAME [PATH [ARGS…]]") public var command: [String] = []
    public init() {}

    public func validate() throws {
        // The passthrough argument takes a leading --help too; it is still berthctl's.
        if let first = command.first, first == "--help" || first == "-h" { throw CleanExit.helpRequest(self) }
    }

    public func run() throws {
        let request = try ShellRequest.parse(command, uid: uid, setenv: setenv,
                                             callerTerm: ProcessInfo.processInfo.environment["TERM"])
        try reporting {
            let client = try Machine1Client(global)
            let reply: [BusValue]
            do {
                reply = try client.manager(.openMachineShell, [
                    .string(request.machine), .string(request.user), .string(request.path),
                    .array(element: "s", request.arguments.map { .string($0) }),
                    .array(element: "s", request.environment.map { .string($0) }),
                ])
            } catch let e as CLIError {
                throw CLIError("Failed to get shell PTY: \(e.description)")
            }
            try MachineSession.forward(reply, machine: request.machine, client: client, login: false, quiet: quiet)
        }
    }
}

/// `berthctl login [NAME]`: a login prompt of a machine (its getty), in this terminal.
public struct Login: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Log in to a machine (its getty), in this terminal.",
        discussion: "The machine needs its own systemd. Press ^] three times within a second to leave.")
    @OptionGroup public var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Print no messages about the session.") public var quiet = false
    @Argument(help: "Machine name (default: the host, .host).") public var name: String?
    public init() {}

    public func run() throws {
        let machine = (name ?? "").isEmpty ? ".host" : name ?? ".host"
        try reporting {
            let client = try Machine1Client(global)
            // Subscribe before asking, so a machine that goes away in between is not missed.
            do {
                try client.client.matchSignal(sender: ServiceKind.machine1.busName, path: ServiceKind.machine1.managerPath,
                                              interface: Machine1Manager.name, member: Machine1Manager.Signal.machineRemoved.rawValue)
            } catch let error as BusError {
                throw CLIError(error)
            }
            let reply: [BusValue]
            do {
                reply = try client.manager(.openMachineLogin, [.string(machine)])
            } catch let e as CLIError {
                throw CLIError("Failed to get login PTY: \(e.description)")
            }
            try MachineSession.forward(reply, machine: machine, client: client, login: true, quiet: quiet)
        }
    }
}

/// The part shell and login share: the messages machinectl prints and the forwarding.
enum MachineSession {
    static func forward(_ reply: [BusValue], machine: String, client: Machine1Client, login: Bool, quiet: Bool) throws {
        guard let master = reply.first?.fileDescriptor else { throw CLIError("berthd returned no pty") }
        if !quiet {
            note(machine == ".host" ? "Connected to the local host. Press ^] three times within 1s to exit session."
                 : "Connected to machine \(machine). Press ^] three times within 1s to exit session.")
        }
        // A login's getty hangs the line up between sessions and the machine's systemd starts
        // another: only the machine going away (MachineRemoved) ends it, as in machinectl.
        let forwarder = PTYForwarder(master: master.rawValue, ignoreVHangup: login)
        var extra: (fd: Int32, onReadable: () -> Bool)?
        if login {
            let bus = client.client
            let check = { () -> Bool in
                guard let signals = try? bus.waitForSignals(timeoutMicroseconds: 0) else {
                    // The bus went away (berthd with it): nobody will say the machine went, so
                    // the next hangup ends the session.
                    forwarder.machineRemoved()
                    return false
                }
                if signals.contains(where: { $0.member == Machine1Manager.Signal.machineRemoved.rawValue
                                             && $0.arguments.first?.stringValue == machine }) {
                    forwarder.machineRemoved()
                }
                return true
            }
            _ = check()  // what sd-bus already queued while the call was answered
            extra = (bus.pollDescriptor, check)
        }
        let outcome = try forwarder.run(extra: extra)
        if forwarder.lastByte != UInt8(ascii: "\n") {
            FileHandle.standardOutput.write(Data("\n".utf8))
        }
        if !quiet {
            if outcome == .machineGone {
                note("Machine \(machine) terminated.")
            } else {
                note(machine == ".host" ? "Connection to the local host terminated." : "Connection to machine \(machine) terminated.")
            }
        }
    }

    /// A line on stderr, where machinectl logs its messages.
    static func note(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
