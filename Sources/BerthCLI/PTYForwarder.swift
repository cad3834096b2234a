import CLinux
import Foundation
import Glibc

/// Forwards between berthctl's own terminal (stdin, stdout) and the master side of a pty that
/// berthd opened in a machine (OpenMachineShell, OpenMachineLogin), as machinectl's pty
/// forwarder does.
///
/// - A tty on stdin is put in raw mode (and a tty on stdout in raw output mode) for the session and
///   restored on every way out of `run`, signals included: SIGINT, SIGTERM and SIGHUP end the
///   session through the loop rather than killing berthctl with its terminal still raw.
/// - SIGWINCH copies the terminal's size to the pty (TIOCSWINSZ on the master), and once at the start.
/// - ^] three times within a second ends the session.
/// - When stdin is not a tty (a pipe, a file), what it carries is forwarded, and at its end the
///   pty's end-of-file character (VEOF, ^D) is sent, so a shell reading commands from it ends
///   instead of waiting forever (machinectl sends nothing and hangs there).
/// - It ends when the pty hangs up (read gives EIO: everything on the machine's side closed it),
///   after writing out what was still buffered. With `ignoreVHangup` (login: the getty hangs the
///   line up between sessions and the machine's systemd starts another) a hangup is waited out
///   until `machineRemoved()` is called (the machine went away).
///
/// It calls read, write, epoll and termios directly (Glibc, and CLinux's fixed-arity ioctl):
/// this is berthctl's own terminal, not berthd's layers, whose syscalls go through Linux's
/// typed wrappers, and a forwarder needs each errno as it comes (EAGAIN, EIO, EINTR) anyway.
///
/// One epoll set, no busy loop: the master is edge-triggered (as systemd's forwarder, so a line
/// hung up and waited out is not reported again and again), stdin and the signal pipe
/// level-triggered; an extra descriptor (the bus, for MachineRemoved) can be watched beside them.
public final class PTYForwarder {
    /// How a session ended.
    public enum Outcome: Equatable, Sendable {
        /// The pty hung up (the shell or the getty exited).
        case hangup
        /// A login whose machine went away (MachineRemoved, then the hangup).
        case machineGone
        /// ^] three times within a second.
        case escaped
        /// SIGINT, SIGTERM or SIGHUP reached berthctl.
        case signal(Int32)
        /// stdout went away (EPIPE).
        case outputClosed
    }

    /// The descriptors: the pty master (owned by the caller, made non-blocking here), and the
    /// two ends of the user's side.
    private let master: Int32
    private let input: Int32
    private let output: Int32
    private var ignoreVHangup: Bool

    private var inBuffer: [UInt8] = []
    private var outBuffer: [UInt8] = []
    private static let bufferLimit = 64 * 1024

    private var masterReadable = true
    private var masterWritable = true
    private var masterHungUp = false
    private var inputReadable = false
    private var inputEOF = false
    private var inputPollable = true
    /// The machine side's line mode (ICANON) when the last end-of-file went, nil before the first.
    private var eofSentInCanonicalMode: Bool?
    /// Whether the machine wrote anything since the last end-of-file went.
    private var outputSinceEOF = false
    private var eofsSent = 0
    private var inputIsTTY = false
    private var outputIsTTY = false
    private var lastOutputByte: UInt8?
    private var escapeTimes: [Double] = []
    private var outcome: Outcome?
    private var machineGone = false

    /// `master`: the pty master; `input`/`output`: the user's side (stdin and stdout by default).
    public init(master: Int32, input: Int32 = STDIN_FILENO, output: Int32 = STDOUT_FILENO, ignoreVHangup: Bool = false) {
        self.master = master
        self.input = input
        self.output = output
        self.ignoreVHangup = ignoreVHangup
    }

    /// The last byte written to the output (machinectl adds a newline at the end if it was not one).
    public var lastByte: UInt8? { lastOutputByte }

    /// The machine went away (MachineRemoved): from now on a hangup of the pty ends a login
    /// session, as "machine gone". Called from `extra`'s handler inside `run`.
    public func machineRemoved() {
        guard ignoreVHangup else { return }
        ignoreVHangup = false
        machineGone = true
        // The line may already be hung up, which the edge-triggered master will not report again.
        masterReadable = true
    }

    /// How many times the loop woke up (epoll_wait returned): what the tests check to know that
    /// a stalled side makes it wait, not spin.
    private(set) var wakeups = 0

