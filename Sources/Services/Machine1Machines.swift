import Bus
import Glibc
import Linux
import Logging
import Machines
import PoolAPI

/// A machine in berthd's registry: what was registered, and the watch on its leader's pidfd that
/// removes it when the leader exits.
struct RegisteredMachine {
    var machine: Machine
    let pidfd: FileDescriptor
    let watch: EventLoop.Watch
}

/// machine1's machine members: the registry of running containers and VMs.
///
/// A machine is created (CreateMachine: systemd starts `machine-NAME.scope` for berthd when it is on
/// the bus, `Machine1Lifecycle`; else berthd makes `machine.slice/machine-NAME.scope` in the
/// host's control-group hierarchies and moves the leader into it) or registered (RegisterMachine:
/// the leader stays in the registrar's own unit). Its leader is tracked by a pidfd on the event
/// loop: when it exits, the machine goes, with MachineRemoved. The registry is kept in files
/// under ROOT/run/berth/machines, so a restarted berthd still knows the machines that run.
extension Machine1Service {
    // MARK: manager members

    func machineManager(_ method: Machine1Manager.Method, _ call: MethodCall) async throws -> [BusValue] {
        switch method {
        case .listMachines:
            var entries: [BusValue] = [.structure([.string(".host"), .string("host"), .string(""), .objectPath(Self.machinePath(".host"))])]
            for m in machines.values.map(\.machine).sorted(by: { $0.name < $1.name }) {
                entries.append(.structure([.string(m.name), .string(m.class), .string(m.service), .objectPath(Self.machinePath(m.name))]))
            }
            return [.array(element: "(ssso)", entries)]
        case .getMachine:
            let name = try call.string(0)
            guard machineExists(name) else { throw Self.noSuchMachine(name) }
            return [.objectPath(Self.machinePath(name))]
        case .getMachineByPID:
            var pid = pid_t(bitPattern: UInt32(truncatingIfNeeded: try call.uint64(0)))
            if pid == 0 { pid = pid_t(try await call.credentials().pid ?? 0) }
            guard let name = machine(holding: pid) else {
                throw BusError(name: "org.freedesktop.machine1.NoMachineForPID", message: "PID \(pid) does not belong to any known machine")
            }
            return [.objectPath(Self.machinePath(name))]
        case .createMachine, .createMachineWithNetwork, .registerMachine, .registerMachineWithNetwork:
            let withNetwork = method == .createMachineWithNetwork || method == .registerMachineWithNetwork
            let interfaces: [Int32] = withNetwork ? try call.int32s(6) : []
            let create = method == .createMachine || method == .createMachineWithNetwork
            let scopeProperties = create ? try call.value(withNetwork ? 7 : 6).arrayValue ?? [] : []
            var leader = pid_t(bitPattern: UInt32(truncatingIfNeeded: try call.uint64(4)))
            if leader == 0 { leader = pid_t(try await call.credentials().pid ?? 0) }
            let path = try await addMachine(name: try call.string(0), id: try call.bytes(1), service: try call.string(2),
                                            class: try call.string(3), leader: leader, rootDirectory: try call.string(5),
                                            networkInterfaces: interfaces, scopeProperties: scopeProperties, create: create)
            return [.objectPath(path)]
        case .unregisterMachine:
            let name = try call.string(0)
            guard machines[name] != nil else { throw Self.noSuchMachine(name) }
            removeMachine(name)
            return []
        case .terminateMachine: return try await terminate(try call.string(0))
        case .killMachine: return try await kill(try call.string(0), who: try call.string(1), signal: try call.int32(2))
        case .getMachineOSRelease: return try await osRelease(try call.string(0))
        case .getMachineUIDShift: return [.uint32(try uidShift(try call.string(0)))]
        case .getMachineAddresses: return try await addresses(try call.string(0))
        case .copyFromMachine, .copyToMachine, .copyFromMachineWithFlags, .copyToMachineWithFlags:
            let withFlags = method == .copyFromMachineWithFlags || method == .copyToMachineWithFlags
            return try await copyFiles(machine: try call.string(0), fromMachine: method == .copyFromMachine || method == .copyFromMachineWithFlags,
                                       source: try call.string(1), destination: try call.string(2), flags: withFlags ? try call.uint64(3) : nil)
        case .mapFromMachineUser, .mapFromMachineGroup:
            return try mapFromMachine(try call.string(0), UInt32(truncatingIfNeeded: try call.uint64(1)), groups: method == .mapFromMachineGroup)
        case .mapToMachineUser, .mapToMachineGroup: return try mapToMachine(UInt32(truncatingIfNeeded: try call.uint64(0)), groups: method == .mapToMachineGroup)
        case .openMachinePTY, .openMachineLogin, .openMachineShell, .openMachineRootDirectory, .bindMountMachine:
            return try await reach(method, try call.string(0), call, offset: 1)
        case .registerMachineEx: return [.objectPath(try await addMachineEx(call, create: false))]
        case .createMachineEx: return [.objectPath(try await addMachineEx(call, create: true))]
        case .getMachineSSHInfo: return try sshInfo(try call.string(0))
        default: throw Harness.notImplemented(call)
        }
    }

