import Bus

// The org.freedesktop.machine1 interfaces exactly as systemd 252 introspects them (Tests/Fixtures/spec/systemd252-*.xml):
// member names, signatures, argument names, property change annotations, and which methods
// sd-bus itself restricts to root ("privileged"). Written from the fixture once; the services,
// berthd and the tests refer to members only through these enums.

/// `org.freedesktop.machine1.Manager`: the machine1 manager object `/org/freedesktop/machine1`.
public enum Machine1Manager {
    /// The interface name, `org.freedesktop.machine1.Manager`.
    public static let name = "org.freedesktop.machine1.Manager"

    /// The methods of `org.freedesktop.machine1.Manager`, each raw value the D-Bus member name.
    public enum Method: String, CaseIterable, Sendable {
        case getMachine = "GetMachine"
        case getImage = "GetImage"
        case getMachineByPID = "GetMachineByPID"
        case listMachines = "ListMachines"
        case listImages = "ListImages"
        case createMachine = "CreateMachine"
        case createMachineWithNetwork = "CreateMachineWithNetwork"
        case registerMachine = "RegisterMachine"
        case registerMachineWithNetwork = "RegisterMachineWithNetwork"
        case unregisterMachine = "UnregisterMachine"
        case terminateMachine = "TerminateMachine"
        case killMachine = "KillMachine"
        case getMachineAddresses = "GetMachineAddresses"
        case getMachineOSRelease = "GetMachineOSRelease"
        case openMachinePTY = "OpenMachinePTY"
        case openMachineLogin = "OpenMachineLogin"
        case openMachineShell = "OpenMachineShell"
        case bindMountMachine = "BindMountMachine"
        case copyFromMachine = "CopyFromMachine"
        case copyToMachine = "CopyToMachine"
        case copyFromMachineWithFlags = "CopyFromMachineWithFlags"
        case copyToMachineWithFlags = "CopyToMachineWithFlags"
        case openMachineRootDirectory = "OpenMachineRootDirectory"
        case getMachineUIDShift = "GetMachineUIDShift"
        case removeImage = "RemoveImage"
        case renameImage = "RenameImage"
        case cloneImage = "CloneImage"
        case markImageReadOnly = "MarkImageReadOnly"
        case getImageHostname = "GetImageHostname"
        case getImageMachineID = "GetImageMachineID"
        case getImageMachineInfo = "GetImageMachineInfo"
        case getImageOSRelease = "GetImageOSRelease"
        case setPoolLimit = "SetPoolLimit"
        case setImageLimit = "SetImageLimit"
        case cleanPool = "CleanPool"
        case mapFromMachineUser = "MapFromMachineUser"
        case mapToMachineUser = "MapToMachineUser"
        case mapFromMachineGroup = "MapFromMachineGroup"
        case mapToMachineGroup = "MapToMachineGroup"
        // Newer than systemd 252
        case registerMachineEx = "RegisterMachineEx"
        case createMachineEx = "CreateMachineEx"
        case getMachineSSHInfo = "GetMachineSSHInfo"
    }

    /// The members Berth serves beside 252's, from newer systemd versions (v259's
    /// `org.freedesktop.machine1(5)`), keyed as `IntrospectionXML` names them.
    public static let newerMembers: Set<String> = ["method RegisterMachineEx", "method CreateMachineEx", "method GetMachineSSHInfo"]

    /// The properties of `org.freedesktop.machine1.Manager`, each raw value the D-Bus member name.
    public enum Property: String, CaseIterable, Sendable {
        case poolPath = "PoolPath"
        case poolUsage = "PoolUsage"
        case poolLimit = "PoolLimit"
    }

    /// The signals of `org.freedesktop.machine1.Manager`, each raw value the D-Bus member name.
    public enum Signal: String, CaseIterable, Sendable {
        case machineNew = "MachineNew"
        case machineRemoved = "MachineRemoved"
    }

