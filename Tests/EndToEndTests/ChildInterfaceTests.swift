import Bus
import Foundation
import Services
import Testing
import TestSupport

/// Answers nothing: it only lets the child-object interface tables be introspected on a bus.
actor SilentObject: BusObjectHandler {
    let bus: Bus
    nonisolated var unownedExecutor: UnownedSerialExecutor { bus.unownedExecutor }
    init(bus: Bus) { self.bus = bus }
    func handle(_ call: MethodCall) async throws -> [BusValue] { throw Harness.notImplemented(call) }
    func property(_ name: String, interface: String, path: ObjectPath) throws -> BusValue { throw Harness.unknownObject(path) }
}

@Suite(.serialized, .requires(.privateBus))
struct ChildInterfaceTests {
    /// Members of newer systemd versions that Berth serves too, each with the 252 member it
    /// renames: systemd 254 corrected the spelling of ReattacheWithExtensions.
    let newerMembers: [String: String] = ["method ReattachWithExtensions": "method ReattacheWithExtensions"]

    /// The image interfaces are only exported on image objects, which need a pool; export the same
    /// tables on a bare object and compare them with systemd 252's introspection.
    @Test func imageInterfaceTablesMatchSystemd252() async throws {
        let daemon = try PrivateDBusDaemon()
        defer { daemon.stop() }
        let loop = try EventLoop(name: "child-interfaces")
        let bus = try await Bus.connect(address: daemon.address, loop: loop)
        let object = SilentObject(bus: bus)
        let cases: [(BusInterface, ObjectPath, String)] = [
            (Machine1Image.interface, "/org/freedesktop/machine1/image/test", "systemd252-machine1-image.xml"),
            (Portable1Image.interface, "/org/freedesktop/portable1/image/test", "systemd252-portable1-image.xml"),
        ]
        for (interface, path, _) in cases { try await bus.export([interface], at: path, handler: object) }
        try await bus.requestName("io.berth.ChildInterfaces")
        for (interface, path, file) in cases {
            let expected = try #require(try IntrospectionXML.interfaces(try fixture(file))[interface.name])
            #expect(expected.members.count > 5)
            let xml = try run(["gdbus", "introspect", "--address", daemon.address, "--dest", "io.berth.ChildInterfaces",
                               "--object-path", path.rawValue, "--xml"], check: true).stdout
            let live = try #require(try IntrospectionXML.interfaces(xml)[interface.name])
            for key in Set(expected.members.keys).union(live.members.keys).sorted() {
                if expected.members[key] == nil, let newer = newerMembers[key] {
                    // A member of a newer systemd, served beside 252's: the same as the one it renames.
                    let renamed = expected.members[newer]?.replacingOccurrences(of: newer, with: key)
                    #expect(renamed != nil && live.members[key] == renamed, "\(interface.name) \(key) vs \(newer)")
                    continue
                }
                #expect(live.members[key] == expected.members[key], "\(interface.name) \(key)")
            }
        }
        await bus.shutdown()
        loop.requestExit()
        await loop.joined()
    }
}