    func machineObject(_ name: String, _ method: Machine1Machine.Method, _ call: MethodCall) async throws -> [BusValue] {
        guard machineExists(name) else { throw Harness.unknownObject(call.path) }
        switch method {
        case .terminate: return try await terminate(name)
        case .kill: return try await kill(name, who: try call.string(0), signal: try call.int32(1))
        case .getOSRelease: return try await osRelease(name)
        case .getUIDShift: return [.uint32(try uidShift(name))]
        case .getAddresses: return try await addresses(name)
        case .copyFrom, .copyTo, .copyFromWithFlags, .copyToWithFlags:
            let withFlags = method == .copyFromWithFlags || method == .copyToWithFlags
            return try await copyFiles(machine: name, fromMachine: method == .copyFrom || method == .copyFromWithFlags,
                                       source: try call.string(0), destination: try call.string(1), flags: withFlags ? try call.uint64(2) : nil)
        case .openPTY: return try await reach(.openMachinePTY, name, call, offset: 0)
        case .openLogin: return try await reach(.openMachineLogin, name, call, offset: 0)
        case .openShell: return try await reach(.openMachineShell, name, call, offset: 0)
        case .openRootDirectory: return try await reach(.openMachineRootDirectory, name, call, offset: 0)
        case .bindMount: return try await reach(.bindMountMachine, name, call, offset: 0)
        case .getSSHInfo: return try sshInfo(name)
        default: throw Harness.notImplemented(call)
        }
    }

    // MARK: registry

    func machineExists(_ name: String) -> Bool { name == ".host" || machines[name] != nil }

    func machineNames() -> [String] { [".host"] + machines.keys.sorted() }

    static func noSuchMachine(_ name: String) -> BusError {
        BusError(name: ErrorMapping.Name.noSuchMachine, message: "No machine '\(name)' known")
    }

    /// CreateMachine(WithNetwork) and RegisterMachine(WithNetwork), checked as machined checks them.
    private func addMachine(name: String, id: [UInt8], service: String, class: String, leader: pid_t, rootDirectory: String,
                            networkInterfaces: [Int32], scopeProperties: [BusValue], create: Bool) async throws -> ObjectPath {
        try await addMachine(MachineRequest(name: name, id: id, service: service, class: `class`, leader: leader, rootDirectory: rootDirectory,
                                            networkInterfaces: networkInterfaces, scopeProperties: scopeProperties), create: create)
    }

