import Foundation
import Glibc
import Testing
import TestSupport

/// The one image-name limit (233 bytes: the longest derived file name, a raw image's temp entry
/// `.#NAME.raw<16 hex>`, must fit NAME_MAX), honoured by every machine1 and import1 method: a
/// name at the limit works for import, clone, rename, read-only and remove; one byte more is
/// InvalidArgs at the call, with nothing created and no transfer started.
@Suite(.serialized, .requires(import1Requirements))
struct NameLimitTests {
    static let limit = 233

    func name(_ c: Character, _ count: Int) -> String { String(repeating: c, count: count) }

    func machine1(_ site: Import1Site, _ method: String, _ args: [String]) throws -> CommandResult {
        try run(["gdbus", "call", "--address", site.bus.address, "--dest", "org.freedesktop.machine1",
                 "--object-path", "/org/freedesktop/machine1", "--method", "org.freedesktop.machine1.Manager.\(method)"] + args)
    }

    /// import1's `method` (ImportTar, ImportRaw, ImportFileSystem) with an fd of `path`, through
    /// python3-dbus (machinectl refuses names longer than a hostname before calling): "ok" once
    /// the transfer ended, else the D-Bus error name.
    func importByFD(_ site: Import1Site, _ method: String, _ path: String, _ local: String) throws -> String {
        let script = """
        import dbus, os, sys
        bus = dbus.bus.BusConnection(sys.argv[1])
        m = dbus.Interface(bus.get_object('org.freedesktop.import1', '/org/freedesktop/import1'), 'org.freedesktop.import1.Manager')
        flags = os.O_RDONLY | (os.O_DIRECTORY if sys.argv[2] == 'ImportFileSystem' else 0)
        fd = os.open(sys.argv[3], flags)
        try:
            getattr(m, sys.argv[2])(dbus.types.UnixFd(fd), sys.argv[4], False, False)
            print('ok')
        except dbus.DBusException as e:
            print(e.get_dbus_name())
        """
        let r = try run(["/usr/bin/python3", "-c", script, site.bus.address, method, path, local])
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) + r.stderr
    }

    @Test("a name at the limit works for import-raw, clone, rename, read-only and remove of a raw image")
    func aNameAtTheLimitWorksEverywhere() throws {
        let site = try Import1Site()
        defer { site.close() }
        let a = name("a", Self.limit), b = name("b", Self.limit), c = name("c", Self.limit)
        #expect(try importByFD(site, "ImportRaw", site.content.raw, a) == "ok")
        #expect(try eventually { try site.poolEntries() == [a + ".raw"] }, "\(site.log)")
        var r = try machine1(site, "MarkImageReadOnly", [a, "true"])
        #expect(r.succeeded, "\(r.stderr)")
        r = try machine1(site, "RenameImage", [a, b])
        #expect(r.succeeded, "\(r.stderr)")
        r = try machine1(site, "CloneImage", [b, c, "false"])
        #expect(r.succeeded, "\(r.stderr)")
        r = try machine1(site, "MarkImageReadOnly", [b, "false"])
        #expect(r.succeeded, "\(r.stderr)")
        r = try machine1(site, "RemoveImage", [b])
        #expect(r.succeeded, "\(r.stderr)")
        r = try machine1(site, "RemoveImage", [c])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try site.poolEntries().isEmpty)
    }

    @Test("one byte over the limit is InvalidArgs at the call for machine1 and import1, nothing created, no transfer")
    func oneByteOverIsRefusedAtTheCall() throws {
        let site = try Import1Site()
        defer { site.close() }
        let long = name("x", Self.limit + 1)
        var r = try site.machinectl(["import-tar", site.content.tar, "src"])
        #expect(r.succeeded, "\(r.stderr)\n\(site.log)")
        let invalid = "org.freedesktop.DBus.Error.InvalidArgs"
        for (method, args) in [("CloneImage", ["src", long, "false"]), ("RenameImage", ["src", long]),
                               ("MarkImageReadOnly", [long, "true"]), ("RemoveImage", [long])] {
            r = try machine1(site, method, args)
            #expect(!r.succeeded && r.stderr.contains(invalid), "\(method): \(r.stdout) \(r.stderr)")
        }
        for (method, args) in [("PullTar", ["http://127.0.0.1:9/image.tar", long, "no", "false"]),
                               ("PullRaw", ["http://127.0.0.1:9/disk.raw", long, "no", "false"])] {
            r = try site.callManager(method, args)
            #expect(!r.succeeded && r.stderr.contains(invalid), "\(method): \(r.stdout) \(r.stderr)")
        }
        for (method, path) in [("ImportTar", site.content.tar), ("ImportRaw", site.content.raw),
                               ("ImportFileSystem", site.content.tree)] {
            #expect(try importByFD(site, method, path, long) == invalid, "\(method)")
        }
        #expect(try site.poolEntries() == ["src"])
        #expect(try site.transfers().isEmpty)
        let started = site.log.split(separator: "\n").filter { $0.contains(" started: ") }
        #expect(started.count == 1, "only the import of src may have started a transfer: \(site.log)")
    }
}
