import Foundation
import Glibc
import Linux
@testable import PoolAPI
import Synchronization
import TestSupport
import Testing

/// `Blocking`'s threads are bounded, jobs beyond the bound wait and all complete, a reserve
/// keeps listings answered while the bulk lane is full, and a thread that cannot be started
/// fails its job instead of running it on the caller's thread.
@Suite struct WorkerThreadsTests {
    /// How many jobs run at once, and the most that ever did.
    final class Counts: Sendable {
        private let state = Mutex((running: 0, peak: 0))
        func enter() { state.withLock { $0.running += 1; $0.peak = max($0.peak, $0.running) } }
        func leave() { state.withLock { $0.running -= 1 } }
        var peak: Int { state.withLock { $0.peak } }
    }

    /// The calling thread (pthread_self(3)).
    static func threadID() -> UInt { UInt(pthread_self()) }

    @Test(.timeLimit(.minutes(1)))
    func moreJobsThanTheBoundAllCompleteOnAtMostTheBoundThreads() async throws {
        let workers = WorkerThreads(maxThreads: 4, reserve: 1, maxIdle: 2)
        let counts = Counts()
        let results = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<100 {
                group.addTask {
                    try await workers.run(i % 5 == 0 ? .interactive : .bulk) { () -> Int in
                        counts.enter()
                        usleep(2_000)
                        counts.leave()
                        return i
                    }
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(results.sorted() == Array(0..<100))
        #expect(counts.peak <= 4)
        #expect(counts.peak >= 2, "jobs ran concurrently")
    }

    @Test(.timeLimit(.minutes(1)))
    func aFullBulkLaneLeavesTheReserveForInteractiveJobs() async throws {
        let workers = WorkerThreads(maxThreads: 3, reserve: 1, maxIdle: 3)
        let gate = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        // Two long jobs fill the bulk lane (3 - 1), a third waits.
        let long = (0..<3).map { _ in
            Task { try await workers.run(.bulk) { started.signal(); gate.wait(); gate.signal() } }
        }
        for _ in 0..<2 { await withCheckedContinuation { c in DispatchQueue.global().async { started.wait(); c.resume() } } }
        // A listing still runs at once, on the reserved thread.
        let answer = try await workers.run(.interactive) { 42 }
        #expect(answer == 42)
        gate.signal()
        for t in long { try await t.value }
    }

    @Test func aThreadThatCannotStartFailsTheJobInsteadOfRunningItOnTheCaller() async throws {
        let workers = WorkerThreads(maxThreads: 4, reserve: 1, maxIdle: 2) { _ in
            throw SystemCallError("pthread_create", .EAGAIN)
        }
        let caller = Self.threadID()
        let ranOn = Mutex<UInt?>(nil)
        do {
            _ = try await workers.run(.interactive) { ranOn.withLock { $0 = Self.threadID() } }
            Issue.record("the job ran although no thread could start")
        } catch let e as SystemCallError {
            #expect(e.errno == .EAGAIN)
        }
        #expect(ranOn.withLock { $0 } == nil, "the job must not run at all (caller thread \(caller))")
    }
}
