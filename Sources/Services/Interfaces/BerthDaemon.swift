import Bus

/// `io.berth.Daemon`: Berth's own interface, exported beside each manager interface, so clients
/// (berthctl) can tell berthd from systemd's daemons and read its version and pool.
public enum BerthDaemon {
    /// The interface name, `io.berth.Daemon`.
    public static let name = "io.berth.Daemon"

    /// The properties of `io.berth.Daemon`, each raw value the D-Bus member name.
    public enum Property: String, CaseIterable, Sendable {
        /// berthd's version string.
        case version = "Version"
        /// The folder every path is resolved under (`--root`).
        case root = "Root"
        /// The bus names this berthd serves.
        case services = "Services"
    }

    /// The whole interface.
    public static let interface = BusInterface(
        name: name,
        properties: [
            .init(Property.version, "s", emitsChange: .const),
            .init(Property.root, "s", emitsChange: .const),
            .init(Property.services, "as", emitsChange: .const),
        ]
    )

    /// berthd's version: the VERSION file at the top of the repository, read at build time.
    public static let version = buildVersion
}
