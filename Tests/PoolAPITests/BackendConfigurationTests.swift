import Foundation
import PoolAPI
import Testing
import TestSupport

/// `ROOT/etc/berth/backends.d/*.conf`: the syntax docs/rbd.md states, validated strictly, every
/// error naming the file and line.
struct BackendConfigurationTests {
    private func parse(_ text: String) throws(BackendConfiguration.ParseError) -> BackendConfiguration {
        try BackendConfiguration.parse(text, file: "/r/etc/berth/backends.d/rbd.conf", root: "/r")
    }

    private func error(_ text: String) -> BackendConfiguration.ParseError? {
        do {
            _ = try parse(text)
            return nil
        } catch {
            return error
        }
    }

    @Test func aFullSectionParsesWithTheConfResolvedUnderTheRoot() throws {
        let c = try parse("""
            # the shared pool
            [rbd]
            pool = berth
            cluster=ceph
            conf=/etc/ceph/my cluster.conf
            id=berth
            timeout=5
            required=yes
            """)
        #expect(c.rbdPools == [BackendConfiguration.RbdPool(
            pool: "berth", cluster: "ceph", conf: "/etc/ceph/my cluster.conf", confPath: "/r/etc/ceph/my cluster.conf",
            clientID: "berth", timeoutSeconds: 5, required: true, origin: "/r/etc/berth/backends.d/rbd.conf:2")])
    }

    @Test func defaultsAreCephsOwn() throws {
        let c = try parse("[rbd]\npool=p\n")
        let pool = try #require(c.rbdPools.first)
        #expect(pool.cluster == "ceph" && pool.conf == "/etc/ceph/ceph.conf" && pool.confPath == "/r/etc/ceph/ceph.conf")
        #expect(pool.clientID == "admin" && pool.timeoutSeconds == 30 && !pool.required)
        #expect(try parse("[rbd]\npool=p\ncluster=backup\n").rbdPools.first?.conf == "/etc/ceph/backup.conf")
    }

    @Test func emptyOrCommentOnlyIsNoBackend() throws {
        #expect(try parse("").isEmpty)
        #expect(try parse("# nothing\n; nothing\n\n").isEmpty)
    }

    @Test func twoSectionsMakeTwoPoolsButTheSamePoolTwiceIsRefused() throws {
        #expect(try parse("[rbd]\npool=a\n[rbd]\npool=b\n").rbdPools.map(\.pool) == ["a", "b"])
        #expect(try parse("[rbd]\npool=a\n[rbd]\npool=a\ncluster=other\n").rbdPools.count == 2)
        let e = error("[rbd]\npool=a\n\n[rbd]\npool=a\n")
        #expect(e?.line == 4 && e?.reason.contains("already configured at /r/etc/berth/backends.d/rbd.conf:1") == true, "\(String(describing: e))")
    }

    @Test(arguments: [
        ("[rbd] pool=berth cluster=ceph", 1, "section header stands alone"),
        ("[ceph]\npool=a", 1, "unknown section [ceph]"),
        ("pool=a", 1, "before any section"),
        ("[rbd]\npool=a\npol=b", 3, "unknown key 'pol'"),
        ("[rbd]\npool=a\npool=b", 3, "given twice"),
        ("[rbd]\njust words", 2, "expected key=value"),
        ("[rbd]\ncluster=ceph", 1, "needs pool="),
        ("[rbd]\npool=../x", 2, "not a Ceph pool name"),
        ("[rbd]\npool=.hidden", 2, "not a Ceph pool name"),
        ("[rbd]\npool=", 2, "not a Ceph pool name"),
        ("[rbd]\npool=a b", 2, "not a Ceph pool name"),
        ("[rbd]\npool=a\ncluster=c/d", 3, "not a cluster name"),
        ("[rbd]\npool=a\nconf=etc/ceph.conf", 3, "absolute path"),
        ("[rbd]\npool=a\nconf=/etc/../../x.conf", 3, "absolute path"),
        ("[rbd]\npool=a\nid=client.berth", 3, "without 'client.'"),
        ("[rbd]\npool=a\nid=$(reboot)", 3, "not a cephx client id"),
        ("[rbd]\npool=a\ntimeout=0", 3, "from 1 to 600"),
        ("[rbd]\npool=a\ntimeout=99999999999999999999", 3, "from 1 to 600"),
        ("[rbd]\npool=a\ntimeout=5s", 3, "from 1 to 600"),
        ("[rbd]\npool=a\nrequired=maybe", 3, "yes or no"),
    ])
    func badInputIsRefusedNamingFileAndLine(text: String, line: Int, reason: String) {
        let e = error(text)
        #expect(e?.file == "/r/etc/berth/backends.d/rbd.conf" && e?.line == line && e?.reason.contains(reason) == true,
                "\(String(describing: e))")
        #expect(e?.description.hasPrefix("/r/etc/berth/backends.d/rbd.conf:\(line): ") == true)
    }

    @Test func loadReadsConfFilesInNameOrderAndIgnoresOthers() throws {
        let root = try TemporaryDirectory(prefix: "berth-bcfg")
        defer { root.remove() }
        #expect(try BackendConfiguration.load(root: root.path).isEmpty)
        let folder = BackendConfiguration.folder(root: root.path)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        #expect(try BackendConfiguration.load(root: root.path).isEmpty)
        try "[rbd]\npool=second\n".write(toFile: folder + "/20-b.conf", atomically: false, encoding: .utf8)
        try "[rbd]\npool=first\n".write(toFile: folder + "/10-a.conf", atomically: false, encoding: .utf8)
        try "[rbd]\npool=ignored\n".write(toFile: folder + "/10-a.conf~", atomically: false, encoding: .utf8)
        try "[rbd]\npool=hidden\n".write(toFile: folder + "/.x.conf", atomically: false, encoding: .utf8)
        let c = try BackendConfiguration.load(root: root.path)
        #expect(c.rbdPools.map(\.pool) == ["first", "second"])
        #expect(c.rbdPools.first?.origin == folder + "/10-a.conf:1")

        // The same pool in two files: the second file and its line are named.
        try "# again\n[rbd]\npool=first\n".write(toFile: folder + "/30-c.conf", atomically: false, encoding: .utf8)
        #expect(throws: BackendConfiguration.ParseError(file: folder + "/30-c.conf", line: 2,
                                                         reason: "pool 'first' of cluster 'ceph' is already configured at \(folder)/10-a.conf:1")) {
            try BackendConfiguration.load(root: root.path)
        }
        try FileManager.default.removeItem(atPath: folder + "/30-c.conf")

        // A symlink is not followed; a huge file is refused.
        try FileManager.default.createSymbolicLink(atPath: folder + "/40-link.conf", withDestinationPath: "/etc/passwd")
        #expect(throws: BackendConfiguration.ParseError.self) { try BackendConfiguration.load(root: root.path) }
        try FileManager.default.removeItem(atPath: folder + "/40-link.conf")
        try String(repeating: "# x\n", count: 20000).write(toFile: folder + "/50-big.conf", atomically: false, encoding: .utf8)
        #expect(throws: BackendConfiguration.ParseError(file: folder + "/50-big.conf", line: nil, reason: "larger than 64 KiB")) {
            try BackendConfiguration.load(root: root.path)
        }
    }
}
