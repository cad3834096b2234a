import Foundation

/// /proc/PID/status as name → value ("Seccomp" → "2", "CapBnd" → "0000…"); empty if the process
/// is gone. For tests that compare a confined process with its parent.
public func processStatus(_ pid: String) -> [String: String] {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    var fields: [String: String] = [:]
    for line in text.split(separator: "\n") {
        guard let colon = line.firstIndex(of: ":") else { continue }
        fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    return fields
}

/// `processStatus` of a pid.
public func processStatus(_ pid: pid_t) -> [String: String] { processStatus(String(pid)) }
