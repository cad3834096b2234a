import CCrypto
import CCurl
import CGpgme
import CLinux
import FileTree
import Glibc
import Linux
import Synchronization
import struct SystemPackage.FilePath
import Transfer

/// SHA-256 through libcrypto's EVP API.
/// `@unchecked Sendable`: the context is used by one thread at a time (the download thread,
/// then the worker's main thread after joining it).
final class SHA256: @unchecked Sendable {
    private let context: OpaquePointer

    init() throws {
        guard let c = EVP_MD_CTX_new() else { throw TransferError("cannot allocate a SHA-256 context") }
        context = c
        guard EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1 else { throw TransferError("cannot start SHA-256") }
    }

    deinit { EVP_MD_CTX_free(context) }

    /// Starts over (a download retried from its first byte).
    func reset() {
        _ = EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }

    func update(_ data: UnsafeRawBufferPointer) {
        _ = EVP_DigestUpdate(context, data.baseAddress, data.count)
    }

    /// The digest as lower-case hex.
    func finalHex() -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        _ = EVP_DigestFinal_ex(context, &digest, &length)
        return digest.prefix(Int(length)).map { String(format2: $0) }.joined()
    }
}

extension String {
    /// Two lower-case hex digits.
    fileprivate init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 0xf)]])
    }
}

/// A libcurl easy handle; `@unchecked Sendable`: used by one thread at a time.
final class CurlHandle: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer

    init() throws {
        guard let h = curl_easy_init() else { throw TransferError("cannot initialise libcurl") }
        pointer = h
    }

    deinit { curl_easy_cleanup(pointer) }

    func set(_ option: CURLoption, _ value: Int) { _ = berth_curl_setopt_long(pointer, option, value) }
    func set(_ option: CURLoption, _ value: String) {
        _ = value.withCString { berth_curl_setopt_ptr(pointer, option, $0) }  // curl copies strings
    }

    /// What every download of a transfer sets: `url`, HTTP(S) only (redirects too, at most
    /// `maxRedirects`), no signals (worker threads), a connect timeout, and a stall limit: a server
    /// that sends nothing for `stallSeconds` without closing must not hold a transfer forever.
    /// `maxRedirects` nil keeps libcurl's own limit.
    func prepareDownload(_ url: String, connectSeconds: Int, stallSeconds: Int, maxRedirects: Int? = nil) {
        set(CURLOPT_URL, url)
        set(CURLOPT_PROTOCOLS_STR, "http,https")
        set(CURLOPT_REDIR_PROTOCOLS_STR, "http,https")
        set(CURLOPT_FOLLOWLOCATION, 1)
        if let maxRedirects { set(CURLOPT_MAXREDIRS, maxRedirects) }
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_CONNECTTIMEOUT, connectSeconds)
        set(CURLOPT_LOW_SPEED_LIMIT, 1)
        set(CURLOPT_LOW_SPEED_TIME, stallSeconds)
        set(CURLOPT_USERAGENT, "berth-import")
    }
}

/// What a download thread hands back.
private final class DownloadContext: @unchecked Sendable {
    // `@unchecked Sendable`: written only by the curl thread until it is joined.
    let output: Int32?
    /// In-process sink for PullTar: blocks for the decompressing thread.
    let pipe: BlockPipe?
    let hash: SHA256?
    let reporter: StatusReporter
    let limit: Int
    /// Request headers (If-None-Match for a kept download).
    var headers: [String] = []
    /// The response's status and ETag, once the request is over.
    var status = 0
    var etag: String?
    var memory: [UInt8] = []
    var writeFailed = false
    var tooLarge = false

    init(output: Int32?, pipe: BlockPipe? = nil, hash: SHA256?, reporter: StatusReporter, limit: Int) {
        self.output = output
        self.pipe = pipe
        self.hash = hash
        self.reporter = reporter
        self.limit = limit
    }
}

/// PullTar/PullRaw's work in the worker: download, verify, import.
extension Pull {