    /// Runs the session until it ends. `extra`: a descriptor to watch beside the terminal and
    /// what to do when it is readable (berthctl's bus connection, to hear of MachineRemoved);
    /// the handler returns false when the descriptor is done with (the bus went away), which
    /// then stops being watched.
    public func run(extra: (fd: Int32, onReadable: () -> Bool)? = nil) throws -> Outcome {
        let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw CLIError("epoll_create1: \(String(cString: strerror(errno)))") }
        defer { close(epoll) }

        let signals = try SignalPipe([SIGWINCH, SIGINT, SIGTERM, SIGHUP])
        defer { signals.restore() }

        let masterFlags = fcntl(master, F_GETFL)
        _ = berth_fcntl_int(master, F_SETFL, masterFlags | O_NONBLOCK)
        defer { _ = berth_fcntl_int(master, F_SETFL, masterFlags) }

        let terminal = TerminalModes(input: input, output: output)
        inputIsTTY = terminal.inputIsTTY
        outputIsTTY = terminal.outputIsTTY
        defer { terminal.restore() }
        copyWindowSize()

        try add(epoll, master, UInt32(EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLET.rawValue), tag: 0)
        do {
            try add(epoll, input, UInt32(EPOLLIN.rawValue), tag: 1)
        } catch {
            // A regular file or /dev/null cannot be polled (EPERM): it is always readable.
            inputPollable = false
            inputReadable = true
        }
        try add(epoll, signals.readEnd, UInt32(EPOLLIN.rawValue), tag: 2)
        if let extra { try add(epoll, extra.fd, UInt32(EPOLLIN.rawValue), tag: 3) }

        var events = [epoll_event](repeating: epoll_event(), count: 8)
        // Whether stdin is in the epoll set for reading: not while its bytes cannot go anywhere
        // (the buffer is full because the machine does not read) nor after its end, else a
        // level-triggered readable stdin would wake the loop for nothing, again and again.
        var inputWatched = inputPollable
        while true {
            shovel()
            if let outcome { return outcome }
            let wantInput = inputPollable && !inputEOF && inBuffer.count < Self.bufferLimit
            if wantInput != inputWatched {
                var e = epoll_event()
                e.events = wantInput ? UInt32(EPOLLIN.rawValue) : 0
                e.data.u64 = 1
                _ = epoll_ctl(epoll, EPOLL_CTL_MOD, input, &e)
                inputWatched = wantInput
            }
            let n = epoll_wait(epoll, &events, Int32(events.count), -1)
            wakeups += 1
            if n < 0 {
                if errno == EINTR { continue }
                throw CLIError("epoll_wait: \(String(cString: strerror(errno)))")
            }
            for i in 0..<Int(n) {
                let e = events[i]
                switch e.data.u64 {
                case 0:
                    if e.events & UInt32(EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { masterReadable = true }
                    if e.events & UInt32(EPOLLOUT.rawValue) != 0 { masterWritable = true }
                case 1: inputReadable = true
                case 2:
                    for signal in signals.drain() {
                        if signal == SIGWINCH { copyWindowSize() } else { outcome = .signal(signal) }
                    }
                case 3:
                    if let extra, !extra.onReadable() { _ = epoll_ctl(epoll, EPOLL_CTL_DEL, extra.fd, nil) }
                default: break
                }
            }
            if let outcome, case .signal = outcome {
                flushOutput()
                return outcome
            }
        }
    }

