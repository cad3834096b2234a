import CLinux
import Glibc

/// One IP address configured on an interface, as an RTM_NEWADDR message of rtnetlink reports it.
public struct InterfaceAddress: Sendable, Hashable {
    /// AF_INET or AF_INET6.
    public var family: Int32
    /// 4 or 16 bytes, network order.
    public var address: [UInt8]
    /// The interface's index (in the namespace it was read from).
    public var interfaceIndex: Int32
    /// RT_SCOPE_* (0 universe, 253 link, 254 host).
    public var scope: UInt8

    public init(family: Int32, address: [UInt8], interfaceIndex: Int32, scope: UInt8) {
        self.family = family
        self.address = address
        self.interfaceIndex = interfaceIndex
        self.scope = scope
    }
}

/// The IP addresses of a network namespace, read over rtnetlink (an RTM_GETADDR dump on a
/// NETLINK_ROUTE socket), with the filter and order systemd's `local_addresses()` applies, so
/// machine1's GetMachineAddresses lists what machined lists: IPv4 and IPv6 only; tentative and
/// deprecated addresses left out, and those of host or nowhere scope (127.0.0.1, ::1); IFA_LOCAL
/// preferred over IFA_ADDRESS (they differ on point-to-point links); sorted IPv4 first, then by
/// scope, interface index and address, duplicates dropped.
public enum NetworkAddresses {
    /// The addresses of the calling thread's network namespace.
    public static func current() throws(SystemCallError) -> [InterfaceAddress] {
        let socket = try sys("socket") { Glibc.socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_ROUTE) }
        let fd = FileDescriptor(owning: socket)
        defer { fd.close() }
        return try dump(fd)
    }

    /// The addresses of the network namespace `namespacePath` (`/proc/PID/ns/net`). The dump runs
    /// on a thread of its own made for it, which enters that namespace (setns(2) with
    /// CLONE_NEWNET changes only the calling thread's) and ends after: no thread that serves
    /// anything else ever changes namespace. Blocks the caller until done: call it off the bus thread.
    public static func inNamespace(_ namespacePath: String) throws(SystemCallError) -> [InterfaceAddress] {
        let ns = try FileDescriptor.open(namespacePath, flags: O_RDONLY | O_CLOEXEC)
        defer { ns.close() }
        let result = try runOnNewThread { () throws(SystemCallError) -> [InterfaceAddress] in
            try sys("setns", namespacePath) { berth_enter_network_namespace(ns.rawValue) }
            return try current()
        }
        return try result.get()
    }

    /// Sends the dump request and reads every answer until NLMSG_DONE.
    private static func dump(_ fd: FileDescriptor) throws(SystemCallError) -> [InterfaceAddress] {
        let headerSize = MemoryLayout<nlmsghdr>.size
        var request = [UInt8](repeating: 0, count: headerSize + MemoryLayout<ifaddrmsg>.size)
        let sequence: UInt32 = 1
        request.withUnsafeMutableBytes { raw in
            var header = nlmsghdr()
            header.nlmsg_len = UInt32(raw.count)
            header.nlmsg_type = UInt16(RTM_GETADDR)
            header.nlmsg_flags = UInt16(NLM_F_REQUEST | NLM_F_DUMP)
            header.nlmsg_seq = sequence
            raw.storeBytes(of: header, as: nlmsghdr.self)
            var body = ifaddrmsg()
            body.ifa_family = UInt8(AF_UNSPEC)
            raw.storeBytes(of: body, toByteOffset: headerSize, as: ifaddrmsg.self)
        }
        // The kernel is the only peer: sockaddr_nl with pid 0.
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        let requestLength = request.count
        _ = try sys("sendto") {
            request.withUnsafeBytes { raw in
                withUnsafePointer(to: &kernel) { address in
                    address.withMemoryRebound(to: sockaddr.self, capacity: 1) { a in
                        sendto(fd.rawValue, raw.baseAddress, requestLength, 0, a, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
        }
        var found: [InterfaceAddress] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let capacity = buffer.count
            let n = try sys("recv") { buffer.withUnsafeMutableBytes { raw in recv(fd.rawValue, raw.baseAddress, capacity, 0) } }
            if n == 0 { throw SystemCallError("recv", .EIO, subject: "netlink closed before NLMSG_DONE") }
            if try walk(buffer, count: n, into: &found) { return sorted(found) }
        }
    }

    /// Walks the netlink messages of one recv (the first `count` bytes of `buffer`), adding the
    /// addresses of RTM_NEWADDR messages to `found`; true at NLMSG_DONE. Throws EIO for a
    /// truncated message and the errno of an NLMSG_ERROR.
    package static func walk(_ buffer: [UInt8], count n: Int, into found: inout [InterfaceAddress]) throws(SystemCallError) -> Bool {
        let headerSize = MemoryLayout<nlmsghdr>.size
        var offset = 0
        while offset + headerSize <= n {
            let header = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: nlmsghdr.self) }
            let length = Int(header.nlmsg_len)
            guard length >= headerSize, offset + length <= n else { throw SystemCallError("recv", .EIO, subject: "truncated netlink message") }
            switch Int32(header.nlmsg_type) {
            case NLMSG_DONE:
                return true
            case NLMSG_ERROR:
                // nlmsgerr starts with the (negative) errno; a message too short to hold it, or
                // a code that is no negative errno (Int32.min would overflow the negation: found
                // by fuzzing), is EIO.
                guard length >= headerSize + 4 else { throw SystemCallError("recv", .EIO, subject: "truncated netlink error") }
                let code = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + headerSize, as: Int32.self) }
                if code != 0 { throw SystemCallError("RTM_GETADDR", code < 0 && code > -4096 ? Errno(rawValue: -code) : .EIO) }
            case Int32(RTM_NEWADDR):
                if let a = parse(Array(buffer[(offset + headerSize)..<(offset + length)])) { found.append(a) }
            default:
                break
            }
            offset += (length + 3) & ~3
        }
        return false
    }

    /// One RTM_NEWADDR payload (ifaddrmsg, then rtattrs), or nil for what machined skips.
    package static func parse(_ payload: [UInt8]) -> InterfaceAddress? {
        let fixed = MemoryLayout<ifaddrmsg>.size
        guard payload.count >= fixed else { return nil }
        let message = payload.withUnsafeBytes { $0.loadUnaligned(as: ifaddrmsg.self) }
        let family = Int32(message.ifa_family)
        let size: Int
        switch family {
        case AF_INET: size = 4
        case AF_INET6: size = 16
        default: return nil
        }
        if UInt32(message.ifa_flags) & UInt32(IFA_F_DEPRECATED | IFA_F_TENTATIVE) != 0 { return nil }
        if message.ifa_scope == UInt8(RT_SCOPE_HOST.rawValue) || message.ifa_scope == UInt8(RT_SCOPE_NOWHERE.rawValue) { return nil }
        var local: [UInt8]?, address: [UInt8]?
        var offset = (fixed + 3) & ~3
        while offset + 4 <= payload.count {
            let length = Int(UInt16(payload[offset]) | UInt16(payload[offset + 1]) << 8)
            let type = Int(UInt16(payload[offset + 2]) | UInt16(payload[offset + 3]) << 8)
            guard length >= 4, offset + length <= payload.count else { break }
            let value = Array(payload[(offset + 4)..<(offset + length)])
            if value.count == size {
                if type == Int(IFA_LOCAL) { local = value }
                if type == Int(IFA_ADDRESS) { address = value }
            }
            offset += (length + 3) & ~3
        }
        guard let bytes = local ?? address else { return nil }
        return InterfaceAddress(family: family, address: bytes, interfaceIndex: Int32(bitPattern: message.ifa_index),
                                scope: message.ifa_scope)
    }

    /// IPv4 before IPv6, then lowest scope, lowest interface index, address bytes; no duplicates.
    static func sorted(_ list: [InterfaceAddress]) -> [InterfaceAddress] {
        let ordered = list.sorted { a, b in
            if a.family != b.family { return a.family == AF_INET }
            if a.scope != b.scope { return a.scope < b.scope }
            if a.interfaceIndex != b.interfaceIndex { return a.interfaceIndex < b.interfaceIndex }
            return a.address.lexicographicallyPrecedes(b.address)
        }
        var unique: [InterfaceAddress] = []
        for a in ordered where unique.last != a { unique.append(a) }
        return unique
    }
}
