import Foundation
import Glibc
import Linux
import PoolAPI
import TestSupport
import Testing
@testable import Transfer
@testable import TransferJobs

@Suite("import-tar, import-raw, import-fs through worker processes")
struct ImportTests {
    @Test("import-tar from a file keeps owners, setuid, times, xattrs, ACLs, hardlinks, devices, sparse; progress reaches 1",
          .requires(.root))  // owners and device nodes
    func importTarFidelity() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let src = tmp.appending("src")
        try makeFidelityTree(src)
        let tar = tmp.appending("image.tar")
        _ = try sh("tar --xattrs --xattrs-include='*' --acls --sparse --numeric-owner --format=pax -C '\(src)' -cf '\(tar)' .")
        let setup = try Setup(root: tmp.appending("root"))
        let fd = try openRead(tar)
        defer { close(fd) }
        let (result, events) = try await runTransfer(setup.engine, .importTar(fd: fd, local: "fidelity"))
        #expect(result == .done, "\(events)")
        let image = setup.poolPath + "/fidelity"
        let (got, want) = (try treeSnapshot(image), try treeSnapshot(src))
        #expect(got == want, "\(difference(got, want))")
        #expect(try allocatedBytes(image + "/sparse") < 1 << 20, "sparse file stayed sparse")
        // berthd passes progress on once per read of the status pipe (its latest value), so how
        // many events a quick import yields depends on timing; that the worker's own progress
        // moves in steps is checked in-process (WorkerLogicTests.inProcessExtraction).
        let progress = events.compactMap { if case .progress(let p) = $0 { p } else { nil } }
        #expect(!progress.isEmpty && progress == progress.sorted() && progress.last == 1, "\(progress)")
        #expect(try setup.poolEntries() == ["fidelity"])
    }

    @Test("import-tar from a pipe, each compression", arguments: ["gzip", "bzip2", "xz", "zstd", "none"])
    func importTarCompressed(_ compression: String) async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let src = tmp.appending("src")
        _ = try sh("mkdir -p '\(src)/etc' && echo x > '\(src)/etc/os-release' && seq 1 20000 > '\(src)/numbers'")
        let tar = tmp.appending("image.tar")
        _ = try sh("tar -C '\(src)' -cf '\(tar)' .")
        let input = compression == "none" ? tar : tar + ".c"
        if compression != "none" { _ = try sh("\(compression) -c '\(tar)' > '\(input)'") }
        let setup = try Setup(root: tmp.appending("root"))
        let (fd, cat) = try pipeFrom(input)
        defer { close(fd); cat.waitUntilExit() }
        let (result, events) = try await runTransfer(setup.engine, .importTar(fd: fd, local: "piped"))
        #expect(result == .done, "\(events)")
        #expect(try sh("cmp '\(src)/numbers' '\(setup.poolPath)/piped/numbers' && echo same") == "same\n")
        #expect(try setup.poolEntries() == ["piped"])
    }

    @Test("a gzip stream of several members imports whole, from a file and from a pipe; bytes after it are ignored",
          arguments: [false, true])
    func gzipMembers(_ piped: Bool) async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let src = tmp.appending("src"), tar = tmp.appending("image.tar"), gz = tmp.appending("image.tar.gz")
        // The tar split at an odd offset, each part its own member; zeros after the last.
        _ = try sh("""
        mkdir -p '\(src)/etc' && seq 1 50000 > '\(src)/numbers' && echo ID=x > '\(src)/etc/os-release'
        tar -C '\(src)' -cf '\(tar)' .
        head -c 100001 '\(tar)' | gzip -1 > '\(gz)'
        tail -c +100002 '\(tar)' | gzip -9 >> '\(gz)'
        head -c 4096 /dev/zero >> '\(gz)'
        """)
        let setup = try Setup(root: tmp.appending("root"))
        let fd: Int32
        var cat: Process? = nil
        if piped {
            let p = try pipeFrom(gz)
            fd = p.fd
            cat = p.process
        } else {
            fd = try openRead(gz)
        }
        defer { close(fd); cat?.waitUntilExit() }
        let (result, events) = try await runTransfer(setup.engine, .importTar(fd: fd, local: "members"))
        #expect(result == .done, "\(events)")
        #expect(try sh("cmp '\(src)/numbers' '\(setup.poolPath)/members/numbers' && echo same") == "same\n")
    }

    @Test("import-raw of a .raw.gz that inflates to the wrong bytes fails and leaves nothing")
    func importRawBadCRC() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let gz = tmp.appending("disk.raw.gz")
        _ = try sh("head -c 3000000 /dev/urandom | gzip -1 > '\(gz)'")
        try corruptGzipCRC(gz)
        let setup = try Setup(root: tmp.appending("root"))
        let fd = try openRead(gz)
        defer { close(fd) }
        let (result, events) = try await runTransfer(setup.engine, .importRaw(fd: fd, local: "disk"))
        guard case .failed(let message) = result else {
            Issue.record("a raw.gz with a wrong CRC imported: \(events)")
            return
        }
        #expect(message.contains("gzip data is corrupt"), "\(message)")
        #expect(try setup.poolEntries().filter { !$0.hasSuffix(".lck") } == [])
    }

    @Test("an archive of one OS-tree directory imports that tree as the root")
    func singleTopDirectoryStripped() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        _ = try sh("""
        mkdir -p '\(tmp.path)/src/rootfs/usr/lib' '\(tmp.path)/src/rootfs/etc' '\(tmp.path)/src/rootfs/rootfs'
        echo ID=test > '\(tmp.path)/src/rootfs/usr/lib/os-release'
        echo inner > '\(tmp.path)/src/rootfs/rootfs/file'
        tar -C '\(tmp.path)/src' -czf '\(tmp.path)/os.tar.gz' rootfs
        mkdir -p '\(tmp.path)/src2/data' && echo d > '\(tmp.path)/src2/data/file'
        tar -C '\(tmp.path)/src2' -cf '\(tmp.path)/data.tar' data
        """)
        let setup = try Setup(root: tmp.appending("root"))
        let fd = try openRead(tmp.appending("os.tar.gz"))
        defer { close(fd) }
        #expect(try await runTransfer(setup.engine, .importTar(fd: fd, local: "os")).0 == .done)
        #expect(exists(setup.poolPath + "/os/usr/lib/os-release"))
        #expect(exists(setup.poolPath + "/os/rootfs/file"))
        #expect(!exists(setup.poolPath + "/os/rootfs/usr"))
        // A lone directory that is not an OS tree stays as it is.
        let fd2 = try openRead(tmp.appending("data.tar"))
        defer { close(fd2) }
        #expect(try await runTransfer(setup.engine, .importTar(fd: fd2, local: "data")).0 == .done)
        #expect(exists(setup.poolPath + "/data/data/file"))
    }

    @Test("hostile archives fail, touch nothing outside the image and leave no temp entry",
          arguments: hostileKinds)
    func hostileArchives(_ kind: String) async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let outside = tmp.appending("outside")
        _ = try sh("mkdir -p '\(outside)' && echo secret > '\(outside)/victim'")
        let archive = tmp.appending("evil.tar")
        try makeHostileArchive(kind, at: archive, outside: outside)
        let setup = try Setup(root: tmp.appending("root"))
        let fd = try openRead(archive)
        defer { close(fd) }
        let (result, events) = try await runTransfer(setup.engine, .importTar(fd: fd, local: "evil"))
        guard case .failed(let message) = result else {
            Issue.record("hostile archive \(kind) imported: \(events)")
            return
        }
        #expect(message.contains(hostileReason(kind)), "\(kind): \(message)")
        #expect(try directoryEntries(outside).sorted() == ["victim"])
        #expect(try String(contentsOfFile: outside + "/victim", encoding: .utf8) == "secret\n")
        #expect(try setup.poolEntries().filter { !$0.hasSuffix(".lck") } == [])
    }

    @Test("import-raw of raw, raw.gz, raw.xz, raw.zst, qcow2 and compressed qcow2: byte-identical and sparse",
          arguments: ["raw", "gz", "xz", "zst", "qcow2", "qcow2.xz", "pipe-qcow2"])
    func importRaw(_ kind: String) async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let raw = tmp.appending("disk.raw")
        _ = try sh("""
        truncate -s 64M '\(raw)'
        head -c 300000 /dev/urandom | dd of='\(raw)' bs=4096 seek=10 conv=notrunc status=none
        printf 'tail' | dd of='\(raw)' bs=1 seek=50000000 conv=notrunc status=none
        """)
        var input = raw
        switch kind {
        case "gz": _ = try sh("gzip -c '\(raw)' > '\(raw).gz'"); input = raw + ".gz"
        case "xz": _ = try sh("xz -T1 -c '\(raw)' > '\(raw).xz'"); input = raw + ".xz"
        case "zst": _ = try sh("zstd -q -c '\(raw)' > '\(raw).zst'"); input = raw + ".zst"
        case "qcow2", "pipe-qcow2":
            _ = try sh("qemu-img convert -f raw -O qcow2 '\(raw)' '\(tmp.path)/disk.qcow2'"); input = tmp.appending("disk.qcow2")
        case "qcow2.xz":
            _ = try sh("qemu-img convert -f raw -O qcow2 '\(raw)' '\(tmp.path)/disk.qcow2' && xz -T1 -c '\(tmp.path)/disk.qcow2' > '\(tmp.path)/disk.qcow2.xz'")
            input = tmp.appending("disk.qcow2.xz")
        default: break
        }
        let setup = try Setup(root: tmp.appending("root"))
        let result: TransferResult
        let events: [TransferEvent]
        if kind == "pipe-qcow2" {
            let (fd, cat) = try pipeFrom(input)
            defer { close(fd); cat.waitUntilExit() }
            (result, events) = try await runTransfer(setup.engine, .importRaw(fd: fd, local: "disk"))
        } else {
            let fd = try openRead(input)
            defer { close(fd) }
            (result, events) = try await runTransfer(setup.engine, .importRaw(fd: fd, local: "disk", readOnly: true))
        }
        #expect(result == .done, "\(events)")
        let image = setup.poolPath + "/disk.raw"
        #expect(try sh("cmp '\(raw)' '\(image)' && echo same") == "same\n")
        #expect(try fileStatus(image).size == 64 << 20)
        #expect(try allocatedBytes(image) < 2 << 20, "holes stayed holes")
        #expect(try setup.poolEntries() == ["disk.raw"])
    }

    @Test("import-fs copies a directory tree faithfully",
          .requires(.root))  // owners and device nodes
    func importFileSystem() async throws {
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        let src = tmp.appending("src")
        try makeFidelityTree(src)
        let setup = try Setup(root: tmp.appending("root"))
        let fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(fd) }
        let (result, events) = try await runTransfer(setup.engine, .importFileSystem(fd: fd, local: "copy"))
        #expect(result == .done, "\(events)")
        let (got, want) = (try treeSnapshot(setup.poolPath + "/copy"), try treeSnapshot(src))
        #expect(got == want, "\(difference(got, want))")
    }

    @Test("import-tar into a btrfs pool makes a subvolume",
          .requires(.loopFilesystems))
    func importTarOnBtrfs() async throws {
        let fs = try LoopbackFilesystem(.btrfs)
        defer { fs.remove() }
        let tmp = try TemporaryDirectory()
        defer { tmp.remove() }
        _ = try sh("mkdir -p '\(tmp.path)/src/etc' && echo x > '\(tmp.path)/src/etc/os-release' && tar -C '\(tmp.path)/src' -cJf '\(tmp.path)/a.tar.xz' .")
        let setup = try Setup(root: fs.appending("root"))
        let fd = try openRead(tmp.appending("a.tar.xz"))
        defer { close(fd) }
        #expect(try await runTransfer(setup.engine, .importTar(fd: fd, local: "sub", readOnly: true)).0 == .done)
        let image = try await setup.pool.image(named: "sub")
        #expect(image.type == .subvolume)
        #expect(image.readOnly)
        #expect(try fileStatus(setup.poolPath + "/sub").inode == 256)
    }
}
