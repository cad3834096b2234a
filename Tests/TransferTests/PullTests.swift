import Foundation
import Glibc
import Linux
import Synchronization
import PoolAPI
import TestSupport
import Testing
@testable import Transfer
@testable import TransferJobs


/// Folders made once per test run, removed when the test process exits (Swift Testing has
/// no run-wide teardown).
private let atExitFolders = Mutex<[String]>([])

private func removeAtExit(_ path: String) {
    let first = atExitFolders.withLock { folders -> Bool in
        folders.append(path)
        return folders.count == 1
    }
    if first {
        atexit {
            for folder in atExitFolders.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: folder) }
        }
    }
}

/// One signing key, made once: a keyring to install as `ROOT/etc/systemd/import-pubring.gpg`
/// and a GNUPGHOME to sign with.
struct SigningKey: Sendable {
    let home: String
    let keyring: String

    static let shared: Result<SigningKey, TestSupportError> = {
        do {
            let dir = try TemporaryDirectory(prefix: "berth-gpg")
            removeAtExit(dir.path)
            let home = dir.appending("home")
            _ = try sh("""
            mkdir -m 700 '\(home)'
            export GNUPGHOME='\(home)'
            gpg --batch --quiet --passphrase '' --quick-gen-key 'Berth Test <test@berth.invalid>' future-default default never 2>/dev/null
            gpg --batch --quiet --export > '\(dir.path)/keyring.gpg'
            gpgconf --kill gpg-agent
            """)
            return .success(SigningKey(home: home, keyring: dir.appending("keyring.gpg")))
        } catch {
            return .failure(TestSupportError("cannot make a gpg key: \(error)"))
        }
    }()

    func sign(_ file: String, armor: Bool = false) throws {
        _ = try sh("export GNUPGHOME='\(home)'; gpg --batch --quiet --yes \(armor ? "--armor -o '\(file).asc'" : "-o '\(file).gpg'") --detach-sign '\(file)'")
    }
}

@Suite("pull-tar and pull-raw over HTTP with verification")
struct PullTests {
    /// What every pull test serves, made once (signing needs one gpg-agent at a time):
    /// a tar.xz and a raw.xz with checksum files in several variants of a folder.
    struct Content: Sendable {
        let www: String
        let source: String
        let raw: String
        let keyring: String

        static let shared: Result<Content, TestSupportError> = {
            do {
                let key = try SigningKey.shared.get()
                let tmp = try TemporaryDirectory(prefix: "berth-www")
                removeAtExit(tmp.path)
                let www = tmp.appending("www"), source = tmp.appending("src"), raw = tmp.appending("disk.raw")
                _ = try sh("""
                mkdir -p '\(www)' '\(source)/etc' '\(source)/usr/lib'
                echo ID=pulled > '\(source)/usr/lib/os-release'
                head -c 400000 /dev/urandom > '\(source)/etc/blob'
                tar -C '\(source)' -cJf '\(www)/image.tar.xz' .
                truncate -s 16M '\(raw)' && head -c 100000 /dev/urandom | dd of='\(raw)' bs=4096 seek=3 conv=notrunc status=none
                xz -T1 -c '\(raw)' > '\(www)/disk.raw.xz'
                cd '\(www)'
                sha256sum image.tar.xz disk.raw.xz > SHA256SUMS
                for d in good armored unsigned tampered mismatch single; do mkdir $d; cp image.tar.xz disk.raw.xz SHA256SUMS $d/; done
                sha256sum image.tar.xz | cut -d' ' -f1 > single/image.tar.xz.sha256
                # Bytes after the compressed stream: the decompressor stops before them, yet
                # they are part of the file the checksum is for.
                mkdir trailing && tar -C '\(source)' -czf trailing/image.tar.gz . && head -c 20000000 /dev/zero >> trailing/image.tar.gz
                (cd trailing && sha256sum image.tar.gz > SHA256SUMS)
                # A gzip stream whose CRC-32 does not match what it inflates to.
                mkdir badcrc && tar -C '\(source)' -czf badcrc/image.tar.gz .
                echo '0000000000000000000000000000000000000000000000000000000000000000 *image.tar.xz' > single/SHA256SUMS
                """)
                try corruptGzipCRC(www + "/badcrc/image.tar.gz")
                try key.sign(www + "/good/SHA256SUMS")
                try key.sign(www + "/armored/SHA256SUMS", armor: true)
                try key.sign(www + "/tampered/SHA256SUMS")
                _ = try sh("""
                export GNUPGHOME='\(key.home)'; gpgconf --kill gpg-agent
                cd '\(www)'
                # Change every line's first hex digit, whatever it was (0→1, anything else→0):
                # replacing it by a fixed digit left it unchanged one time in sixteen.
                flip='s/^0/X/; s/^[^X]/0/; s/^X/1/'
                sed -i "$flip" tampered/SHA256SUMS
                sha256sum image.tar.xz disk.raw.xz | sed "$flip" > mismatch/SHA256SUMS
                """)
                return .success(Content(www: www, source: source, raw: raw, keyring: key.keyring))
            } catch {
                return .failure(TestSupportError("cannot make the pull fixtures: \(error)"))
            }
        }()
    }

    /// A server over the shared content and a fresh pool with the keyring installed.
    struct Site {
        let tmp: TemporaryDirectory
        let server: LoopbackHTTPServer
        let setup: Setup
        let source: String
        let raw: String

