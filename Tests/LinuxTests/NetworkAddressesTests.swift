import Foundation
import Glibc
@testable import Linux
import Testing
import TestSupport

/// rtnetlink address dumps, in a network namespace of the test's own (unshare -n), entered by a
/// thread made for it, as GetMachineAddresses reads a container's.
@Suite(.requires(.root, .commands("unshare", "ip")))  // a network namespace
struct NetworkAddressesTests {
    @Test func readsANamespacesAddressesWithoutLoopbackAndLeavesTheCallerWhereItWas() throws {
        let holder = try spawn(["/usr/bin/unshare", "--net", "/bin/sleep", "60"], stdout: "/dev/null", stderr: nil)
        defer { kill(holder, SIGKILL); _ = waitpid(holder, nil, 0) }
        let ns = "/proc/\(holder)/ns/net"
        let ours = try readLink("/proc/self/ns/net")
        #expect(try waitUntil { (try? readLink(ns)).map { $0 != ours } == true })
        // A new namespace: loopback down, no address at all.
        #expect(try NetworkAddresses.inNamespace(ns).isEmpty)
        let setup = try run(["nsenter", "--net=\(ns)", "sh", "-c",
                             "ip link set lo up && ip addr add 10.9.8.7/24 dev lo && ip addr add fd00:9::7/64 dev lo nodad"])
        try #require(setup.succeeded, "\(setup.stderr)")
        let found = try NetworkAddresses.inNamespace(ns)
        // 127.0.0.1 and ::1 (host scope) left out; IPv4 first.
        #expect(found.map(\.address) == [[10, 9, 8, 7], [0xfd, 0, 0, 9] + [UInt8](repeating: 0, count: 11) + [7]], "\(found)")
        #expect(found.map(\.family) == [AF_INET, AF_INET6])
        // The calling thread never changed namespace.
        #expect(try readLink("/proc/thread-self/ns/net") == ours)
        #expect(try !NetworkAddresses.current().contains { $0.address == [10, 9, 8, 7] })
    }

    @Test func sortsIPv4FirstThenScopeThenInterfaceAndDropsDuplicates() {
        let v6 = InterfaceAddress(family: AF_INET6, address: [UInt8](repeating: 1, count: 16), interfaceIndex: 1, scope: 0)
        let linkLocal = InterfaceAddress(family: AF_INET, address: [169, 254, 0, 1], interfaceIndex: 1, scope: 253)
        let second = InterfaceAddress(family: AF_INET, address: [10, 0, 0, 2], interfaceIndex: 3, scope: 0)
        let first = InterfaceAddress(family: AF_INET, address: [10, 0, 0, 9], interfaceIndex: 2, scope: 0)
        #expect(NetworkAddresses.sorted([v6, linkLocal, second, first, second]) == [first, second, linkLocal, v6])
    }

    private func waitUntil(_ condition: () throws -> Bool) rethrows -> Bool {
        for _ in 0..<100 {
            if try condition() { return true }
            usleep(50_000)
        }
        return false
    }
}
