import DirectoryBackend
import Foundation
import Glibc
import PoolAPI
import Synchronization
import TestSupport
import Testing

@Suite struct DiscoveryTests {
    @Test func searchPathsFirstOccurrenceWinsVendorIsReadOnlyTempIsHidden() async throws {
        let r = try PoolRoot()
        try r.makeTree("etc/machines/dup", files: ["where": "etc"])
        try r.makeTree("var/lib/machines/dup", files: ["where": "pool"])
        try r.makeTree("var/lib/machines/plain")
        try r.makeTree("var/lib/machines/.hidden")
        try r.makeTree("var/lib/machines/.#temp0123456789abcdef")
        try r.makeTree("usr/lib/machines/vendor")
        try r.makeTree("var/lib/container/legacy")
        let pool = r.pool()
        let images = try await pool.images()
        let byName = Dictionary(images.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        #expect(Set(byName.keys) == [".host", "dup", "plain", ".hidden", "vendor", "legacy"])
        #expect(images.filter { $0.name == "dup" }.count == 1)
        let realRoot = URL(fileURLWithPath: r.root).resolvingSymlinksInPath().path
        #expect(byName["dup"]?.path == realRoot + "/etc/machines/dup")
        #expect(byName["vendor"]?.readOnly == true)
        #expect(byName["plain"]?.readOnly == false)
        #expect(byName[".hidden"]?.isHidden == true)
        let host = try #require(byName[".host"])
        // Reported as systemd-machined 252 reports it (writable, no times); mutations still refuse.
        #expect(host.path == realRoot && host.type == .directory && !host.readOnly)
        #expect(host.creationTimestamp == 0 && host.modificationTimestamp == 0 && host.usage == Image.unknown)
        #expect(try await pool.image(named: "legacy").type == .directory)
        #expect(pool.poolPath == realRoot + "/var/lib/machines")
        #expect(await expectPoolError(.noSuchImage) { _ = try await pool.image(named: "missing") })
        #expect(await expectPoolError(.invalidName) { _ = try await pool.image(named: ".#temp0123456789abcdef") })
    }

    @Test func hostAndVendorImagesRefuseMutations() async throws {
        let r = try PoolRoot()
        try r.makeTree("usr/lib/machines/vendor")
        let pool = r.pool()
        for name in [".host", "vendor"] {
            #expect(await expectPoolError(.readOnly) { try await pool.remove(name) })
            #expect(await expectPoolError(.readOnly) { try await pool.rename(name, to: "x") })
            #expect(await expectPoolError(.readOnly) { try await pool.setReadOnly(name, false) })
            #expect(await expectPoolError(.readOnly) { try await pool.setLimit(name, 1 << 30) })
        }
        #expect(r.exists("usr/lib/machines/vendor"))
        // Cloning a vendor image is fine: the clone is ours, in the pool folder, writable.
        let copy = try await pool.clone("vendor", to: "mine", readOnly: false)
        #expect(!copy.readOnly && copy.path.hasSuffix("/var/lib/machines/mine"))
    }

    @Test func limitsAndPoolUsageAreNotSupportedForDirectories() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/img")
        let pool = r.pool()
        #expect(await expectPoolError(.notSupported) { try await pool.setLimit("img", 1 << 30) })
        #expect(await expectPoolError(.notSupported) { try await pool.setPoolLimit(1 << 30) })
        let usage = await pool.poolUsage()
        #expect(usage.usage == Image.unknown && usage.limit == Image.unknown)
    }
}

@Suite struct MutationTests {
    @Test func cloneMakesThePoolFolderOnFirstUseAndRenameStaysInTheImagesFolder() async throws {
        let r = try PoolRoot()
        try r.makeTree("etc/machines/src", files: ["etc/os-release": "ID=x\n"])
        let pool = r.pool()
        #expect(!r.exists("var/lib/machines"))
        let copy = try await pool.clone("src", to: "dst", readOnly: true)
        #expect(r.exists("var/lib/machines/dst/etc/os-release"))
        #expect(copy.readOnly)
        try await pool.rename("src", to: "renamed")
        #expect(r.exists("etc/machines/renamed") && !r.exists("etc/machines/src"))
        #expect(await expectPoolError(.imageExists) { try await pool.rename("renamed", to: "dst") })
        #expect(await expectPoolError(.imageExists) { _ = try await pool.clone("dst", to: "renamed", readOnly: false) })
        #expect(r.temporaryEntries().isEmpty)
    }