    /// Moves bytes until nothing more can move without waiting.
    private func shovel() {
        var progress = true
        while progress && outcome == nil {
            progress = false

            if inputReadable && !inputEOF && inBuffer.count < Self.bufferLimit {
                var chunk = [UInt8](repeating: 0, count: 4096)
                let n = read(input, &chunk, chunk.count)
                if n > 0 {
                    let bytes = chunk[0..<n]
                    if sawEscape(bytes) {
                        outcome = .escaped
                        return
                    }
                    inBuffer.append(contentsOf: bytes)
                    progress = true
                } else if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
                    inputEOF = true
                    progress = true
                }
                // Level-triggered (or a file): read once per wake-up, so a read never blocks.
                if inputPollable { inputReadable = false }
            }

            if masterWritable && !inBuffer.isEmpty {
                let n = inBuffer.withUnsafeBytes { write(master, $0.baseAddress, $0.count) }
                if n > 0 {
                    inBuffer.removeFirst(n)
                    progress = true
                } else if n < 0 && errno != EINTR {
                    // EAGAIN: wait for the next edge; EIO: nobody reads the line (yet), keep the bytes.
                    masterWritable = false
                }
            }

            if inputEOF && !inputIsTTY && inBuffer.isEmpty && masterWritable && eofDue() {
                var eof = Self.endOfFileCharacter(master)
                let canonical = Self.isCanonical(master)
                let n = write(master, &eof, 1)
                if n == 1 {
                    eofSentInCanonicalMode = canonical
                    outputSinceEOF = false
                    eofsSent += 1
                    progress = true
                } else if n < 0 && errno != EINTR {
                    masterWritable = false
                }
            }

            if masterReadable && outBuffer.count < Self.bufferLimit {
                var chunk = [UInt8](repeating: 0, count: 4096)
                let n = read(master, &chunk, chunk.count)
                if n > 0 {
                    outBuffer.append(contentsOf: chunk[0..<n])
                    outputSinceEOF = true
                    progress = true
                } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                    if errno == EAGAIN { masterReadable = false }
                } else {
                    // EIO (or 0): the other side hung up. Waited out for login until the machine goes.
                    masterReadable = false
                    if ignoreVHangup {
                        masterWritable = false
                    } else {
                        masterHungUp = true
                    }
                }
            }

            if !outBuffer.isEmpty {
                if !flushOutput() {
                    outcome = .outputClosed
                    return
                }
                progress = true
            }
        }
        if masterHungUp && outBuffer.isEmpty && outcome == nil {
            outcome = machineGone ? .machineGone : .hangup
        }
    }

    /// Whether an end-of-file should go to the machine now that stdin (not a tty) has ended: once
    /// at first, and again when the machine's side switched between line mode and raw mode since
    /// the last one and wrote something since. A ^D written in line mode is an end-of-file mark
    /// in the pty's line buffer, but a program that switches to raw mode before reading it (a
    /// shell starting its line editor after the input arrived) reads a NUL there instead; the ^D
    /// sent again in raw mode is what a line editor takes as the end. Every ^D comes after all
    /// of stdin, so none can cut into its data; a few at most (a program toggling modes forever
    /// does not get an endless stream).
    private func eofDue() -> Bool {
        guard let lastMode = eofSentInCanonicalMode else { return true }
        guard outputSinceEOF, eofsSent < 8 else { return false }
        return Self.isCanonical(master) != lastMode
    }

    /// Whether the pty is in line mode (ICANON) for its reader on the machine's side.
    static func isCanonical(_ master: Int32) -> Bool {
        var t = termios()
        guard tcgetattr(master, &t) == 0 else { return true }
        return t.c_lflag & tcflag_t(ICANON) != 0
    }

    /// Writes all of `outBuffer` to the output (blocking, retrying EINTR and waiting out EAGAIN);
    /// false when the output is gone.
    @discardableResult
    private func flushOutput() -> Bool {
        while !outBuffer.isEmpty {
            let n = outBuffer.withUnsafeBytes { write(output, $0.baseAddress, $0.count) }
            if n > 0 {
                lastOutputByte = outBuffer[n - 1]
                outBuffer.removeFirst(n)
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && errno == EAGAIN {
                var p = pollfd(fd: output, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, -1)
            } else {
                outBuffer.removeAll()
                return false
            }
        }
        return true
    }

    /// Whether ^] came three times within one second (counting across reads, as machinectl).
    private func sawEscape(_ bytes: ArraySlice<UInt8>) -> Bool {
        for b in bytes where b == 0x1D {
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let t = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
            escapeTimes = escapeTimes.filter { t - $0 < 1.0 } + [t]
            if escapeTimes.count >= 3 { return true }
        }
        return false
    }

    /// The terminal's size (stdout's, else stdin's) onto the pty, where there is one.
    private func copyWindowSize() {
        var size = winsize()
        for fd in [output, input] where berth_ioctl_ptr(fd, UInt(TIOCGWINSZ), &size) == 0 {
            _ = berth_ioctl_ptr(master, UInt(TIOCSWINSZ), &size)
            return
        }
    }

    /// The pty's VEOF character (^D unless the machine's side changed it).
    static func endOfFileCharacter(_ master: Int32) -> UInt8 {
        var t = termios()
        guard tcgetattr(master, &t) == 0 else { return 4 }
        let veof = withUnsafeBytes(of: t.c_cc) { $0[Int(VEOF)] }
        return veof == 0 ? 4 : veof
    }

    private func add(_ epoll: Int32, _ fd: Int32, _ events: UInt32, tag: UInt64) throws {
        var e = epoll_event()
        e.events = events
        e.data.u64 = tag
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &e) == 0 else {
            throw CLIError("epoll_ctl: \(String(cString: strerror(errno)))")
        }
    }
}

