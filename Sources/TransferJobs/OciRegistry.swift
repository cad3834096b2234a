import CCurl
import Glibc
import Linux
import Transfer

/// A client of one repository of an OCI / Docker registry (the distribution v2 HTTP API),
/// through libcurl in the worker: GET of manifests and blobs, anonymous token auth when the
/// registry answers 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`.
///
/// Transport: HTTPS, trusting the system store, or only `ROOT/etc/berth/certs.d/<registry>/ca.crt`
/// where that file exists (Docker's certs.d layout: one CA per registry, `host:port` named).
/// Plain HTTP only for a registry on loopback, and only when it does not speak TLS at all
/// (the TLS handshake fails outright): a certificate that does not verify never falls back.
/// `@unchecked Sendable`: used by the worker's main thread only.
final class RegistryClient: @unchecked Sendable {
    let reference: OciReference
    private let caFile: String?
    private let curl: CurlHandle
    private(set) var scheme = "https"
    private var token: String?
    private var schemeChosen = false

    /// What a body goes into.
    enum Sink {
        /// Memory, at most `limit` bytes (more fails the request).
        case memory(limit: Int)
        /// A file, hashed on the way, at most `limit` bytes; `progress` gets the bytes so far.
        case file(fd: Int32, hash: SHA256, limit: Int64, progress: (Int64) -> Void)
    }

    struct Response {
        var status: Int
        var body: [UInt8]
        var contentType: String?
    }

    init(reference: OciReference, root: String) throws {
        self.reference = reference
        let ca = joinPath(root, "etc/berth/certs.d", reference.registry, "ca.crt")
        caFile = (try? fileStatus(ca))?.isRegular == true ? ca : nil
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
        curl = try CurlHandle()
    }

    /// `/v2/<repository>/<kind>/<reference>` on the registry.
    func url(_ kind: String, _ ref: String) -> String {
        "\(scheme)://\(reference.registry)/v2/\(reference.repository)/\(kind)/\(ref)"
    }

    /// GET of a manifest (index, image manifest, Docker list or manifest) into memory.
    func manifest(_ ref: String) throws -> Response {
        let accept = [OciMediaType.index, OciMediaType.manifest, OciMediaType.dockerList, OciMediaType.dockerManifest]
        return try get("manifests", ref, accept: accept, sink: .memory(limit: OciLimits.manifestBytes))
    }

    /// GET of a blob into `sink`.
    func blob(_ digest: String, sink: Sink) throws -> Response {
        try get("blobs", digest, accept: [], sink: sink)
    }

    /// One GET with the scheme, token and retries this client has learnt; a 2xx answer or a
    /// thrown error that says what the registry answered.
    private func get(_ kind: String, _ ref: String, accept: [String], sink: Sink) throws -> Response {
        if !schemeChosen { try chooseScheme() }
        var r = try perform(url(kind, ref), accept: accept, sink: sink)
        if r.response.status == 401, token == nil, let challenge = r.challenge, let bearer = BearerChallenge(challenge) {
            token = try fetchToken(bearer)
            if case .file(let fd, _, _, _) = sink { try rewind(fd) }
            r = try perform(url(kind, ref), accept: accept, sink: sink.restarted)
        }
        let status = r.response.status
        guard (200..<300).contains(status) else {
            let what = kind == "manifests" ? "manifest \(reference.repository):\(ref)" : "blob \(ref)"
            let detail = Self.registryMessage(r.response.body)
            if status == 404 { throw TransferError("\(what) not found on \(reference.registry) (HTTP 404\(detail))") }
            if status == 401 || status == 403 {
                throw TransferError("\(reference.registry) refused access to \(what) (HTTP \(status)\(detail))")
            }
            throw TransferError("\(reference.registry) answered HTTP \(status) for \(what)\(detail)")
        }
        return r.response
    }

    /// `GET /v2/` over HTTPS; a loopback registry that does not speak TLS is then used over
    /// plain HTTP.
    private func chooseScheme() throws {
        do {
            _ = try perform("https://\(reference.registry)/v2/", accept: [], sink: .memory(limit: 1 << 16))
        } catch let e as CurlFailure where e.code == CURLE_SSL_CONNECT_ERROR && reference.isLoopback && caFile == nil {
            scheme = "http"
            _ = try perform("http://\(reference.registry)/v2/", accept: [], sink: .memory(limit: 1 << 16))
        }
        schemeChosen = true
    }