    /// Adds the machine `request` describes: CreateMachine puts its leader in a scope of its own
    /// (systemd's `machine-NAME.scope` when systemd answers on the bus, else a group berthd makes),
    /// RegisterMachine leaves it in the registrar's unit.
    func addMachine(_ request: MachineRequest, create: Bool) async throws -> ObjectPath {
        let name = request.name, id = request.id, rootDirectory = request.rootDirectory, leader = request.leader
        guard MachineName.isValid(name) else { throw BusError.invalidArgs("Invalid machine name") }
        guard machines[name] == nil, !lifecycle.reservedNames.contains(name) else {
            throw BusError(name: "org.freedesktop.machine1.MachineExists", message: "Machine '\(name)' already exists")
        }
        guard id.isEmpty || id.count == 16 else { throw BusError.invalidArgs("Invalid machine ID parameter") }
        guard ["container", "vm", ""].contains(request.class) else { throw BusError.invalidArgs("Invalid machine class parameter") }
        guard rootDirectory.isEmpty || (rootDirectory.hasPrefix("/") && !rootDirectory.utf8.contains(0)) else {
            throw BusError.invalidArgs("Root directory must be empty or an absolute path")
        }
        guard leader > 1 else { throw BusError.invalidArgs("Invalid leader PID") }
        if machines.values.contains(where: { $0.machine.leader == leader }) || lifecycle.reservedLeaders.contains(leader) {
            // machined 252 answers a taken leader with plain EEXIST (measured).
            throw BusError(name: BusError.Name.fileExists, message: "File exists")
        }
        // The pidfd first: from here on the leader cannot be swapped for another process with its pid.
        let pidfd = try pinLeader(request)
        guard let start = processStartTime(leader) else {
            pidfd.close()
            throw BusError(errno: .ESRCH, "Leader PID \(leader) is gone")
        }
        // The name and the leader are taken while systemd starts the scope, so a second call cannot race this one.
        lifecycle.reservedNames.insert(name)
        lifecycle.reservedLeaders.insert(leader)
        defer {
            lifecycle.reservedNames.remove(name)
            lifecycle.reservedLeaders.remove(leader)
        }
        var unit = "", group = ""
        if create {
            if await systemdAnswers() {
                // systemd owns the scope: berthd records no group of its own for it.
                do { unit = try await startScope(request) } catch {
                    pidfd.close()
                    throw error
                }
            } else {
                // Without systemd as PID 1: a group of berthd's own in machine.slice, named as systemd names the scope.
                unit = MachineName.scopeUnit(name)
                group = "machine.slice/" + unit
                do { try controlGroups.create(group, moving: leader) } catch {
                    pidfd.close()
                    throw BusError(errno: error.errno, "Failed to make the control group \(group) for machine '\(name)'")
                }
            }
        } else {
            unit = Self.unit(ofGroup: controlGroups.group(of: leader) ?? "")
        }
        var now = timespec(), boot = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        clock_gettime(CLOCK_MONOTONIC, &boot)
        let machine = Machine(name: name, id: id.allSatisfy { $0 == 0 } ? [] : id, service: request.service,
                              class: request.class.isEmpty ? "container" : request.class, leader: leader, leaderStartTime: start,
                              rootDirectory: rootDirectory, networkInterfaces: request.networkInterfaces, unit: unit, cgroup: group,
                              timestamp: Self.microseconds(now), timestampMonotonic: Self.microseconds(boot),
                              sshAddress: request.sshAddress, sshPrivateKeyPath: request.sshPrivateKeyPath)
        do { try track(machine, pidfd: pidfd) } catch {
            pidfd.close()
            if !group.isEmpty { controlGroups.remove(group) }
            throw BusError(errno: error.errno, "Failed to watch the leader of machine '\(name)'")
        }
        do { try machineStore.save(machine) } catch {
            // Still registered; only a restart of berthd would forget it.
            Logger(label: "berth.machine1").warning("cannot record machine '\(name)' in \(machineStore.directory): \(error)")
        }
        try? await bus.emitSignal(path: ServiceKind.machine1.managerPath, interface: Machine1Manager.name,
                                  member: Machine1Manager.Signal.machineNew.rawValue, [.string(name), .objectPath(Self.machinePath(name))])
        return Self.machinePath(name)
    }

