import CLinux
import Foundation
import Glibc

/// A private `dbus-daemon` of the system type for one test suite: unix socket in a temp folder,
/// allow-all policy (so a client running as `nobody` may connect and call), killed by `stop()`.
public final class PrivateDBusDaemon: @unchecked Sendable {
    /// The bus address, `unix:path=/tmp/…/bus.sock`, for DBUS_SYSTEM_BUS_ADDRESS or `--bus-address`.
    public let address: String
    /// The daemon's pid.
    public let pid: pid_t
    private let folder: TemporaryDirectory
    private var stopped = false

    /// Whether dbus-daemon is installed (apt-get install dbus).
    public static var isAvailable: Bool { commandExists("dbus-daemon") }

    /// - Parameters:
    ///   - includes: bus configuration files to include (e.g. dist/dbus-1/system.d/*.conf).
    ///   - allowOwningAnyName: when false, only what `includes` allow may own names, as on a real system bus.
    public init(includes: [String] = [], allowOwningAnyName: Bool = true) throws {
        folder = try TemporaryDirectory(prefix: "berth-bus")
        // Clients running as nobody must reach the socket.
        chmod(folder.path, 0o755)
        let socket = folder.appending("bus.sock")
        let config = folder.appending("bus.conf")
        let xml = """
            <!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
             "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
            <busconfig>
              <type>system</type>
              <listen>unix:path=\(socket)</listen>
              <auth>EXTERNAL</auth>
              <policy context="default">
                <allow user="*"/>
                \(allowOwningAnyName ? "<allow own=\"*\"/>" : "<deny own=\"*\"/>")
                <allow send_destination="*"/>
                <allow send_type="method_call"/>
                <allow send_type="signal"/>
                <allow send_type="method_return"/>
                <allow send_type="error"/>
                <allow receive_type="method_call"/>
                <allow receive_type="signal"/>
                <allow receive_type="method_return"/>
                <allow receive_type="error"/>
              </policy>
              \(includes.map { "<include>\($0)</include>" }.joined(separator: "\n"))
            </busconfig>
            """
        try xml.write(toFile: config, atomically: true, encoding: .utf8)
        // --fork leaves the daemon holding every fd it inherited; Foundation's Process waits for
        // such an fd to close, so spawn it directly with stdout on a file and reap the parent.
        let printed = folder.appending("address")
        try spawnAndWait(["/usr/bin/dbus-daemon", "--config-file=\(config)", "--fork", "--print-address=1", "--print-pid=1"],
                         stdout: printed)
        let text = try String(contentsOfFile: printed, encoding: .utf8)
        let lines = text.split(separator: "\n").map(String.init)
        guard lines.count >= 2, let pid = pid_t(lines[1].trimmingCharacters(in: .whitespaces)) else {
            throw TestSupportError("dbus-daemon printed no address and pid: \(text)")
        }
        address = lines[0].trimmingCharacters(in: .whitespaces)
        self.pid = pid
    }

    /// The environment pointing system-bus clients (busctl, gdbus, python3-dbus) at this bus.
    public var environment: [String: String] { ["DBUS_SYSTEM_BUS_ADDRESS": address] }

    /// Kills the daemon and removes its folder.
    public func stop() {
        guard !stopped else { return }
        stopped = true
        kill(pid, SIGTERM)
        folder.remove()
    }

    deinit { stop() }
}

/// posix_spawn(3)s `argv` with stdout written to `stdout` and stdin from /dev/null, and waits
/// for it: for commands that leave daemons behind.
public func spawnAndWait(_ argv: [String], stdout: String) throws {
    let pid = try spawn(argv, stdout: stdout, stderr: nil)
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    guard status == 0 else { throw TestSupportError("\(argv.joined(separator: " ")) exited with status \(status)") }
}

/// posix_spawn(3)s `argv` (a path, not looked up) with stdin from /dev/null, stdout and stderr to
/// the files given (stderr inherited when nil) and no blocked signals; returns its pid.
public func spawn(_ argv: [String], stdout: String, stderr: String?, environment: [String: String] = [:]) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    if let stderr { posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644) }
    // Nothing else of the test process may leak into a long-lived child: a pipe end inherited by
    // a forked dbus-daemon keeps another test's child from ever seeing EOF (a full-suite hang).
    posix_spawn_file_actions_addclosefrom_np(&actions, 3)
    // Test threads block most signals; the child must not inherit that, or SIGTERM never reaches it.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attributes, &empty)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
    var cargs = argv.map { strdup($0) } + [nil]
    defer { for a in cargs { free(a) } }
    var pid: pid_t = 0
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    var cenv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for e in cenv { free(e) } }
    let r = posix_spawn(&pid, argv[0], &actions, &attributes, &cargs, &cenv)
    guard r == 0 else { throw TestSupportError("posix_spawn \(argv[0]): \(String(cString: strerror(r)))") }
    return pid
}
