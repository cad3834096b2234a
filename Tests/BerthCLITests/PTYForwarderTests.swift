@testable import BerthCLI
import CLinux
import Foundation
import Glibc
import Testing

/// A pty pair of the test's own: `master` for the forwarder, `slave` standing for the machine's side.
final class PTYPair {
    let master: Int32
    let slavePath: String
    private(set) var slave: Int32

    init() throws {
        // /dev/ptmx with TIOCSPTLCK and TIOCGPTN: what posix_openpt, unlockpt and ptsname do
        // (those are hidden from Swift's Glibc module behind _XOPEN_SOURCE).
        master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        // _IOW('T', 0x31, int) and _IOR('T', 0x30, unsigned int): function-like macros Swift cannot import.
        let tiocsptlck: UInt = 0x4004_5431, tiocgptn: UInt = 0x8004_5430
        var unlock: Int32 = 0, number: UInt32 = 0
        guard master >= 0, berth_ioctl_ptr(master, tiocsptlck, &unlock) == 0,
              berth_ioctl_ptr(master, tiocgptn, &number) == 0 else {
            throw POSIXError(.ENODEV)
        }
        slavePath = "/dev/pts/\(number)"
        slave = open(slavePath, O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard slave >= 0 else { throw POSIXError(.ENODEV) }
    }

    /// The machine's side without echo and output processing, but canonical (so ^D is an end of file).
    func quietSlave() {
        var t = termios()
        tcgetattr(slave, &t)
        t.c_lflag &= ~tcflag_t(ECHO)
        t.c_oflag &= ~tcflag_t(OPOST)
        tcsetattr(slave, TCSANOW, &t)
    }

    /// The machine's side raw: no line editing, so a full line buffer throttles the master
    /// (canonical mode would drop what does not fit instead).
    func rawSlave() {
        var t = termios()
        tcgetattr(slave, &t)
        cfmakeraw(&t)
        tcsetattr(slave, TCSANOW, &t)
    }

    func closeSlave() {
        if slave >= 0 { close(slave) }
        slave = -1
    }

    func reopenSlave() {
        slave = open(slavePath, O_RDWR | O_NOCTTY | O_CLOEXEC)
    }

    func size(of fd: Int32) -> (rows: UInt16, cols: UInt16) {
        var w = winsize()
        _ = berth_ioctl_ptr(fd, UInt(TIOCGWINSZ), &w)
        return (w.ws_row, w.ws_col)
    }

    func setSize(_ fd: Int32, rows: UInt16, cols: UInt16) {
        var w = winsize(ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0)
        _ = berth_ioctl_ptr(fd, UInt(TIOCSWINSZ), &w)
    }

    deinit {
        closeSlave()
        close(master)
    }
}

/// A pipe with both ends.
struct Pipe {
    let read: Int32
    let write: Int32
    init() {
        var fds: [Int32] = [-1, -1]
        _ = pipe2(&fds, O_CLOEXEC)
        read = fds[0]
        write = fds[1]
    }
    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.write(write, $0.baseAddress, $0.count) } }
}

/// Runs the forwarder on a thread of its own and hands back its outcome.
final class ForwarderRun: @unchecked Sendable {
    // @unchecked Sendable: `result` is written once by the thread before `done` is signalled and
    // read only after waiting on it.
    private var result: Result<PTYForwarder.Outcome, Error>?
    private let done = DispatchSemaphore(value: 0)

    init(_ forwarder: PTYForwarder, extra: (fd: Int32, onReadable: () -> Bool)? = nil) {
        nonisolated(unsafe) let f = forwarder
        nonisolated(unsafe) let e = extra
        Thread.detachNewThread { [self] in
            result = Result { try f.run(extra: e) }
            done.signal()
        }
    }

    /// The outcome, waiting up to `seconds` (nil when it did not end by then).
    func outcome(within seconds: Double = 20) throws -> PTYForwarder.Outcome? {
        guard done.wait(timeout: .now() + seconds) == .success, let result else { return nil }
        return try result.get()
    }
}

/// Reads `fd` until `count` bytes or its end (bounded by `seconds`).
func readAll(_ fd: Int32, upTo count: Int = 1 << 20, within seconds: Double = 20) -> [UInt8] {
    var out: [UInt8] = []
    let deadline = Date().addingTimeInterval(seconds)
    var buffer = [UInt8](repeating: 0, count: 4096)
    while out.count < count && Date() < deadline {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 200) > 0 else { continue }
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        out += buffer[0..<n]
    }
    return out
}

