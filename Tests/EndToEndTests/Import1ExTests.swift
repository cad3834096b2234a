import Foundation
import Glibc
import Services
import Testing
import TestSupport

/// Calls one import1 manager method through python3-dbus (fds passed as real fds) and, for a
/// method that starts a transfer, waits for its TransferRemoved while counting the transfer's
/// ProgressUpdate signals. Prints one JSON object: the reply, or the D-Bus error's name and text.
private let import1Caller = """
    import dbus, dbus.mainloop.glib, json, os, sys, time
    from gi.repository import GLib
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    address, method, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    bus = dbus.bus.BusConnection(address)
    manager = dbus.Interface(bus.get_object('org.freedesktop.import1', '/org/freedesktop/import1', introspect=False),
                             'org.freedesktop.import1.Manager')
    def plain(v):
        if isinstance(v, (dbus.Struct, dbus.Array, list, tuple)): return [plain(x) for x in v]
        if isinstance(v, dbus.Boolean): return bool(v)
        if isinstance(v, (dbus.Double, float)): return float(v)
        if isinstance(v, (dbus.UInt32, dbus.UInt64, dbus.Int32, dbus.Int64, int)): return int(v)
        return str(v)
    signature, arguments = '', []
    for kind, value in spec:
        signature += kind
        if kind == 'h':
            how, path = value
            flags = {'read': os.O_RDONLY, 'dir': os.O_RDONLY | os.O_DIRECTORY,
                     'write': os.O_WRONLY | os.O_CREAT | os.O_TRUNC}[how]
            fd = os.open(path, flags, 0o644)
            arguments.append(dbus.types.UnixFd(fd))
            os.close(fd)
        elif kind == 't': arguments.append(dbus.UInt64(value))
        else: arguments.append(dbus.String(value))
    loop = GLib.MainLoop()
    removed, progress, wanted = {}, [], []
    def on_removed(tid, path, result):
        removed[int(tid)] = str(result)
        if wanted and int(tid) == wanted[0]: loop.quit()
    def on_progress(value, path=None): progress.append((str(path), float(value)))
    bus.add_signal_receiver(on_removed, 'TransferRemoved', 'org.freedesktop.import1.Manager', None, '/org/freedesktop/import1')
    bus.add_signal_receiver(on_progress, 'ProgressUpdate', 'org.freedesktop.import1.Transfer', None, None, path_keyword='path')
    started = time.monotonic()
    try:
        reply = getattr(manager, method)(*arguments, signature=signature, timeout=120)
    except dbus.exceptions.DBusException as e:
        print(json.dumps({'error': e.get_dbus_name(), 'message': e.get_dbus_message()}))
        sys.exit(0)
    out = {'reply': plain(reply)}
    if method.startswith(('Import', 'Export', 'Pull')):
        tid, path = int(reply[0]), str(reply[1])
        wanted.append(tid)
        if tid not in removed:
            GLib.timeout_add_seconds(300, loop.quit)
            loop.run()
        out['result'] = removed.get(tid, 'timeout')
        out['seconds'] = time.monotonic() - started
        out['progress'] = [p for (where, p) in progress if where == path]
    print(json.dumps(out))
    """

/// What one call through `import1Caller` answered.
struct Import1Reply {
    let json: [String: Any]
    var error: String? { json["error"] as? String }
    var message: String { json["message"] as? String ?? "" }
    var result: String? { json["result"] as? String }
    var progress: [Double] { (json["progress"] as? [Any])?.compactMap { ($0 as? NSNumber)?.doubleValue } ?? [] }
    var seconds: Double { (json["seconds"] as? NSNumber)?.doubleValue ?? 0 }
    /// The reply's rows (ListImages, ListTransfersEx).
    var rows: [[Any]] { (json["reply"] as? [Any])?.compactMap { $0 as? [Any] } ?? [] }
    var description: String { String(describing: json) }
}