    private func rewind(_ fd: Int32) throws {
        _ = try sys("ftruncate") { ftruncate(fd, 0) }
        _ = try sys("lseek") { lseek(fd, 0, SEEK_SET) }
    }

    /// The anonymous token for `challenge` (`GET realm?service=…&scope=…`, JSON `token` or
    /// `access_token`).
    private func fetchToken(_ challenge: BearerChallenge) throws -> String {
        guard challenge.realm.hasPrefix("https://") || challenge.realm.hasPrefix("http://") else {
            throw TransferError("\(reference.registry) asks for a token from an unusable realm \(challenge.realm)")
        }
        var query: [String] = []
        if let service = challenge.service { query.append("service=" + escape(service)) }
        // The scope the challenge names, else pull access to this repository.
        query.append("scope=" + escape(challenge.scope ?? "repository:\(reference.repository):pull"))
        let url = challenge.realm + (challenge.realm.contains("?") ? "&" : "?") + query.joined(separator: "&")
        let r = try perform(url, accept: [], sink: .memory(limit: 1 << 20), authorize: false)
        guard (200..<300).contains(r.response.status) else {
            throw TransferError("the token service \(challenge.realm) answered HTTP \(r.response.status)")
        }
        guard let token = OciJSON.token(r.response.body) else {
            throw TransferError("the token service \(challenge.realm) sent no token")
        }
        return token
    }

    private func escape(_ s: String) -> String {
        guard let e = curl_easy_escape(curl.pointer, s, Int32(s.utf8.count)) else { return s }
        defer { curl_free(e) }
        return String(cString: e)
    }

    /// The registry's error message (`{"errors":[{"message":…}]}`), as ": …", or "".
    private static func registryMessage(_ body: [UInt8]) -> String {
        guard let m = OciJSON.errorMessage(body) else { return "" }
        return ": " + String(m.prefix(200))
    }

    struct CurlFailure: Error, CustomStringConvertible {
        var code: CURLcode
        var description: String
    }

    /// One request on the shared handle (connections are reused across calls).
    private func perform(_ url: String, accept: [String], sink: Sink, authorize: Bool = true)
        throws -> (response: Response, challenge: String?)
    {
        curl_easy_reset(curl.pointer)
        curl.prepareDownload(url, connectSeconds: 30, stallSeconds: 120, maxRedirects: 5)
        curl.set(CURLOPT_BUFFERSIZE, 512 << 10)
        if let caFile { curl.set(CURLOPT_CAINFO, caFile) }
        var headers: UnsafeMutablePointer<curl_slist>?
        if !accept.isEmpty { headers = curl_slist_append(headers, "Accept: " + accept.joined(separator: ", ")) }
        if authorize, let token { headers = curl_slist_append(headers, "Authorization: Bearer " + token) }
        defer { if let headers { curl_slist_free_all(headers) } }
        if let headers { _ = berth_curl_setopt_ptr(curl.pointer, CURLOPT_HTTPHEADER, headers) }

        let context = RequestContext(curl: curl.pointer, sink: sink)
        let unmanaged = Unmanaged.passUnretained(context).toOpaque()
        _ = berth_curl_setopt_ptr(curl.pointer, CURLOPT_WRITEDATA, unmanaged)
        _ = berth_curl_setopt_write(curl.pointer) { data, size, count, user in
            guard let user, let data else { return 0 }
            let c = Unmanaged<RequestContext>.fromOpaque(user).takeUnretainedValue()
            return c.take(UnsafeRawBufferPointer(start: data, count: size * count)) ? size * count : 0
        }
        let code = withExtendedLifetime(context) { curl_easy_perform(curl.pointer) }
        var status = 0
        _ = berth_curl_getinfo_long(curl.pointer, CURLINFO_RESPONSE_CODE, &status)
        if code != CURLE_OK {
            if let failure = context.failure { throw TransferError(failure) }
            let reason = String(cString: curl_easy_strerror(code))
            throw CurlFailure(code: code, description: "cannot reach \(reference.registry) (\(url)): \(reason)")
        }
        var contentType: UnsafeMutablePointer<CChar>?
        _ = berth_curl_getinfo_string(curl.pointer, CURLINFO_CONTENT_TYPE, &contentType)
        var challenge: String?
        if status == 401 {
            var header: UnsafeMutablePointer<curl_header>?
            if curl_easy_header(curl.pointer, "WWW-Authenticate", 0, UInt32(CURLH_HEADER), -1, &header) == CURLHE_OK,
               let value = header?.pointee.value {
                challenge = String(cString: value)
            }
        }
        return (Response(status: status, body: context.memory, contentType: contentType.map { String(cString: $0) }), challenge)
    }
}