    /// Starts watching `machine`'s leader through `pidfd` and records it.
    private func track(_ machine: Machine, pidfd: FileDescriptor) throws(SystemCallError) {
        let name = machine.name
        let watch = try bus.loop.watchReadable(pidfd.rawValue) { [weak self] in
            // The loop thread is this actor's executor.
            self?.assumeIsolated { $0.leaderExited(name) }
        }
        machines[name] = RegisteredMachine(machine: machine, pidfd: pidfd, watch: watch)
    }

    /// The leader of `name` exited: the machine goes, with what is left of its group.
    func leaderExited(_ name: String) {
        guard let entry = machines[name] else { return }
        if !entry.machine.cgroup.isEmpty { controlGroups.signal(entry.machine.cgroup, SIGKILL) }
        removeMachine(name)
    }

    /// Drops `name` from the registry (its files, watch and, once empty, its group) with MachineRemoved.
    func removeMachine(_ name: String) {
        guard let entry = machines.removeValue(forKey: name) else { return }
        entry.watch.cancel()
        entry.pidfd.close()
        machineStore.remove(name)
        if !entry.machine.cgroup.isEmpty { controlGroups.remove(entry.machine.cgroup) }
        releaseScope(entry.machine)
        let bus = self.bus
        Task {
            try? await bus.emitSignal(path: ServiceKind.machine1.managerPath, interface: Machine1Manager.name,
                                      member: Machine1Manager.Signal.machineRemoved.rawValue,
                                      [.string(name), .objectPath(Self.machinePath(name))])
        }
    }

    /// At start: the machines on file whose leader still runs (the same process: pid and start
    /// time) are tracked again; the others are forgotten.
    func restoreMachines() {
        for machine in machineStore.loadAll() {
            guard processStartTime(machine.leader) == machine.leaderStartTime,
                  let pidfd = try? openProcessDescriptor(machine.leader),
                  processStartTime(machine.leader) == machine.leaderStartTime else {
                machineStore.remove(machine.name)
                if !machine.cgroup.isEmpty { controlGroups.remove(machine.cgroup) }
                continue
            }
            do { try track(machine, pidfd: pidfd) } catch { pidfd.close() }
        }
    }

    /// The machine whose leader is `pid`, or whose group holds it.
    private func machine(holding pid: pid_t) -> String? {
        if let m = machines.values.first(where: { $0.machine.leader == pid }) { return m.machine.name }
        guard let group = controlGroups.group(of: pid) else { return nil }
        if let m = machines.values.first(where: { !$0.machine.cgroup.isEmpty && (group == "/" + $0.machine.cgroup || group.hasPrefix("/" + $0.machine.cgroup + "/")) }) {
            return m.machine.name
        }
        // A scope systemd made: the machine whose unit the pid's group names.
        let unit = Self.unit(ofGroup: group)
        return !Self.isUnitName(unit) ? nil : machines.values.first { $0.machine.cgroup.isEmpty && $0.machine.unit == unit }?.machine.name
    }

    // MARK: members on one machine

    private func registered(_ name: String) throws(BusError) -> Machine {
        if name == ".host" { throw BusError.notSupported("The host is not a machine that can be changed") }
        guard let m = machines[name]?.machine else { throw Self.noSuchMachine(name) }
        return m
    }

    /// TerminateMachine / Machine.Terminate: SIGTERM to every process of the machine (its group,
    /// else its leader), and SIGKILL to what is left 10 s later, as a scope is stopped.
    private func terminate(_ name: String) async throws -> [BusValue] {
        let m = try registered(name)
        if try await stopThroughSystemd(m) { return [] }
        signalMachine(m, all: true, SIGTERM)
        let leader = m.leader
        Task {
            try? await Task.sleep(for: .seconds(10))
            if let still = machines[name]?.machine, still.leader == leader { signalMachine(still, all: true, SIGKILL) }
        }
        return []
    }

