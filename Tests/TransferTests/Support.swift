import BtrfsBackend
import DirectoryBackend
import Foundation
import Glibc
import Linux
import PoolAPI
import RawLoopBackend
import TestSupport
import Testing
import struct SystemPackage.FilePath
@testable import Transfer
@testable import TransferJobs

/// The worker test fixture (berth-transfer plus a stand-in berthd mode), built beside the test bundle.
let workerExecutable: String = {
    let exe = (try? readLink("/proc/self/exe")) ?? CommandLine.arguments[0]
    var dir = (exe as NSString).deletingLastPathComponent
    // .build/debug/BerthPackageTests.xctest is a file beside the fixture.
    if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
    return (dir as NSString).appendingPathComponent("TransferWorkerFixture")
}()

/// A pool under `root` with the three backends, and an engine over it.
struct Setup {
    let root: String
    let pool: ImagePool
    let engine: TransferEngine

    init(root: String, grace: Double = 2) throws {
        self.root = root
        try run(["mkdir", "-p", root + "/var/lib/machines", root + "/run/berth"], check: true)
        pool = ImagePool(configuration: .init(root: root), registry: BackendRegistry([
            BtrfsBackend(), DirectoryBackend(), RawLoopBackend(runtimeDirectory: FilePath(root).appending("run/berth")),
        ]))
        engine = TransferEngine(pool: pool, workerExecutable: workerExecutable, root: root, cancelGracePeriod: grace)
    }

    var poolPath: String { root + "/var/lib/machines" }

    /// Entries of the pool folder (temp entries included).
    func poolEntries() throws -> [String] { try directoryEntries(poolPath).sorted() }
}

/// Runs `request` to its end, collecting its events.
func runTransfer(_ engine: TransferEngine, _ request: TransferRequest) async throws -> (TransferResult, [TransferEvent]) {
    let handle = try await engine.start(request)
    var events: [TransferEvent] = []
    for await e in handle.events { events.append(e) }
    return (await handle.wait(), events)
}

func sh(_ script: String) throws -> String {
    try run(["sh", "-ec", script], check: true).stdout
}

/// Flips every bit of the first byte of the gzip file's trailer CRC-32 at `path`: the data
/// still inflates, to bytes whose CRC no longer matches.
func corruptGzipCRC(_ path: String) throws {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    var bytes = [UInt8](data)
    bytes[bytes.count - 8] ^= 0xff
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Opens `path` for reading, returning the fd (closed by the caller).
func openRead(_ path: String) throws -> Int32 {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { throw TestSupportError("cannot open \(path)") }
    return fd
}

/// A pipe fed by `cat path` in the background (the write end belongs to cat).
func pipeFrom(_ path: String) throws -> (fd: Int32, process: Process) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/cat")
    p.arguments = [path]
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let fd = dup(pipe.fileHandleForReading.fileDescriptor)
    try pipe.fileHandleForReading.close()
    return (fd, p)
}

/// A tree with everything fidelity means: owners, setuid, times, xattrs, ACLs, hardlinks,
/// device nodes, fifos, symlinks, a sparse file and an empty dir.
func makeFidelityTree(_ dir: String) throws {
    _ = try sh("""
    mkdir -p '\(dir)/usr/bin' '\(dir)/etc' '\(dir)/empty' '\(dir)/dev'
    echo hello > '\(dir)/etc/hostname'
    printf 'bin' > '\(dir)/usr/bin/tool'
    chown 1234:5678 '\(dir)/usr/bin/tool'
    chmod 4755 '\(dir)/usr/bin/tool'
    chmod 2770 '\(dir)/empty'
    chown 42:43 '\(dir)/empty'
    ln '\(dir)/etc/hostname' '\(dir)/etc/hostname-link'
    ln -s ../etc/hostname '\(dir)/usr/link'
    mknod '\(dir)/dev/null0' c 1 3
    mknod '\(dir)/dev/blk0' b 7 200
    mkfifo '\(dir)/dev/fifo'
    setfattr -n user.berth -v value '\(dir)/etc/hostname'
    setfacl -m u:4321:rwx '\(dir)/usr/bin'
    setfacl -d -m g:4322:r-x '\(dir)/usr/bin'
    truncate -s 64M '\(dir)/sparse'
    printf 'data' | dd of='\(dir)/sparse' bs=1 seek=33554432 conv=notrunc status=none
    touch -h -d '2001-02-03 04:05:06' '\(dir)/usr/link'
    touch -d '2001-02-03 04:05:06' '\(dir)/etc/hostname' '\(dir)/usr/bin/tool' '\(dir)/sparse'
    """)
}

/// What fidelity compares: type, path, mode, owner, mtime (s), link target, size of files,
/// link count and device numbers of non-directories, then every xattr (ACLs included).
func treeSnapshot(_ dir: String) throws -> String {
    let listing = try sh("""
    cd '\(dir)' && find . -mindepth 1 \\( -type d -printf '%y %p %m %U %G %Ts\\n' \\) -o \\( -printf '%y %p %m %U %G %Ts %l %s %n\\n' \\) | sort
    """)
    let devices = try sh("cd '\(dir)' && find . \\( -type b -o -type c \\) -exec stat -c '%n %t:%T' {} + | sort")
    let xattrs = try sh("cd '\(dir)' && getfattr -R -h -d -m - . 2>/dev/null | grep -v '^$' | sort || true")
    return listing + devices + xattrs
}

