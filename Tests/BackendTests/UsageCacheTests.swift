import Foundation
import Linux
import PoolAPI
import Synchronization
import Testing
@testable import DirectoryBackend

@Suite("directory usage scans")
struct UsageCacheTests {
    struct Unreadable: Error {}

    @Test("a usage scan that fails is not repeated on every listing, and is reported once")
    func failingScanIsRememberedAndReportedOnce() async throws {
        let reports = Mutex<[String]>([])
        let cache = UsageCache(lifetime: 30, scan: { _ in throw Unreadable() },
                               report: { message in reports.withLock { $0.append(message) } }, firstRetry: 3600)
        #expect(cache.lookup(path: "/pool/img", inode: 7, modification: 1) == Image.unknown)
        // The scan thread runs at idle priority: on a busy machine it may take a while.
        for _ in 0..<6000 where reports.withLock({ $0.isEmpty }) { try await Task.sleep(for: .milliseconds(10)) }
        // ListImages polled 50 times while the tree stays unreadable.
        for _ in 0..<50 {
            #expect(cache.lookup(path: "/pool/img", inode: 7, modification: 1) == Image.unknown)
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(cache.scansStarted == 1, "the failing tree was walked \(cache.scansStarted) times")
        let said = reports.withLock { $0 }
        #expect(said.count == 1 && said.first?.contains("/pool/img") == true, "\(said)")
        // A changed top directory is scanned again at once.
        _ = cache.lookup(path: "/pool/img", inode: 7, modification: 2)
        #expect(cache.scansStarted == 2)
    }
}
