import Foundation
import FuzzTargets
import Testing

/// Replays the kept fuzz corpus (Tests/Fixtures/fuzz/<target>/: the seeds, what libFuzzer
/// found that adds coverage, and every crasher found, kept after its fix) through the same
/// entry functions libFuzzer drives, in the normal, unsanitised build. A parser that traps
/// on one of them, or breaks a property its target checks, crashes this test.
@Suite("Fuzz corpus replay")
struct FuzzReplayTests {
    static let corpusRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/fuzz")

    static func inputs(of target: String) throws -> [URL] {
        let folder = corpusRoot.appendingPathComponent(target)
        return try FileManager.default.contentsOfDirectory(at: folder, includingPropertiesForKeys: nil)
            .filter { !$0.lastPathComponent.hasPrefix(".") }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    @Test("every corpus input of the target replays without a trap", arguments: FuzzTargets.all.map(\.name))
    func replay(_ name: String) throws {
        let target = try #require(FuzzTargets.named(name))
        let files = try Self.inputs(of: name)
        // Every target has seeds; an empty folder would make this test pass vacuously.
        #expect(files.count >= 2, "Tests/Fixtures/fuzz/\(name) holds \(files.count) inputs")
        for file in files {
            let bytes = try [UInt8](Data(contentsOf: file))
            bytes.withUnsafeBytes { target.run($0) }
        }
    }

    @Test("every corpus folder belongs to a target")
    func noStrayFolders() throws {
        let folders = try FileManager.default.contentsOfDirectory(atPath: Self.corpusRoot.path).filter { !$0.hasPrefix(".") }
        let names = Set(FuzzTargets.all.map(\.name))
        #expect(Set(folders) == names)
    }
}
