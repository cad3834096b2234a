import Bus
import Foundation
import Glibc
import Services
import Testing
import TestSupport

/// org.freedesktop.import1 served by berthd, driven by the real machinectl on a private bus.
@Suite(.serialized, .requires(import1Requirements))
struct Import1Tests {
    @Test("machinectl import-tar from a file and from stdin, import-fs, import-raw of raw.xz and qcow2, export-tar, export-raw")
    func importsAndExports() throws {
        let site = try Import1Site()
        defer { site.close() }
        let c = site.content

        var r = try site.machinectl(["import-tar", c.tar, "fromfile"])
        #expect(r.succeeded, "\(r.stderr)\n\(site.log)")
        #expect(try String(contentsOfFile: site.poolPath + "/fromfile/etc/hostname", encoding: .utf8) == "imported\n")

        r = try site.machinectl(["import-tar", "-", "fromstdin"], input: try Data(contentsOf: URL(fileURLWithPath: c.tar)))
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("cmp '\(c.tree)/etc/blob' '\(site.poolPath)/fromstdin/etc/blob' && echo same") == "same\n")

        r = try site.machinectl(["import-fs", c.tree, "fromfs"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("diff -r '\(c.tree)' '\(site.poolPath)/fromfs' && echo same") == "same\n")

        r = try site.machinectl(["import-raw", c.raw + ".xz", "rawxz"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("cmp '\(c.raw)' '\(site.poolPath)/rawxz.raw' && echo same") == "same\n")

        r = try site.machinectl(["import-raw", c.dir + "/disk.qcow2", "fromqcow"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("cmp '\(c.raw)' '\(site.poolPath)/fromqcow.raw' && echo same") == "same\n")

        // An existing name without --force is refused and left as it was.
        r = try site.machinectl(["import-tar", c.tar, "fromfile"])
        #expect(!r.succeeded)
        #expect(r.stderr.contains("exists"), "\(r.stderr)")

        let out = site.folder.appending("out")
        _ = try shell("mkdir -p '\(out)'")
        r = try site.machinectl(["export-tar", "fromfile", out + "/fromfile.tar.xz"])
        #expect(r.succeeded, "\(r.stderr)")
        _ = try shell("mkdir '\(out)/x' && tar -C '\(out)/x' -xJf '\(out)/fromfile.tar.xz'")
        #expect(try shell("diff -r '\(c.tree)' '\(out)/x' && echo same") == "same\n")

        r = try site.machinectl(["export-raw", "rawxz", out + "/rawxz.raw"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try shell("cmp '\(c.raw)' '\(out)/rawxz.raw' && echo same") == "same\n")

        #expect(try site.poolEntries() == ["fromfile", "fromfs", "fromqcow.raw", "fromstdin", "rawxz.raw"])
        #expect(site.answers)
    }

    @Test("machinectl pull-tar and pull-raw with --verify=no, checksum and signature over loopback HTTP")
    func pullsWithVerification() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }
        for (n, verify) in ["no", "checksum", "signature"].enumerated() {
            var r = try site.machinectl(["pull-tar", "--verify=\(verify)", server.url("good/image.tar.xz"), "tar\(n)"])
            #expect(r.succeeded, "\(verify): \(r.stderr)\n\(site.log)")
            #expect(try String(contentsOfFile: site.poolPath + "/tar\(n)/etc/hostname", encoding: .utf8) == "imported\n")
            r = try site.machinectl(["pull-raw", "--verify=\(verify)", server.url("good/disk.raw.xz"), "raw\(n)"])
            #expect(r.succeeded, "\(verify): \(r.stderr)")
            #expect(try shell("cmp '\(site.content.raw)' '\(site.poolPath)/raw\(n).raw' && echo same") == "same\n")
        }
        #expect(try site.tempEntries().isEmpty)
    }

    @Test("a failed pull (bad signature, checksum mismatch, 404) fails and leaves nothing")
    func failedPullsLeaveNothing() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }
        let cases: [(String, String, String)] = [
            ("pull-tar", "signature", "tampered/image.tar.xz"),
            ("pull-raw", "signature", "tampered/disk.raw.xz"),
            ("pull-tar", "checksum", "mismatch/image.tar.xz"),
            ("pull-raw", "checksum", "mismatch/disk.raw.xz"),
            ("pull-tar", "no", "missing/image.tar.xz"),
            ("pull-raw", "no", "missing/disk.raw.xz"),
        ]
        for (verb, verify, path) in cases {
            let r = try site.machinectl([verb, "--verify=\(verify)", server.url(path), "bad"])
            #expect(!r.succeeded, "\(verb) \(verify) \(path) succeeded")
            #expect(try site.poolEntries().isEmpty, "\(verb) \(path) left \((try? site.poolEntries()) ?? [])")
            #expect(site.answers)
        }
    }

    @Test("hostile, truncated and corrupt archives fail without writing outside the pool or leaving a temp entry")
    func hostileArchives() throws {
        let site = try Import1Site()
        defer { site.close() }
        let c = site.content
        let reasons = ["traversal": "Path contains '..'", "absolute": "Path is absolute", "symlink": "Cannot extract through symlink",
                       "truncated": "the gzip data is truncated", "corrupt": "Unrecognized archive format"]
        for (name, reason) in reasons.sorted(by: { $0.key < $1.key }) {
            let file = c.dir + "/hostile/" + name + (name == "truncated" ? ".tar.gz" : ".tar")
            let r = try site.machinectl(["import-tar", file, name])
            for target in c.escapeTargets {
                #expect(!FileManager.default.fileExists(atPath: target), "\(name) wrote \(target)")
            }
            // libarchive's secure flags refuse the whole archive, so the import fails.
            #expect(!r.succeeded, "\(name) was imported")
            // machinectl prints the transfer's log: the refusal names its reason.
            #expect(r.stderr.contains(reason), "\(name): \(r.stderr)")
            #expect(try site.poolEntries().isEmpty, "\(name) left \((try? site.poolEntries()) ?? [])")
            #expect(site.answers)
        }
    }

    @Test("list-transfers shows a slow pull with its properties and a transfer object matching the Transfer interface; cancel-transfer stops it and leaves nothing; a second writer of the name is refused")
    func listAndCancel() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }
        let url = server.url("slow/big.tar")
        let pull = try Background(["machinectl", "pull-tar", "--verify=no", url, "slow"],
                                  environment: site.bus.environment, output: site.folder.appending("pull.out"))
        defer { pull.wait(timeout: 1) }
        #expect(try eventually { !(try site.transfers().isEmpty) })
        let listed = try site.transfers()
        let transfer = try #require(listed.first)
        #expect(listed.count == 1)
        #expect(transfer.line.contains("pull-tar") && transfer.line.contains("slow") && transfer.line.contains(url), "\(transfer.line)")

        // The transfer object: properties and introspection.
        let path = Import1Service.transferPath(transfer.id).rawValue
        func property(_ name: String) throws -> String {
            try run(["busctl", "--address=\(site.bus.address)", "get-property", "org.freedesktop.import1", path,
                     "org.freedesktop.import1.Transfer", name], check: true).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(try property("Id") == "u \(transfer.id)")
        #expect(try property("Local") == "s \"slow\"")
        #expect(try property("Remote") == "s \"\(url)\"")
        #expect(try property("Type") == "s \"pull-tar\"")
        #expect(try property("Verify") == "s \"no\"")
        #expect(try property("Progress").hasPrefix("d "))
        // One path per transfer: `_0<id>` (or importd's octal and hex spellings) names no object.
        for alias in ["_0\(transfer.id)", "_0x\(String(transfer.id, radix: 16))"] {
            let aliased = try run(["busctl", "--address=\(site.bus.address)", "get-property", "org.freedesktop.import1",
                                   Import1Service.transferPrefix.rawValue + "/" + alias, "org.freedesktop.import1.Transfer", "Id"])
            #expect(!aliased.succeeded && aliased.stderr.contains("Unknown object"), "\(alias): \(aliased.stdout) \(aliased.stderr)")
        }
        let xml = try run(["gdbus", "introspect", "--address", site.bus.address, "--dest", "org.freedesktop.import1",
                           "--object-path", path, "--xml"], check: true).stdout
        let live = try #require(try IntrospectionXML.interfaces(xml)["org.freedesktop.import1.Transfer"])
        // 252's eight members, and the newer ones (ProgressUpdate) beside them, nothing else.
        #expect(live.members.count == 8 + Import1Transfer.newerMembers.count, "\(live)")
        for key in Import1Transfer.newerMembers { #expect(live.members[key] != nil, "\(key): \(live)") }
        #expect(live.members["signal ProgressUpdate"] == "signal ProgressUpdate(d progress)", "\(live)")
        #expect(live.members.values.contains("method Cancel()"), "\(live)")
        #expect(live.members.values.contains("signal LogMessage(u priority, s line)"), "\(live)")
        for (name, type) in [("Id", "u"), ("Local", "s"), ("Remote", "s"), ("Type", "s"), ("Verify", "s"), ("Progress", "d")] {
            let line = live.members.values.first { $0.hasPrefix("property \(name) ") } ?? ""
            #expect(line.hasPrefix("property \(name) \(type) read"), "\(line)")
            let change = name == "Progress" ? "false" : "const"
            #expect(line.contains("EmitsChangedSignal=\(change)"), "\(line)")
        }
        let children = try run(["busctl", "--address=\(site.bus.address)", "tree", "--list", "org.freedesktop.import1"], check: true).stdout
        #expect(children.contains(path), "\(children)")

        // A second transfer writing the same name is refused while the first runs.
        let second = try site.callManager("PullTar", ["'\(server.url("good/image.tar.xz"))'", "'slow'", "'no'", "true"])
        #expect(!second.succeeded)
        #expect(second.stderr.contains(ErrorMapping.Name.transferInProgress), "\(second.stderr)")
        // Other names transfer meanwhile.
        let other = try site.machinectl(["pull-tar", "--verify=no", server.url("good/image.tar.xz"), "other"])
        #expect(other.succeeded, "\(other.stderr)")

        let cancel = try site.machinectl(["cancel-transfer", String(transfer.id)])
        #expect(cancel.succeeded, "\(cancel.stderr)")
        let status = pull.wait(timeout: 60)
        #expect(status != nil && status != 0, "\(pull.output)")
        #expect(try eventually { try site.transfers().isEmpty })
        #expect(try eventually(timeout: 10) { try site.poolEntries() == ["other"] }, "\((try? site.poolEntries()) ?? [])")
        #expect(site.answers)
    }

    @Test("Transfer.Cancel on the transfer object ends a slow pull as canceled")
    func cancelOnTheTransferObject() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }
        let monitor = try Background(["busctl", "--address=\(site.bus.address)", "monitor", "--match",
                                      "type='signal',interface='org.freedesktop.import1.Manager',member='TransferRemoved'"],
                                     environment: [:], output: site.folder.appending("monitor.out"))
        defer { monitor.wait(timeout: 0) }
        let start = try site.callManager("PullTar", ["'\(server.url("slow/big.tar"))'", "'viaobject'", "'no'", "false"])
        #expect(start.succeeded, "\(start.stderr)")
        let id = try #require(try site.transfers().first?.id)
        _ = try run(["busctl", "--address=\(site.bus.address)", "call", "org.freedesktop.import1",
                     Import1Service.transferPath(id).rawValue, "org.freedesktop.import1.Transfer", "Cancel"], check: true)
        #expect(eventually { monitor.output.contains("\"canceled\"") }, "\(monitor.output)")
        #expect(try eventually(timeout: 10) { try site.poolEntries().isEmpty })
    }

    @Test("berthctl list-transfers shows a running pull and cancel-transfer cancels it; unknown ids fail")
    func berthctlListAndCancel() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }
        let berthctl = try BerthdProcess.binaryPath("berthctl")
        let address = ["--bus-address", site.bus.address]
        #expect(try run([berthctl, "list-transfers"] + address, check: true).stdout == "No transfers.\n")
        let start = try site.callManager("PullTar", ["'\(server.url("slow/big.tar"))'", "'viactl'", "'no'", "false"])
        #expect(start.succeeded, "\(start.stderr)")
        let listed = try run([berthctl, "list-transfers"] + address, check: true).stdout
        #expect(listed.contains("pull-tar") && listed.contains("viactl") && listed.contains(server.url("slow/big.tar")), "\(listed)")
        let id = try #require(try site.transfers().first?.id)
        let missing = try run([berthctl, "cancel-transfer", "9999"] + address)
        #expect(!missing.succeeded && missing.stderr.contains("No transfer by id 9999"), "\(missing.stderr)")
        _ = try run([berthctl, "cancel-transfer", String(id)] + address, check: true)
        #expect(try eventually { try site.transfers().isEmpty })
        #expect(try eventually(timeout: 10) { try site.poolEntries().isEmpty })
    }

    @Test("errors: NoSuchTransfer, bad verify mode, invalid local name, bad URL, bad export format, unknown image; non-root callers are denied")
    func errors() throws {
        let site = try Import1Site()
        defer { site.close() }
        func expectError(_ method: String, _ arguments: [String], _ name: String, asUser uid: UInt32? = nil) throws {
            let r = try site.callManager(method, arguments, asUser: uid)
            #expect(!r.succeeded, "\(method) \(arguments) succeeded")
            #expect(r.stderr.contains(name), "\(method) \(arguments): \(r.stderr)")
        }
        let url = "'http://127.0.0.1:1/x.tar.xz'"
        try expectError("CancelTransfer", ["99"], ErrorMapping.Name.noSuchTransfer)
        try expectError("PullTar", [url, "'x'", "'bogus'", "false"], BusError.Name.invalidArgs)
        try expectError("PullTar", [url, "'../x'", "'no'", "false"], BusError.Name.invalidArgs)
        try expectError("PullTar", [url, "'.#x'", "'no'", "false"], BusError.Name.invalidArgs)
        try expectError("PullRaw", ["'notaurl'", "'x'", "'no'", "false"], BusError.Name.invalidArgs)
        // Non-root callers without polkit on the bus.
        try expectError("PullTar", [url, "'x'", "'no'", "false"], BusError.Name.accessDenied, asUser: 65534)
        try expectError("CancelTransfer", ["1"], BusError.Name.accessDenied, asUser: 65534)
        // Listing is open to all.
        #expect(try site.callManager("ListTransfers", [], asUser: 65534).succeeded)
        // Exports: machinectl opens the output file, berthd checks the format and the name.
        let out = site.folder.appending("x.tar")
        var r = try site.machinectl(["export-tar", "nosuch", out])
        #expect(!r.succeeded)
        #expect(r.stderr.contains("nosuch") || r.stderr.contains("No image"), "\(r.stderr)")
        r = try site.machinectl(["export-tar", "--format=lz4", "nosuch", out])
        #expect(!r.succeeded)
        #expect(try site.poolEntries().isEmpty)
        #expect(site.answers)
    }

    @Test("kill -9 of berthd mid-pull: the worker dies with it, the next start removes the temp entry and the name is free")
    func killedDaemonLeavesNothingAfterRestart() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }
        let pull = try Background(["machinectl", "pull-tar", "--verify=no", server.url("slow/big.tar"), "crash"],
                                  environment: site.bus.environment, output: site.folder.appending("pull.out"))
        defer { pull.wait(timeout: 0) }
        #expect(try eventually { !(try site.tempEntries().isEmpty) }, "\(pull.output)\n\(site.log)")
        site.killBerthd()
        // machinectl would wait for TransferRemoved forever: the daemon is gone.
        pull.wait(timeout: 0)
        #expect(try !site.tempEntries().isEmpty)
        // The worker got SIGKILL through PR_SET_PDEATHSIG: no process has the pool open for writing.
        #expect(try eventually(timeout: 10) { try run(["pgrep", "-f", "--", "--berth-transfer-worker pull-tar .*\(site.root)"]).stdout.isEmpty })
        try site.startBerthd()
        #expect(try site.poolEntries().isEmpty, "\((try? site.poolEntries()) ?? [])")
        let r = try site.machinectl(["pull-tar", "--verify=no", server.url("good/image.tar.xz"), "crash"])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try site.poolEntries() == ["crash"])
    }

    /// The pool lies inside the root berthd serves, on the root's filesystem (the usual ext4
    /// layout): a copy of the root or of the pool must not walk into the folder it fills.
    /// Bounded: each call has two minutes; a copy into itself would run until killed.
    @Test("CloneImage of .host with the pool inside the root, import-fs of the pool folder and of the root: each ends, the copy never holds itself, the host clone leaves the pool out, nothing is left behind")
    func copiesOfTreesHoldingThePoolEnd() throws {
        let site = try Import1Site()
        defer { site.close() }
        _ = try shell("""
        mkdir -p '\(site.root)/etc' '\(site.poolPath)/existing/etc'
        echo hostroot > '\(site.root)/etc/hostname'
        echo existing > '\(site.poolPath)/existing/etc/hostname'
        """)
        func entries(_ path: String) throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: path).filter { !$0.hasSuffix(".lck") }.sorted()
        }

        let clone = try run(["gdbus", "call", "--timeout", "120", "--address", site.bus.address, "--dest", "org.freedesktop.machine1",
                             "--object-path", "/org/freedesktop/machine1", "--method",
                             "org.freedesktop.machine1.Manager.CloneImage", ".host", "hostcopy", "false"])
        #expect(clone.succeeded, "\(clone.stderr)\n\(site.log)")
        #expect(try String(contentsOfFile: site.poolPath + "/hostcopy/etc/hostname", encoding: .utf8) == "hostroot\n")
        #expect(try entries(site.poolPath + "/hostcopy/var/lib/machines").isEmpty, "the host clone holds the pool")

        var r = try site.machinectl(["import-fs", site.poolPath, "frompool"])
        #expect(r.succeeded, "\(r.stderr)\n\(site.log)")
        #expect(try entries(site.poolPath + "/frompool") == ["existing", "hostcopy"])

        r = try site.machinectl(["import-fs", site.root, "fromroot"])
        #expect(r.succeeded, "\(r.stderr)\n\(site.log)")
        #expect(try String(contentsOfFile: site.poolPath + "/fromroot/etc/hostname", encoding: .utf8) == "hostroot\n")
        #expect(try entries(site.poolPath + "/fromroot/var/lib/machines") == ["existing", "frompool", "hostcopy"])

        #expect(try site.tempEntries().isEmpty)
        #expect(try site.poolEntries() == ["existing", "frompool", "fromroot", "hostcopy"])
        #expect(site.answers)
    }

    /// berthd leaves an existing pool folder's mode as the admin set it, but says at start
    /// when other users can reach it.
    @Test("berthd started over a pool folder of mode 0755 warns about it on stderr; over a 0700 one it does not")
    func anOpenPoolFolderIsWarnedAboutAtStart() throws {
        let site = try Import1Site()
        defer { site.close() }
        site.killBerthd()
        #expect(chmod(site.poolPath, 0o755) == 0)
        try site.startBerthd()
        #expect(site.log.contains("\(site.poolPath) is mode 755"), "\(site.log)")
        site.killBerthd()
        #expect(chmod(site.poolPath, 0o700) == 0)
        let before = site.log.components(separatedBy: "is mode").count
        try site.startBerthd()
        #expect(site.log.components(separatedBy: "is mode").count == before, "\(site.log)")
        #expect(site.answers)
    }
}
