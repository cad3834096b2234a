import Bus
import Glibc
import Linux
import Logging
import Machines
import struct SystemPackage.FilePath

/// What CreateMachine, RegisterMachine and their …WithNetwork and …Ex forms ask for, decoded.
struct MachineRequest {
    var name: String
    var id: [UInt8] = []
    var service: String = ""
    var `class`: String = ""
    /// The leader's pid on the host (0 until known).
    var leader: pid_t = 0
    /// The caller's pidfd for the leader (CreateMachineEx/RegisterMachineEx `LeaderPIDFD`), owned by the call.
    var leaderPIDFD: FileDescriptor? = nil
    var rootDirectory: String = ""
    var networkInterfaces: [Int32] = []
    var sshAddress: String = ""
    var sshPrivateKeyPath: String = ""
    /// The caller's properties for the scope (the `a(sv)` entries), appended after berthd's own.
    var scopeProperties: [BusValue] = []
}

/// The lifecycle's state beside the registry: whether systemd answers on the bus (followed
/// through NameOwnerChanged, so no call pays a round trip to learn it), the names being
/// registered while systemd starts their scope, and the scope jobs waited for.
struct MachineLifecycle {
    /// Whether `org.freedesktop.systemd1` has an owner on the bus; nil until first known.
    var systemdPresent: Bool?
    /// Whether the signal matches are installed.
    var watching = false
    /// Whether berthd has called Subscribe on the systemd that answers now.
    var subscribed = false
    /// Machine names and leaders between the start of their registration and their entry in the registry.
    var reservedNames: Set<String> = []
    var reservedLeaders: Set<pid_t> = []
    /// The scope start jobs waited for, by unit name.
    var jobWaits: [String: JobWait] = [:]
}

/// One StartTransientUnit job waited for: its JobRemoved may come before the method's reply has
/// named the job, so results of the unit's jobs that come first are kept until it is known.
/// Only used on the bus thread.
final class JobWait {
    /// The job StartTransientUnit answered with; nil until its reply is in.
    private(set) var job: String?
    private var result: String?
    /// Results of this unit's jobs that ended before the reply named ours (a stop job of an
    /// earlier scope of the same name, say), by job path.
    private var early: [String: String] = [:]
    private var continuation: CheckedContinuation<String, Never>?

    /// The reply named the job: a result that came before it is taken now.
    func named(_ job: String) {
        self.job = job
        if let result = early[job] { finish(result) }
        early = [:]
    }

    /// JobRemoved of `job` of this unit with `result`.
    func ended(_ job: String, _ result: String) {
        if self.job == nil {
            if early.count < 16 { early[job] = result }
        } else if self.job == job {
            finish(result)
        }
    }

    /// The job ended with `result` (`done`, `failed`, `timeout`, …); later calls do nothing.
    func finish(_ result: String) {
        if let continuation {
            self.continuation = nil
            continuation.resume(returning: result)
        } else if self.result == nil {
            self.result = result
        }
    }

    /// Resumes `continuation` with the job's result, now if it has one, else when it comes.
    func whenFinished(_ continuation: CheckedContinuation<String, Never>) {
        if let result { continuation.resume(returning: result) } else { self.continuation = continuation }
    }
}

/// The machine lifecycle under systemd, as systemd-machined 252 runs it.
///
/// When `org.freedesktop.systemd1` answers on the bus berthd serves, CreateMachine asks it for
/// the transient scope `machine-NAME.scope` in `machine.slice` holding the leader
/// (StartTransientUnit with machined's properties and then the caller's) and answers once the
/// start job is done (JobRemoved); TerminateMachine stops the machine's unit (StopUnit) and
/// KillMachine's `all` is systemd's KillUnit. A machine whose unit goes (UnitRemoved), or whose
/// leader exits (the pidfd watch), is removed. Without systemd, berthd keeps the groups itself
/// (`Machine1Machines`). Whether systemd is there is asked once, when first needed, and then
/// followed through NameOwnerChanged, so it costs no call anything.
extension Machine1Service {
    // MARK: systemd on the bus

