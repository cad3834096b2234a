import Bus

// The org.freedesktop.import1 interfaces exactly as systemd 252 introspects them (Tests/Fixtures/spec/systemd252-*.xml):
// member names, signatures, argument names, property change annotations, and which methods
// sd-bus itself restricts to root ("privileged"). Written from the fixture once; the services,
// berthd and the tests refer to members only through these enums.

/// `org.freedesktop.import1.Manager`: the import1 manager object `/org/freedesktop/import1`.
public enum Import1Manager {
    /// The interface name, `org.freedesktop.import1.Manager`.
    public static let name = "org.freedesktop.import1.Manager"

    /// The methods of `org.freedesktop.import1.Manager`, each raw value the D-Bus member name.
    public enum Method: String, CaseIterable, Sendable {
        case importTar = "ImportTar"
        case importRaw = "ImportRaw"
        case importFileSystem = "ImportFileSystem"
        case exportTar = "ExportTar"
        case exportRaw = "ExportRaw"
        case pullTar = "PullTar"
        case pullRaw = "PullRaw"
        case listTransfers = "ListTransfers"
        case cancelTransfer = "CancelTransfer"
        // Newer than systemd 252
        case importTarEx = "ImportTarEx"
        case importRawEx = "ImportRawEx"
        case importFileSystemEx = "ImportFileSystemEx"
        case exportTarEx = "ExportTarEx"
        case exportRawEx = "ExportRawEx"
        case pullTarEx = "PullTarEx"
        case pullRawEx = "PullRawEx"
        case listTransfersEx = "ListTransfersEx"
        case listImages = "ListImages"
        case pullOci = "PullOci"
    }

    /// The members Berth serves beside 252's, from newer systemd versions (v256's
    /// `org.freedesktop.import1(5)`: image classes and flags), keyed as `IntrospectionXML` names them.
    public static let newerMembers: Set<String> = [
        "method ImportTarEx", "method ImportRawEx", "method ImportFileSystemEx", "method ExportTarEx", "method ExportRawEx",
        "method PullTarEx", "method PullRawEx", "method ListTransfersEx", "method ListImages", "method PullOci",
    ]

    /// The signals of `org.freedesktop.import1.Manager`, each raw value the D-Bus member name.
    public enum Signal: String, CaseIterable, Sendable {
        case transferNew = "TransferNew"
        case transferRemoved = "TransferRemoved"
    }

    /// The whole interface as introspected from systemd 252.
    public static let interface = BusInterface(
        name: name,
        methods: [
            .init(Method.importTar, in: [("h", "fd"), ("s", "local_name"), ("b", "force"), ("b", "read_only")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.importRaw, in: [("h", "fd"), ("s", "local_name"), ("b", "force"), ("b", "read_only")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.importFileSystem, in: [("h", "fd"), ("s", "local_name"), ("b", "force"), ("b", "read_only")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.exportTar, in: [("s", "local_name"), ("h", "fd"), ("s", "format")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.exportRaw, in: [("s", "local_name"), ("h", "fd"), ("s", "format")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.pullTar, in: [("s", "url"), ("s", "local_name"), ("s", "verify_mode"), ("b", "force")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.pullRaw, in: [("s", "url"), ("s", "local_name"), ("s", "verify_mode"), ("b", "force")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.listTransfers, out: [("a(usssdo)", "transfers")]),
            .init(Method.cancelTransfer, in: [("u", "transfer_id")]),
            // Newer than systemd 252
            .init(Method.importTarEx, in: [("h", "fd"), ("s", "local_name"), ("s", "class"), ("t", "flags")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.importRawEx, in: [("h", "fd"), ("s", "local_name"), ("s", "class"), ("t", "flags")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.importFileSystemEx, in: [("h", "fd"), ("s", "local_name"), ("s", "class"), ("t", "flags")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.exportTarEx, in: [("s", "local_name"), ("s", "class"), ("h", "fd"), ("s", "format"), ("t", "flags")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.exportRawEx, in: [("s", "local_name"), ("s", "class"), ("h", "fd"), ("s", "format"), ("t", "flags")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.pullTarEx, in: [("s", "url"), ("s", "local_name"), ("s", "class"), ("s", "verify_mode"), ("t", "flags")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.pullRawEx, in: [("s", "url"), ("s", "local_name"), ("s", "class"), ("s", "verify_mode"), ("t", "flags")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Method.listTransfersEx, in: [("s", "class"), ("t", "flags")], out: [("a(ussssdo)", "transfers")]),
            .init(Method.listImages, in: [("s", "class"), ("t", "flags")], out: [("a(ssssbtttttt)", "images")]),
            .init(Method.pullOci, in: [("s", "ref"), ("s", "local_name"), ("s", "class"), ("t", "flags")], out: [("u", "transfer_id"), ("o", "transfer_path")]),
        ],
        properties: [
        ],
        signals: [
            .init(Signal.transferNew, [("u", "transfer_id"), ("o", "transfer_path")]),
            .init(Signal.transferRemoved, [("u", "transfer_id"), ("o", "transfer_path"), ("s", "result")]),
        ]
    )
}

/// `org.freedesktop.import1.Transfer`: one object per running transfer under
/// `/org/freedesktop/import1/transfer/_<id>`. No introspection fixture exists for it; it follows
/// Tests/Fixtures/spec/org.freedesktop.import1.txt (which spells out the annotations).
public enum Import1Transfer {
    /// The interface name, `org.freedesktop.import1.Transfer`.
    public static let name = "org.freedesktop.import1.Transfer"

    /// The methods of `org.freedesktop.import1.Transfer`, each raw value the D-Bus member name.
    public enum Method: String, CaseIterable, Sendable {
        case cancel = "Cancel"
    }

    /// The properties of `org.freedesktop.import1.Transfer`, each raw value the D-Bus member name.
    public enum Property: String, CaseIterable, Sendable {
        case id = "Id"
        case local = "Local"
        case remote = "Remote"
        case type = "Type"
        case verify = "Verify"
        case progress = "Progress"
    }

    /// The signals of `org.freedesktop.import1.Transfer`, each raw value the D-Bus member name.
    public enum Signal: String, CaseIterable, Sendable {
        case logMessage = "LogMessage"
        // Newer than systemd 252
        case progressUpdate = "ProgressUpdate"
    }

    /// The members Berth serves beside 252's, from newer systemd versions (v256), keyed as
    /// `IntrospectionXML` names them.
    public static let newerMembers: Set<String> = ["signal ProgressUpdate"]

    /// The whole interface.
    public static let interface = BusInterface(
        name: name,
        methods: [.init(Method.cancel)],
        properties: [
            .init(Property.id, "u", emitsChange: .const),
            .init(Property.local, "s", emitsChange: .const),
            .init(Property.remote, "s", emitsChange: .const),
            .init(Property.type, "s", emitsChange: .const),
            .init(Property.verify, "s", emitsChange: .const),
            .init(Property.progress, "d", emitsChange: .false),
        ],
        signals: [
            .init(Signal.logMessage, [("u", "priority"), ("s", "line")]),
            // Newer than systemd 252
            .init(Signal.progressUpdate, [("d", "progress")]),
        ]
    )
}