extension Import1Site {
    /// `method` with `arguments` (signature letter, value; an `h` value is ["read"|"dir"|"write", path]).
    func callEx(_ method: String, _ arguments: [(String, Any)]) throws -> Import1Reply {
        let script = folder.appending("import1-call.py")
        if !FileManager.default.fileExists(atPath: script) { try import1Caller.write(toFile: script, atomically: true, encoding: .utf8) }
        let spec = try JSONSerialization.data(withJSONObject: arguments.map { [$0.0, $0.1] })
        let out = try run(["/usr/bin/python3", script, bus.address, method, String(decoding: spec, as: UTF8.self)], check: true).stdout
        let object = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        return Import1Reply(json: try #require(object, "\(out)"))
    }

    /// The pool folder of `imageClass` under the root.
    func folder(_ imageClass: String) -> String {
        root + "/var/lib/" + ["machine": "machines", "portable": "portables", "sysext": "extensions", "confext": "confexts"][imageClass, default: "?"]
    }

    /// ListImages(class, 0) as (class, name, type, path, read-only) rows.
    func listImages(_ imageClass: String = "") throws -> [(cls: String, name: String, type: String, path: String, readOnly: Bool)] {
        let reply = try callEx("ListImages", [("s", imageClass), ("t", 0)])
        return reply.rows.compactMap { r in
            guard r.count == 11, let c = r[0] as? String, let n = r[1] as? String, let t = r[2] as? String, let p = r[3] as? String,
                  let ro = r[4] as? Bool else { return nil }
            return (c, n, t, p, ro)
        }
    }

    /// Every entry of the four class pools (lock files aside), for "nothing changed" checks.
    func allPoolEntries() -> [String] {
        ["machine", "portable", "sysext", "confext"].flatMap { c in
            ((try? FileManager.default.contentsOfDirectory(atPath: folder(c))) ?? []).filter { !$0.hasSuffix(".lck") }.map { "\(c)/\($0)" }
        }.sorted()
    }
}

@Suite(.serialized, .requires(import1Requirements + [.python3DBus]))
struct Import1ExTests {
    @Test("ImportTarEx, ImportRawEx, ImportFileSystemEx land in each class's pool folder; ListImages lists them by class; ExportTarEx and ExportRawEx read them back")
    func everyClass() throws {
        let site = try Import1Site()
        defer { site.close() }
        let c = site.content
        for cls in ["machine", "portable", "sysext", "confext"] {
            let tar = try site.callEx("ImportTarEx", [("h", ["read", c.tar]), ("s", "t-\(cls)"), ("s", cls), ("t", 0)])
            #expect(tar.result == "done", "\(cls): \(tar.description)")
            #expect(FileManager.default.fileExists(atPath: site.folder(cls) + "/t-\(cls)/etc/hostname"), "\(cls)")
            let raw = try site.callEx("ImportRawEx", [("h", ["read", c.raw]), ("s", "r-\(cls)"), ("s", cls), ("t", 0)])
            #expect(raw.result == "done", "\(cls): \(raw.description)")
            #expect(try run(["cmp", c.raw, site.folder(cls) + "/r-\(cls).raw"]).succeeded, "\(cls)")
            let fs = try site.callEx("ImportFileSystemEx", [("h", ["dir", c.tree]), ("s", "f-\(cls)"), ("s", cls), ("t", 0)])
            #expect(fs.result == "done", "\(cls): \(fs.description)")
            #expect(FileManager.default.fileExists(atPath: site.folder(cls) + "/f-\(cls)/usr/lib/os-release"), "\(cls)")
        }
        // Nothing of another class landed in the machine pool.
        let machineEntries = try site.poolEntries()
        #expect(machineEntries.filter { !$0.hasSuffix("-machine") && !$0.hasSuffix("-machine.raw") }.isEmpty, "\(machineEntries)")

        let all = try site.listImages()
        for cls in ["machine", "portable", "sysext", "confext"] {
            for (name, type) in [("t-\(cls)", ["directory", "subvolume"]), ("r-\(cls)", ["raw"]), ("f-\(cls)", ["directory", "subvolume"])] {
                let row = all.first { $0.name == name }
                #expect(row?.cls == cls && type.contains(row?.type ?? "") && row?.readOnly == false, "\(name): \(String(describing: row))")
                #expect(row?.path.hasPrefix(site.folder(cls) + "/") == true, "\(name): \(String(describing: row))")
            }
        }
        #expect(all.contains { $0.name == ".host" && $0.cls == "machine" })
        let sysext = try site.listImages("sysext")
        #expect(Set(sysext.map(\.name)) == ["t-sysext", "r-sysext", "f-sysext"] && sysext.allSatisfy { $0.cls == "sysext" }, "\(sysext)")

        // Exports read from the class's pool: the tar holds the tree, the raw is the disk.
        let tarOut = site.folder.appending("sysext.tar"), rawOut = site.folder.appending("confext.raw")
        let exportTar = try site.callEx("ExportTarEx", [("s", "t-sysext"), ("s", "sysext"), ("h", ["write", tarOut]), ("s", ""), ("t", 0)])
        #expect(exportTar.result == "done", "\(exportTar.description)")
        #expect(try run(["tar", "-tf", tarOut], check: true).stdout.contains("etc/hostname"))
        let exportRaw = try site.callEx("ExportRawEx", [("s", "r-confext"), ("s", "confext"), ("h", ["write", rawOut]), ("s", ""), ("t", 0)])
        #expect(exportRaw.result == "done", "\(exportRaw.description)")
        #expect(try run(["cmp", c.raw, rawOut]).succeeded)
        // An image of another class is not found under this one.
        let missing = try site.callEx("ExportTarEx", [("s", "t-sysext"), ("s", "portable"), ("h", ["write", tarOut]), ("s", ""), ("t", 0)])
        #expect(missing.error != nil && missing.result == nil, "\(missing.description)")
    }

