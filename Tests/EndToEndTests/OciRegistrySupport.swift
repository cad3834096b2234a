import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport

/// What the OCI pull tests need: Debian's docker-registry, skopeo, openssl, zstd, busybox and
/// systemd-nspawn, as root.
let ociRequirements: [Requirement] = import1Requirements + [
    .commands("docker-registry", "skopeo", "openssl", "zstd", "curl", "systemd-nspawn"), .file("/bin/busybox"),
]

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
func freeLoopbackPort() throws -> Int {
    let out = try run(["/usr/bin/python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"],
                      check: true).stdout
    guard let port = Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw TestSupportError("no free port: \(out)") }
    return port
}

/// Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1 at a free port, its
/// storage in a temp folder; plain HTTP, or TLS with a self-made certificate (`caFile`).
final class OciRegistry: @unchecked Sendable {
    let folder: TemporaryDirectory
    let port: Int
    let tls: Bool
    private let process = Process()

    var storage: String { folder.appending("storage") }
    var address: String { "127.0.0.1:\(port)" }
    /// The certificate the TLS registry serves (self-signed: its own CA).
    var caFile: String { folder.appending("cert.pem") }

    init(tls: Bool = false) throws {
        folder = try TemporaryDirectory(prefix: "berth-oci-registry")
        port = try freeLoopbackPort()
        self.tls = tls
        var config = """
            version: 0.1
            log:
              level: error
            storage:
              filesystem:
                rootdirectory: \(folder.appending("storage"))
            http:
              addr: 127.0.0.1:\(port)

            """
        if tls {
            _ = try run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", folder.appending("key.pem"), "-out", caFile],
                        check: true)
            config += "  tls:\n    certificate: \(caFile)\n    key: \(folder.appending("key.pem"))\n"
        }
        try config.write(toFile: folder.appending("config.yml"), atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/docker-registry")
        process.arguments = ["serve", folder.appending("config.yml")]
        let log = folder.appending("registry.log")
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardError = process.standardOutput
        try process.run()
        let url = (tls ? "https" : "http") + "://\(address)/v2/"
        let ready = eventually(timeout: 30) { (try? run(["curl", "-skf", url]).succeeded) ?? false }
        if !ready {
            stop()
            throw TestSupportError("docker-registry did not answer on \(address)")
        }
    }

    /// `skopeo copy --all oci:LAYOUT:TAG docker://ADDRESS/NAME:TAG`.
    func push(layout: String, tag: String, as name: String) throws {
        _ = try run(["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false", "oci:\(layout):\(tag)",
                     "docker://\(address)/\(name):\(tag)"], check: true)
    }

    /// The digest of `name:tag`'s manifest as the registry serves it.
    func manifestDigest(_ name: String, _ tag: String) throws -> String {
        let out = try run(["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://\(address)/\(name):\(tag)"], check: true).stdout
        let file = folder.appending("manifest-\(name.replacingOccurrences(of: "/", with: "_"))")
        try out.write(toFile: file, atomically: true, encoding: .utf8)
        let sum = try run(["sha256sum", file], check: true).stdout
        return "sha256:" + String(sum.prefix(64))
    }

    /// The file holding blob `digest` in the registry's storage.
    func blobFile(_ digest: String) -> String {
        let hex = String(digest.dropFirst(7))
        return "\(storage)/docker/registry/v2/blobs/sha256/\(hex.prefix(2))/\(hex)/data"
    }

    func stop() {
        stopProcess(process)
        folder.remove()
    }
}

/// OCI layouts made once per test run with Python's tarfile (whiteout entries written exactly):
/// - `base:v1`: three layers (gzip, zstd, plain tar): busybox and a tree; then `.wh.gone` and
///   an opaque `opt/dir`; then `etc/motd`; its config runs `env; pwd` in /work;
/// - `base2:v1`: base's first two layers and another third;
/// - `multi:v1`: an index of a linux/amd64 and a linux/arm64 image (file `/arch` says which);
/// - `lonely:v1`: one layer of random bytes no other image shares (the one tampered with).
struct OciFixtures: Sendable {
    let dir: String
    func layout(_ name: String) -> String { dir + "/" + name }

    static let shared: Result<OciFixtures, TestSupportError> = {
        do {
            let tmp = try TemporaryDirectory(prefix: "berth-oci-fixtures")
            _ = try run(["/usr/bin/python3", "-c", script, tmp.path], check: true)
            return .success(OciFixtures(dir: tmp.path))
        } catch {
            return .failure(TestSupportError("cannot make the OCI fixtures: \(error)"))
        }
    }()

    static let script = #"""
        import hashlib, io, json, os, subprocess, sys, tarfile
        out = sys.argv[1]

