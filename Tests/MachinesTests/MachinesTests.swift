import Foundation
import Machines
import Testing
import TestSupport

struct MachinesTests {
    @Test func machineNamesAreHostnames() {
        for good in ["a", "bbreg", "fedora-tree", "a.b", "x1", String(repeating: "a", count: 64)] {
            #expect(MachineName.isValid(good), "\(good)")
        }
        for bad in ["", ".host", "a..b", "a.", "bad_name", "a b", "ä", "a/b", String(repeating: "a", count: 65)] {
            #expect(!MachineName.isValid(bad), "\(bad)")
        }
    }

    @Test func scopeUnitsAreEscapedAsSystemdEscapesUnitNames() {
        #expect(MachineName.scopeUnit("bbreg") == "machine-bbreg.scope")
        #expect(MachineName.scopeUnit("fedora-tree") == "machine-fedora\\x2dtree.scope")
        #expect(MachineName.scopeUnit("a.b") == "machine-a.b.scope")
    }

    @Test func theStoreKeepsEveryFieldAndDropsWhatDoesNotParse() throws {
        let root = try TemporaryDirectory(prefix: "berth-machines")
        defer { root.remove() }
        let store = MachineStore(root: root.path)
        let machine = Machine(name: "m1", id: Array(0..<16), service: "systemd-nspawn", class: "container", leader: 1234,
                              leaderStartTime: 987_654, rootDirectory: "/srv/odd\nname=x", networkInterfaces: [3, 7],
                              unit: "machine-m1.scope", cgroup: "machine.slice/machine-m1.scope", timestamp: 1, timestampMonotonic: 2,
                              sshAddress: "vsock%3", sshPrivateKeyPath: "/run/m1/key")
        try store.save(machine)
        #expect(store.loadAll() == [machine])
        try "NAME=zz\n".write(toFile: store.directory + "/broken", atomically: false, encoding: .utf8)
        #expect(store.loadAll() == [machine])
        #expect(!FileManager.default.fileExists(atPath: store.directory + "/broken"))
        store.remove("m1")
        #expect(store.loadAll().isEmpty)
    }
}