    /// Downloads `url` and imports it (tar into `target` directory, raw into `target` file),
    /// verified as `verify` asks with keyrings under `root`. The checksum file and its
    /// signature are fetched and checked first; the image's hash is compared after the
    /// stream ends, before the worker reports success: nothing is installed unverified.
    ///
    /// With `knownETags` (the ETags of downloads kept before, keep-download) the request is
    /// conditional: a 304 answer is reported as "not modified" and nothing is written to
    /// `target` (berthd then copies the kept image); any answer's ETag is reported so berthd
    /// can keep this download.
    /// `scratch`: RawImport's scratch file (see `RawImport.run`).
    public static func run(url: String, kind: TransferType, verify: VerifyMode, root: String,
                           target: String, knownETags: [String] = [], scratch: FileDescriptor? = nil,
                           reporter: StatusReporter) throws {
        guard isValidURL(url) else { throw TransferError("not an http or https URL: \(url)") }
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
        let (base, file) = split(url)

        var expected: String?
        switch verify {
        case .no:
            break
        case .checksum:
            if let single = try fetch(url + ".sha256", reporter: reporter, optional: true) {
                expected = try parseSingleChecksum(single)
            } else {
                expected = try checksum(for: file, in: try fetchRequired(base + "SHA256SUMS", reporter: reporter))
            }
        case .signature:
            let sums = try fetchRequired(base + "SHA256SUMS", reporter: reporter)
            guard let signature = try fetch(base + "SHA256SUMS.gpg", reporter: reporter, optional: true)
                ?? fetch(base + "SHA256SUMS.asc", reporter: reporter, optional: true) else {
                throw TransferError("no signature (SHA256SUMS.gpg or .asc) beside \(url)")
            }
            try GPGVerification.verify(sums, signature: signature, root: root, reporter: reporter)
            reporter.log(LogPriority.info, "signature of SHA256SUMS verified")
            expected = try checksum(for: file, in: sums)
        }

        let hash = try SHA256()
        let downloadResult: Result<Void, TransferError>
        var importError: (any Error)?
        var stoppedByImport = false
        var downloadContext: DownloadContext?
        if kind == .pullTar {
            // Download (and hash) → decompress → extract, each on a thread of its own, handing
            // big blocks on in-process: three stages on two cores, none waiting on a small
            // pipe buffer.
            let pipe = BlockPipe()
            let context = DownloadContext(output: nil, pipe: pipe, hash: hash, reporter: reporter, limit: .max)
            context.headers = conditionalHeaders(knownETags)
            downloadContext = context
            let download = try WorkerThread { () -> Result<Void, TransferError> in
                let result = Pull.perform(url: url, context: context).mapError { TransferError($0.message) }
                // The end of the stream for the importer: a failed download is a failed read
                // there, never a clean (truncated) end.
                pipe.finish(result.failure)
                return result
            }
            do {
                try TarImport.extract(from: pipe, into: target, reporter: .silent)
                // Whatever trailing bytes the importer did not need still count for the hash
                // (the decompressing thread, its consumer so far, has ended).
                while case .data = pipe.next() {}
            } catch {
                importError = error
            }
            pipe.cancel()  // a download still running stops at its next block
            downloadResult = (try? download.join().get()) ?? .failure(TransferError("download did not finish"))
            stoppedByImport = context.writeFailed
        } else {
            // Download → pipe → RawImport, hashing on the way.
            let (readEnd, writeEnd) = try makePipe()
            let context = DownloadContext(output: writeEnd.rawValue, hash: hash, reporter: reporter, limit: .max)
            context.headers = conditionalHeaders(knownETags)
            downloadContext = context
            let download: WorkerThread<Result<Void, TransferError>>
            do {
                download = try WorkerThread {
                    let result = Pull.perform(url: url, context: context).mapError { TransferError($0.message) }
                    writeEnd.close()  // EOF for the importer: the stream is over (complete or not)
                    return result
                }
            } catch {
                writeEnd.close()
                throw error
            }
            do {
                try RawImport.run(from: readEnd.rawValue, to: target, root: root, scratch: scratch, reporter: .silent)
                // Whatever trailing bytes the importer did not need still count for the hash.
                try drain(readEnd.rawValue)
            } catch {
                importError = error
            }
            readEnd.close()  // a download still running now fails on EPIPE and stops
            downloadResult = (try? download.join().get()) ?? .failure(TransferError("download did not finish"))
            stoppedByImport = context.writeFailed
        }

        // 304 to a conditional request: the kept download is current. The importer saw an empty
        // stream and failed; nothing it wrote counts (berthd discards the target).
        if let context = downloadContext, case .success = downloadResult, context.status == 304 {
            let etag = context.etag ?? (knownETags.count == 1 ? knownETags[0] : "")
            guard knownETags.contains(etag) else { throw TransferError("\(url): 304 Not Modified for no ETag asked about") }
            reporter.log(LogPriority.info, "\(file) not modified (ETag \(etag)): reusing the kept download")
            reporter.download(DownloadNote(etag: etag, notModified: true))
            reporter.progress(1)
            return
        }
        // A download error explains a failed import better than "truncated archive" (unless
        // the download failed only because the import had already given up).
        if let importError, stoppedByImport { throw importError }
        if case .failure(let e) = downloadResult { throw e }
        if let importError { throw importError }
        let actual = hash.finalHex()
        if let expected {
            guard actual == expected else {
                throw TransferError("SHA-256 of \(file) is \(actual), expected \(expected): checksum mismatch")
            }
            reporter.log(LogPriority.info, "SHA-256 checksum of \(file) verified")
        }
        if let etag = downloadContext?.etag { reporter.download(DownloadNote(etag: etag, notModified: false)) }
        reporter.progress(1)
    }

