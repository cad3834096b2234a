// TEST FIXTURE ONLY (see Package.swift): berth-transfer with one more mode, a stand-in berthd
// for TransferTests' parent-death test.
import Glibc
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
exit(64)
