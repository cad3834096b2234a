import DirectoryBackend
import Foundation
import Glibc
import PoolAPI
import Synchronization
import TestSupport
import struct SystemPackage.FilePath

/// A test root with helpers to lay out search-path folders and images.
final class PoolRoot: @unchecked Sendable {
    let directory: TemporaryDirectory
    var root: String { directory.path }

    init() throws { directory = try TemporaryDirectory(prefix: "berth-pool") }
    deinit { directory.remove() }

    func path(_ rel: String) -> String { root + "/" + rel }

    /// Makes `rel` and its parents; with `file`, writes a file with `contents` inside.
    @discardableResult
    func makeTree(_ rel: String, files: [String: String] = [:]) throws -> String {
        let dir = path(rel)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (name, contents) in files {
            let p = dir + "/" + name
            try FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent,
                                                    withIntermediateDirectories: true)
            try Data(contents.utf8).write(to: URL(fileURLWithPath: p))
        }
        return dir
    }

    func pool(_ backends: [any ImageBackend] = [DirectoryBackend()]) -> ImagePool {
        ImagePool(configuration: .init(root: root), registry: BackendRegistry(backends))
    }

    func exists(_ rel: String) -> Bool {
        var st = stat()
        return lstat(path(rel), &st) == 0
    }

    func temporaryEntries() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path("var/lib/machines"))) ?? []).filter { $0.hasPrefix(".#") }
    }
}

/// Expects `body` to throw a PoolError with `code`.
func expectPoolError(_ code: PoolError.Code, _ body: () async throws -> Void) async -> Bool {
    do {
        try await body()
        return false
    } catch let e as PoolError {
        return e.code == code
    } catch {
        return false
    }
}

/// A directory backend whose clones wait at a gate the test opens, to hold a clone "in
/// progress" for as long as the test needs; everything else is the real directory backend.
struct GatedDirectoryBackend: ImageBackend {
    let inner = DirectoryBackend()
    let gate: DispatchSemaphore
    let started: DispatchSemaphore
    var identifier: String { inner.identifier }
    var imageType: ImageType { inner.imageType }
    var capabilities: BackendCapabilities { inner.capabilities }

    func claim(_ entry: PoolEntry) -> String? { inner.claim(entry) }
    func canCreate(in directory: FilePath) -> Bool { inner.canCreate(in: directory) }
    func image(named name: String, entry: PoolEntry) throws -> Image { try inner.image(named: name, entry: entry) }
    func createEmpty(at path: FilePath) throws { try inner.createEmpty(at: path) }
    func clone(from source: FilePath, to destination: FilePath) throws {
        started.signal()
        gate.wait()
        gate.signal()  // stays open for the other clones
        try inner.clone(from: source, to: destination)
    }
    func rename(from source: FilePath, to destination: FilePath) throws { try inner.rename(from: source, to: destination) }
    func remove(at path: FilePath) throws { try inner.remove(at: path) }
    func setReadOnly(_ readOnly: Bool, at path: FilePath) throws { try inner.setReadOnly(readOnly, at: path) }
    func openForInspection(at path: FilePath) throws -> any InspectionRoot { try inner.openForInspection(at: path) }
}

/// A tree backend that claims nothing and creates plain directories, standing in for btrfs in
/// a pool whose tree backend differs from the source image's (directory → subvolume).
final class OtherTreeBackend: ImageBackend {
    let inner = DirectoryBackend()
    private let made = Mutex<[String]>([])
    var created: [String] { made.withLock { $0 } }
    let identifier = "other-tree"
    let imageType = ImageType.subvolume
    let capabilities: BackendCapabilities = [.tree]

    func claim(_ entry: PoolEntry) -> String? { nil }
    func canCreate(in directory: FilePath) -> Bool { true }
    func image(named name: String, entry: PoolEntry) throws -> Image { try inner.image(named: name, entry: entry) }
    func createEmpty(at path: FilePath) throws {
        made.withLock { $0.append(path.string) }
        try inner.createEmpty(at: path)
    }
    func clone(from source: FilePath, to destination: FilePath) throws { try inner.clone(from: source, to: destination) }
    func rename(from source: FilePath, to destination: FilePath) throws { try inner.rename(from: source, to: destination) }
    func remove(at path: FilePath) throws { try inner.remove(at: path) }
    func setReadOnly(_ readOnly: Bool, at path: FilePath) throws { try inner.setReadOnly(readOnly, at: path) }
    func openForInspection(at path: FilePath) throws -> any InspectionRoot { try inner.openForInspection(at: path) }
}
