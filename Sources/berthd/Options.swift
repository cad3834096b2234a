import ArgumentParser
import Services

/// berthd's command line.
struct BerthdOptions: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "berthd",
        abstract: "Serve org.freedesktop.machine1, import1 and portable1 over a Berth image pool.",
        version: BerthDaemon.version)

    @Option(help: "Resolve every path (pools, profiles, runtime state) under this folder.")
    var root: String = "/"

    @Option(help: "Comma-separated APIs to serve: machine1, import1, portable1.",
            transform: { text in
                try text.split(separator: ",").map { name in
                    guard let kind = ServiceKind(rawValue: String(name).filter { !$0.isWhitespace }) else {
                        throw ValidationError("unknown service '\(name)' (machine1, import1, portable1)")
                    }
                    return kind
                }
            })
    var services: [ServiceKind] = ServiceKind.allCases

    @Option(help: "D-Bus address to serve on (default: the system bus, $DBUS_SYSTEM_BUS_ADDRESS or /run/dbus/system_bus_socket).")
    var busAddress: String?

    @Flag(help: "Log debug messages.")
    var verbose = false

    func validate() throws {
        if services.isEmpty { throw ValidationError("--services needs at least one service") }
    }
}