extension RegistryClient.Sink {
    /// The same sink for a retry (its file rewound by the caller).
    var restarted: RegistryClient.Sink {
        switch self {
        case .memory: return self
        case .file(let fd, let hash, let limit, let progress):
            hash.reset()
            return .file(fd: fd, hash: hash, limit: limit, progress: progress)
        }
    }
}

/// What the write callback of one request works with. `@unchecked Sendable`: used by the
/// thread in curl_easy_perform only.
private final class RequestContext: @unchecked Sendable {
    let curl: UnsafeMutableRawPointer
    let sink: RegistryClient.Sink
    var memory: [UInt8] = []
    var written: Int64 = 0
    var failure: String?
    /// Error bodies (4xx/5xx) go to memory, never into a blob file.
    private var isError: Bool?

    init(curl: UnsafeMutableRawPointer, sink: RegistryClient.Sink) {
        self.curl = curl
        self.sink = sink
    }

    func take(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if isError == nil {
            var status = 0
            _ = berth_curl_getinfo_long(curl, CURLINFO_RESPONSE_CODE, &status)
            isError = status >= 300
        }
        if isError == true {
            if memory.count < 1 << 16 { memory.append(contentsOf: bytes.prefix((1 << 16) - memory.count)) }
            return true
        }
        switch sink {
        case .memory(let limit):
            guard memory.count + bytes.count <= limit else {
                failure = "the registry's answer is larger than \(limit) bytes"
                return false
            }
            memory.append(contentsOf: bytes)
        case .file(let fd, let hash, let limit, let progress):
            guard written + Int64(bytes.count) <= limit else {
                failure = "the blob is larger than its descriptor says (\(limit) bytes)"
                return false
            }
            hash.update(bytes)
            var done = 0
            while done < bytes.count {
                let n = write(fd, bytes.baseAddress.map { $0 + done }, bytes.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = "cannot write the download: \(Errno(errno))"
                    return false
                }
                done += n
            }
            written += Int64(bytes.count)
            progress(written)
        }
        return true
    }
}

/// `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`.
package struct BearerChallenge: Equatable {
    package var realm: String
    package var service: String?
    package var scope: String?

    package init?(_ header: String) {
        let trimmed = header.drop { $0 == " " }
        guard trimmed.lowercased().hasPrefix("bearer ") else { return nil }
        var parameters: [String: String] = [:]
        var rest = Substring(trimmed.dropFirst(7))
        while !rest.isEmpty {
            rest = rest.drop { $0 == " " || $0 == "," }
            guard let eq = rest.firstIndex(of: "=") else { break }
            let key = rest[..<eq].trimmingWhitespace().lowercased()
            rest = rest[rest.index(after: eq)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                while let c = rest.first, c != "\"" {
                    if c == "\\", rest.count > 1 { rest = rest.dropFirst() }
                    value.append(rest.first ?? c)
                    rest = rest.dropFirst()
                }
                rest = rest.dropFirst()
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                value = String(rest[..<end]).trimmingWhitespace()
                rest = rest[end...]
            }
            parameters[key] = value
        }
        guard let realm = parameters["realm"], !realm.isEmpty else { return nil }
        self.realm = realm
        service = parameters["service"]
        scope = parameters["scope"]
    }
}
