import BackendConformance
import BtrfsBackend
import RawLoopBackend
import DirectoryBackend
import PoolAPI
import TestSupport
import Testing
import struct SystemPackage.FilePath

/// Every backend, in the registry it runs in, with the filesystems it creates images on. Adding a
/// backend to the suite is one line here.
let conformanceSubjects: [(subject: Subject, filesystems: [LoopbackFilesystem.Kind])] = [
    (Subject("directory", backend: { _ in DirectoryBackend() }), [.btrfs, .ext4]),
    // Subvolumes: ext4 has none, and the backend declines it (btrfsBackendDeclinesExt4).
    (Subject("btrfs", backend: { _ in BtrfsBackend() }, registry: { [$0, DirectoryBackend()] }), [.btrfs]),
    (Subject("raw", backend: { RawLoopBackend(runtimeDirectory: $0.runtimeDirectory) }), [.btrfs, .ext4]),
]

/// One backend on one kind of filesystem.
struct ConformanceTarget: Sendable, CustomTestStringConvertible {
    var subject: Subject
    var filesystem: LoopbackFilesystem.Kind
    var testDescription: String { "\(subject) on \(filesystem)" }
}

/// The combinations that apply, and nothing else: CI shows none skipped.
let conformanceTargets: [ConformanceTarget] = conformanceSubjects.flatMap { s in
    s.filesystems.map { ConformanceTarget(subject: s.subject, filesystem: $0) }
}

/// The backend conformance suite on real loopback btrfs and ext4: checks × (backend, filesystem)
/// for the filesystems each backend runs on.
@Suite(.serialized, .requires(.loopFilesystems))
struct ConformanceTests {
    @Test(arguments: Check.allCases, conformanceTargets)
    func backendConforms(_ check: Check, _ target: ConformanceTarget) async throws {
        let fs = try LoopbackFilesystem(target.filesystem, size: check.filesystemSize(forBtrfs: target.filesystem == .btrfs))
        defer { fs.remove() }
        let outcome = try await Conformance.run(check, subject: target.subject, root: FilePath(fs.mountPoint))
        #expect(outcome == .passed, "\(check) does not apply to \(target.testDescription): drop the combination from conformanceSubjects")
    }

    @Test("the btrfs backend declines ext4, and Conformance reports that as not applicable rather than failing")
    func btrfsBackendDeclinesExt4() async throws {
        let fs = try LoopbackFilesystem(.ext4, size: 64 << 20)
        defer { fs.remove() }
        #expect(!BtrfsBackend().canCreate(in: FilePath(fs.mountPoint)))
        let btrfs = try #require(conformanceSubjects.first { $0.subject.name == "btrfs" }).subject
        let outcome = try await Conformance.run(.createAndList, subject: btrfs, root: FilePath(fs.mountPoint))
        #expect(outcome == .skipped("the btrfs backend cannot create images on this filesystem"))
    }
}