    /// The whole interface as introspected from systemd 252.
    public static let interface = BusInterface(
        name: name,
        methods: [
            .init(Method.getMachine, in: [("s", "name")], out: [("o", "machine")]),
            .init(Method.getImage, in: [("s", "name")], out: [("o", "image")]),
            .init(Method.getMachineByPID, in: [("u", "pid")], out: [("o", "machine")]),
            .init(Method.listMachines, out: [("a(ssso)", "machines")]),
            .init(Method.listImages, out: [("a(ssbttto)", "images")]),
            .init(Method.createMachine, in: [("s", "name"), ("ay", "id"), ("s", "service"), ("s", "class"), ("u", "leader"), ("s", "root_directory"), ("a(sv)", "scope_properties")], out: [("o", "path")], privileged: true),
            .init(Method.createMachineWithNetwork, in: [("s", "name"), ("ay", "id"), ("s", "service"), ("s", "class"), ("u", "leader"), ("s", "root_directory"), ("ai", "ifindices"), ("a(sv)", "scope_properties")], out: [("o", "path")], privileged: true),
            .init(Method.registerMachine, in: [("s", "name"), ("ay", "id"), ("s", "service"), ("s", "class"), ("u", "leader"), ("s", "root_directory")], out: [("o", "path")], privileged: true),
            .init(Method.registerMachineWithNetwork, in: [("s", "name"), ("ay", "id"), ("s", "service"), ("s", "class"), ("u", "leader"), ("s", "root_directory"), ("ai", "ifindices")], out: [("o", "path")], privileged: true),
            .init(Method.unregisterMachine, in: [("s", "name")]),
            .init(Method.terminateMachine, in: [("s", "id")]),
            .init(Method.killMachine, in: [("s", "name"), ("s", "who"), ("i", "signal")]),
            .init(Method.getMachineAddresses, in: [("s", "name")], out: [("a(iay)", "addresses")]),
            .init(Method.getMachineOSRelease, in: [("s", "name")], out: [("a{ss}", "fields")]),
            .init(Method.openMachinePTY, in: [("s", "name")], out: [("h", "pty"), ("s", "pty_path")], privileged: true),
            .init(Method.openMachineLogin, in: [("s", "name")], out: [("h", "pty"), ("s", "pty_path")]),
            .init(Method.openMachineShell, in: [("s", "name"), ("s", "user"), ("s", "path"), ("as", "args"), ("as", "environment")], out: [("h", "pty"), ("s", "pty_path")]),
            .init(Method.bindMountMachine, in: [("s", "name"), ("s", "source"), ("s", "destination"), ("b", "read_only"), ("b", "mkdir")]),
            .init(Method.copyFromMachine, in: [("s", "name"), ("s", "source"), ("s", "destination")]),
            .init(Method.copyToMachine, in: [("s", "name"), ("s", "source"), ("s", "destination")]),
            .init(Method.copyFromMachineWithFlags, in: [("s", "name"), ("s", "source"), ("s", "destination"), ("t", "flags")]),
            .init(Method.copyToMachineWithFlags, in: [("s", "name"), ("s", "source"), ("s", "destination"), ("t", "flags")]),
            .init(Method.openMachineRootDirectory, in: [("s", "name")], out: [("h", "fd")]),
            .init(Method.getMachineUIDShift, in: [("s", "name")], out: [("u", "shift")]),
            .init(Method.removeImage, in: [("s", "name")]),
            .init(Method.renameImage, in: [("s", "name"), ("s", "new_name")]),
            .init(Method.cloneImage, in: [("s", "name"), ("s", "new_name"), ("b", "read_only")]),
            .init(Method.markImageReadOnly, in: [("s", "name"), ("b", "read_only")]),
            .init(Method.getImageHostname, in: [("s", "name")], out: [("s", "hostname")]),
            .init(Method.getImageMachineID, in: [("s", "name")], out: [("ay", "id")]),
            .init(Method.getImageMachineInfo, in: [("s", "name")], out: [("a{ss}", "machine_info")]),
            .init(Method.getImageOSRelease, in: [("s", "name")], out: [("a{ss}", "os_release")]),
            .init(Method.setPoolLimit, in: [("t", "size")]),
            .init(Method.setImageLimit, in: [("s", "name"), ("t", "size")]),
            .init(Method.cleanPool, in: [("s", "mode")], out: [("a(st)", "images")]),
            .init(Method.mapFromMachineUser, in: [("s", "name"), ("u", "uid_inner")], out: [("u", "uid_outer")]),
            .init(Method.mapToMachineUser, in: [("u", "uid_outer")], out: [("s", "machine_name"), ("o", "machine_path"), ("u", "uid_inner")]),
            .init(Method.mapFromMachineGroup, in: [("s", "name"), ("u", "gid_inner")], out: [("u", "gid_outer")]),
            .init(Method.mapToMachineGroup, in: [("u", "gid_outer")], out: [("s", "machine_name"), ("o", "machine_path"), ("u", "gid_inner")]),
            // Newer than systemd 252: root only here, as 252's CreateMachine and RegisterMachine.
            .init(Method.registerMachineEx, in: [("s", "name"), ("a(sv)", "properties")], out: [("o", "path")], privileged: true),
            .init(Method.createMachineEx, in: [("s", "name"), ("a(sv)", "properties"), ("a(sv)", "scope_properties")],
                  out: [("o", "path")], privileged: true),
            .init(Method.getMachineSSHInfo, in: [("s", "name")], out: [("s", "ssh_address"), ("s", "ssh_private_key_path")]),
        ],
        properties: [
            .init(Property.poolPath, "s", emitsChange: .false),
            .init(Property.poolUsage, "t", emitsChange: .false),
            .init(Property.poolLimit, "t", emitsChange: .false),
        ],
        signals: [
            .init(Signal.machineNew, [("s", "machine"), ("o", "path")]),
            .init(Signal.machineRemoved, [("s", "machine"), ("o", "path")]),
        ]
    )
}

