import Foundation
import Glibc
import Linux
@testable import Machines
import Testing
import TestSupport

struct IDMappingTests {
    @Test func translatesAsMachinedDoesBothWays() throws {
        let map = try #require(IDMapping(parsing: "         0     100000      65536\n"))
        #expect(map.ranges == [IDMapping.Range(inside: 0, outside: 100000, count: 65536)])
        #expect(!map.isIdentity)
        #expect(map.outside(0) == 100000 && map.outside(1000) == 101000 && map.outside(65536) == nil)
        #expect(map.inside(101000) == 1000 && map.inside(99999) == nil && map.inside(165536) == nil)
        // 65535 is not a valid id (systemd's uid_is_valid): never an answer.
        #expect(IDMapping(parsing: "0 0 65536")?.outside(65535) == nil)
        #expect(IDMapping(parsing: "0 100000 65536")?.outside(65535) == 165535)
        #expect(IDMapping(parsing: "0 65535 2")?.outside(0) == nil)
    }

    @Test func theHostsOwnMapIsIdentityAndMapsNothing() throws {
        let host = try #require(IDMapping(parsing: "0 0 4294967295\n"))
        #expect(host.isIdentity)
        // machined skips lines onto host id 0: a machine without a user namespace maps nothing.
        #expect(host.outside(1000) == nil && host.inside(1000) == nil)
        #expect(IDMapping(parsing: "0 x 1") == nil && IDMapping(parsing: "0 1") == nil)
    }

    @Test func copiesMapOwnershipAcrossTheNamespaceAndUnmappedIdsBecomeNobody() throws {
        let users = try #require(IDMapping(parsing: "0 100000 65536"))
        let groups = try #require(IDMapping(parsing: "0 200000 65536"))
        let into = try #require(MachineFileCopy.ownershipMap(users: users, groups: groups, direction: .toMachine))
        #expect(into(5, 6) == (100005, 200006))
        #expect(into(70000, 70000) == (165534, 265534))
        let out = try #require(MachineFileCopy.ownershipMap(users: users, groups: groups, direction: .fromMachine))
        #expect(out(100007, 200008) == (7, 8))
        #expect(out(5, 5) == (65534, 65534))
        let host = IDMapping(parsing: "0 0 4294967295")
        #expect(MachineFileCopy.ownershipMap(users: host, groups: host, direction: .toMachine) == nil)
    }

    @Test func pathsSplitAsSystemdExtractsFileNames() throws {
        #expect(try MachineFileCopy.split("/a/b/c").directory == "/a/b" && MachineFileCopy.split("/a/b/c").name == "c")
        #expect(try MachineFileCopy.split("/c/").name == "c" && MachineFileCopy.split("/c/").directory == "/")
        #expect(throws: SystemCallError.self) { try MachineFileCopy.split("/") }
        #expect(throws: SystemCallError.self) { try MachineFileCopy.split("/a/..") }
        #expect(throws: SystemCallError.self) { try MachineFileCopy.split("/a/.") }
    }
}

/// The copy's promise that a failure leaves nothing behind, on a real filesystem that fills up.
@Suite(.requires(.root, .commands("mount", "umount")))
struct MachineFileCopyFailureTests {
    @Test func aCopyThatRunsOutOfSpaceLeavesNoTempAndNoDestination() throws {
        let work = try TemporaryDirectory(prefix: "berth-copy-enospc")
        defer { work.remove() }
        let small = work.appending("small"), source = work.appending("source")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: source + "/tree/sub", withIntermediateDirectories: true)
        try #require(run(["mount", "-t", "tmpfs", "-o", "size=256k", "berth-test", small]).succeeded)
        defer { _ = try? run(["umount", small]) }
        try Data(repeating: 1, count: 1000).write(to: URL(fileURLWithPath: source + "/tree/a"))
        try Data(repeating: 7, count: 2 << 20).write(to: URL(fileURLWithPath: source + "/tree/sub/big"))
        let from = try FileDescriptor.openDirectory(source), to = try FileDescriptor.openDirectory(small)
        #expect(throws: SystemCallError.self) {
            try MachineFileCopy.copyItem("tree", in: from, to: "tree", in: to, replace: false, ownership: nil)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: small).isEmpty)
        // An existing destination is refused before anything is copied, and kept as it was.
        try "keep".write(toFile: small + "/tree", atomically: false, encoding: .utf8)
        #expect(throws: SystemCallError.self) {
            try MachineFileCopy.copyItem("a", in: try FileDescriptor.openDirectory(source + "/tree"), to: "tree", in: to, replace: false, ownership: nil)
        }
        #expect(try String(contentsOfFile: small + "/tree", encoding: .utf8) == "keep")
        #expect(try FileManager.default.contentsOfDirectory(atPath: small) == ["tree"])
    }
}