func waitUntil(_ seconds: Double = 20, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

/// The forwarder between a terminal and a pty master, over pty pairs and pipes of the test's own.
/// Serialized: the signal tests send signals to the whole test process.
@Suite(.serialized)
struct PTYForwarderTests {
    @Test func pipedInputReachesTheMachineThenEndOfFileAndItsOutputComesBackUntilHangup() throws {
        let pty = try PTYPair()
        pty.quietSlave()
        let input = Pipe(), output = Pipe()
        let run = ForwarderRun(PTYForwarder(master: pty.master, input: input.read, output: output.write))
        input.send(Array("echo hi\n".utf8))
        close(input.write)
        // The machine's side reads the line, then an end of file (the ^D sent at the input's end).
        let line = readAll(pty.slave, upTo: 8)
        #expect(String(decoding: line, as: UTF8.self) == "echo hi\n")
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(read(pty.slave, &buffer, buffer.count) == 0)
        // Its output goes to ours; closing it is the hangup that ends the session.
        _ = Array("hi\n".utf8).withUnsafeBytes { write(pty.slave, $0.baseAddress, $0.count) }
        pty.closeSlave()
        #expect(try run.outcome() == .hangup)
        close(output.write)
        #expect(String(decoding: readAll(output.read), as: UTF8.self) == "hi\n")
        close(input.read)
        close(output.read)
    }

    @Test func threeEscapesWithinASecondEndTheSessionAndATTYIsPutBack() throws {
        let pty = try PTYPair()
        let terminal = try PTYPair()  // the user's terminal: its slave is the forwarder's stdin
        var before = termios()
        tcgetattr(terminal.slave, &before)
        #expect(before.c_lflag & tcflag_t(ICANON) != 0)
        let output = Pipe()
        let run = ForwarderRun(PTYForwarder(master: pty.master, input: terminal.slave, output: output.write))
        // Raw while the session runs (no line discipline between the keys and the machine).
        #expect(waitUntil {
            var t = termios()
            tcgetattr(terminal.slave, &t)
            return t.c_lflag & tcflag_t(ICANON) == 0 && t.c_lflag & tcflag_t(ECHO) == 0
        })
        _ = [UInt8](repeating: 0x1D, count: 3).withUnsafeBytes { write(terminal.master, $0.baseAddress, $0.count) }
        #expect(try run.outcome() == .escaped)
        var after = termios()
        tcgetattr(terminal.slave, &after)
        #expect(after.c_lflag == before.c_lflag && after.c_iflag == before.c_iflag && after.c_oflag == before.c_oflag)
        close(output.read)
        close(output.write)
    }

    @Test func theTerminalSizeIsCopiedAtStartAndOnSIGWINCH() throws {
        let pty = try PTYPair()
        let terminal = try PTYPair()  // its slave is the forwarder's stdout
        terminal.setSize(terminal.slave, rows: 50, cols: 132)
        let input = Pipe()
        let run = ForwarderRun(PTYForwarder(master: pty.master, input: input.read, output: terminal.slave))
        #expect(waitUntil { pty.size(of: pty.slave) == (50, 132) })
        terminal.setSize(terminal.slave, rows: 40, cols: 100)
        kill(getpid(), SIGWINCH)
        #expect(waitUntil { pty.size(of: pty.slave) == (40, 100) })
        pty.closeSlave()
        #expect(try run.outcome() == .hangup)
        close(input.read)
        close(input.write)
    }

    @Test func sigtermEndsTheSessionAndPutsTheTerminalBack() throws {
        let pty = try PTYPair()
        let terminal = try PTYPair()
        var before = termios()
        tcgetattr(terminal.slave, &before)
        let output = Pipe()
        let run = ForwarderRun(PTYForwarder(master: pty.master, input: terminal.slave, output: output.write))
        // The handlers are in place before the terminal goes raw, so the signal is safe now.
        #expect(waitUntil {
            var t = termios()
            tcgetattr(terminal.slave, &t)
            return t.c_lflag & tcflag_t(ICANON) == 0
        })
        kill(getpid(), SIGTERM)
        #expect(try run.outcome() == .signal(SIGTERM))
        var after = termios()
        tcgetattr(terminal.slave, &after)
        #expect(after.c_lflag == before.c_lflag)
        close(output.read)
        close(output.write)
    }

    @Test func aLoginWaitsOutHangupsUntilTheMachineIsRemoved() throws {
        let pty = try PTYPair()
        pty.quietSlave()
        let input = Pipe(), output = Pipe(), removed = Pipe()
        let forwarder = PTYForwarder(master: pty.master, input: input.read, output: output.write, ignoreVHangup: true)
        let run = ForwarderRun(forwarder, extra: (removed.read, {
            var b: UInt8 = 0
            _ = read(removed.read, &b, 1)
            forwarder.machineRemoved()
            return true
        }))
        _ = Array("login: ".utf8).withUnsafeBytes { write(pty.slave, $0.baseAddress, $0.count) }
        #expect(String(decoding: readAll(output.read, upTo: 7), as: UTF8.self) == "login: ")
        // The getty hangs up; a new one opens the line again and the session goes on.
        pty.closeSlave()
        pty.reopenSlave()
        pty.quietSlave()
        _ = Array("again".utf8).withUnsafeBytes { write(pty.slave, $0.baseAddress, $0.count) }
        #expect(String(decoding: readAll(output.read, upTo: 5), as: UTF8.self) == "again")
        // The machine goes (MachineRemoved); its hangup then ends the session.
        pty.closeSlave()
        removed.send([1])
        #expect(try run.outcome() == .machineGone)
        for fd in [input.read, input.write, output.read, output.write, removed.read, removed.write] { close(fd) }
    }

    @Test func aMachineThatReadsNothingMakesTheLoopWaitNotSpin() throws {
        let pty = try PTYPair()
        pty.rawSlave()
        let input = Pipe(), output = Pipe()
        let forwarder = PTYForwarder(master: pty.master, input: input.read, output: output.write)
        let run = ForwarderRun(forwarder)
        // More than the forwarder's buffer and the pty's together, which nobody reads.
        let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 4096)
        var p = pollfd(fd: input.write, events: Int16(POLLOUT), revents: 0)
        _ = fcntl(input.write, F_SETFL, O_NONBLOCK)
        var sent = 0
        while sent < 4 << 20 && poll(&p, 1, 2000) > 0 {
            let n = chunk.withUnsafeBytes { write(input.write, $0.baseAddress, $0.count) }
            if n > 0 { sent += n }
        }
        // The pipe stays full: the forwarder stopped reading it, and waits.
        #expect(sent < 4 << 20)
        usleep(300_000)
        let wakeups = forwarder.wakeups
        usleep(300_000)
        // A loop spinning on a readable stdin would have woken thousands of times by now.
        #expect(forwarder.wakeups - wakeups < 10, "\(forwarder.wakeups - wakeups) wake-ups while stalled")
        pty.closeSlave()
        #expect(try run.outcome() == .hangup)
        for fd in [input.read, input.write, output.read, output.write] { close(fd) }
    }

    @Test func oneTerminalForInputAndOutputIsWhollyRawThenAsItWas() throws {
        let pty = try PTYPair()
        let terminal = try PTYPair()  // its slave is both stdin and stdout, as in a shell
        var before = termios()
        tcgetattr(terminal.slave, &before)
        #expect(before.c_oflag & tcflag_t(OPOST) != 0)
        let run = ForwarderRun(PTYForwarder(master: pty.master, input: terminal.slave, output: terminal.slave))
        #expect(waitUntil {
            var t = termios()
            tcgetattr(terminal.slave, &t)
            return t.c_lflag & tcflag_t(ICANON) == 0 && t.c_oflag & tcflag_t(OPOST) == 0
        })
        // The machine's bytes reach the screen as they are: its own line discipline made "\r\n"
        // of "\n", the user's terminal adds nothing ("\r\r\n" if its output were still cooked).
        _ = Array("a\nb".utf8).withUnsafeBytes { write(pty.slave, $0.baseAddress, $0.count) }
        #expect(String(decoding: readAll(terminal.master, upTo: 4), as: UTF8.self) == "a\r\nb")
        pty.closeSlave()
        #expect(try run.outcome() == .hangup)
        var after = termios()
        tcgetattr(terminal.slave, &after)
        #expect(after.c_lflag == before.c_lflag && after.c_iflag == before.c_iflag && after.c_oflag == before.c_oflag)
    }

    @Test func aReaderThatGoesRawAfterTheEndOfFileGetsItAgainInRawMode() throws {
        let pty = try PTYPair()
        pty.quietSlave()
        let input = Pipe(), output = Pipe()
        let run = ForwarderRun(PTYForwarder(master: pty.master, input: input.read, output: output.write))
        input.send(Array("ls\n".utf8))
        close(input.write)
        // In line mode: the line, then the end of file.
        #expect(readAll(pty.slave, upTo: 3) == Array("ls\n".utf8))
        var byte: UInt8 = 0
        #expect(read(pty.slave, &byte, 1) == 0)
        // A program switching to raw mode afterwards (a shell starting its line editor, which
        // would have read the queued mark as a NUL) gets ^D again once it prompts.
        pty.rawSlave()
        _ = Array("$ ".utf8).withUnsafeBytes { write(pty.slave, $0.baseAddress, $0.count) }
        #expect(readAll(pty.slave, upTo: 1) == [4])
        pty.closeSlave()
        #expect(try run.outcome() == .hangup)
        for fd in [input.read, output.read, output.write] { close(fd) }
    }
}