/// `org.freedesktop.machine1.Image`: one object per image under `/org/freedesktop/machine1/image/`.
public enum Machine1Image {
    /// The interface name, `org.freedesktop.machine1.Image`.
    public static let name = "org.freedesktop.machine1.Image"

    /// The methods of `org.freedesktop.machine1.Image`, each raw value the D-Bus member name.
    public enum Method: String, CaseIterable, Sendable {
        case remove = "Remove"
        case rename = "Rename"
        case clone = "Clone"
        case markReadOnly = "MarkReadOnly"
        case setLimit = "SetLimit"
        case getHostname = "GetHostname"
        case getMachineID = "GetMachineID"
        case getMachineInfo = "GetMachineInfo"
        case getOSRelease = "GetOSRelease"
    }

    /// The properties of `org.freedesktop.machine1.Image`, each raw value the D-Bus member name.
    public enum Property: String, CaseIterable, Sendable {
        case name = "Name"
        case path = "Path"
        case type = "Type"
        case readOnly = "ReadOnly"
        case creationTimestamp = "CreationTimestamp"
        case modificationTimestamp = "ModificationTimestamp"
        case usage = "Usage"
        case limit = "Limit"
        case usageExclusive = "UsageExclusive"
        case limitExclusive = "LimitExclusive"
    }

    /// The whole interface as introspected from systemd 252.
    public static let interface = BusInterface(
        name: name,
        methods: [
            .init(Method.remove),
            .init(Method.rename, unnamedIn: ["s"], unnamedOut: []),
            .init(Method.clone, unnamedIn: ["s", "b"], unnamedOut: []),
            .init(Method.markReadOnly, unnamedIn: ["b"], unnamedOut: []),
            .init(Method.setLimit, unnamedIn: ["t"], unnamedOut: []),
            .init(Method.getHostname, unnamedIn: [], unnamedOut: ["s"]),
            .init(Method.getMachineID, unnamedIn: [], unnamedOut: ["ay"]),
            .init(Method.getMachineInfo, unnamedIn: [], unnamedOut: ["a{ss}"]),
            .init(Method.getOSRelease, unnamedIn: [], unnamedOut: ["a{ss}"]),
        ],
        properties: [
            .init(Property.name, "s", emitsChange: .false),
            .init(Property.path, "s", emitsChange: .false),
            .init(Property.type, "s", emitsChange: .false),
            .init(Property.readOnly, "b", emitsChange: .false),
            .init(Property.creationTimestamp, "t", emitsChange: .false),
            .init(Property.modificationTimestamp, "t", emitsChange: .false),
            .init(Property.usage, "t", emitsChange: .false),
            .init(Property.limit, "t", emitsChange: .false),
            .init(Property.usageExclusive, "t", emitsChange: .false),
            .init(Property.limitExclusive, "t", emitsChange: .false),
        ],
        signals: [
        ]
    )
}