    /// An image's nspawn settings beside it (what an OCI pull writes) follow a rename and go with a
    /// remove, as systemd's image rename and remove do: left behind, they would configure the next
    /// image of that name. A settings file the new name already has is not replaced.
    @Test func theNspawnSettingsBesideAnImageFollowItsRenameAndGoWithItsRemoval() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/app", files: ["etc/os-release": "ID=x\n"])
        try r.makeTree("var/lib/machines/other", files: ["etc/os-release": "ID=y\n"])
        let settings = r.path("var/lib/machines/app.nspawn"), otherSettings = r.path("var/lib/machines/other2.nspawn")
        try "[Exec]\nParameters=/bin/app\n".write(toFile: settings, atomically: false, encoding: .utf8)
        try "[Exec]\nParameters=/bin/keep\n".write(toFile: otherSettings, atomically: false, encoding: .utf8)
        let pool = r.pool()
        try await pool.rename("app", to: "app2")
        #expect(!r.exists("var/lib/machines/app.nspawn"))
        #expect((try? String(contentsOfFile: r.path("var/lib/machines/app2.nspawn"), encoding: .utf8)) == "[Exec]\nParameters=/bin/app\n")
        try await pool.rename("other", to: "other2")
        #expect((try? String(contentsOfFile: otherSettings, encoding: .utf8)) == "[Exec]\nParameters=/bin/keep\n")
        try await pool.remove("app2")
        #expect(!r.exists("var/lib/machines/app2") && !r.exists("var/lib/machines/app2.nspawn"))
        #expect(r.exists("var/lib/machines/other2.nspawn"))
    }

    /// The pool folder made on first use is 0700 whichever backend makes it (here the
    /// directory backend, whose mkdir of an image root is 0755): images hold device nodes.
    @Test func thePoolFolderMadeOnFirstUseIsPrivate() async throws {
        let r = try PoolRoot()
        try r.makeTree("etc/machines/src", files: ["etc/os-release": "ID=x\n"])
        let pool = r.pool()
        #expect(pool.poolAccessWarning() == nil, "no pool folder yet")
        _ = try await pool.clone("src", to: "dst", readOnly: false)
        var st = stat()
        #expect(lstat(r.path("var/lib/machines"), &st) == 0)
        #expect(st.st_mode & 0o7777 == 0o700, "pool folder mode \(String(st.st_mode & 0o7777, radix: 8))")
        #expect(pool.poolAccessWarning() == nil)
        #expect(chmod(r.path("var/lib/machines"), 0o750) == 0)
        #expect(pool.poolAccessWarning()?.contains("is mode 750") == true)
    }

    @Test func aSymlinkedImageInEtcMachinesIsClonedAndRemovedAsALink() async throws {
        let r = try PoolRoot()
        try r.makeTree("srv/real", files: ["etc/os-release": "ID=linked\n"])
        try r.makeTree("etc/machines")
        try FileManager.default.createSymbolicLink(atPath: r.path("etc/machines/linked"), withDestinationPath: r.path("srv/real"))
        let pool = r.pool()
        #expect(try await pool.images().map(\.name).contains("linked"))
        _ = try await pool.clone("linked", to: "copy", readOnly: false)
        #expect(try String(contentsOfFile: r.path("var/lib/machines/copy/etc/os-release"), encoding: .utf8) == "ID=linked\n")
        #expect(try await pool.metadata(of: "linked").osRelease == ["ID": "linked"])
        try await pool.remove("linked")
        #expect(!r.exists("etc/machines/linked") && r.exists("srv/real/etc/os-release"), "only the link goes")
    }

    @Test func cloneIntoAPoolWhoseTreeBackendDiffersCopiesIntoAFreshEntry() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/src", files: ["a/b/c": "deep", "top": "level"])
        chmod(r.path("var/lib/machines/src/a"), 0o710)
        let other = OtherTreeBackend()
        let pool = r.pool([other, DirectoryBackend()])
        _ = try await pool.clone("src", to: "dst", readOnly: false)
        #expect(other.created.count == 1 && other.created[0].contains("/.#dst"))
        #expect(try String(contentsOfFile: r.path("var/lib/machines/dst/a/b/c"), encoding: .utf8) == "deep")
        var st = stat()
        stat(r.path("var/lib/machines/dst/a"), &st)
        #expect(st.st_mode & 0o7777 == 0o710)
        #expect(r.temporaryEntries().isEmpty)
    }

    @Test func installIsAtomicAndCleansUpAfterErrorsAndCancellation() async throws {
        let r = try PoolRoot()
        let pool = r.pool()
        struct Boom: Error {}
        await #expect(throws: PoolError.self) {
            _ = try await pool.install("failing", type: .directory, force: false, readOnly: false) { path in
                try Data("half".utf8).write(to: URL(fileURLWithPath: path + "/partial"))
                throw Boom()
            }
        }
        #expect(r.temporaryEntries().isEmpty && !r.exists("var/lib/machines/failing"))

        let task = Task {
            try await pool.install("cancelled", type: .directory, force: false, readOnly: false) { path in
                try Data("x".utf8).write(to: URL(fileURLWithPath: path + "/file"))
                try await Task.sleep(for: .seconds(600))
            }
        }
        while r.temporaryEntries().isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        task.cancel()
        let result = await task.result
        #expect(throws: PoolError.self) { try result.get() }
        #expect(r.temporaryEntries().isEmpty && !r.exists("var/lib/machines/cancelled"))

        let made = try await pool.install("img", type: .directory, force: false, readOnly: true) { path in
            try Data("v1".utf8).write(to: URL(fileURLWithPath: path + "/version"))
        }
        #expect(made.readOnly && made.name == "img")
        let ran = Mutex(false)
        #expect(await expectPoolError(.imageExists) {
            _ = try await pool.install("img", type: .directory, force: false, readOnly: false) { _ in ran.withLock { $0 = true } }
        })
        #expect(!ran.withLock { $0 }, "fill must not run when the name is taken")
        let replaced = try await pool.install("img", type: .directory, force: true, readOnly: false) { path in
            try Data("v2".utf8).write(to: URL(fileURLWithPath: path + "/version"))
        }
        #expect(!replaced.readOnly)
        #expect(try String(contentsOfFile: r.path("var/lib/machines/img/version"), encoding: .utf8) == "v2")
        #expect(r.temporaryEntries().isEmpty)

        #expect(await expectPoolError(.notSupported) {
            _ = try await pool.install("disk", type: .raw, force: false, readOnly: false) { _ in }
        }, "no raw backend is registered")
        #expect(r.temporaryEntries().isEmpty)
    }

    @Test func cleanPoolRemovesHiddenOrAllButNeverVendorOrHost() async throws {
        let r = try PoolRoot()
        try r.makeTree("var/lib/machines/.hidden1")
        try r.makeTree("var/lib/machines/visible")
        try r.makeTree("usr/lib/machines/.vendorhidden")
        let pool = r.pool()
        try await pool.setReadOnly(".hidden1", true)
        let hidden = try await pool.clean(.hidden)
        #expect(hidden.map(\.name) == [".hidden1"])
        #expect(r.exists("var/lib/machines/visible") && r.exists("usr/lib/machines/.vendorhidden"))
        let all = try await pool.clean(.all)
        #expect(all.map(\.name) == ["visible"])
        #expect(r.exists("usr/lib/machines/.vendorhidden"))
        #expect(try await pool.images().map(\.name).sorted() == [".host", ".vendorhidden"])
    }
}

