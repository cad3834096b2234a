// TEST FIXTURE ONLY (see Package.swift): berth-transfer with more modes: a stand-in berthd
// for TransferTests' parent-death test, misbehaving workers (`--fake-worker MODE`) and a
// stand-in berthd that supervises one of them and reports its own peak memory (`--supervise`).
import Dispatch
import CLinux
import Glibc
import Linux
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
if arguments.first == "--probe-sandbox" {
    probeSandbox(Array(arguments.dropFirst()))
}
exit(64)

/// `--probe-sandbox [--outside PATH]… [--port N] [--] TYPE --option value…`: confines itself
/// with the production policy of a worker of that command line (`TransferWorker.confine`, the
/// very function berth-transfer calls), then tries what a worker must not be able to do and
/// prints one `name=result` line each (`ok`, or the errno's name): `outside:PATH` opens PATH;
/// `network` connects to 127.0.0.1:N; `sibling` creates `probe-sibling` beside the target;
/// `chown` gives the target (a file) or a new `probe-file` in it (a folder) to 1234:1234
/// (CAP_CHOWN); `trusted_xattr` sets a trusted.* xattr there (CAP_SYS_ADMIN); `mount` and
/// `unshare_user` try calls the seccomp filter denies; `proc_1` opens /proc/1/status;
/// `input_parent` lists the folder `..` of descriptor 4 (an import-fs input); `root` lists the
/// view's `/`; `confine_us` is how long confining took. A failed confinement prints
/// `confine=failed REASON` and exits 1.
func probeSandbox(_ arguments: [String]) -> Never {
    var rest = arguments[...]
    var outside: [String] = []
    var port: UInt16?
    while let option = rest.first, option.hasPrefix("--"), option != TransferWorker.flag {
        rest = rest.dropFirst()
        if option == "--" { break }
        guard let value = rest.popFirst() else { exit(64) }
        switch option {
        case "--outside": outside.append(value)
        case "--port": port = UInt16(value)
        default: exit(64)
        }
    }
    guard let parsed = try? TransferWorker.Arguments(parsing: Array(rest)) else { exit(64) }
    func result(_ r: Int32) -> String { r >= 0 ? "ok" : Errno.current.name }
    func names(_ dir: OpaquePointer?) -> String {
        guard let dir else { return Errno.current.name }
        defer { closedir(dir) }
        var names: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted().joined(separator: ",")
    }
    var start = timespec(), end = timespec()
    clock_gettime(CLOCK_MONOTONIC, &start)
    do { _ = try TransferWorker.confine(parsed) } catch {
        print("confine=failed \(error)")
        exit(1)
    }
    clock_gettime(CLOCK_MONOTONIC, &end)
    print("confine_us=\((end.tv_sec - start.tv_sec) * 1_000_000 + (end.tv_nsec - start.tv_nsec) / 1000)")
    for path in outside {
        print("outside:\(path)=\(result(open(path, O_RDONLY)))")
    }
    if let port {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let r = s < 0 ? s : withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        print("network=\(result(r))")
    }
    if let target = parsed.target {
        let folder = parentFolder(of: target)
        print("sibling=\(result(open(folder + "/probe-sibling", O_WRONLY | O_CREAT | O_EXCL, 0o644)))")
        var st = stat()
        let isFolder = stat(target, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
        let fd = isFolder ? open(target + "/probe-file", O_WRONLY | O_CREAT | O_EXCL, 0o644) : open(target, O_WRONLY)
        print("chown=\(fd < 0 ? Errno.current.name : result(fchown(fd, 1234, 1234)))")
        print("trusted_xattr=\(fd < 0 ? Errno.current.name : result(fsetxattr(fd, "trusted.berth", "x", 1, 0)))")
    }
    print("mount=\(result(mount("none", "/tmp", "tmpfs", 0, nil)))")
    print("unshare_user=\(result(unshare(0x1000_0000)))")
    print("proc_1=\(result(open("/proc/1/status", O_RDONLY)))")
    if parsed.type == .importFileSystem {
        let parent = openat(4, "..", O_RDONLY | O_DIRECTORY)
        print("input_parent=\(parent < 0 ? Errno.current.name : names(fdopendir(parent)))")
    }
    print("root=\(names(opendir("/")))")
    exit(0)
}

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