/// `org.freedesktop.machine1.Machine`: one object per registered machine under
/// `/org/freedesktop/machine1/machine/`. There is no systemd 252 introspection fixture for it: it
/// follows systemd 252's machine object (the Manager's per-machine methods without the name
/// argument, with the same argument names; properties constant except `State`).
public enum Machine1Machine {
    /// The interface name, `org.freedesktop.machine1.Machine`.
    public static let name = "org.freedesktop.machine1.Machine"

    /// The methods of `org.freedesktop.machine1.Machine`, each raw value the D-Bus member name.
    public enum Method: String, CaseIterable, Sendable {
        case terminate = "Terminate"
        case kill = "Kill"
        case getAddresses = "GetAddresses"
        case getOSRelease = "GetOSRelease"
        case getUIDShift = "GetUIDShift"
        case openPTY = "OpenPTY"
        case openLogin = "OpenLogin"
        case openShell = "OpenShell"
        case bindMount = "BindMount"
        case copyFrom = "CopyFrom"
        case copyTo = "CopyTo"
        case copyFromWithFlags = "CopyFromWithFlags"
        case copyToWithFlags = "CopyToWithFlags"
        case openRootDirectory = "OpenRootDirectory"
        // Newer than systemd 252
        case getSSHInfo = "GetSSHInfo"
    }

    /// The members Berth serves beside 252's, from newer systemd versions, keyed as
    /// `IntrospectionXML` names them.
    public static let newerMembers: Set<String> = ["method GetSSHInfo"]

    /// The properties of `org.freedesktop.machine1.Machine`, each raw value the D-Bus member name.
    public enum Property: String, CaseIterable, Sendable {
        case name = "Name"
        case id = "Id"
        case timestamp = "Timestamp"
        case timestampMonotonic = "TimestampMonotonic"
        case service = "Service"
        case unit = "Unit"
        case leader = "Leader"
        case `class` = "Class"
        case rootDirectory = "RootDirectory"
        case networkInterfaces = "NetworkInterfaces"
        case state = "State"
    }

    /// The whole interface.
    public static let interface = BusInterface(
        name: name,
        methods: [
            .init(Method.terminate),
            .init(Method.kill, in: [("s", "who"), ("i", "signal")]),
            .init(Method.getAddresses, out: [("a(iay)", "addresses")]),
            .init(Method.getOSRelease, out: [("a{ss}", "fields")]),
            .init(Method.getUIDShift, out: [("u", "shift")]),
            .init(Method.openPTY, out: [("h", "pty"), ("s", "pty_path")], privileged: true),
            .init(Method.openLogin, out: [("h", "pty"), ("s", "pty_path")]),
            .init(Method.openShell, in: [("s", "user"), ("s", "path"), ("as", "args"), ("as", "environment")],
                  out: [("h", "pty"), ("s", "pty_path")]),
            .init(Method.bindMount, in: [("s", "source"), ("s", "destination"), ("b", "read_only"), ("b", "mkdir")]),
            .init(Method.copyFrom, in: [("s", "source"), ("s", "destination")]),
            .init(Method.copyTo, in: [("s", "source"), ("s", "destination")]),
            .init(Method.copyFromWithFlags, in: [("s", "source"), ("s", "destination"), ("t", "flags")]),
            .init(Method.copyToWithFlags, in: [("s", "source"), ("s", "destination"), ("t", "flags")]),
            .init(Method.openRootDirectory, out: [("h", "fd")]),
            // Newer than systemd 252
            .init(Method.getSSHInfo, out: [("s", "ssh_address"), ("s", "ssh_private_key_path")]),
        ],
        properties: [
            .init(Property.name, "s", emitsChange: .const),
            .init(Property.id, "ay", emitsChange: .const),
            .init(Property.timestamp, "t", emitsChange: .const),
            .init(Property.timestampMonotonic, "t", emitsChange: .const),
            .init(Property.service, "s", emitsChange: .const),
            .init(Property.unit, "s", emitsChange: .const),
            .init(Property.leader, "u", emitsChange: .const),
            .init(Property.class, "s", emitsChange: .const),
            .init(Property.rootDirectory, "s", emitsChange: .const),
            .init(Property.networkInterfaces, "ai", emitsChange: .const),
            .init(Property.state, "s", emitsChange: .false),
        ]
    )
}
