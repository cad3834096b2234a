import Foundation
import Glibc

/// A real HTTP server (python3's http.server) on 127.0.0.1 at a free port, serving `directory`,
/// for pull tests. Besides plain files it serves misbehaving downloads:
/// - `/slow/X`: X with its Content-Length, in 4 KiB pieces 50 ms apart;
/// - `/truncated/X`: announces X's full length and sends half;
/// - `/stall/X`: announces X's length, sends a third, then nothing for 60 s (for cancels that
///   must not race the download's end).
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
                return super().do_GET()
        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
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
        process.arguments = [scriptPath, directory]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let line = readLine(from: out.fileHandleForReading)
        guard let p = Int(line.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw TestSupportError("the HTTP server did not start")
        }
        port = p
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