    @Test("flags: read-only makes a really read-only image, force replaces an existing one atomically, without force the name is refused and kept")
    func readOnlyAndForce() throws {
        let site = try Import1Site()
        defer { site.close() }
        let c = site.content
        let ro = try site.callEx("ImportTarEx", [("h", ["read", c.tar]), ("s", "ro"), ("s", "sysext"), ("t", 2)])
        #expect(ro.result == "done", "\(ro.description)")
        #expect(try site.listImages("sysext").first { $0.name == "ro" }?.readOnly == true)
        // Even root cannot change it: a directory image is immutable at its top (as systemd marks
        // one; a subvolume would be a read-only snapshot), a raw image immutable as a file.
        let top = site.folder("sysext") + "/ro"
        #expect(try run(["lsattr", "-d", top], check: true).stdout.split(separator: " ").first?.contains("i") == true)
        #expect(!(try run(["touch", top + "/new"]).succeeded))
        #expect(!(try run(["mv", top + "/etc", top + "/etc2"]).succeeded))
        #expect(!(try run(["mv", top, top + "-moved"]).succeeded))
        #expect(FileManager.default.fileExists(atPath: top + "/etc/hostname"))
        let rawRO = try site.callEx("ImportRawEx", [("h", ["read", c.raw]), ("s", "rawro"), ("s", "portable"), ("t", 2)])
        #expect(rawRO.result == "done", "\(rawRO.description)")
        #expect(try site.listImages("portable").first { $0.name == "rawro" }?.readOnly == true)
        #expect(!(try run(["sh", "-c", "echo x >> '\(site.folder("portable"))/rawro.raw'"]).succeeded))

        // Without force: refused, the old image untouched.
        _ = try shell("mkdir -p '\(site.folder.path)/other/etc' && echo other > '\(site.folder.path)/other/etc/hostname'")
        let first = try site.callEx("ImportFileSystemEx", [("h", ["dir", site.folder.path + "/other"]), ("s", "ro"), ("s", "sysext"), ("t", 0)])
        #expect(first.error == "org.freedesktop.DBus.Error.FileExists", "\(first.description)")
        #expect(try String(contentsOfFile: site.folder("sysext") + "/ro/etc/hostname", encoding: .utf8) == "imported\n")
        // A read-only image is replaced only after it is made writable (as 252's force over a
        // read-only image is refused); a writable one is swapped atomically with force.
        _ = try site.callEx("ImportTarEx", [("h", ["read", c.tar]), ("s", "rw"), ("s", "sysext"), ("t", 0)])
        let forced = try site.callEx("ImportFileSystemEx", [("h", ["dir", site.folder.path + "/other"]), ("s", "rw"), ("s", "sysext"), ("t", 3)])
        #expect(forced.result == "done", "\(forced.description)")
        #expect(try String(contentsOfFile: site.folder("sysext") + "/rw/etc/hostname", encoding: .utf8) == "other\n")
        #expect(try site.listImages("sysext").first { $0.name == "rw" }?.readOnly == true)
        #expect(site.allPoolEntries().filter { $0.contains(".#") }.isEmpty, "\(site.allPoolEntries())")
    }

