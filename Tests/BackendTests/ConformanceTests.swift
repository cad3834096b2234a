import BackendConformance
import BtrfsBackend
import RawLoopBackend
import DirectoryBackend
import PoolAPI
import TestSupport
import Testing
import struct SystemPackage.FilePath

/// Every backend, in the registry it runs in. Adding a backend to the suite is one line here.
let conformanceSubjects: [Subject] = [
    Subject("directory", backend: { _ in DirectoryBackend() }),
    Subject("btrfs", backend: { _ in BtrfsBackend() }, registry: { [$0, DirectoryBackend()] }),
    Subject("raw", backend: { RawLoopBackend(runtimeDirectory: $0.runtimeDirectory) }),
]

/// One backend on one kind of filesystem.
struct ConformanceTarget: Sendable, CustomTestStringConvertible {
    var subject: Subject
    var filesystem: LoopbackFilesystem.Kind
    var testDescription: String { "\(subject) on \(filesystem)" }
}

let conformanceTargets: [ConformanceTarget] = conformanceSubjects.flatMap { s in
    LoopbackFilesystem.Kind.allCases.map { ConformanceTarget(subject: s, filesystem: $0) }
}

/// The backend conformance suite on real loopback btrfs and ext4: checks × (backend, filesystem).
/// A combination whose backend cannot create images on that filesystem (btrfs on ext4) is
/// cancelled as skipped, with the reason.
@Suite(.serialized, .enabled(if: (Privileges.canMakeLoopFilesystems) || Privileges.underCI,
                             "needs root, loop devices, mkfs.btrfs and mkfs.ext4 for real filesystems"))
struct ConformanceTests {
    @Test(arguments: Check.allCases, conformanceTargets)
    func backendConforms(_ check: Check, _ target: ConformanceTarget) async throws {
        let fs = try LoopbackFilesystem(target.filesystem, size: check.filesystemSize(forBtrfs: target.filesystem == .btrfs))
        defer { fs.remove() }
        let outcome = try await Conformance.run(check, subject: target.subject, root: FilePath(fs.mountPoint))
        if case .skipped(let why) = outcome {
            print("⤼ \(check) for \(target.testDescription) skipped: \(why)")
            try Test.cancel(Comment(rawValue: why))
        }
    }
}
