import Foundation
import Glibc
import Linux
import PoolAPI
import TestSupport
import Testing
@testable import Transfer
@testable import TransferJobs

/// A pipe whose write end the test holds: the worker blocks reading it.
final class StalledPipe {
    let read: Int32
    let write: Int32
    init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw TestSupportError("pipe") }
        read = fds[0]
        write = fds[1]
    }
    func send(_ bytes: [UInt8]) { bytes.withUnsafeBytes { _ = Glibc.write(write, $0.baseAddress, $0.count) } }
    func closeAll() { close(read); close(write) }
}

@Suite("transfer engine: names, busy, force, crashes, cancel, leftovers")
struct EngineTests {
    @Test("an existing name fails before any work without force; force replaces; read_only marks it")
    func existingAndForce() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        _ = try sh("mkdir -p '\(setup.poolPath)/taken/old' '\(tmp.path)/src/new' && tar -C '\(tmp.path)/src' -cf '\(tmp.path)/a.tar' .")
        let fd = try openRead(tmp.appending("a.tar"))
        defer { close(fd) }
        do {
            _ = try await setup.engine.start(.importTar(fd: fd, local: "taken"))
            Issue.record("import over an existing image started")
        } catch let e as PoolError {
            #expect(e.code == .imageExists)
        }
        #expect(await setup.engine.transfers().isEmpty)
        let (result, _) = try await runTransfer(setup.engine, .importTar(fd: fd, local: "taken", force: true, readOnly: true))
        #expect(result == .done)
        #expect(exists(setup.poolPath + "/taken/new"))
        #expect(!exists(setup.poolPath + "/taken/old"))
        #expect(try await setup.pool.image(named: "taken").readOnly)
        await #expect(throws: PoolError.self) { _ = try await setup.engine.start(.importTar(fd: fd, local: "../x")) }
        await #expect(throws: TransferError.self) { _ = try await setup.engine.start(.pullTar(url: "ftp://x/y", local: "x", verify: .no)) }
    }

    @Test("a second transfer to a name being written is busy; listing, ids, cancel leaves nothing")
    func busyAndCancel() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        let stalled = try StalledPipe()
        defer { stalled.closeAll() }
        let first = try await setup.engine.start(.importTar(fd: stalled.read, local: "slow"))
        #expect(first.type == .importTar && first.local == "slow" && first.id >= 1)
        #expect(first.progress == nil && first.systemdProgress == -Double.greatestFiniteMagnitude)
        do {
            _ = try await setup.engine.start(.importRaw(fd: stalled.read, local: "slow"))
            Issue.record("second writer of one name started")
        } catch let e as PoolError {
            #expect(e.code == .busy)
        }
        let other = try StalledPipe()
        defer { other.closeAll() }
        let second = try await setup.engine.start(.importRaw(fd: other.read, local: "other"))
        #expect(second.id != first.id)
        #expect(await setup.engine.transfers().map(\.id) == [first.id, second.id].sorted())
        // The workers start and create their temp entries.
        #expect(try await waitFor { try setup.poolEntries().contains { $0.hasPrefix(".#slow") } }, "\((try? setup.poolEntries()) ?? [])")
        first.cancel()
        #expect(await setup.engine.cancel(id: second.id))
        #expect(await first.wait() == .canceled)
        #expect(await second.wait() == .canceled)
        #expect(await setup.engine.transfers().isEmpty)
        #expect(try setup.poolEntries().filter { !$0.hasSuffix(".lck") } == [])
        #expect(await !setup.engine.cancel(id: first.id))
    }

    // SIGKILL stands in for a crash: a SIGSEGV sent with kill() is caught by Swift's backtracer,
    // which returns to let the fault repeat, and a kill()ed process has no fault to repeat.
    @Test("a worker that dies of a signal is a failed transfer with a clear message, and leaves nothing")
    func crashedWorker() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        let stalled = try StalledPipe()
        defer { stalled.closeAll() }
        let handle = try await setup.engine.start(.importTar(fd: stalled.read, local: "crash"))
        var pid: pid_t?
        for _ in 0..<100 where pid == nil {
            pid = handle.worker.pid
            try await Task.sleep(for: .milliseconds(20))
        }
        let workerPID = try #require(pid)
        kill(workerPID, SIGKILL)
        let result = await handle.wait()
        #expect(result == .failed("transfer worker killed by signal 9 (Killed)"))
        #expect(try setup.poolEntries().filter { !$0.hasSuffix(".lck") } == [])
    }

    @Test("a worker exiting non-zero reports its reason; an executable that cannot start is a clear failure")
    func failingWorker() async throws {
        let bad = await WorkerProcess(executable: workerExecutable).run(arguments: [TransferWorker.flag, "no-such-type"], data: nil) { _ in }
        #expect(bad.exit == .exited(2))
        #expect(bad.failureMessage == "worker: missing or unknown transfer type")
        let missing = await WorkerProcess(executable: "/nonexistent/berthd").run(arguments: [], data: nil) { _ in }
        #expect(!missing.succeeded)
        #expect(missing.failureMessage.contains("/nonexistent/berthd"))
    }

    @Test("a worker SIGKILLed mid-way (berthd gone too) leaves a temp entry that removeStaleTemporaryEntries removes")
    func staleTemporaryEntry() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        // What install does first: a temp entry; then a worker filling it, killed mid-way.
        let temp = setup.poolPath + "/.#victim0123456789abcdef"
        try makeDirectory(temp)
        _ = try sh("mkdir -p '\(tmp.path)/src/etc' && head -c 3000000 /dev/urandom > '\(tmp.path)/src/etc/big' && tar -C '\(tmp.path)/src' -cf '\(tmp.path)/a.tar' .")
        let tar = try Data(contentsOf: URL(fileURLWithPath: tmp.appending("a.tar")))
        let stalled = try StalledPipe()
        defer { stalled.closeAll() }
        stalled.send(Array(tar.prefix(60000)))
        let worker = WorkerProcess(executable: workerExecutable)
        let readFD = stalled.read
        let run = Task {
            await worker.run(arguments: [TransferWorker.flag, "import-tar", "--parent", String(getpid()), "--target", temp],
                             data: readFD) { _ in }
        }
        for _ in 0..<200 where !exists(temp + "/etc/big") { try await Task.sleep(for: .milliseconds(20)) }
        let pid = try #require(worker.pid)
        kill(pid, SIGKILL)
        let outcome = await run.value
        #expect(outcome.exit == .signaled(SIGKILL))
        #expect(exists(temp + "/etc/big"), "the killed worker left its partial temp entry")
        await setup.pool.removeStaleTemporaryEntries()
        #expect(try setup.poolEntries() == [])
    }

    @Test("a killed parent's worker dies with it (PR_SET_PDEATHSIG)")
    func parentDeathKillsWorker() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        try makeDirectory(tmp.appending("target"))
        let parent = Process()
        parent.executableURL = URL(fileURLWithPath: workerExecutable)
        parent.arguments = ["--spawn-worker-and-wait", tmp.appending("target")]
        let out = Pipe()
        parent.standardOutput = out
        try parent.run()
        let line = readLine(from: out.fileHandleForReading)
        let workerPID = try #require(pid_t(line.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(kill(workerPID, 0) == 0, "the worker runs")
        kill(parent.processIdentifier, SIGKILL)
        parent.waitUntilExit()
        var gone = false
        for _ in 0..<200 {
            // The worker is reparented (to init or a subreaper) and reaped there; a zombie counts as dead.
            let state = (try? String(contentsOfFile: "/proc/\(workerPID)/stat", encoding: .utf8))?
                .split(separator: ")").last?.split(separator: " ").first
            if state == nil || state == "Z" { gone = true; break }
            usleep(20_000)
        }
        #expect(gone, "worker \(workerPID) outlived its parent")
    }

    @Test("progress moves for a file fd and is unknown for a pipe")
    func progressKnownForFiles() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        _ = try sh("mkdir -p '\(tmp.path)/src' && for i in $(seq 1 40); do head -c 100000 /dev/urandom > '\(tmp.path)/src/f'$i; done && tar -C '\(tmp.path)/src' -cf '\(tmp.path)/a.tar' .")
        let fd = try openRead(tmp.appending("a.tar"))
        defer { close(fd) }
        let (result, events) = try await runTransfer(setup.engine, .importTar(fd: fd, local: "file"))
        #expect(result == .done)
        let steps = events.compactMap { if case .progress(let p) = $0 { p } else { nil } }
        // berthd passes on the latest progress per read of the status pipe, so how many steps
        // arrive depends on scheduling (one read may carry them all on a busy machine); known
        // progress that only moves forward and ends at 1 does not.
        #expect(!steps.isEmpty && steps.last == 1, "\(steps)")
        #expect(steps == steps.sorted())
        let (pipeFD, cat) = try pipeFrom(tmp.appending("a.tar"))
        defer { close(pipeFD); cat.waitUntilExit() }
        let (pipeResult, pipeEvents) = try await runTransfer(setup.engine, .importTar(fd: pipeFD, local: "pipe"))
        #expect(pipeResult == .done)
        let pipeSteps = pipeEvents.compactMap { if case .progress(let p) = $0 { p } else { nil } }
        #expect(pipeSteps == [1], "only completion is known for a pipe")
    }
}
