import Bus
import Glibc
import Linux
import PoolAPI

/// machine1's GetMachineAddresses / Machine.GetAddresses: the IP addresses of a machine's network
/// namespace, read over rtnetlink from a thread that enters it (`NetworkAddresses`), off the bus
/// thread; `.host`'s are berthd's own namespace's. As machined 252: a container that shares the
/// host's namespace has no addresses of its own (NoPrivateNetworking), and only containers have
/// them at all.
extension Machine1Service {
    func addresses(_ name: String) async throws -> [BusValue] {
        let namespace: String?
        if name == ".host" {
            namespace = nil
        } else {
            guard let machine = machines[name]?.machine else { throw Self.noSuchMachine(name) }
            guard machine.class == "container" else {
                throw BusError.notSupported("Requesting IP address data is only supported on container machines.")
            }
            let theirs = "/proc/\(machine.leader)/ns/net"
            let ours: String, their: String
            do {
                ours = try readLink("/proc/self/ns/net")
                their = try readLink(theirs)
            } catch { throw Self.sdBusErrno(error.errno) }
            if ours == their {
                throw BusError(name: "org.freedesktop.machine1.NoPrivateNetworking", message: "Machine \(name) does not use private networking")
            }
            namespace = theirs
        }
        let found: [InterfaceAddress]
        do {
            found = try await Blocking.run(.interactive) {
                if let namespace { try NetworkAddresses.inNamespace(namespace) } else { try NetworkAddresses.current() }
            }
        } catch let error as SystemCallError {
            throw Self.sdBusErrno(error.errno)
        }
        return [.array(element: "(iay)", found.map { .structure([.int32($0.family), .bytes($0.address)]) })]
    }
}
