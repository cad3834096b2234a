import Foundation
import Glibc

/// A real HTTP server (python3's http.server) on 127.0.0.1 at a free port, serving `directory`,
/// for pull tests. Besides plain files it serves misbehaving downloads:
/// - `/slow/X`: X with its Content-Length, in 4 KiB pieces 50 ms apart;
/// - `/truncated/X`: announces X's full length and sends half;
/// - `/stall/X`: announces X's length, sends a third, then nothing for 60 s (for cancels that
///   must not race the download's end);
/// - a file X with a sidecar `X.etag`: served with that ETag, and answered 304 Not Modified
///   (no body) when the request's If-None-Match names it (keep-download tests). Each 200 and
///   304 of such a file is appended to `requests.log` beside the script ("200 /X", "304 /X").
public final class LoopbackHTTPServer: @unchecked Sendable {
    private let process = Process()
    /// The port it listens on.
    public let port: Int
    private let scriptDirectory: TemporaryDirectory

    private static let script = """
        import http.server, os, sys, time, socketserver
        class H(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self):
                for prefix in ('/slow/', '/truncated/', '/stall/'):
                    if self.path.startswith(prefix):
                        path = os.path.join(os.getcwd(), self.path[len(prefix):])
                        if not os.path.exists(path): return self.send_error(404)
                        data = open(path, 'rb').read()
                        self.send_response(200)
                        self.send_header('Content-Length', str(len(data)))
                        self.end_headers()
                        try:
                            if prefix == '/slow/':
                                for i in range(0, len(data), 4096):
                                    self.wfile.write(data[i:i+4096]); self.wfile.flush(); time.sleep(0.05)
                            elif prefix == '/stall/':
                                self.wfile.write(data[:len(data)//3]); self.wfile.flush()
                                time.sleep(60)
                            else:
                                self.wfile.write(data[:len(data)//2]); self.wfile.flush()
                        except Exception: pass
                        self.close_connection = True
                        return
                path = self.translate_path(self.path)
                if os.path.isfile(path) and os.path.isfile(path + '.etag'):
                    etag = open(path + '.etag').read().strip()
                    asked = [t.strip() for t in self.headers.get('If-None-Match', '').split(',')]
                    status = 304 if etag in asked else 200
                    with open(LOG, 'a') as log: log.write('%d %s\\n' % (status, self.path))
                    self.send_response(status)
                    self.send_header('ETag', etag)
                    if status == 304:
                        self.end_headers()
                        return
                    data = open(path, 'rb').read()
                    self.send_header('Content-Length', str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                return super().do_GET()
        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
        LOG = sys.argv[2]
        os.chdir(sys.argv[1])
        s = S(('127.0.0.1', 0), H)
        print(s.server_address[1], flush=True)
        s.serve_forever()
        """

    /// Starts serving `directory` and waits until the server reports its port.
    public init(directory: String) throws {
        scriptDirectory = try TemporaryDirectory(prefix: "berth-http")
        let scriptPath = scriptDirectory.appending("server.py")
        try Self.script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [scriptPath, directory, scriptDirectory.appending("requests.log")]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let line = readLine(from: out.fileHandleForReading)
        guard let p = Int(line.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw TestSupportError("the HTTP server did not start")
        }
        port = p
    }

    /// The 200 and 304 answers to files with an ETag so far, one `STATUS /path` per line.
    public var etagRequests: [String] {
        let text = (try? String(contentsOfFile: scriptDirectory.appending("requests.log"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map(String.init)
    }

    /// `http://127.0.0.1:PORT/path`.
    public func url(_ path: String) -> String { "http://127.0.0.1:\(port)/\(path)" }

    /// SIGKILL: children of Foundation's Process inherit the test runner's blocked SIGTERM.
    public func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        scriptDirectory.remove()
    }
}