    /// KillMachine / Machine.Kill: `who` is `leader` or `all`.
    private func kill(_ name: String, who: String, signal: Int32) async throws -> [BusValue] {
        let all: Bool
        switch who {
        case "leader": all = false
        case "all", "": all = true
        default: throw BusError.invalidArgs("Invalid kill parameter '\(who)'")
        }
        guard signal > 0 && signal < 65 else { throw BusError.invalidArgs("Invalid signal \(signal)") }
        let m = try registered(name)
        if all, try await killThroughSystemd(m, signal) { return [] }
        signalMachine(m, all: all, signal)
        return []
    }

    private func signalMachine(_ m: Machine, all: Bool, _ signal: Int32) {
        if let entry = machines[m.name] { try? sendSignal(signal, toProcess: entry.pidfd) }
        if all && !m.cgroup.isEmpty { controlGroups.signal(m.cgroup, signal) }
    }

    /// GetMachineOSRelease: the os-release inside the machine, read through its leader's root.
    private func osRelease(_ name: String) async throws -> [BusValue] {
        let root: String
        if name == ".host" { root = paths.root } else { root = "/proc/\(try registered(name).leader)/root" }
        do { return [.stringDictionary(try await Blocking.run(.interactive) { try ImageMetadata.read(imageRoot: root).osRelease })] }
        catch { throw ErrorMapping.busError(error) }
    }

    /// GetMachineUIDShift: the base of the machine's user namespace mapping (0 when it shares the host's).
    private func uidShift(_ name: String) throws(BusError) -> UInt32 {
        if name == ".host" { return 0 }
        let m = try registered(name)
        guard let text = readSmall("/proc/\(m.leader)/uid_map") else { throw BusError(errno: .ESRCH, "Cannot read the UID map of machine '\(name)'") }
        let noZero = BusError(errno: .ENXIO, "Machine '\(name)' has no UID 0 in its mapping")
        guard let mapping = IDMapping(parsing: text) else { throw noZero }
        guard mapping.ranges.count == 1 else { throw BusError(errno: .ENXIO, "Machine '\(name)' has a complex UID mapping") }
        guard mapping.ranges[0].inside == 0 else { throw noZero }
        return mapping.ranges[0].outside
    }

    // MARK: properties

    func machineProperty(_ property: String, of name: String) throws -> BusValue {
        let m: Machine
        if name == ".host" {
            let id = ImageMetadata.parseMachineID(readSmall(joinPath(paths.root, "etc/machine-id")) ?? "")
            m = Machine(name: ".host", id: id, service: "", class: "host", leader: 1, leaderStartTime: 0, rootDirectory: "/",
                        networkInterfaces: [], unit: "-.slice", cgroup: "", timestamp: 0, timestampMonotonic: 0)
        } else {
            guard let found = machines[name]?.machine else { throw Harness.unknownObject(Self.machinePath(name)) }
            m = found
        }
        switch Machine1Machine.Property(rawValue: property) {
        case .name: return .string(m.name)
        case .id: return .bytes(m.id.isEmpty ? [UInt8](repeating: 0, count: 16) : m.id)
        case .timestamp: return .uint64(m.timestamp)
        case .timestampMonotonic: return .uint64(m.timestampMonotonic)
        case .service: return .string(m.service)
        case .unit: return .string(m.unit)
        case .leader: return .uint32(UInt32(bitPattern: m.leader))
        case .class: return .string(m.class)
        case .rootDirectory: return .string(m.rootDirectory)
        case .networkInterfaces: return .array(element: "i", m.networkInterfaces.map { .int32($0) })
        case .state: return .string("running")
        case nil: throw Harness.unknownProperty(property, Machine1Machine.name)
        }
    }

    static func microseconds(_ t: timespec) -> UInt64 { UInt64(t.tv_sec) * 1_000_000 + UInt64(t.tv_nsec / 1000) }
}
