import Foundation
import Glibc
import Linux
import PoolAPI
import Sandbox
import TestSupport
import Testing
@testable import Transfer
@testable import TransferJobs

/// Mount point → mount options (field 6) of /proc/PID/mountinfo.
private func mounts(_ pid: String) throws -> [String: String] {
    let text = try String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8)
    var result: [String: String] = [:]
    for line in text.split(separator: "\n") {
        let fields = line.split(separator: " ")
        guard fields.count > 5 else { continue }
        result[String(fields[4]).replacingOccurrences(of: "\\040", with: " ")] = String(fields[5])
    }
    return result
}

private func namespace(_ pid: String, _ kind: String) throws -> String { try readLink("/proc/\(pid)/ns/\(kind)") }

/// The kernel's hex form of a capability mask in /proc/PID/status.
private func hex(_ set: CapabilitySet) -> String {
    let digits = String(set.rawValue, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

/// Waits (bounded) until worker `pid` runs under its seccomp filter: it has confined itself.
private func waitUntilConfined(_ worker: WorkerProcess) async throws -> pid_t {
    for _ in 0..<500 {
        if let pid = worker.pid, processStatus(pid)["Seccomp"] == "2" { return pid }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw TestSupportError("the worker did not confine itself")
}

/// What a view may hold besides the job's own paths: the base of every view.
private let baseMountPoints: Set<String> = ["/", "/usr", "/proc", "/tmp", "/dev/null", "/dev/zero", "/dev/full",
                                            "/dev/random", "/dev/urandom", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]

/// Checks a confined worker against the test process (berthd's stand-in: it spawned the worker):
/// no_new_privs, seccomp, exactly `capabilities`, its own mount namespace, its own network
/// namespace unless `hostNetwork`, and a mount table of the base view plus `expected` (mount
/// point → "rw"/"ro"), nothing else (no /root, /home, /var/lib, /run/dbus, other images).
private func expectConfined(_ pid: pid_t, capabilities: CapabilitySet, hostNetwork: Bool, expected: [String: String]) throws {
    let status = processStatus(pid)
    #expect(status["NoNewPrivs"] == "1", "\(status)")
    #expect(status["Seccomp"] == "2", "\(status)")
    for set in ["CapBnd", "CapEff", "CapPrm"] {
        #expect(status[set] == hex(capabilities), "\(set) of the worker: \(status[set] ?? "?"), expected \(capabilities)")
    }
    #expect(status["CapInh"] == hex([]) && status["CapAmb"] == hex([]))
    #expect(try namespace("\(pid)", "mnt") != namespace("self", "mnt"), "the worker shares berthd's mount namespace")
    if hostNetwork {
        #expect(try namespace("\(pid)", "net") == namespace("self", "net"))
    } else {
        #expect(try namespace("\(pid)", "net") != namespace("self", "net"), "the worker shares berthd's network namespace")
    }
    let view = try mounts("\(pid)")
    let extra = view.keys.filter { point in
        !baseMountPoints.contains(point) && !point.hasPrefix("/usr/") && expected[point] == nil
    }
    #expect(extra.isEmpty, "mounted in the worker's view beyond what it needs: \(extra.sorted())")
    for (point, access) in expected {
        #expect(view[point]?.split(separator: ",").first.map(String.init) == access, "\(point) in the view: \(view[point] ?? "missing")")
    }
    #expect(view["/"]?.hasPrefix("ro") == true, "the view's root is writable: \(view["/"] ?? "?")")
    let ours = try mounts("self")
    for point in ["/sys", "/run", "/var", "/home", "/root"] where ours[point] != nil {
        #expect(view[point] == nil, "\(point) of berthd's namespace is in the worker's view")
    }
}

@Suite("the transfer worker is confined: namespaces, mount view, capabilities, seccomp",
       .serialized, .requires(.root))  // the worker confines itself with namespaces and mounts
struct SandboxTests {
    @Test("a held import-tar worker: no_new_privs, seccomp, extraction's capabilities only, its own mount and network namespaces, a view of its temp entry alone")
    func heldImportIsConfined() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        try makeDirectory(setup.poolPath + "/other")
        let stalled = try StalledPipe()
        defer { stalled.closeAll() }
        let handle = try await setup.engine.start(.importTar(fd: stalled.read, local: "held"))
        let pid = try await waitUntilConfined(handle.worker)
        let temp = try #require(try setup.poolEntries().first { $0.hasPrefix(".#held") && !$0.hasSuffix(".lck") })
        try expectConfined(pid, capabilities: TransferWorker.extractingCapabilities, hostNetwork: false,
                           expected: [setup.poolPath + "/" + temp: "rw"])
        handle.cancel()
        #expect(await handle.wait() == .canceled)
    }

    @Test("a held export-tar worker sees its image read-only, may read any file of it and nothing else")
    func heldExportIsConfined() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        // More than a pipe holds: the worker blocks writing to a pipe nobody reads.
        _ = try sh("mkdir -p '\(setup.poolPath)/img' && head -c 4000000 /dev/urandom > '\(setup.poolPath)/img/big'")
        let stalled = try StalledPipe()
        defer { stalled.closeAll() }
        let handle = try await setup.engine.start(.exportTar(local: "img", fd: stalled.write, format: .uncompressed))
        let pid = try await waitUntilConfined(handle.worker)
        try expectConfined(pid, capabilities: .dacReadSearch, hostNetwork: false, expected: [setup.poolPath + "/img": "ro"])
        handle.cancel()
        #expect(await handle.wait() == .canceled)
    }

    @Test("a held pull-raw worker keeps the host's network (and nothing else more): no capability, its temp file, the CA store")
    func heldPullIsConfined() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let setup = try Setup(root: tmp.appending("root"))
        // A server that accepts the connection (the kernel's backlog does) and never answers.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { a in
                guard bind(listener, a, length) == 0, listen(listener, 4) == 0, getsockname(listener, a, &length) == 0 else {
                    throw TestSupportError("cannot listen on 127.0.0.1")
                }
            }
        }
        let port = UInt16(bigEndian: address.sin_port)
        let handle = try await setup.engine.start(.pullRaw(url: "http://127.0.0.1:\(port)/image.raw", local: "pulled", verify: .no))
        let pid = try await waitUntilConfined(handle.worker)
        let temp = try #require(try setup.poolEntries().first { $0.hasPrefix(".#pulled") && !$0.hasSuffix(".lck") })
        var expected = [setup.poolPath + "/" + temp: "rw"]
        for path in TransferWorker.networkFiles where (try? fileStatus(path)) != nil { expected[path] = "ro" }
        try expectConfined(pid, capabilities: [], hostNetwork: true, expected: expected)
        handle.cancel()
        #expect(await handle.wait() == .canceled)
    }

    /// Runs the fixture's probe for a worker of `arguments`, with descriptor 4 opened on
    /// `input` (a file or folder) if given; returns its `name=result` lines.
    private func probe(_ arguments: [String], outside: [String], port: Int, input: String? = nil) throws -> [String: String] {
        var command = ([workerExecutable, "--probe-sandbox", "--port", String(port)] + outside.flatMap { ["--outside", $0] } + ["--"] + arguments)
            .map { "'\($0)'" }.joined(separator: " ")
        if let input { command += " 4<'\(input)'" }
        let r = try run(["sh", "-c", "exec " + command])
        var results: [String: String] = [:]
        for line in r.stdout.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            results[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return results
    }

    @Test("each job type under the production policy cannot reach a file outside its input and pool paths, the network (unless it pulls), a dropped capability or a denied call",
          arguments: TransferType.allCases)
    func probedPolicy(type: TransferType) throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let pool = tmp.appending("pool")
        let secret = tmp.appending("secret")
        try "secret".write(toFile: secret, atomically: true, encoding: .utf8)
        try makeDirectory(pool)
        try makeDirectory(tmp.appending("input"))
        try "data".write(toFile: tmp.appending("input/file"), atomically: true, encoding: .utf8)
        let server = try LoopbackHTTPServer(directory: tmp.path)
        defer { server.stop() }

        var arguments = [type.rawValue, "--root", tmp.appending("root"), "--pool", pool]
        let isRaw = type == .importRaw || type == .pullRaw || type == .exportRaw
        let entry = pool + (isRaw ? "/.#image.raw" : "/.#image")
        if isRaw { try "".write(toFile: entry, atomically: true, encoding: .utf8) } else { try makeDirectory(entry) }
        switch type {
        case .exportTar, .exportRaw: arguments += ["--source", entry]
        default: arguments += ["--target", entry]
        }
        if [.pullTar, .pullRaw, .pullOci].contains(type) { arguments += ["--url", "http://127.0.0.1:\(server.port)/x"] }
        let input: String? = switch type {
        case .importFileSystem: tmp.appending("input")
        case .importTar, .importRaw: tmp.appending("input/file")
        default: nil
        }
        let r = try probe(arguments, outside: [secret, "/etc/shadow", "/root", "/run/dbus/system_bus_socket"], port: server.port, input: input)
        #expect(r["confine"] == nil, "\(r)")
        for path in [secret, "/etc/shadow", "/root", "/run/dbus/system_bus_socket"] {
            #expect(r["outside:\(path)"] == "ENOENT", "\(type.rawValue) reached \(path): \(r)")
        }
        let pulls = [TransferType.pullTar, .pullRaw, .pullOci].contains(type)
        #expect((r["network"] == "ok") == pulls, "\(type.rawValue): network \(r["network"] ?? "?")")
        #expect(r["mount"] == "EPERM" && r["unshare_user"] == "EPERM", "\(r)")
        #expect(r["proc_1"] == "ENOENT", "\(r)")
        #expect(r["trusted_xattr"] == nil || r["trusted_xattr"] == "EPERM" || r["trusted_xattr"] == "EROFS", "\(r)")
        let policy = TransferWorker.sandboxPolicy(for: try TransferWorker.Arguments(parsing: arguments))
        switch type {
        case .exportTar, .exportRaw:
            #expect(r["chown"] == nil)
        case .importRaw, .pullRaw:
            #expect(r["chown"] == "EPERM", "raw imports keep no CAP_CHOWN: \(r)")
        default:
            #expect(policy.capabilities.contains(.chown) && r["chown"] == "ok", "\(r)")
        }
        // Beside the target, the pool folder is out of reach (pull-oci alone writes there:
        // its layer cache and settings file).
        #expect(exists(pool + "/probe-sibling") == (type == .pullOci), "\(type.rawValue): sibling \(r["sibling"] ?? "?")")
        let top = Set((r["root"] ?? "").split(separator: ",").map(String.init))
        #expect(top.isSubset(of: ["bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "dev", "proc", "tmp", "run", "etc"]), "\(top)")
        #expect(top.contains("etc") == pulls)
        if type == .importFileSystem {
            // `..` of the input folder is the view's /run, not the host's folder above it.
            #expect(r["input_parent"] == "input", "\(r)")
        }
    }

    @Test("the policies: no job keeps CAP_SYS_ADMIN or CAP_SETPCAP; only pulls keep the host's network; each sees its own paths; every denied call is one libseccomp knows")
    func policies() throws {
        #expect(SeccompFilter.unknownCalls.isEmpty, "\(SeccompFilter.unknownCalls)")
        for type in TransferType.allCases {
            let a = try TransferWorker.Arguments(parsing: [type.rawValue, "--root", "/r", "--target", "/p/.#t", "--source", "/p/s"])
            let policy = TransferWorker.sandboxPolicy(for: a)
            #expect(!policy.capabilities.contains(.sysAdmin) && !policy.capabilities.contains(.setpcap), "\(type): \(policy.capabilities)")
            #expect(policy.hostNetwork == [.pullTar, .pullRaw, .pullOci].contains(type))
            let own = policy.binds.filter { !$0.system }
            switch type {
            case .exportTar, .exportRaw: #expect(own == [SandboxPolicy.Bind("/p/s", .readOnly)], "\(own)")
            case .pullOci: #expect(own.map(\.path) == ["/p", "/r/etc/berth/certs.d"] && own.first?.access == .readWrite, "\(own)")
            default: #expect(own == [SandboxPolicy.Bind("/p/.#t", .readWrite)], "\(own)")
            }
        }
    }

    @Test("an RBD job binds no image path, keeps the host network (to the cluster) and sees backends.d, /etc/ceph, the conf and the keyrings it names, read-only")
    func rbdPolicies() throws {
        let root = try TemporaryDirectory()
        defer { root.remove() }
        try makeDirectories(root.appending("etc/berth/backends.d"))
        try makeDirectories(root.appending("etc/ceph"))
        try "[rbd]\npool=berth\nconf=/etc/ceph/ceph.conf\nid=berth\n".write(
            toFile: root.appending("etc/berth/backends.d/rbd.conf"), atomically: false, encoding: .utf8)
        // Ceph spells the key three ways; `$name` paths are reached through their folder.
        try """
        [global]
        mon host = 127.0.0.1:3300
        keyring = /srv/ceph/client.keyring, /etc/ceph/$cluster.$name.keyring
        [client]
        key_file = /srv/keys/berth.key
        keyfile=relative/ignored
        =
        """.write(toFile: root.appending("etc/ceph/ceph.conf"), atomically: false, encoding: .utf8)
        let locator = try #require(RbdLocator("rbd://ceph/berth/.#img123"))
        let files = TransferWorker.cephFiles(for: locator, root: root.path)
        #expect(files == [root.appending("etc/berth/backends.d"), "/etc/ceph", root.appending("etc/ceph/ceph.conf"),
                          "/srv/ceph/client.keyring", "/etc/ceph", "/srv/keys/berth.key"], "\(files)")
        // No [rbd] section for that cluster and pool: only the fixed places.
        #expect(TransferWorker.cephFiles(for: try #require(RbdLocator("rbd://ceph/other/x")), root: root.path)
            == [root.appending("etc/berth/backends.d"), "/etc/ceph"])

        for (type, option) in [(TransferType.importRaw, "--target"), (.pullRaw, "--target"), (.exportRaw, "--source")] {
            var arguments = [type.rawValue, "--root", root.path, option, "rbd://ceph/berth/.#img123", "--pool", "/p"]
            if type == .pullRaw { arguments += ["--url", "http://127.0.0.1:1/x"] }
            let policy = TransferWorker.sandboxPolicy(for: try TransferWorker.Arguments(parsing: arguments), cephFiles: files)
            #expect(policy.hostNetwork, "\(type)")
            #expect(!policy.binds.contains { $0.path.contains("rbd:") }, "\(type): \(policy.binds)")
            #expect(!policy.capabilities.contains(.sysAdmin), "\(type)")
            for file in files {
                #expect(policy.binds.contains { $0.path == file && $0.access == .readOnly && !$0.required }, "\(type): \(file)")
            }
            #expect(!policy.binds.contains { $0.access == .readWrite }, "\(type): \(policy.binds)")
        }
    }

    @Test("a directory as the data descriptor of any type but import-fs is refused before any work")
    func directoryDescriptorRefused() throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        try makeDirectory(tmp.appending("target"))
        let r = try probe(["import-tar", "--target", tmp.appending("target")], outside: [], port: 1, input: tmp.path)
        #expect(r["confine"]?.contains("descriptor 4 is a directory") == true, "\(r)")
    }

    @Test("a worker that cannot confine itself fails its transfer with the reason, exit status 4, and does no work")
    func failedConfinementFailsTheTransfer() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let missing = tmp.appending("no-such-entry")
        let outcome = await WorkerProcess(executable: workerExecutable).run(
            arguments: [TransferWorker.flag, "import-tar", "--parent", String(getpid()), "--target", missing], data: nil) { _ in }
        #expect(outcome.exit == .exited(4))
        #expect(outcome.failureMessage == "cannot confine the transfer worker: copying the mount of \(missing): it does not exist")
        #expect(!exists(missing))
    }
}
