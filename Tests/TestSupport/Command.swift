import Foundation

/// The result of a command run to completion.
public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var succeeded: Bool { status == 0 }
}

/// Errors of test helpers, with the command and what it printed.
public struct TestSupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Runs `argv` (looked up in PATH) to completion, capturing its output.
/// - Parameters:
///   - environment: variables to add to (or override in) the current environment.
///   - input: bytes written to the command's standard input, which is then closed.
@discardableResult
public func run(_ argv: [String], environment: [String: String] = [:], input: Data? = nil,
                check: Bool = false) throws -> CommandResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = argv
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    let inPipe = Pipe()
    p.standardInput = input == nil ? FileHandle.nullDevice : inPipe
    try p.run()
    if let input {
        try inPipe.fileHandleForWriting.write(contentsOf: input)
        try inPipe.fileHandleForWriting.close()
    }
    // Read both pipes concurrently so a chatty command cannot fill one and block.
    nonisolated(unsafe) var errData = Data()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        errData = readToEnd(err.fileHandleForReading)
        group.leave()
    }
    let outData = readToEnd(out.fileHandleForReading)
    group.wait()
    p.waitUntilExit()
    let result = CommandResult(
        status: p.terminationStatus,
        stdout: String(decoding: outData, as: UTF8.self),
        stderr: String(decoding: errData, as: UTF8.self))
    if check && !result.succeeded {
        throw TestSupportError("\(argv.joined(separator: " ")) exited \(result.status): \(result.stderr)")
    }
    return result
}

/// Everything `handle` gives until end of file. Not FileHandle.readDataToEndOfFile, which traps
/// (a `try!` inside Foundation) when a signal interrupts its read(2): a test process with
/// librados threads and child processes gets signals.
public func readToEnd(_ handle: FileHandle) -> Data {
    var data = Data()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(handle.fileDescriptor, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return data }
        data.append(contentsOf: buffer[0..<n])
    }
}

/// Whether `name` is an executable in PATH.
public func commandExists(_ name: String) -> Bool {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
    return path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(name)") }
}

/// Reads one line (up to and including "\n", or to end of file) from `handle`, byte by byte so
/// nothing past the line is consumed: for a child that prints one line (a port, a pid) and lives on.
public func readLine(from handle: FileHandle) -> String {
    var line = ""
    while !line.hasSuffix("\n") {
        let byte = handle.readData(ofLength: 1)
        if byte.isEmpty { break }
        line += String(decoding: byte, as: UTF8.self)
    }
    return line
}
