import Bus

/// What portable1 asks of systemd's service manager, `org.freedesktop.systemd1`, when it is on
/// the bus: whether a unit runs and whether it is enabled. Every question has an answer without
/// systemd (nil), so berthd works the same on a host without systemd as PID 1, from the files.
struct Systemd1 {
    static let name = "org.freedesktop.systemd1"
    static let path: ObjectPath = "/org/freedesktop/systemd1"
    static let manager = "org.freedesktop.systemd1.Manager"
    static let unit = "org.freedesktop.systemd1.Unit"

    let bus: Bus

    /// Whether systemd's manager owns its name on this bus.
    func isPresent() async -> Bool {
        (try? await bus.nameHasOwner(Self.name)) ?? false
    }

    /// The unit's ActiveState (`active`, `inactive`, `failed`, …), nil if it is not loaded.
    func activeState(_ unit: String) async -> String? {
        guard let object = try? await bus.call(destination: Self.name, path: Self.path, interface: Self.manager,
                                               member: "GetUnit", [.string(unit)]).first?.stringValue else { return nil }
        let reply = try? await bus.call(destination: Self.name, path: ObjectPath(object), interface: "org.freedesktop.DBus.Properties",
                                        member: "Get", [.string(Self.unit), .string("ActiveState")])
        return reply?.first?.stringValue
    }

    /// Whether the unit runs (active, reloading or starting).
    func isRunning(_ unit: String) async -> Bool {
        ["active", "reloading", "activating", "deactivating"].contains(await activeState(unit) ?? "")
    }

    /// The unit file's enablement (`enabled`, `enabled-runtime`, `disabled`, `static`, …), nil if unknown.
    func unitFileState(_ unit: String) async -> String? {
        try? await bus.call(destination: Self.name, path: Self.path, interface: Self.manager, member: "GetUnitFileState",
                            [.string(unit)]).first?.stringValue
    }
}