@Suite struct MetadataTests {
    @Test func metadataIsReadInsideTheImageEvenThroughEscapingSymlinks() async throws {
        let r = try PoolRoot()
        let img = try r.makeTree("var/lib/machines/img", files: [
            "usr/lib/os-release": "ID=fallback\nNAME=\"Fallback OS\"\n",
            "etc/inside-hostname": "# comment\n\n  inside-host  \n",
            "etc/machine-id": "0123456789abcdef0123456789ABCDEF\n",
            "outside-info": "INSIDE=yes\n",
        ])
        try r.makeTree("", files: ["outside-info": "LEAK=yes\n"])
        // Absolute: resolved against the image root, not the host's /.
        try FileManager.default.createSymbolicLink(atPath: img + "/etc/hostname", withDestinationPath: "/etc/inside-hostname")
        // Relative and climbing out: clamped at the image root.
        try FileManager.default.createSymbolicLink(atPath: img + "/etc/machine-info",
                                                   withDestinationPath: "../../../../../outside-info")
        let pool = r.pool()
        let m = try await pool.metadata(of: "img")
        #expect(m.hostname == "inside-host")
        #expect(m.machineID == [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef])
        #expect(m.machineInfo == ["INSIDE": "yes"])
        #expect(m.osRelease == ["ID": "fallback", "NAME": "Fallback OS"])

        try r.makeTree("var/lib/machines/img", files: ["etc/os-release": "ID=preferred\n", "etc/machine-id": "uninitialized\n"])
        let m2 = try await pool.metadata(of: "img")
        #expect(m2.osRelease == ["ID": "preferred"])
        #expect(m2.machineID == [])
        let empty = try await r.pool().metadata(of: ".host")
        #expect(empty.osRelease.isEmpty && empty.hostname.isEmpty)
    }
}
