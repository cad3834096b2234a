import Foundation
import Testing
import TestSupport

/// berthctl's image verbs against berthd over the bus, checked with machinectl on the same daemon.
@Suite(.serialized, .requires(machine1Requirements))
struct Machine1BerthctlTests {
    struct Row: Decodable, Equatable { var name: String; var type: String; var readOnly: Bool; var usage: UInt64? }
    struct Status: Decodable { var image: Row; var hostname: String?; var osRelease: [String: String]?; var limit: UInt64? }
    struct Removed: Decodable { var name: String; var usage: UInt64? }

    @Test func imageVerbsWorkOverTheBus() throws {
        let pair = try Machine1Pair(.btrfs, withReference: false)
        defer { pair.stop() }
        try PoolFixture.populate(pair.pool, kind: .btrfs)
        let berthctl = try BerthdProcess.binaryPath("berthctl")
        let bus = pair.berthBus.address
        func ctl(_ args: [String]) throws -> CommandResult { try run([berthctl] + args + ["--bus-address", bus]) }
        func rows(_ all: Bool = false) throws -> [Row] {
            let r = try ctl(["list-images", "--json"] + (all ? ["--all"] : []))
            #expect(r.succeeded, "\(r.stderr)")
            return try JSONDecoder().decode([Row].self, from: Data(r.stdout.utf8))
        }
        // Same images as machinectl shows (hidden ones only with --all).
        let names = try rows().map(\.name)
        #expect(names == ["dirimg", "emptydir", "emptyraw", "rawimg", "subimg"])
        #expect(try rows(true).map(\.name) == ["..x", ".hidden", ".host", "dirimg", "emptydir", "emptyraw", "rawimg", "subimg"])
        let mc = try pair.machinectl(bus, ["list-images", "--no-legend"]).stdout
        #expect(mc.split(separator: "\n").map { String($0.split(separator: " ")[0]) } == names)
        let table = try ctl(["list-images"])
        #expect(table.succeeded && table.stdout.contains("NAME") && table.stdout.contains("5 images listed."), "\(table.stdout)")

        let status = try ctl(["image-status", "dirimg", "--json"])
        let s = try JSONDecoder().decode(Status.self, from: Data(status.stdout.utf8))
        #expect(s.image.type == "directory" && s.hostname == "dirhost" && s.osRelease?["ID"] == "berthtest")

        // clone, rename, read-only, set-limit, remove: machinectl sees each result.
        #expect(try ctl(["clone", "dirimg", "copy"]).succeeded)
        #expect(try ctl(["rename", "copy", "copy2"]).succeeded)
        #expect(try ctl(["read-only", "copy2"]).succeeded)
        #expect(try pair.machinectl(bus, ["show-image", "copy2", "-p", "ReadOnly", "--value"]).stdout == "yes\n")
        #expect(try ctl(["read-only", "copy2", "no"]).succeeded)
        #expect(try pair.machinectl(bus, ["show-image", "copy2", "-p", "ReadOnly", "--value"]).stdout == "no\n")
        #expect(try ctl(["set-limit", "subimg", "32M"]).succeeded)
        let limited = try JSONDecoder().decode(Status.self, from: Data(try ctl(["image-status", "subimg", "--json"]).stdout.utf8))
        #expect(limited.limit == 32 << 20)
        #expect(try ctl(["remove", "copy2"]).succeeded)
        #expect(!(try pair.machinectl(bus, ["show-image", "copy2"])).succeeded)

        // Errors are machined's, exit status 1.
        let missing = try ctl(["remove", "nope"])
        #expect(missing.status == 1 && missing.stderr.contains("No image 'nope' known"), "\(missing.stderr)")
        let exists = try ctl(["clone", "dirimg", "emptydir"])
        #expect(exists.status == 1 && exists.stderr.contains("FileExists"), "\(exists.stderr)")

        // clean: the hidden images go, the rest stays.
        let clean = try ctl(["clean", "--json"])
        let removed = try JSONDecoder().decode([Removed].self, from: Data(clean.stdout.utf8))
        #expect(removed.map(\.name) == ["..x", ".hidden"])
        #expect(try rows(true).map(\.name) == [".host", "dirimg", "emptydir", "emptyraw", "rawimg", "subimg"])
    }
}