    /// `If-None-Match` naming the kept downloads' ETags (none: an unconditional request).
    /// ETags with a line break or comma-less garbage are the server's; they are sent as kept.
    static func conditionalHeaders(_ etags: [String]) -> [String] {
        let usable = etags.filter { !$0.isEmpty && !$0.contains(where: { $0 == "\r" || $0 == "\n" }) }
        return usable.isEmpty ? [] : ["If-None-Match: " + usable.joined(separator: ", ")]
    }

    private static func drain(_ fd: Int32) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n == 0 { return }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("read", .current)
            }
        }
    }

    /// `https://host/dir/` and `file` of `https://host/dir/file`.
    /// The URL is cut as a path is: its last component is the file; the base is the rest,
    /// kept byte for byte (`//` and the trailing `/` included).
    static func split(_ url: String) -> (String, String) {
        guard url.contains("/") else { return (url, "") }
        let last = url.hasSuffix("/") ? "" : FilePath(url).lastComponent?.string ?? ""
        var file = last
        if let q = file.firstIndex(where: { $0 == "?" || $0 == "#" }) { file = String(file[..<q]) }
        return (String(url.dropLast(last.count)), file)
    }

    /// The hash of `file` in SHA256SUMS lines `<hex> *<name>` or `<hex>  <name>`.
    package static func checksum(for file: String, in sums: [UInt8]) throws -> String {
        // isNewline: "\r\n" is one Character in Swift, so splitting on "\n" would miss it.
        for line in String(decoding: sums, as: UTF8.self).split(whereSeparator: \.isNewline) {
            guard line.count > 66 else { continue }
            let hex = line.prefix(64)
            let rest = line.dropFirst(64)
            let name: Substring
            if rest.hasPrefix(" *") || rest.hasPrefix("  ") { name = rest.dropFirst(2) } else { continue }
            if name == file, isHex(hex) { return hex.lowercased() }
        }
        throw TransferError("no checksum for \(file) in SHA256SUMS")
    }

    /// A `<file>.sha256`: the hex digest, optionally followed by a name.
    package static func parseSingleChecksum(_ data: [UInt8]) throws -> String {
        let text = String(decoding: data, as: UTF8.self)
        let hex = text.prefix(64)
        guard hex.count == 64, isHex(hex) else { throw TransferError("malformed .sha256 file") }
        return hex.lowercased()
    }

    private static func isHex<S: StringProtocol>(_ s: S) -> Bool {
        s.count == 64 && s.allSatisfy { $0.isHexDigit }
    }

    private static func fetchRequired(_ url: String, reporter: StatusReporter) throws -> [UInt8] {
        guard let data = try fetch(url, reporter: reporter, optional: false) else {
            throw TransferError("cannot download \(url)")
        }
        return data
    }

    /// A small file into memory (≤ 1 MiB). With `optional`, an HTTP 404 is nil.
    static func fetch(_ url: String, reporter: StatusReporter, optional: Bool) throws -> [UInt8]? {
        let context = DownloadContext(output: nil, hash: nil, reporter: .silent, limit: 1 << 20)
        let result = perform(url: url, context: context)
        switch result {
        case .success: return context.memory
        case .failure(let e):
            if optional, e.status == 404 || e.status == 403 || e.status == 410 { return nil }
            throw TransferError(e.message)
        }
    }

    struct DownloadFailure: Error {
        var message: String
        var status: Int
    }

    /// One GET with curl: follows redirects, fails on HTTP ≥ 400 and short bodies.
    fileprivate static func perform(url: String, context: DownloadContext) -> Result<Void, DownloadFailure> {
        guard let curl = try? CurlHandle() else { return .failure(DownloadFailure(message: "cannot initialise libcurl", status: 0)) }
        curl.prepareDownload(url, connectSeconds: 60, stallSeconds: 300)
        curl.set(CURLOPT_FAILONERROR, 1)
        curl.set(CURLOPT_NOPROGRESS, 0)
        // Bigger reads: fewer calls into the hash and the pipe (curl caps it at 10 MiB).
        curl.set(CURLOPT_BUFFERSIZE, 512 << 10)
        let unmanaged = Unmanaged.passUnretained(context).toOpaque()
        _ = berth_curl_setopt_ptr(curl.pointer, CURLOPT_WRITEDATA, unmanaged)
        _ = berth_curl_setopt_ptr(curl.pointer, CURLOPT_XFERINFODATA, unmanaged)
        _ = berth_curl_setopt_write(curl.pointer) { data, size, count, user in
            guard let user, let data else { return 0 }
            let c = Unmanaged<DownloadContext>.fromOpaque(user).takeUnretainedValue()
            let bytes = UnsafeRawBufferPointer(start: data, count: size * count)
            c.hash?.update(bytes)
            if let pipe = c.pipe {
                if !pipe.write(bytes) {
                    c.writeFailed = true
                    return 0
                }
            } else if let fd = c.output {
                var done = 0
                while done < bytes.count {
                    let n = write(fd, bytes.baseAddress.map { $0 + done }, bytes.count - done)
                    if n < 0 {
                        if errno == EINTR { continue }
                        c.writeFailed = true
                        return 0
                    }
                    done += n
                }
            } else {
                if c.memory.count + bytes.count > c.limit { c.tooLarge = true; return 0 }
                c.memory.append(contentsOf: bytes)
            }
            return size * count
        }
        _ = berth_curl_setopt_xferinfo(curl.pointer) { user, total, now, _, _ in
            guard let user else { return 0 }
            let c = Unmanaged<DownloadContext>.fromOpaque(user).takeUnretainedValue()
            if total > 0 { c.reporter.progress(Double(now) / Double(total)) }
            return 0
        }
        var list: UnsafeMutablePointer<curl_slist>?
        for header in context.headers { list = curl_slist_append(list, header) }
        defer { curl_slist_free_all(list) }
        if let list { _ = berth_curl_setopt_ptr(curl.pointer, CURLOPT_HTTPHEADER, list) }
        let code = curl_easy_perform(curl.pointer)
        var status = 0
        _ = berth_curl_getinfo_long(curl.pointer, CURLINFO_RESPONSE_CODE, &status)
        context.status = status
        // The last response's ETag (after redirects): what a kept download is named by.
        var header: UnsafeMutablePointer<curl_header>?
        if curl_easy_header(curl.pointer, "ETag", 0, UInt32(CURLH_HEADER), -1, &header) == CURLHE_OK, let value = header?.pointee.value {
            let etag = String(cString: value)
            if !etag.isEmpty, etag.utf8.count <= 512 { context.etag = etag }
        }
        if code == CURLE_OK { return .success(()) }
        if context.writeFailed { return .failure(DownloadFailure(message: "download of \(url) stopped: the import ended early", status: status)) }
        if context.tooLarge { return .failure(DownloadFailure(message: "\(url) is too large", status: status)) }
        let reason = String(cString: curl_easy_strerror(code))
        if code == CURLE_HTTP_RETURNED_ERROR {
            return .failure(DownloadFailure(message: "download of \(url) failed: HTTP \(status)", status: status))
        }
        return .failure(DownloadFailure(message: "download of \(url) failed: \(reason)", status: status))
    }
}