    /// Installs the signal matches the lifecycle follows (NameOwnerChanged of systemd1, its
    /// JobRemoved and UnitRemoved): messages sent without waiting, so start-up (and READY=1) pays
    /// no round trip. Whether systemd is there is asked when first needed (`systemdAnswers`), at
    /// once only when machines restored from a previous run may be in systemd's units.
    func watchSystemd() async {
        guard !lifecycle.watching else { return }
        lifecycle.watching = true
        let systemd = Systemd1.name
        do {
            try await bus.addSignalMatch("type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                                         + "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='\(systemd)'") { [weak self] signal in
                // The loop thread is this actor's executor.
                self?.assumeIsolated { $0.systemdOwnerChanged(signal) }
            }
            try await bus.addSignalMatch("type='signal',sender='\(systemd)',path='\(Systemd1.path.rawValue)',"
                                         + "interface='\(Systemd1.manager)',member='JobRemoved'") { [weak self] signal in
                self?.assumeIsolated { $0.jobRemoved(signal) }
            }
            try await bus.addSignalMatch("type='signal',sender='\(systemd)',path='\(Systemd1.path.rawValue)',"
                                         + "interface='\(Systemd1.manager)',member='UnitRemoved'") { [weak self] signal in
                self?.assumeIsolated { $0.unitRemoved(signal) }
            }
        } catch {
            Logger(label: "berth.machine1").warning("cannot follow systemd on the bus: \(error)")
        }
        // Restored machines in systemd's units want UnitRemoved from the start.
        if machines.values.contains(where: { $0.machine.cgroup.isEmpty && Self.isUnitName($0.machine.unit) }) {
            _ = await systemdAnswers()
        }
    }

    /// Whether systemd answers on the bus: the followed answer, asked of the bus only before the
    /// first answer is in; systemd present, berthd subscribes to its signals (once per systemd).
    func systemdAnswers() async -> Bool {
        let present: Bool
        if let known = lifecycle.systemdPresent {
            present = known
        } else {
            present = await Systemd1(bus: bus).isPresent()
            if lifecycle.systemdPresent == nil { lifecycle.systemdPresent = present }
        }
        if present && !lifecycle.subscribed {
            lifecycle.subscribed = true
            await subscribeToSystemd()
        }
        return present
    }

    /// systemd sends unit and job signals only while someone has subscribed (Subscribe).
    private func subscribeToSystemd() async {
        _ = try? await bus.call(destination: Systemd1.name, path: Systemd1.path, interface: Systemd1.manager, member: "Subscribe", [])
    }

    private func systemdOwnerChanged(_ signal: BusSignal) {
        guard signal.arguments.count == 3, signal.arguments[0].stringValue == Systemd1.name else { return }
        // A new systemd (restarted, re-executed) knows no subscribers: subscribe again when needed.
        lifecycle.systemdPresent = !(signal.arguments[2].stringValue ?? "").isEmpty
        lifecycle.subscribed = false
    }

    /// JobRemoved(u id, o job, s unit, s result): finishes the wait for a scope's start job.
    private func jobRemoved(_ signal: BusSignal) {
        guard signal.arguments.count == 4, let job = signal.arguments[1].stringValue, let unit = signal.arguments[2].stringValue,
              let result = signal.arguments[3].stringValue, let wait = lifecycle.jobWaits[unit] else { return }
        wait.ended(job, result)
    }

    /// UnitRemoved(s unit, o path): the machines in that unit go with it.
    private func unitRemoved(_ signal: BusSignal) {
        guard let unit = signal.arguments.first?.stringValue else { return }
        for entry in machines.values where entry.machine.cgroup.isEmpty && entry.machine.unit == unit {
            removeMachine(entry.machine.name)
        }
    }

    // MARK: scopes