    @Test("on btrfs, a read-only import is a read-only subvolume: nothing inside it can be written, and force over a writable one swaps subvolumes")
    func readOnlySubvolume() throws {
        let site = try Import1Site()
        defer { site.close() }
        let fs = try LoopbackFilesystem(.btrfs)
        defer { fs.remove() }
        let folder = site.folder("confext")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try run(["mount", "--bind", fs.mountPoint, folder], check: true)
        defer { if (try? run(["umount", folder]))?.succeeded != true { _ = try? run(["umount", "-l", folder]) } }
        let ro = try site.callEx("ImportTarEx", [("h", ["read", site.content.tar]), ("s", "sub"), ("s", "confext"), ("t", 2)])
        #expect(ro.result == "done", "\(ro.description)")
        let row = try site.listImages("confext").first { $0.name == "sub" }
        #expect(row?.type == "subvolume" && row?.readOnly == true, "\(String(describing: row))")
        #expect(try run(["btrfs", "property", "get", folder + "/sub", "ro"], check: true).stdout.contains("ro=true"))
        for attempt in [["touch", folder + "/sub/etc/new"], ["rm", "-f", folder + "/sub/etc/hostname"], ["mv", folder + "/sub/etc", folder + "/sub/x"]] {
            #expect(!(try run(attempt).succeeded), "\(attempt)")
        }
        #expect(try String(contentsOfFile: folder + "/sub/etc/hostname", encoding: .utf8) == "imported\n")
        _ = try site.callEx("ImportTarEx", [("h", ["read", site.content.tar]), ("s", "rw"), ("s", "confext"), ("t", 0)])
        _ = try shell("mkdir -p '\(site.folder.path)/new/etc' && echo new > '\(site.folder.path)/new/etc/hostname'")
        let forced = try site.callEx("ImportFileSystemEx", [("h", ["dir", site.folder.path + "/new"]), ("s", "rw"), ("s", "confext"), ("t", 1)])
        #expect(forced.result == "done", "\(forced.description)")
        #expect(try String(contentsOfFile: folder + "/rw/etc/hostname", encoding: .utf8) == "new\n")
        #expect(try site.listImages("confext").first { $0.name == "rw" }?.type == "subvolume")
        #expect(site.allPoolEntries().filter { $0.contains(".#") }.isEmpty, "\(site.allPoolEntries())")
    }