func allocatedBytes(_ path: String) throws -> Int64 {
    try fileStatus(path).blocks * 512
}

func exists(_ path: String) -> Bool { (try? fileStatus(path, followSymlinks: false)) != nil }

/// Lines only in `a` (-) and only in `b` (+), for readable failures.
func difference(_ a: String, _ b: String) -> String {
    let la = Set(a.split(separator: "\n")), lb = Set(b.split(separator: "\n"))
    return (la.subtracting(lb).sorted().map { "- \($0)" } + lb.subtracting(la).sorted().map { "+ \($0)" }).joined(separator: "\n")
}

/// The hostile archives the import must refuse.
let hostileKinds = ["dotdot", "absolute", "symlink-escape", "hardlink-outside", "hardlink-dotdot",
                    "hardlink-through-symlink", "truncated", "corrupt-gzip", "huge-size",
                    "gzip-crc", "gzip-length", "gzip-stored-flip", "gzip-truncated-member"]

/// Why the worker refuses each of `hostileKinds`: the words its failure message must carry (an
/// archive refused for the wrong reason — a crash, an I/O error — is a bug too).
func hostileReason(_ kind: String) -> String {
    switch kind {
    case "dotdot", "hardlink-dotdot": "Path contains '..'"
    case "absolute", "hardlink-outside": "Path is absolute"
    case "symlink-escape", "hardlink-through-symlink": "Cannot extract through symlink"
    case "truncated", "huge-size": "Truncated tar archive"
    case "corrupt-gzip": "the gzip data is corrupt"
    case "gzip-crc", "gzip-stored-flip": "the gzip data is corrupt: incorrect data check"
    case "gzip-length": "the gzip data is corrupt: incorrect length check"
    case "gzip-truncated-member": "the gzip data is truncated"
    default: "no reason known for \(kind)"
    }
}

/// Writes a hostile tar of `kind` (made with python3's tarfile) aimed at `outside`.
func makeHostileArchive(_ kind: String, at archive: String, outside: String) throws {
    let script = """
    import tarfile, io, os, sys, gzip
    kind, path, outside = sys.argv[1], sys.argv[2], sys.argv[3]
    def add(t, name, data=b'pwned', type=tarfile.REGTYPE, link=''):
        i = tarfile.TarInfo(name); i.type = type; i.linkname = link
        if type == tarfile.REGTYPE: i.size = len(data); t.addfile(i, io.BytesIO(data))
        else: t.addfile(i)
    rnd = os.urandom(100000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.GNU_FORMAT) as t:
        add(t, 'etc', type=tarfile.DIRTYPE)
        if kind == 'dotdot': add(t, '../../../../../../../../' + outside.lstrip('/') + '/pwned')
        if kind == 'absolute': add(t, outside + '/pwned')
        if kind == 'symlink-escape':
            add(t, 'evil', type=tarfile.SYMTYPE, link=outside)
            add(t, 'evil/pwned')
        if kind == 'hardlink-outside': add(t, 'etc/passwd-link', type=tarfile.LNKTYPE, link=outside + '/victim')
        if kind == 'hardlink-dotdot': add(t, 'etc/link', type=tarfile.LNKTYPE, link='../../../../../../../..' + outside + '/victim')
        if kind == 'hardlink-through-symlink':
            add(t, 'evil', type=tarfile.SYMTYPE, link=outside)
            add(t, 'etc/link', type=tarfile.LNKTYPE, link='evil/victim')
        if kind in ('truncated', 'corrupt-gzip', 'huge-size'): add(t, 'etc/big', data=b'x' * 100000)
        if kind == 'gzip-stored-flip': add(t, 'etc/random', data=rnd)
    data = buf.getvalue()
    if kind == 'truncated': data = data[:60000]
    if kind == 'huge-size':
        # the header claims 1 TiB of data the archive does not have
        i = tarfile.TarInfo('etc/huge'); i.size = 1 << 40
        data = data[:-1024] + i.tobuf(format=tarfile.GNU_FORMAT) + b'y' * 4096
    if kind == 'corrupt-gzip':
        z = bytearray(gzip.compress(data)); z[60:100] = b'\\x55' * 40; data = bytes(z)
    # Gzip that inflates cleanly to the wrong bytes or length: only the trailer tells.
    if kind == 'gzip-crc':
        z = bytearray(gzip.compress(data)); z[-8] ^= 0xff; data = bytes(z)
    if kind == 'gzip-length':
        z = bytearray(gzip.compress(data)); z[-1] ^= 0x01; data = bytes(z)
    if kind == 'gzip-stored-flip':
        # Random bytes deflate to stored blocks, where a flipped bit is a flipped bit of etc/random.
        z = bytearray(gzip.compress(data)); z[z.find(rnd[50000:50064]) + 10] ^= 0x01; data = bytes(z)
    if kind == 'gzip-truncated-member':
        # A whole first member, then a second one cut short.
        second = gzip.compress(b'\\0' * 1024)
        data = gzip.compress(data) + second[:len(second) // 2]
    open(path, 'wb').write(data)
    """
    let scriptPath = archive + ".py"
    try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
    _ = try sh("python3 '\(scriptPath)' \(kind) '\(archive)' '\(outside)'")
}
