// TEST FIXTURE ONLY (see Package.swift): berth-transfer with more modes: a stand-in berthd
// for TransferTests' parent-death test, misbehaving workers (`--fake-worker MODE`) and a
// stand-in berthd that supervises one of them and reports its own peak memory (`--supervise`).
import Dispatch
import Glibc
import Synchronization
import Transfer
import TransferJobs

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == TransferWorker.flag {
    TransferWorker.main(arguments: arguments)
}
if arguments.count == 2 && arguments[0] == "--spawn-worker-and-wait" {
    // A stand-in berthd for the PDEATHSIG test: starts an import-tar worker reading a pipe
    // that never ends, prints the worker's pid, and waits to be killed.
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { exit(70) }
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, 4095)
    guard n > 0 else { exit(71) }
    let executable = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let worker = WorkerProcess(executable: executable)
    let target = arguments[1]
    Task.detached {
        _ = await worker.run(arguments: [TransferWorker.flag, "import-tar", "--parent", String(getpid()), "--target", target],
                             data: fds[0]) { _ in }
    }
    while worker.pid == nil { usleep(10_000) }
    print(worker.pid ?? 0)
    fflush(nil)
    while true { sleep(60) }
}
if arguments.count >= 2 && arguments[0] == "--fake-worker" {
    fakeWorker(arguments[1])
}
if arguments.count == 2 && arguments[0] == "--supervise" {
    // The parent side (WorkerProcess) of a fake worker, alone in this process so that its peak
    // memory is ours: prints `outcome=<ok|failed> logs=N progress=N hwm_kb=N message=…`.
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, 4095)
    guard n > 0 else { exit(71) }
    let executable = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let worker = WorkerProcess(executable: executable)
    let counts = Mutex((logs: 0, progress: 0))
    let done = DispatchSemaphore(value: 0)
    let result = Mutex<WorkerProcess.Outcome?>(nil)
    Task.detached {
        let outcome = await worker.run(arguments: ["--fake-worker", arguments[1]], data: nil) { event in
            counts.withLock { c in
                switch event {
                case .log: c.logs += 1
                case .progress: c.progress += 1
                case .finished: break
                }
            }
        }
        result.withLock { $0 = outcome }
        done.signal()
    }
    done.wait()
    let outcome = result.withLock { $0 }
    var raw = [UInt8](repeating: 0, count: 8192)
    let fd = open("/proc/self/status", O_RDONLY)
    let got = raw.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    let status = String(decoding: raw[..<max(got, 0)], as: UTF8.self)
    let hwm = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }?
        .split(separator: " ").dropFirst().first.map(String.init) ?? "?"
    let c = counts.withLock { $0 }
    print("outcome=\(outcome?.succeeded == true ? "ok" : "failed") logs=\(c.logs) progress=\(c.progress) hwm_kb=\(hwm) message=\(outcome?.failureMessage ?? "")")
    exit(0)
}
exit(64)

/// A worker that misbehaves on its status pipe (fd 3) as MODE says, then exits 0:
/// `long-line` 100 MiB without a newline; `flood-progress` a million progress lines;
/// `flood-log` 200,000 log lines; `exit-now` nothing at all; `exit-on-data-eof` runs until
/// its data fd ends, then leaves a grandchild holding the pipe for 5 s.
func fakeWorker(_ mode: String) -> Never {
    signal(SIGPIPE, SIG_IGN)
    func writeAll(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = write(3, raw.baseAddress.map { $0 + done }, raw.count - done)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                done += n
            }
            return true
        }
    }
    /// Lines sent in big writes, as a flooding worker would.
    func flood(_ count: Int, _ line: (Int) -> String) {
        var chunk: [UInt8] = []
        for i in 0..<count {
            chunk.append(contentsOf: line(i).utf8)
            if chunk.count >= 60_000 {
                if !writeAll(chunk) { exit(0) }
                chunk.removeAll(keepingCapacity: true)
            }
        }
        _ = writeAll(chunk)
    }
    switch mode {
    case "long-line":
        let block = [UInt8](repeating: UInt8(ascii: "L"), count: 1 << 20)
        for _ in 0..<100 where !writeAll(block) { break }
    case "flood-progress":
        flood(1_000_000) { "P \(Double($0 % 1000) / 1000)\n" }
    case "flood-log":
        flood(200_000) { "L 6 line \($0) of a worker that does not stop talking\n" }
    case "exit-now":
        break
    case "exit-on-data-eof":
        // Runs until its data fd (4) reaches end of file, so a test knows it while it runs;
        // a grandchild keeps the status pipe open: only the worker's own exit tells it ended.
        var byte: UInt8 = 0
        while read(4, &byte, 1) > 0 {}
        if fork() == 0 {
            sleep(5)
            _exit(0)
        }
    default:
        exit(64)
    }
    exit(0)
}