/// Detached OpenPGP signature checks with gpgme, in a private temporary GNUPGHOME holding only
/// the import keyring (never the user's keys).
enum GPGVerification {
    /// The keyring: `ROOT/etc/systemd/import-pubring.gpg`, else `ROOT/usr/lib/systemd/…`.
    static func keyringPath(root: String) -> String? {
        for candidate in ["etc/systemd/import-pubring.gpg", "usr/lib/systemd/import-pubring.gpg"] {
            let path = joinPath(root, candidate)
            if access(path, R_OK) == 0 { return path }
        }
        return nil
    }

    static func verify(_ text: [UInt8], signature: [UInt8], root: String, reporter: StatusReporter) throws {
        guard let keyringPath = keyringPath(root: root) else {
            throw TransferError("no import keyring (\(root)/etc/systemd/import-pubring.gpg or usr/lib/systemd/import-pubring.gpg)")
        }
        let keyFile = try FileDescriptor.open(keyringPath, flags: O_RDONLY)
        let keyring = try keyFile.readToEnd(limit: 16 << 20)
        keyFile.close()

        var template = Array("/tmp/berth-gnupg.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw SystemCallError("mkdtemp", .current) }
        let home = String(cString: made)
        defer { try? TreeRemoval.remove(at: FilePath(home)) }

        _ = berth_gpgme_check_version(nil)
        var ctx: gpgme_ctx_t?
        try check(gpgme_new(&ctx), "gpgme_new")
        guard let ctx else { throw TransferError("gpgme_new gave no context") }
        defer { gpgme_release(ctx) }
        try check(gpgme_ctx_set_engine_info(ctx, GPGME_PROTOCOL_OpenPGP, nil, home), "gpgme engine")

        try withData(keyring) { keys in
            try check(gpgme_op_import(ctx, keys), "cannot import the keyring")
        }
        guard let imported = gpgme_op_import_result(ctx), imported.pointee.imported + imported.pointee.unchanged > 0 else {
            throw TransferError("the import keyring \(keyringPath) holds no keys")
        }
        try withData(signature) { sig in
            try withData(text) { signed in
                try check(gpgme_op_verify(ctx, sig, signed, nil), "cannot verify the signature")
            }
        }
        guard let result = gpgme_op_verify_result(ctx) else { throw TransferError("no signature verification result") }
        var signatureItem = result.pointee.signatures
        var reasons: [String] = []
        while let s = signatureItem {
            let code = gpgme_err_code(s.pointee.status)
            if code == GPG_ERR_NO_ERROR {
                let fpr = s.pointee.fpr.map { String(cString: $0) } ?? "?"
                reporter.log(LogPriority.info, "good signature by key \(fpr)")
                return
            }
            reasons.append(String(cString: gpgme_strerror(s.pointee.status)))
            signatureItem = s.pointee.next
        }
        throw TransferError("signature verification of SHA256SUMS failed: \(reasons.isEmpty ? "no signatures" : reasons.joined(separator: ", "))")
    }

    private static func withData<T>(_ bytes: [UInt8], _ body: (gpgme_data_t) throws -> T) throws -> T {
        var data: gpgme_data_t?
        try bytes.withUnsafeBufferPointer { buffer in
            try check(buffer.withMemoryRebound(to: CChar.self) { gpgme_data_new_from_mem(&data, $0.baseAddress, buffer.count, 1) },
                      "gpgme_data_new_from_mem")
        }
        guard let data else { throw TransferError("gpgme gave no data") }
        defer { gpgme_data_release(data) }
        return try body(data)
    }

    private static func check(_ error: gpgme_error_t, _ what: String) throws {
        if gpgme_err_code(error) != GPG_ERR_NO_ERROR {
            throw TransferError("\(what): \(String(cString: gpgme_strerror(error)))")
        }
    }
}