        init() throws {
            let content = try Content.shared.get()
            tmp = try TemporaryDirectory()
            source = content.source
            raw = content.raw
            server = try LoopbackHTTPServer(directory: content.www)
            setup = try Setup(root: tmp.appending("root"))
            _ = try sh("mkdir -p '\(setup.root)/etc/systemd' && cp '\(content.keyring)' '\(setup.root)/etc/systemd/import-pubring.gpg'")
        }

        func close() {
            server.stop()
            tmp.remove()
        }

        func leftovers() throws -> [String] { try setup.poolEntries().filter { !$0.hasSuffix(".lck") } }
    }

    @Test("pull-tar succeeds: no verification, checksum (SHA256SUMS and .sha256), signature (.gpg and .asc)",
          arguments: [("good", VerifyMode.no), ("good", .checksum), ("single", .checksum), ("good", .signature), ("armored", .signature)])
    func pullTarGood(_ folder: String, _ verify: VerifyMode) async throws {
        let site = try Site()
        defer { site.close() }
        let (result, events) = try await runTransfer(site.setup.engine,
            .pullTar(url: site.server.url("\(folder)/image.tar.xz"), local: "pulled", verify: verify))
        #expect(result == .done, "\(events)")
        #expect(try sh("cmp '\(site.source)/etc/blob' '\(site.setup.poolPath)/pulled/etc/blob' && echo same") == "same\n")
        #expect(try site.leftovers() == ["pulled"])
    }

    @Test("pull-tar of a .tar.gz with bytes after the gzip stream, verified by checksum, succeeds")
    func pullTarTrailingBytes() async throws {
        let site = try Site()
        defer { site.close() }
        let (result, events) = try await runTransfer(site.setup.engine,
            .pullTar(url: site.server.url("trailing/image.tar.gz"), local: "pulled", verify: .checksum))
        #expect(result == .done, "\(events)")
        #expect(try sh("cmp '\(site.source)/etc/blob' '\(site.setup.poolPath)/pulled/etc/blob' && echo same") == "same\n")
        #expect(try site.leftovers() == ["pulled"])
    }

    @Test("pull fails and installs nothing: checksum mismatch, bad signature, unsigned, 404, truncated download",
          arguments: [
              ("mismatch/image.tar.xz", VerifyMode.checksum, "checksum mismatch"),
              ("mismatch/disk.raw.xz", .checksum, "checksum mismatch"),
              ("tampered/image.tar.xz", .signature, "signature verification of SHA256SUMS failed: Bad signature"),
              ("unsigned/image.tar.xz", .signature, "no signature (SHA256SUMS.gpg or .asc) beside"),
              ("good/missing.tar.xz", .no, "missing.tar.xz failed: HTTP 404"),
              ("truncated/good/image.tar.xz", .no, "image.tar.xz failed: Transferred a partial file"),
              ("truncated/good/disk.raw.xz", .no, "disk.raw.xz failed: Transferred a partial file"),
              ("nowhere/image.tar.xz", .checksum, "nowhere/SHA256SUMS failed: HTTP 404"),
              ("badcrc/image.tar.gz", .no, "the gzip data is corrupt: incorrect data check"),
          ])
    func pullFails(_ path: String, _ verify: VerifyMode, _ reason: String) async throws {
        let site = try Site()
        defer { site.close() }
        let url = site.server.url(path)
        let request: TransferRequest = path.hasSuffix(".raw.xz")
            ? .pullRaw(url: url, local: "bad", verify: verify) : .pullTar(url: url, local: "bad", verify: verify)
        let (result, events) = try await runTransfer(site.setup.engine, request)
        guard case .failed(let message) = result else {
            Issue.record("pull of \(path) with \(verify) did not fail: \(result) \(events)")
            return
        }
        #expect(message.contains(reason), "\(path): \(message)")
        #expect(events.contains { if case .log(LogPriority.error, _) = $0 { true } else { false } })
        #expect(try site.leftovers() == [])
    }

    @Test("pull-raw of a raw.xz with checksum: sparse and identical; progress follows Content-Length")
    func pullRaw() async throws {
        let site = try Site()
        defer { site.close() }
        let (result, events) = try await runTransfer(site.setup.engine,
            .pullRaw(url: site.server.url("good/disk.raw.xz"), local: "disk", verify: .checksum))
        #expect(result == .done, "\(events)")
        let image = site.setup.poolPath + "/disk.raw"
        #expect(try sh("cmp '\(site.raw)' '\(image)' && echo same") == "same\n")
        #expect(try allocatedBytes(image) < 1 << 20)
        // A slow download of a known size reports progress along the way.
        let (slowResult, slowEvents) = try await runTransfer(site.setup.engine,
            .pullTar(url: site.server.url("slow/good/image.tar.xz"), local: "slow", verify: .no))
        #expect(slowResult == .done)
        let steps = slowEvents.compactMap { if case .progress(let p) = $0 { p } else { nil } }
        #expect(steps.count >= 5 && steps.contains { $0 > 0 && $0 < 1 })
    }

    @Test("cancelling a slow download kills the worker and leaves nothing")
    func cancelSlowDownload() async throws {
        let site = try Site()
        defer { site.close() }
        let handle = try await site.setup.engine.start(.pullTar(url: site.server.url("stall/good/image.tar.xz"), local: "slow", verify: .no))
        var sawProgress = false
        for await event in handle.events {
            if case .progress(let p) = event, p > 0.05, !sawProgress {
                sawProgress = true
                #expect(try site.setup.poolEntries().contains { $0.hasPrefix(".#slow") })
                handle.cancel()
            }
        }
        #expect(sawProgress)
        #expect(await handle.wait() == .canceled)
        #expect(try site.leftovers() == [])
    }
}