    /// Starts `machine-NAME.scope` in machine.slice holding the leader, with the properties
    /// machined 252 gives it and then the caller's, and waits for the start job. Returns the unit.
    func startScope(_ request: MachineRequest) async throws -> String {
        let unit = MachineName.scopeUnit(request.name)
        let description = (request.class == "vm" ? "Virtual Machine " : "Container ") + request.name
        func property(_ name: String, _ value: BusValue) -> BusValue { .structure([.string(name), .variant(value)]) }
        var properties: [BusValue] = [
            property("Slice", .string("machine.slice")),
            property("Description", .string(description)),
            property("PIDs", .array(element: "u", [.uint32(UInt32(bitPattern: request.leader))])),
            property("Delegate", .boolean(true)),
            property("CollectMode", .string("inactive-or-failed")),
            property("AddRef", .boolean(true)),
            property("TasksMax", .uint64(16384)),
        ]
        properties += request.scopeProperties
        let wait = JobWait()
        lifecycle.jobWaits[unit] = wait
        defer { lifecycle.jobWaits[unit] = nil }
        let reply = try await bus.call(destination: Systemd1.name, path: Systemd1.path, interface: Systemd1.manager,
                                       member: "StartTransientUnit",
                                       [.string(unit), .string("fail"), .array(element: "(sv)", properties), .array(element: "(sa(sv))", [])])
        guard let job = reply.first?.stringValue else { throw BusError.failed("StartTransientUnit of \(unit) named no job") }
        wait.named(job)
        // A start job that never ends would hold the caller forever: give up after a minute.
        Task {
            try? await Task.sleep(for: .seconds(60))
            self.jobTimedOut(unit: unit, job: job)
        }
        let result = await withCheckedContinuation { wait.whenFinished($0) }
        guard result == "done" else {
            _ = try? await bus.call(destination: Systemd1.name, path: Systemd1.path, interface: Systemd1.manager, member: "UnrefUnit",
                                    [.string(unit)])
            throw BusError(name: "org.freedesktop.systemd1.JobFailed", message: "Start job for unit \(unit) failed with '\(result)'")
        }
        return unit
    }

    /// The start job of `unit` did not end within its time: its waiter gives up.
    private func jobTimedOut(unit: String, job: String) {
        if let wait = lifecycle.jobWaits[unit], wait.job == job { wait.finish("timeout") }
    }

    /// Whether systemd holds `m`'s processes: a unit of systemd's (no group of berthd's own) while
    /// systemd answers on the bus.
    private func systemdOwns(_ m: Machine) async -> Bool {
        guard m.cgroup.isEmpty, Self.isUnitName(m.unit), !m.unit.hasSuffix(".slice") else { return false }
        return await systemdAnswers()
    }

    /// TerminateMachine under systemd: StopUnit of the machine's unit, as machined does; false
    /// when systemd does not hold the machine. A unit systemd no longer knows is stopped already.
    func stopThroughSystemd(_ m: Machine) async throws -> Bool {
        guard await systemdOwns(m) else { return false }
        do {
            _ = try await bus.call(destination: Systemd1.name, path: Systemd1.path, interface: Systemd1.manager, member: "StopUnit",
                                   [.string(m.unit), .string("fail")])
        } catch {
            // A unit systemd no longer knows is stopped already, as machined takes it.
            let gone = ["org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed"].contains(error.name)
            if !gone { throw error }
        }
        return true
    }

    /// KillMachine with `all` under systemd: KillUnit of the machine's unit; false when systemd
    /// does not hold the machine.
    func killThroughSystemd(_ m: Machine, _ signal: Int32) async throws -> Bool {
        guard await systemdOwns(m) else { return false }
        _ = try await bus.call(destination: Systemd1.name, path: Systemd1.path, interface: Systemd1.manager, member: "KillUnit",
                               [.string(m.unit), .string("all"), .int32(signal)])
        return true
    }

