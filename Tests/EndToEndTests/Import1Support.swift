import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport

/// What the import1 end-to-end tests need: root, a bus, the real machinectl and the fixture tools.
let import1Requirements: [Requirement] = [
    .root, .privateBus, .commands("machinectl", "gpg", "qemu-img", "xz"), .file("/usr/bin/python3"),
]

func shell(_ script: String) throws -> String {
    try run(["sh", "-ec", script], check: true).stdout
}

/// Folders made once per test run and removed when the test process exits.
private let import1AtExit = Mutex<[String]>([])

private func removeAtExit(_ path: String) {
    let first = import1AtExit.withLock { folders -> Bool in
        folders.append(path)
        return folders.count == 1
    }
    if first {
        atexit {
            for folder in import1AtExit.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: folder) }
        }
    }
}

/// The content every import1 end-to-end test uses, made once: a tree, its tar, a sparse raw
/// disk (raw, raw.xz, qcow2), hostile archives, and a web folder with checksums and a signature
/// by a key made here, plus a large random tar for slow downloads.
struct Import1Content: Sendable {
    let dir: String
    let keyring: String
    var tree: String { dir + "/tree" }
    var tar: String { dir + "/image.tar" }
    var raw: String { dir + "/disk.raw" }
    var www: String { dir + "/www" }

    static let shared: Result<Import1Content, TestSupportError> = {
        do {
            let tmp = try TemporaryDirectory(prefix: "berth-import1-e2e")
            removeAtExit(tmp.path)
            let d = tmp.path
            _ = try shell("""
            cd '\(d)'
            mkdir -p tree/etc tree/usr/lib www/good www/mismatch www/tampered hostile
            echo ID=berthtest > tree/usr/lib/os-release
            echo imported > tree/etc/hostname
            head -c 200000 /dev/urandom > tree/etc/blob
            tar -C tree -cf image.tar .
            truncate -s 8M disk.raw && head -c 100000 /dev/urandom | dd of=disk.raw bs=4096 seek=5 conv=notrunc status=none
            xz -T1 -k -c disk.raw > disk.raw.xz
            qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
            tar -C tree -cJf www/image.tar.xz .
            cp disk.raw.xz www/
            mkdir -p big && head -c 3000000 /dev/urandom > big/blob && tar -C big -cf www/big.tar .
            # Changes a line's first hex digit whatever it was (0→1, else→0).
            flip='s/^0/X/; s/^[^X]/0/; s/^X/1/'
            cd www
            sha256sum image.tar.xz disk.raw.xz big.tar > SHA256SUMS
            cp image.tar.xz disk.raw.xz SHA256SUMS good/
            cp image.tar.xz disk.raw.xz tampered/ && cp SHA256SUMS tampered/
            cp image.tar.xz disk.raw.xz mismatch/ && sha256sum image.tar.xz disk.raw.xz | sed "$flip" > mismatch/SHA256SUMS
            cd ..
            mkdir -m 700 gnupg
            export GNUPGHOME='\(d)/gnupg'
            gpg --batch --quiet --passphrase '' --quick-gen-key 'Berth E2E <e2e@berth.invalid>' future-default default never 2>/dev/null
            gpg --batch --quiet --export > keyring.gpg
            gpg --batch --quiet --yes -o www/good/SHA256SUMS.gpg --detach-sign www/good/SHA256SUMS
            gpg --batch --quiet --yes -o www/tampered/SHA256SUMS.gpg --detach-sign www/tampered/SHA256SUMS
            gpg --batch --quiet --yes -o www/SHA256SUMS.gpg --detach-sign www/SHA256SUMS
            gpgconf --kill gpg-agent
            sed -i "$flip" www/tampered/SHA256SUMS
            """)
            // Hostile archives, written with Python's tarfile (GNU tar refuses to write some).
            _ = try run(["/usr/bin/python3", "-c", """
            import tarfile, io, sys
            d = sys.argv[1]
            def add(t, name, data=b'x', **kw):
                i = tarfile.TarInfo(name); i.size = len(data)
                for k, v in kw.items(): setattr(i, k, v)
                t.addfile(i, io.BytesIO(data) if i.type == tarfile.REGTYPE else None)
            with tarfile.open(d + '/hostile/traversal.tar', 'w') as t:
                add(t, 'etc/ok'); add(t, '../../../../../../../../' + d.lstrip('/') + '/escaped-traversal')
            with tarfile.open(d + '/hostile/absolute.tar', 'w') as t:
                add(t, 'etc/ok'); add(t, d + '/escaped-absolute')
            with tarfile.open(d + '/hostile/symlink.tar', 'w') as t:
                add(t, 'etc/ok')
                i = tarfile.TarInfo('out'); i.type = tarfile.SYMTYPE; i.linkname = d; t.addfile(i)
                add(t, 'out/escaped-symlink')
            """, d], check: true)
            _ = try shell("""
            cd '\(d)'
            gzip -c image.tar > image.tar.gz
            head -c $(( $(stat -c %s image.tar.gz) / 2 )) image.tar.gz > hostile/truncated.tar.gz
            head -c 300000 /dev/urandom > hostile/corrupt.tar
            """)
            return .success(Import1Content(dir: d, keyring: d + "/keyring.gpg"))
        } catch {
            return .failure(TestSupportError("cannot make the import1 fixtures: \(error)"))
        }
    }()