    @Test("bad classes and flags are InvalidArgs with importd's words, and change nothing")
    func badClassesAndFlags() throws {
        let site = try Import1Site()
        defer { site.close() }
        let c = site.content
        let before = site.allPoolEntries()
        let out = site.folder.appending("out.tar")
        _ = try site.callEx("ImportTarEx", [("h", ["read", c.tar]), ("s", "present"), ("s", "machine"), ("t", 0)])
        let present = site.allPoolEntries()
        let cases: [(String, [(String, Any)], String)] = [
            ("ImportTarEx", [("h", ["read", c.tar]), ("s", "x"), ("s", "bogus"), ("t", 0)], "Image class 'bogus' not known"),
            ("ImportTarEx", [("h", ["read", c.tar]), ("s", "x"), ("s", ""), ("t", 0)], "Image class '' not known"),
            ("ImportRawEx", [("h", ["read", c.raw]), ("s", "x"), ("s", "Machine"), ("t", 0)], "Image class 'Machine' not known"),
            ("ImportTarEx", [("h", ["read", c.tar]), ("s", "x"), ("s", "machine"), ("t", 4)], "Flags 0x4 invalid"),
            ("ImportFileSystemEx", [("h", ["dir", c.tree]), ("s", "x"), ("s", "sysext"), ("t", 8)], "Flags 0x8 invalid"),
            ("ImportRawEx", [("h", ["read", c.raw]), ("s", "x"), ("s", "portable"), ("t", UInt64(1) << 63)], "Flags 0x8000000000000000 invalid"),
            ("ExportTarEx", [("s", "present"), ("s", "machine"), ("h", ["write", out]), ("s", ""), ("t", 1)], "Flags 0x1 invalid"),
            ("ExportRawEx", [("s", "present"), ("s", "nope"), ("h", ["write", out]), ("s", ""), ("t", 0)], "Image class 'nope' not known"),
            ("PullTarEx", [("s", "http://127.0.0.1:1/x.tar"), ("s", "x"), ("s", "confext"), ("s", "no"), ("t", 8)], "Flags 0x8 invalid"),
            ("PullRawEx", [("s", "http://127.0.0.1:1/x.raw"), ("s", "x"), ("s", "../machine"), ("s", "no"), ("t", 0)], "Image class '../machine' not known"),
            ("ListImages", [("s", "x"), ("t", 0)], "Image class 'x' not known"),
            ("ListImages", [("s", ""), ("t", 1)], "Flags 0x1 invalid"),
            ("ListTransfersEx", [("s", "machines"), ("t", 0)], "Image class 'machines' not known"),
            ("ListTransfersEx", [("s", "sysext"), ("t", 2)], "Flags 0x2 invalid"),
            // The 252 checks still apply to the …Ex forms.
            ("ImportTarEx", [("h", ["read", c.tar]), ("s", "../x"), ("s", "machine"), ("t", 0)], "Local image name ../x is invalid"),
            ("PullTarEx", [("s", "file:///etc/passwd"), ("s", "x"), ("s", "machine"), ("s", "no"), ("t", 0)], "URL file:///etc/passwd is invalid"),
            ("PullRawEx", [("s", "http://127.0.0.1:1/x.raw"), ("s", "x"), ("s", "machine"), ("s", "maybe"), ("t", 0)], "Unknown verification mode maybe"),
        ]
        for (method, arguments, message) in cases {
            let reply = try site.callEx(method, arguments)
            #expect(reply.error == "org.freedesktop.DBus.Error.InvalidArgs" && reply.message == message, "\(method): \(reply.description)")
        }
        #expect(before.isEmpty || before.allSatisfy { present.contains($0) })
        #expect(site.allPoolEntries() == present, "\(site.allPoolEntries())")
        #expect(try site.callEx("ListTransfersEx", [("s", ""), ("t", 0)]).rows.isEmpty)
        // A caller who is not root is denied before anything is checked; listing is for everyone.
        let denied = try site.callManager("PullTarEx", ["'http://127.0.0.1:1/x.tar'", "'x'", "'sysext'", "'no'", "uint64 0"], asUser: 65534)
        #expect(!denied.succeeded && denied.stderr.contains("AccessDenied"), "\(denied)")
        let listed = try site.callManager("ListImages", ["''", "uint64 0"], asUser: 65534)
        #expect(listed.succeeded && listed.stdout.contains("'present'"), "\(listed)")
        let written = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
        #expect(written == 0)
    }

    @Test("ListTransfersEx lists a running pull with its class, filtered by class")
    func listTransfersEx() throws {
        let site = try Import1Site()
        defer { site.close() }
        let server = try LoopbackHTTPServer(directory: site.content.www)
        defer { server.stop() }
        let started = try site.callManager("PullTarEx", ["'\(server.url("stall/big.tar"))'", "'slow'", "'confext'", "'no'", "uint64 0"])
        #expect(started.succeeded, "\(started.stderr)")
        let all = try site.callEx("ListTransfersEx", [("s", ""), ("t", 0)]).rows
        let row = try #require(all.first, "\(all)")
        #expect(row.count == 7 && row[1] as? String == "pull-tar" && row[3] as? String == "slow" && row[4] as? String == "confext", "\(row)")
        #expect((row[2] as? String)?.hasSuffix("stall/big.tar") == true, "\(row)")
        #expect(try site.callEx("ListTransfersEx", [("s", "confext"), ("t", 0)]).rows.count == 1)
        #expect(try site.callEx("ListTransfersEx", [("s", "machine"), ("t", 0)]).rows.isEmpty)
        // 252's ListTransfers shows it too, in its own shape.
        #expect(try site.callManager("ListTransfers", []).stdout.contains("'slow'"))
        let id = try #require(row.first as? NSNumber).uint32Value
        _ = try site.callManager("CancelTransfer", ["\(id)"])
        #expect(try eventually { try site.callEx("ListTransfersEx", [("s", ""), ("t", 0)]).rows.isEmpty })
        #expect(site.allPoolEntries().filter { $0.contains(".#") }.isEmpty, "\(site.allPoolEntries())")
    }

