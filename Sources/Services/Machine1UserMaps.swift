import Bus
import Glibc
import Linux
import Machines

/// machine1's MapFromMachineUser/Group (a machine's id → the host's) and MapToMachineUser/Group
/// (a host id → the machine that owns it and its id there), from each machine's
/// /proc/LEADER/uid_map and gid_map, with machined 252's rules and replies: ids below 65536 are
/// the host's own; a machine without a user namespace maps nothing; `.host` is not a container.
extension Machine1Service {
    /// MapFromMachineUser / MapFromMachineGroup.
    func mapFromMachine(_ name: String, _ id: UInt32, groups: Bool) throws(BusError) -> [BusValue] {
        let what = groups ? "group" : "user"
        guard IDMapping.isValid(UInt64(id)) else { throw BusError.invalidArgs("Invalid \(what) ID \(id)") }
        guard machineExists(name) else { throw Self.noSuchMachine(name) }
        guard let machine = machines[name]?.machine, machine.class == "container" else {
            throw BusError.invalidArgs("Not supported for non-container machines.")
        }
        guard let mapping = IDMapping.of(process: machine.leader, groups: groups) else { throw Self.sdBusErrno(.ESRCH) }
        guard let outer = mapping.outside(id) else {
            throw BusError(name: Self.noSuchMapping(groups: groups), message: "Machine '\(name)' has no matching \(what) mappings.")
        }
        return [.uint32(outer)]
    }

    /// MapToMachineUser / MapToMachineGroup: the first machine (by name) whose map holds `id`.
    func mapToMachine(_ id: UInt32, groups: Bool) throws(BusError) -> [BusValue] {
        let what = groups ? "group" : "user"
        guard IDMapping.isValid(UInt64(id)) else { throw BusError.invalidArgs("Invalid \(what) ID \(id)") }
        guard id >= 0x10000 else {
            throw BusError(name: Self.noSuchMapping(groups: groups),
                           message: "\(groups ? "Group" : "User") \(id) belongs to host \(groups ? "GID" : "UID") range")
        }
        for name in machines.keys.sorted() {
            guard let machine = machines[name]?.machine, machine.class == "container",
                  let inner = IDMapping.of(process: machine.leader, groups: groups)?.inside(id) else { continue }
            return [.string(name), .objectPath(Self.machinePath(name)), .uint32(inner)]
        }
        throw BusError(name: Self.noSuchMapping(groups: groups), message: "No matching \(what) mapping for \(id).")
    }

    private static func noSuchMapping(groups: Bool) -> String {
        groups ? "org.freedesktop.machine1.NoSuchGroupMapping" : "org.freedesktop.machine1.NoSuchUserMapping"
    }
}