    /// Files the hostile archives try to write outside the pool.
    var escapeTargets: [String] { ["escaped-traversal", "escaped-absolute", "escaped-symlink"].map { dir + "/" + $0 } }
}


/// berthd on its own private bus under a root this test owns, with the signing keyring
/// installed, driven by the real machinectl.
final class Import1Site: @unchecked Sendable {
    let bus: PrivateDBusDaemon
    let folder: TemporaryDirectory
    let root: String
    let content: Import1Content
    private(set) var berthd: Process?
    private let logFile: String

    init() throws {
        content = try Import1Content.shared.get()
        // machinectl refuses to run unless the system looks booted with systemd.
        _ = try shell("mkdir -p /run/systemd/system")
        folder = try TemporaryDirectory(prefix: "berth-import1-root")
        root = folder.appending("root")
        logFile = folder.appending("berthd.log")
        _ = try shell("mkdir -p '\(root)/var/lib/machines' '\(root)/etc/systemd' && cp '\(content.keyring)' '\(root)/etc/systemd/import-pubring.gpg'")
        bus = try PrivateDBusDaemon()
        do { try startBerthd() } catch {
            bus.stop()
            folder.remove()
            throw error
        }
    }

    var poolPath: String { root + "/var/lib/machines" }

    /// Starts berthd on `root` (again, after a kill) and waits until it owns org.freedesktop.import1.
    func startBerthd() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try BerthdProcess.binaryPath())
        p.arguments = ["--root", root, "--bus-address", bus.address]
        if !FileManager.default.fileExists(atPath: logFile) { _ = FileManager.default.createFile(atPath: logFile, contents: nil) }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logFile))
        log.seekToEndOfFile()
        p.standardError = log
        p.standardOutput = FileHandle.nullDevice
        p.standardInput = FileHandle.nullDevice
        try p.run()
        berthd = p
        for _ in 0..<500 {
            let listed = try run(["busctl", "--address=\(bus.address)", "list", "--acquired", "--no-legend"])
            if listed.stdout.contains("org.freedesktop.import1") { return }
            if !p.isRunning { throw TestSupportError("berthd exited \(p.terminationStatus): \(self.log)") }
            usleep(20_000)
        }
        throw TestSupportError("berthd did not take its bus names within 10 s: \(self.log)")
    }

    /// SIGKILL to berthd, as if it crashed.
    func killBerthd() {
        guard let p = berthd else { return }
        kill(p.processIdentifier, SIGKILL)
        let reap = Date().addingTimeInterval(10)
        while p.isRunning && Date() < reap { usleep(20_000) }
        berthd = nil
    }

    var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    /// Runs the real machinectl against berthd.
    @discardableResult
    func machinectl(_ arguments: [String], input: Data? = nil) throws -> CommandResult {
        try run(["timeout", "120", "machinectl"] + arguments, environment: bus.environment, input: input)
    }

    /// `gdbus call` of an import1 manager method; the result or the error (with its D-Bus name).
    func callManager(_ method: String, _ arguments: [String], asUser uid: UInt32? = nil) throws -> CommandResult {
        let prefix = uid.map { ["setpriv", "--reuid=\($0)", "--regid=\($0)", "--clear-groups"] } ?? []
        return try run(prefix + ["gdbus", "call", "--address", bus.address, "--dest", "org.freedesktop.import1",
                                 "--object-path", "/org/freedesktop/import1", "--method", "org.freedesktop.import1.Manager.\(method)"]
                       + arguments)
    }

    /// Pool entries, temp entries included, lock files not.
    func poolEntries() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: poolPath).filter { !$0.hasSuffix(".lck") }.sorted()
    }

    /// Temp entries (`.#…`) left in the pool.
    func tempEntries() throws -> [String] { try poolEntries().filter { $0.hasPrefix(".#") } }

    /// berthd still answers: ListTransfers replies.
    var answers: Bool { (try? callManager("ListTransfers", []).succeeded) ?? false }

    /// Running transfers as machinectl lists them: (id, line).
    func transfers() throws -> [(id: UInt32, line: String)] {
        let out = try machinectl(["list-transfers", "--no-legend"]).stdout
        return out.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let first = fields.first, let id = UInt32(first) else { return nil }
            return (id, String(line))
        }
    }

    func close() {
        killBerthd()
        bus.stop()
        folder.remove()
    }
}

/// A process run in the background (machinectl waiting on a slow transfer).
final class Background: @unchecked Sendable {
    let process = Process()
    private let out: String

    init(_ argv: [String], environment: [String: String], output: String) throws {
        out = output
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = argv
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var output: String { (try? String(contentsOfFile: out, encoding: .utf8)) ?? "" }

    /// Waits up to `timeout` s for the exit; SIGKILL after that. The exit status, nil if killed.
    /// Polls rather than waitUntilExit, which was seen to hang on a killed child in the test runner.
    @discardableResult
    func wait(timeout: Double = 60) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            let reap = Date().addingTimeInterval(10)
            while process.isRunning && Date() < reap { usleep(20_000) }
            return nil
        }
        return process.terminationStatus
    }
}

/// Polls `condition` every 20 ms for up to `timeout` seconds.
func eventually(timeout: Double = 30, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(20_000)
    }
    return try condition()
}
