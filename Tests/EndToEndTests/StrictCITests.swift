import Foundation
import Glibc
import Testing
import TestSupport

/// Proof that CI fails, rather than passes with a tier skipped, when a privileged tool is missing:
/// this test binary runs one privileged suite again, with a PATH from which a tool it needs is
/// hidden. Cheap: the gate fails before any test body runs.
@Suite("strict CI")
struct StrictCITests {
    /// A folder of links to every command of PATH except `hidden`, and that PATH.
    static func pathHiding(_ hidden: String, in folder: TemporaryDirectory) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in path.split(separator: ":").map(String.init) {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name != hidden {
                let link = folder.appending(name)
                if !FileManager.default.fileExists(atPath: link) {
                    try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: dir + "/" + name)
                }
            }
        }
        return folder.path
    }

    /// Runs this test binary on `filter` with `environment`.
    static func runSuite(_ filter: String, _ environment: [String: String]) throws -> CommandResult {
        let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        return try run([me, "--testing-library", "swift-testing", "--filter", filter], environment: environment)
    }

    @Test("with mkfs.btrfs hidden, the btrfs suite fails under CI=true naming the tool, and skips outside CI")
    func aPrivilegedSuiteFailsUnderCIWhenAToolIsMissing() throws {
        let folder = try TemporaryDirectory(prefix: "berth-nopath")
        defer { folder.remove() }
        let path = try Self.pathHiding("mkfs.btrfs", in: folder)
        #expect(!FileManager.default.fileExists(atPath: folder.appending("mkfs.btrfs")))

        let ci = try Self.runSuite("BackendTests.BtrfsBackendTests", ["PATH": path, "CI": "true"])
        let ciOutput = ci.stdout + ci.stderr
        #expect(ci.status != 0, "\(ciOutput.suffix(2000))")
        #expect(ciOutput.contains("CI=true: a privileged test may not skip, but mkfs.btrfs is not installed"),
                "\(ciOutput.suffix(2000))")
        #expect(!ciOutput.contains("skipped"), "\(ciOutput.suffix(2000))")

        let local = try Self.runSuite("BackendTests.BtrfsBackendTests", ["PATH": path, "CI": ""])
        let localOutput = local.stdout + local.stderr
        #expect(local.status == 0, "\(localOutput.suffix(2000))")
        #expect(localOutput.contains("skipped"), "\(localOutput.suffix(2000))")
        #expect(localOutput.contains("mkfs.btrfs is not installed"), "\(localOutput.suffix(2000))")
    }
}
