import Linux
import Machines
import PoolAPI
import Services

extension FuzzTargets {
    /// The bytes as /etc/hostname, /etc/machine-id and an env-style file (os-release,
    /// machine-info, extension-release): what GetImageHostname, GetImageMachineID,
    /// GetImageMachineInfo and GetImageOSRelease read from an image.
    static func imageMetadata(_ data: UnsafeRawBufferPointer) {
        let text = FuzzInput(data).text
        let hostname = ImageMetadata.parseHostname(text)
        FuzzCheck.require(!hostname.unicodeScalars.contains { $0 == "\n" || $0 == "\r" }, "hostname with a line break")
        let id = ImageMetadata.parseMachineID(text)
        FuzzCheck.require(id.isEmpty || id.count == 16, "machine id of \(id.count) bytes")
        for key in EnvironmentFile.parse(text).keys {
            let valid = key.utf8.first.map { !($0 >= 0x30 && $0 <= 0x39) } == true
                && key.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || $0 == 0x5f }
            FuzzCheck.require(valid, "env file key '\(key)' is not a valid name")
        }
    }

    /// The bytes as a machine's state file under /run/berth/machines.
    static func machineStore(_ data: UnsafeRawBufferPointer) {
        _ = MachineStore.parse(FuzzInput(data).text)
    }

    /// The bytes as /proc/PID/uid_map; every id the mapping translates is a valid id.
    static func uidMap(_ data: UnsafeRawBufferPointer) {
        guard let map = IDMapping(parsing: FuzzInput(data).text) else { return }
        _ = map.isIdentity
        var probes: [UInt32] = [0, 1, 1000, 65534, 65535, 0x7FFF_FFFF, UInt32.max]
        for r in map.ranges.prefix(16) {
            probes += [r.inside, r.outside, r.inside &+ r.count, r.outside &+ r.count, r.inside &+ r.count &- 1]
        }
        for id in probes {
            if let out = map.outside(id) { FuzzCheck.require(IDMapping.isValid(UInt64(out)), "outside(\(id)) = \(out)") }
            if let inside = map.inside(id) { FuzzCheck.require(IDMapping.isValid(UInt64(inside)), "inside(\(id)) = \(inside)") }
        }
    }

    /// The first line as the user OpenShell asks for, the rest as the machine's /etc/passwd.
    static func passwd(_ data: UnsafeRawBufferPointer) {
        let (user, text) = FuzzInput(data).firstLineAndRest
        guard let entry = PasswdEntry.find(user, inPasswd: text) else { return }
        FuzzCheck.require(!entry.home.isEmpty && !entry.shell.isEmpty, "empty home or shell")
        FuzzCheck.require(!entry.home.contains("\n") && !entry.shell.contains("\n"), "newline in home or shell")
    }
}