    @Test("keep-download: a pull keeps its download hidden and read-only; a later pull reuses it while the server's ETag matches (304), downloads again when it changes")
    func keepDownload() throws {
        let site = try Import1Site()
        defer { site.close() }
        let www = site.folder.appending("www")
        _ = try shell("""
        mkdir -p '\(www)' '\(site.folder.path)/v2/etc'
        cp '\(site.content.tar)' '\(www)/image.tar'
        printf '"v1"' > '\(www)/image.tar.etag'
        cp '\(site.content.raw)' '\(www)/disk.raw'
        printf '"r1"' > '\(www)/disk.raw.etag'
        echo second > '\(site.folder.path)/v2/etc/hostname'
        """)
        let server = try LoopbackHTTPServer(directory: www)
        defer { server.stop() }
        let url = server.url("image.tar")
        func pull(_ name: String, flags: UInt64 = 4) throws -> Import1Reply {
            try site.callEx("PullTarEx", [("s", url), ("s", name), ("s", "sysext"), ("s", "no"), ("t", flags)])
        }
        func hostname(_ name: String) throws -> String {
            try String(contentsOfFile: site.folder("sysext") + "/\(name)/etc/hostname", encoding: .utf8)
        }
        let first = try pull("k1")
        #expect(first.result == "done", "\(first.description)")
        #expect(try hostname("k1") == "imported\n")
        var kept = try site.listImages("sysext").filter { $0.name.hasPrefix(".tar-") }
        #expect(kept.count == 1 && kept[0].readOnly && kept[0].name.hasSuffix("\\\"v1\""), "\(kept)")

        // The server's file changes but keeps its ETag: the kept download is reused, not fetched.
        _ = try shell("tar -C '\(site.folder.path)/v2' -cf '\(www)/image.tar' .")
        let second = try pull("k2")
        #expect(second.result == "done", "\(second.description)")
        #expect(try hostname("k2") == "imported\n")
        #expect(server.etagRequests == ["200 /image.tar", "304 /image.tar"], "\(server.etagRequests)")

        // Without keep-download nothing is asked conditionally and nothing is kept.
        let plain = try pull("plain", flags: 0)
        #expect(plain.result == "done", "\(plain.description)")
        #expect(try hostname("plain") == "second\n")
        #expect(server.etagRequests.last == "200 /image.tar")

        // A new ETag: downloaded again, the kept copy replaced by the new one; force replaces k1.
        _ = try shell("printf '\"v2\"' > '\(www)/image.tar.etag'")
        let third = try pull("k1", flags: 5)
        #expect(third.result == "done", "\(third.description)")
        #expect(try hostname("k1") == "second\n")
        kept = try site.listImages("sysext").filter { $0.name.hasPrefix(".tar-") }
        #expect(kept.count == 1 && kept[0].name.hasSuffix("\\\"v2\""), "\(kept)")
        // The kept image lives only in the class's pool.
        #expect(try site.listImages("machine").filter { $0.name.hasPrefix(".tar-") }.isEmpty)

        // Raw pulls keep and reuse the same way.
        let rawURL = server.url("disk.raw")
        for name in ["d1", "d2"] {
            let r = try site.callEx("PullRawEx", [("s", rawURL), ("s", name), ("s", "machine"), ("s", "no"), ("t", 4 | 2)])
            #expect(r.result == "done", "\(r.description)")
            #expect(try run(["cmp", site.content.raw, site.poolPath + "/\(name).raw"]).succeeded)
        }
        #expect(server.etagRequests.suffix(2) == ["200 /disk.raw", "304 /disk.raw"], "\(server.etagRequests)")
        #expect(try site.listImages("machine").first { $0.name == "d2" }?.readOnly == true)
        #expect(site.allPoolEntries().filter { $0.contains(".#") }.isEmpty, "\(site.allPoolEntries())")
    }

    @Test("ProgressUpdate is emitted on a large import's transfer object, rising to 1, at most a few per second")
    func progressUpdates() throws {
        let site = try Import1Site()
        defer { site.close() }
        let big = site.folder.appending("big.raw")
        _ = try shell("head -c 256M /dev/urandom > '\(big)'")
        let reply = try site.callEx("ImportRawEx", [("h", ["read", big]), ("s", "big"), ("s", "machine"), ("t", 0)])
        #expect(reply.result == "done", "\(reply.description)")
        let p = reply.progress
        #expect(!p.isEmpty, "no ProgressUpdate in \(reply.seconds) s")
        #expect(p.last == 1, "\(p)")
        #expect(zip(p, p.dropFirst()).allSatisfy { $0 <= $1 }, "\(p)")
        // Rate-limited: 4 a second at most (250 ms apart), plus the held-back last value.
        #expect(p.count <= Int(reply.seconds * 4) + 2, "\(p.count) signals in \(reply.seconds) s")
    }
}
