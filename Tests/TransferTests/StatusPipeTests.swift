import Foundation
import Glibc
import Linux
import PoolAPI
import TestSupport
import Synchronization
import Testing
@testable import Transfer

/// What `TransferWorkerFixture --supervise MODE` printed: how the worker ended, what reached
/// berthd's side, and that side's peak memory.
private struct Supervised {
    var succeeded: Bool
    var logs: Int
    var progress: Int
    var peakKiB: Int
    var message: String

    init(_ mode: String) throws {
        let out = try run([workerExecutable, "--supervise", mode], check: true).stdout
        var fields: [String: String] = [:]
        for part in out.split(separator: " ", maxSplits: 4) {
            guard let eq = part.firstIndex(of: "=") else { continue }
            fields[String(part[..<eq])] = String(part[part.index(after: eq)...]).trimmingCharacters(in: .newlines)
        }
        succeeded = fields["outcome"] == "ok"
        logs = Int(fields["logs"] ?? "") ?? -1
        progress = Int(fields["progress"] ?? "") ?? -1
        peakKiB = Int(fields["hwm_kb"] ?? "") ?? Int.max
        message = fields["message"] ?? ""
    }
}

@Suite("the worker's status pipe is bounded: line length, progress, log rate; the reaper cannot spin")
struct StatusPipeTests {
    @Test("a worker writing a 100 MiB line without a newline fails its transfer as a protocol error; berthd's side stays small")
    func overlongLineFailsTheTransfer() throws {
        let s = try Supervised("long-line")
        #expect(!s.succeeded, "a worker that broke the protocol succeeded")
        #expect(s.message.contains("status line"), "\(s.message)")
        #expect(s.peakKiB < 64 * 1024, "berthd's side peaked at \(s.peakKiB) KiB")
    }

    @Test("a million progress lines are coalesced: the transfer succeeds, far fewer progress events, small memory")
    func progressFloodIsCoalesced() throws {
        let s = try Supervised("flood-progress")
        #expect(s.succeeded, "\(s.message)")
        #expect(s.progress > 0 && s.progress < 100_000, "\(s.progress) progress events for a million lines")
        #expect(s.peakKiB < 64 * 1024, "berthd's side peaked at \(s.peakKiB) KiB")
    }

    @Test("200,000 log lines become a bounded number of log events, with a note of how many were suppressed")
    func logFloodIsRateLimited() throws {
        let s = try Supervised("flood-log")
        #expect(s.succeeded, "\(s.message)")
        #expect(s.logs > 0 && s.logs < 5_000, "\(s.logs) log events for 200,000 lines")
        #expect(s.peakKiB < 64 * 1024, "berthd's side peaked at \(s.peakKiB) KiB")
    }

    @Test("the rate limit passes a burst, then notes how many lines it dropped")
    func suppressionNote() {
        var limiter = LogRateLimiter(burst: 3, perSecond: 0)
        var passed: [String] = []
        for i in 0..<10 {
            for (_, text) in limiter.admit(LogPriority.info, "line \(i)", now: 0) { passed.append(text) }
        }
        for (_, text) in limiter.flush() { passed.append(text) }
        #expect(passed == ["line 0", "line 1", "line 2", "7 log messages of the transfer worker suppressed"])
    }

    @Test("a line split across reads is joined; a line over the cap is refused however it arrives")
    func lineSplitting() throws {
        var splitter = StatusLineSplitter()
        var lines: [String] = []
        for chunk in ["P 0.", "5\nL 6 he", "llo\n", "E x\n"] {
            try chunk.utf8CString.dropLast().map { UInt8(bitPattern: $0) }.withUnsafeBytes { bytes in
                try splitter.feed(bytes) { lines.append(String($0)) }
            }
        }
        #expect(lines == ["P 0.5", "L 6 hello", "E x"])
        let long = [UInt8](repeating: 65, count: StatusLineSplitter.maxLineLength / 2 + 1)
        var refused = false
        for _ in 0..<2 {
            do { try long.withUnsafeBytes { try splitter.feed($0) { _ in } } } catch { refused = true }
        }
        #expect(refused)
    }

    @Test("a worker reaped by someone else ends the run with an error instead of a wait that never ends")
    func waitFailureCannotSpin() async throws {
        let worker = WorkerProcess(executable: workerExecutable)
        // The worker runs until its data pipe ends.
        let data = try StalledPipe()
        defer { close(data.read) }
        let dataRead = data.read
        let run = Task { await worker.run(arguments: ["--fake-worker", "exit-on-data-eof"], data: dataRead) { _ in } }
        var pid: pid_t?
        for _ in 0..<3000 where pid == nil {
            pid = worker.pid
            if pid == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        let child = try #require(pid)
        // Reap it behind WorkerProcess's back: its own wait then fails with ECHILD. The test's
        // waitpid is already blocked in the kernel when the worker exits (WorkerProcess polls
        // the pidfd and waits only once it is readable), so it usually wins.
        let waitingBefore = threadsBlockedInWait()
        let reaping = Task { try await Blocking.run { () -> Int32 in
            var status: Int32 = 0
            return waitpid(child, &status, 0)
        } }
        // Bounded, not asserted: where wchan is hidden the run still ends, just with a coin toss.
        _ = await waitFor(seconds: 10) { threadsBlockedInWait() > waitingBefore }
        close(data.write)
        let reaped = try await reaping.value
        let outcome = await valueOf(run, within: 30)
        let ended = try #require(outcome, "the run did not end within 30 s of its worker's exit")
        if reaped == child {
            #expect(!ended.succeeded)
            #expect(ended.failureMessage.contains("wait"), "\(ended.failureMessage)")
        }
    }
}

/// How many threads of this process sleep in wait(2) (`do_wait` in /proc/self/task/*/wchan).
private func threadsBlockedInWait() -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.filter { (try? String(contentsOfFile: "/proc/self/task/\($0)/wchan", encoding: .utf8)) == "do_wait" }.count
}

/// The task's value, or nil if it has none after `seconds` (the task is left running).
private func valueOf<T: Sendable>(_ task: Task<T, Never>, within seconds: Int) async -> T? {
    let once = Once<T?>()
    return await withCheckedContinuation { c in
        once.pending.withLock { $0 = c }
        Task { once.resume(await task.value) }
        Task { try? await Task.sleep(for: .seconds(seconds)); once.resume(nil) }
    }
}

/// A continuation resumed by the first of several.
private final class Once<T: Sendable>: Sendable {
    let pending = Mutex<CheckedContinuation<T, Never>?>(nil)
    func resume(_ value: T) { pending.withLock { $0.take() }?.resume(returning: value) }
}