    /// A machine berthd had systemd start a scope for is gone: drop the reference AddRef took,
    /// so systemd collects the scope (best effort; systemd drops it anyway when berthd goes).
    func releaseScope(_ m: Machine) {
        guard m.cgroup.isEmpty, m.unit == MachineName.scopeUnit(m.name), lifecycle.systemdPresent == true else { return }
        let bus = self.bus, unit = m.unit
        Task {
            _ = try? await bus.call(destination: Systemd1.name, path: Systemd1.path, interface: Systemd1.manager, member: "UnrefUnit",
                                    [.string(unit)])
        }
    }

    // MARK: units of control groups

    /// The unit a control-group path names, as systemd reads one (cg_path_get_unit): the first
    /// component that is a unit name and not a slice (`/system.slice/x.service/payload` →
    /// `x.service`); without one (no systemd here), the last component, as berthd always did.
    static func unit(ofGroup group: String) -> String {
        let parts = FilePath(group).components.map(\.string)
        if let unit = parts.first(where: { isUnitName($0) && !$0.hasSuffix(".slice") }) { return unit }
        return parts.last ?? ""
    }

    /// Whether `name` ends in one of systemd's unit types.
    static func isUnitName(_ name: String) -> Bool {
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return false }
        return ["service", "scope", "slice", "socket", "mount", "swap", "target", "device", "automount", "timer", "path"]
            .contains(String(name[name.index(after: dot)...]))
    }

    // MARK: newer members

    /// RegisterMachineEx `(s name, a(sv) properties)` and CreateMachineEx `(s name, a(sv)
    /// properties, a(sv) scope_properties)` (systemd v259): the properties are the fixed
    /// arguments of the older methods by name, with the leader also as a pidfd; an unknown key or
    /// a value of the wrong type is InvalidArgs, and nothing is registered.
    func addMachineEx(_ call: MethodCall, create: Bool) async throws -> ObjectPath {
        let arguments = try call.arguments
        guard arguments.count == (create ? 3 : 2), let name = arguments[0].stringValue,
              let properties = arguments[1].arrayValue else { throw BusError.invalidArgs("Invalid arguments") }
        guard MachineName.isValid(name) else { throw BusError.invalidArgs("Invalid machine name") }
        var request = MachineRequest(name: name)
        if create { request.scopeProperties = arguments[2].arrayValue ?? [] }
        var leaderPID: UInt32?
        for entry in properties {
            guard let pair = entry.structureValue, pair.count == 2, let key = pair[0].stringValue,
                  case .variant(let value) = pair[1] else { throw BusError.invalidArgs("Invalid property") }
            func wrongType() -> BusError { BusError.invalidArgs("Property '\(key)' has the wrong type \(value.signature)") }
            switch key {
            case "Id":
                guard case .array("y", _) = value, let id = value.bytesValue else { throw wrongType() }
                guard id.isEmpty || id.count == 16 else { throw BusError.invalidArgs("Invalid machine ID parameter") }
                request.id = id
            case "Service":
                guard case .string(let s) = value else { throw wrongType() }
                request.service = s
            case "Class":
                guard case .string(let s) = value else { throw wrongType() }
                guard ["container", "vm"].contains(s) else { throw BusError.invalidArgs("Invalid machine class parameter") }
                request.class = s
            case "LeaderPID":
                guard case .uint32(let pid) = value else { throw wrongType() }
                leaderPID = pid
            case "LeaderPIDFD":
                guard case .unixFD(let fd) = value else { throw wrongType() }
                request.leaderPIDFD = fd
            case "RootDirectory":
                guard case .string(let s) = value else { throw wrongType() }
                guard s.hasPrefix("/"), !s.utf8.contains(0) else { throw BusError.invalidArgs("Root directory must be an absolute path") }
                request.rootDirectory = s
            case "NetworkInterfaces":
                guard case .array("i", let items) = value else { throw wrongType() }
                var indices: [Int32] = []
                for case .int32(let i) in items {
                    guard i > 0 else { throw BusError.invalidArgs("Invalid network interface index \(i)") }
                    indices.append(i)
                }
                request.networkInterfaces = indices
            case "VSockCID":
                // Accepted as systemd checks it (a regular CID); Berth's Machine object has no VSockCID to show it.
                guard case .uint32(let cid) = value else { throw wrongType() }
                guard cid > 2 && cid != UInt32.max else { throw BusError.invalidArgs("Invalid VSock CID \(cid)") }
            case "SSHAddress":
                guard case .string(let s) = value else { throw wrongType() }
                guard !s.isEmpty, !s.utf8.contains(0) else { throw BusError.invalidArgs("Invalid SSH address") }
                request.sshAddress = s
            case "SSHPrivateKeyPath":
                guard case .string(let s) = value else { throw wrongType() }
                guard s.hasPrefix("/"), !s.utf8.contains(0) else { throw BusError.invalidArgs("SSH private key path must be an absolute path") }
                request.sshPrivateKeyPath = s
            default:
                throw BusError.invalidArgs("Unknown property '\(key)'")
            }
        }
        if let fd = request.leaderPIDFD {
            guard let pid = Self.pid(ofPIDFD: fd) else { throw BusError.invalidArgs("LeaderPIDFD is not a pidfd of a running process") }
            if let leaderPID, pid_t(bitPattern: leaderPID) != pid {
                throw BusError.invalidArgs("LeaderPID and LeaderPIDFD name different processes")
            }
            request.leader = pid
        } else if let leaderPID {
            request.leader = pid_t(bitPattern: leaderPID)
        }
        if request.leader == 0 { request.leader = pid_t(try await call.credentials().pid ?? 0) }
        return try await addMachine(request, create: create)
    }

    /// The pid of the process a pidfd refers to (the `Pid:` line of its fdinfo), nil if `fd` is
    /// no pidfd or its process has exited (-1 there).
    static func pid(ofPIDFD fd: FileDescriptor) -> pid_t? {
        guard let text = readSmall("/proc/self/fdinfo/\(fd.rawValue)") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Pid:") {
            guard let pid = pid_t(String(line.dropFirst(4).filter { !$0.isWhitespace })), pid > 0 else { return nil }
            return pid
        }
        return nil
    }

    /// berthd's own pidfd for the request's leader. With the caller's pidfd, the caller's still
    /// names the same live process after berthd opened its own, so the pid was not reused between.
    func pinLeader(_ request: MachineRequest) throws -> FileDescriptor {
        let pidfd: FileDescriptor
        do { pidfd = try openProcessDescriptor(request.leader) } catch {
            throw BusError(errno: error.errno, "Failed to pin leader PID \(request.leader)")
        }
        if let theirs = request.leaderPIDFD, Self.pid(ofPIDFD: theirs) != request.leader {
            pidfd.close()
            throw BusError(errno: .ESRCH, "Leader PID \(request.leader) is gone")
        }
        return pidfd
    }

    /// GetMachineSSHInfo / Machine.GetSSHInfo: the address and key path the registrar gave;
    /// a machine without them is answered as systemd does, with ENOENT.
    func sshInfo(_ name: String) throws -> [BusValue] {
        if name == ".host" { throw BusError(errno: .ENOENT, "No such file or directory") }
        guard let m = machines[name]?.machine else { throw Self.noSuchMachine(name) }
        guard !m.sshAddress.isEmpty, !m.sshPrivateKeyPath.isEmpty else { throw BusError(errno: .ENOENT, "No such file or directory") }
        return [.string(m.sshAddress), .string(m.sshPrivateKeyPath)]
    }
}

extension MethodCall {
    /// Argument `i` as it was sent.
    func value(_ i: Int) throws(BusError) -> BusValue {
        let arguments = try arguments
        guard i < arguments.count else { throw BusError.invalidArgs("argument \(i) is missing") }
        return arguments[i]
    }
}