/// The user's terminal modes while a session runs: raw input on a tty stdin (cfmakeraw, keeping
/// its output flags), raw output on a tty stdout (keeping its input and local flags as they are
/// by then), as machinectl sets them. When both are the same terminal the second step reads what
/// the first left, so the terminal ends up wholly raw: the machine's programs get their bytes to
/// the screen unchanged (no newline translation under a full-screen editor). `restore` puts stdout's
/// modes back, then stdin's, so a shared terminal ends as it was before.
struct TerminalModes {
    let input: Int32
    let output: Int32
    private var savedInput: termios?
    private var savedOutput: termios?
    var inputIsTTY: Bool { savedInput != nil }
    var outputIsTTY: Bool { savedOutput != nil }

    init(input: Int32, output: Int32) {
        self.input = input
        self.output = output
        var t = termios()
        if isatty(input) == 1, tcgetattr(input, &t) == 0 {
            savedInput = t
            var raw = t
            cfmakeraw(&raw)
            raw.c_oflag = t.c_oflag
            _ = tcsetattr(input, TCSANOW, &raw)
        }
        if isatty(output) == 1, tcgetattr(output, &t) == 0 {
            savedOutput = t
            var raw = t
            cfmakeraw(&raw)
            raw.c_iflag = t.c_iflag
            raw.c_lflag = t.c_lflag
            _ = tcsetattr(output, TCSANOW, &raw)
        }
    }

    func restore() {
        if var t = savedOutput { _ = tcsetattr(output, TCSANOW, &t) }
        if var t = savedInput { _ = tcsetattr(input, TCSANOW, &t) }
    }
}

/// The write end of the self-pipe the signal handler writes to; -1 when no session runs.
/// `nonisolated(unsafe)`: set before the handlers are installed and cleared after they are
/// removed, and only read by the handler (an async-signal-safe write of one byte).
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

/// Signals turned into bytes on a pipe the forwarder's loop watches (the self-pipe trick): works
/// whatever threads the process has, unlike a signalfd, which needs the signal blocked in each.
final class SignalPipe {
    let readEnd: Int32
    private let writeEnd: Int32
    private var previous: [(Int32, sigaction)] = []

    init(_ signals: [Int32]) throws {
        var fds: [Int32] = [-1, -1]
        guard pipe2(&fds, O_CLOEXEC | O_NONBLOCK) == 0 else { throw CLIError("pipe2: \(String(cString: strerror(errno)))") }
        readEnd = fds[0]
        writeEnd = fds[1]
        signalPipeWriteEnd = writeEnd
        for signal in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { signal in
                var byte = UInt8(truncatingIfNeeded: signal)
                let saved = errno
                _ = write(signalPipeWriteEnd, &byte, 1)
                errno = saved
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            var old = sigaction()
            if sigaction(signal, &action, &old) == 0 { previous.append((signal, old)) }
        }
        // A reader of our output that goes away is an ordinary end (EPIPE), not a death.
        var ignore = sigaction()
        ignore.__sigaction_handler.sa_handler = SIG_IGN
        var old = sigaction()
        if sigaction(SIGPIPE, &ignore, &old) == 0 { previous.append((SIGPIPE, old)) }
    }

    /// The signals that arrived since the last call.
    func drain() -> [Int32] {
        var buffer = [UInt8](repeating: 0, count: 64)
        var result: [Int32] = []
        while true {
            let n = read(readEnd, &buffer, buffer.count)
            guard n > 0 else { break }
            result += buffer[0..<n].map { Int32($0) }
        }
        return result
    }

    /// Puts the previous handlers back and closes the pipe.
    func restore() {
        for (signal, old) in previous {
            var o = old
            _ = sigaction(signal, &o, nil)
        }
        signalPipeWriteEnd = -1
        close(readEnd)
        close(writeEnd)
    }
}