        def layer(entries, compression):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as t:
                for e in entries:
                    name, kind = e[0], e[1]
                    i = tarfile.TarInfo(name); i.mtime = 1700000000; i.uid = 0; i.gid = 0
                    data = None
                    if kind == 'dir':
                        i.type = tarfile.DIRTYPE; i.mode = 0o755
                    elif kind == 'link':
                        i.type = tarfile.SYMTYPE; i.linkname = e[2]
                    else:
                        data = e[2]; i.size = len(data); i.mode = e[3] if len(e) > 3 else 0o644
                    t.addfile(i, io.BytesIO(data) if data is not None else None)
            raw = buf.getvalue()
            if compression == 'gzip':
                blob = subprocess.run(['gzip', '-nc'], input=raw, capture_output=True, check=True).stdout
                media = 'application/vnd.oci.image.layer.v1.tar+gzip'
            elif compression == 'zstd':
                blob = subprocess.run(['zstd', '-qc'], input=raw, capture_output=True, check=True).stdout
                media = 'application/vnd.oci.image.layer.v1.tar+zstd'
            else:
                blob, media = raw, 'application/vnd.oci.image.layer.v1.tar'
            return blob, media, 'sha256:' + hashlib.sha256(raw).hexdigest()

        class Layout:
            def __init__(self, name):
                self.root = os.path.join(out, name)
                os.makedirs(self.root + '/blobs/sha256', exist_ok=True)
                open(self.root + '/oci-layout', 'w').write('{"imageLayoutVersion":"1.0.0"}')
                self.index = []
            def blob(self, data, media):
                d = hashlib.sha256(data).hexdigest()
                open(self.root + '/blobs/sha256/' + d, 'wb').write(data)
                return {'mediaType': media, 'digest': 'sha256:' + d, 'size': len(data)}
            def image(self, layers, config, arch='amd64'):
                descs, diffs = [], []
                for blob, media, diff in layers:
                    descs.append(self.blob(blob, media)); diffs.append(diff)
                cfg = {'architecture': arch, 'os': 'linux', 'config': config,
                       'rootfs': {'type': 'layers', 'diff_ids': diffs}}
                c = self.blob(json.dumps(cfg).encode(), 'application/vnd.oci.image.config.v1+json')
                m = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'config': c, 'layers': descs}
                return self.blob(json.dumps(m).encode(), 'application/vnd.oci.image.manifest.v1+json')
            def tag(self, desc, tag):
                d = dict(desc); d['annotations'] = {'org.opencontainers.image.ref.name': tag}
                self.index.append(d)
                json.dump({'schemaVersion': 2, 'manifests': self.index}, open(self.root + '/index.json', 'w'))

        busybox = open('/bin/busybox', 'rb').read()
        l1 = layer([('bin', 'dir'), ('bin/busybox', 'file', busybox, 0o755), ('bin/sh', 'link', 'busybox'),
                    ('usr', 'dir'), ('work', 'dir'), ('etc', 'dir'), ('etc/os-release', 'file', b'ID=ocitest\n'),
                    ('etc/gone', 'file', b'deleted later\n'), ('opt', 'dir'), ('opt/dir', 'dir'),
                    ('opt/dir/old1', 'file', b'old\n'), ('opt/dir/sub', 'dir'), ('opt/dir/sub/old2', 'file', b'old\n')], 'gzip')
        l2 = layer([('etc', 'dir'), ('etc/.wh.gone', 'file', b''), ('etc/added', 'file', b'added\n'),
                    ('opt/dir', 'dir'), ('opt/dir/.wh..wh..opq', 'file', b''), ('opt/dir/new', 'file', b'new\n')], 'zstd')
        l3 = layer([('etc', 'dir'), ('etc/motd', 'file', b'layer three\n')], 'none')
        l3b = layer([('etc', 'dir'), ('etc/motd', 'file', b'another layer three\n')], 'none')
        config = {'Env': ['PATH=/bin', 'GREETING=hello from oci'], 'Entrypoint': ['/bin/sh', '-c'],
                  'Cmd': ['env; pwd'], 'WorkingDir': '/work'}

        b = Layout('base'); b.tag(b.image([l1, l2, l3], config), 'v1')
        b2 = Layout('base2'); b2.tag(b2.image([l1, l2, l3b], config), 'v1')

        m = Layout('multi')
        amd = m.image([layer([('arch', 'file', b'amd64\n')], 'gzip')], {}, 'amd64')
        arm = m.image([layer([('arch', 'file', b'arm64\n')], 'gzip')], {}, 'arm64')
        amd['platform'] = {'architecture': 'amd64', 'os': 'linux'}
        arm['platform'] = {'architecture': 'arm64', 'os': 'linux'}
        idx = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json', 'manifests': [arm, amd]}
        m.tag(m.blob(json.dumps(idx).encode(), 'application/vnd.oci.image.index.v1+json'), 'v1')

        lonely = Layout('lonely')
        lonely.tag(lonely.image([layer([('data', 'file', os.urandom(300000))], 'gzip')], {}), 'v1')
        """#
}

/// The blobs in the pool's layer cache whose content does not hash to their name (must be none).
func corruptCacheEntries(pool: String) throws -> [String] {
    let blobs = pool + "/.#berth-oci-cache/blobs"
    guard FileManager.default.fileExists(atPath: blobs) else { return [] }
    var bad: [String] = []
    for name in try FileManager.default.contentsOfDirectory(atPath: blobs) {
        let sum = try run(["sha256sum", blobs + "/" + name], check: true).stdout
        if "sha256-" + sum.prefix(64) != name { bad.append(name) }
    }
    return bad
}

/// A small registry (python3) serving one OCI layout as `berth/<name>` that demands a bearer
/// token as Docker Hub does: 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`
/// until the client fetched a token from `/token` for that scope; blobs are answered with a
/// redirect to an unauthenticated `/direct/…` (as registries send blobs to a CDN). Every
/// request is logged to `log` as `METHOD PATH AUTHORIZATION`.
final class TokenRegistry: @unchecked Sendable {
    let folder: TemporaryDirectory
    let port: Int
    private let process = Process()
    var address: String { "127.0.0.1:\(port)" }
    var log: String { (try? String(contentsOfFile: folder.appending("requests.log"), encoding: .utf8)) ?? "" }

    static let script = #"""
        import http.server, json, os, sys, urllib.parse
        layout, name, port, logpath = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        TOKEN = 'berth-test-token'
        SCOPE = 'repository:berth/%s:pull' % name
        def blob(d): return os.path.join(layout, 'blobs', 'sha256', d.split(':', 1)[1])
        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def answer(self, code, body=b'', ctype='application/json', extra={}):
                self.send_response(code)
                self.send_header('Content-Type', ctype)
                self.send_header('Content-Length', str(len(body)))
                for k, v in extra.items(): self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            def do_GET(self):
                auth = self.headers.get('Authorization', '-')
                open(logpath, 'a').write('GET %s %s\n' % (self.path, auth))
                u = urllib.parse.urlparse(self.path)
                realm = 'http://127.0.0.1:%d/token' % port
                if u.path == '/token':
                    q = urllib.parse.parse_qs(u.query)
                    if q.get('service') == ['berth-test'] and q.get('scope') == [SCOPE]:
                        return self.answer(200, json.dumps({'token': TOKEN}).encode())
                    return self.answer(400, b'{"errors":[{"code":"DENIED","message":"bad scope"}]}')
                if u.path.startswith('/direct/'):
                    return self.answer(200, open(blob(u.path[8:]), 'rb').read(), 'application/octet-stream')
                if auth != 'Bearer ' + TOKEN:
                    challenge = 'Bearer realm="%s",service="berth-test"' % realm
                    if u.path != '/v2/': challenge += ',scope="%s"' % SCOPE
                    return self.answer(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}', extra={'WWW-Authenticate': challenge})
                prefix = '/v2/berth/%s/' % name
                if u.path == '/v2/': return self.answer(200, b'{}')
                if u.path.startswith(prefix + 'manifests/'):
                    ref = u.path[len(prefix + 'manifests/'):]
                    for m in json.load(open(os.path.join(layout, 'index.json')))['manifests']:
                        if ref in (m['digest'], m.get('annotations', {}).get('org.opencontainers.image.ref.name')):
                            return self.answer(200, open(blob(m['digest']), 'rb').read(), m['mediaType'], {'Docker-Content-Digest': m['digest']})
                    try:
                        data = open(blob(ref), 'rb').read()
                        return self.answer(200, data, json.loads(data).get('mediaType', 'application/vnd.oci.image.manifest.v1+json'))
                    except Exception:
                        return self.answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
                if u.path.startswith(prefix + 'blobs/'):
                    return self.answer(307, extra={'Location': '/direct/' + u.path[len(prefix + 'blobs/'):]})
                return self.answer(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository unknown"}]}')
        http.server.ThreadingHTTPServer(('127.0.0.1', port), H).serve_forever()
        """#

    /// Serves `layout` as `berth/<name>`.
    init(layout: String, name: String) throws {
        folder = try TemporaryDirectory(prefix: "berth-oci-token-registry")
        port = try freeLoopbackPort()
        try Self.script.write(toFile: folder.appending("registry.py"), atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [folder.appending("registry.py"), layout, name, String(port), folder.appending("requests.log")]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let address = self.address
        guard eventually(timeout: 30, { (try? run(["curl", "-s", "-o", "/dev/null", "http://\(address)/v2/"]).succeeded) ?? false }) else {
            stop()
            throw TestSupportError("the token registry did not start")
        }
    }

    func stop() {
        stopProcess(process)
        folder.remove()
    }
}

/// SIGKILL and a bounded wait: the servers' children were seen to survive SIGTERM under the
/// test runner, and waitUntilExit to hang on a killed child.
func stopProcess(_ process: Process) {
    guard process.isRunning else { return }
    kill(process.processIdentifier, SIGKILL)
    _ = eventually(timeout: 10) { !process.isRunning }
}
