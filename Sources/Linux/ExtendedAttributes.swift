import CLinux
import Glibc

/// Where an inode's extended attributes are read and written: an open descriptor, or a path
/// for symlinks and special files, which must not be opened (a fifo would block, a device
/// would be opened). The path's final component is never followed (l*xattr(2)).
public enum XattrTarget: Sendable {
    case fd(FileDescriptor)
    case path(String)
}

/// All extended attributes of `target` (user.*, trusted.*, security.* with file capabilities,
/// system.posix_acl_* = ACLs): flistxattr/fgetxattr(2) or llistxattr/lgetxattr(2). A filesystem
/// without xattrs (EOPNOTSUPP) has none; an attribute removed while it is read is left out; a
/// list or value that grows meanwhile (ERANGE) is read again.
public func extendedAttributes(of target: XattrTarget) throws(SystemCallError) -> [(name: String, value: [UInt8])] {
    let list: [CChar]
    while true {
        let size = switch target {
        case .fd(let fd): flistxattr(fd.rawValue, nil, 0)
        case .path(let p): llistxattr(p, nil, 0)
        }
        if size < 0 {
            let e = Errno.current
            if e == .EOPNOTSUPP { return [] }
            throw SystemCallError(target.call("listxattr"), e)
        }
        if size == 0 { return [] }
        var buffer = [CChar](repeating: 0, count: size)
        let n = switch target {
        case .fd(let fd): flistxattr(fd.rawValue, &buffer, size)
        case .path(let p): llistxattr(p, &buffer, size)
        }
        if n < 0 {
            if Errno.current == Errno(ERANGE) { continue }
            throw SystemCallError(target.call("listxattr"), .current)
        }
        list = Array(buffer[0..<n])
        break
    }
    var result: [(name: String, value: [UInt8])] = []
    for raw in list.split(separator: 0) {
        let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        while true {
            let length = switch target {
            case .fd(let fd): fgetxattr(fd.rawValue, name, nil, 0)
            case .path(let p): lgetxattr(p, name, nil, 0)
            }
            if length < 0 {
                if Errno.current == .ENODATA { break }
                throw SystemCallError(target.call("getxattr"), .current, subject: name)
            }
            var value = [UInt8](repeating: 0, count: max(length, 1))
            let got = switch target {
            case .fd(let fd): fgetxattr(fd.rawValue, name, &value, length)
            case .path(let p): lgetxattr(p, name, &value, length)
            }
            if got < 0 {
                if Errno.current == Errno(ERANGE) { continue }
                if Errno.current == .ENODATA { break }
                throw SystemCallError(target.call("getxattr"), .current, subject: name)
            }
            result.append((name, Array(value[0..<got])))
            break
        }
    }
    return result
}

/// Sets each attribute on `target` (fsetxattr/lsetxattr(2)). Skipped rather than failed: a
/// namespace the destination filesystem does not have (EOPNOTSUPP), a namespace refused on a
/// symlink or special file (EPERM on a path: user.*), and the errors in `alsoSkipping`. Running
/// out of space is never skipped.
public func setExtendedAttributes(_ attributes: [(name: String, value: [UInt8])], on target: XattrTarget,
                                  alsoSkipping: Set<Errno> = []) throws(SystemCallError) {
    for (name, value) in attributes {
        let r = value.withUnsafeBytes { buf in
            switch target {
            case .fd(let fd): fsetxattr(fd.rawValue, name, buf.baseAddress, value.count, 0)
            case .path(let p): lsetxattr(p, name, buf.baseAddress, value.count, 0)
            }
        }
        if r != 0 {
            let e = Errno.current
            if e == .EOPNOTSUPP || alsoSkipping.contains(e) { continue }
            if case .path = target, e == .EPERM { continue }
            throw SystemCallError(target.call("setxattr"), e, subject: name)
        }
    }
}

/// Copies every extended attribute (ACLs and file capabilities included) of `source` to
/// `destination`: `extendedAttributes(of:)` then `setExtendedAttributes(_:on:alsoSkipping:)`.
/// Call it after fchown, which clears security.capability.
public func copyExtendedAttributes(from source: XattrTarget, to destination: XattrTarget,
                                   alsoSkipping: Set<Errno> = []) throws(SystemCallError) {
    try setExtendedAttributes(try extendedAttributes(of: source), on: destination, alsoSkipping: alsoSkipping)
}

extension XattrTarget {
    /// The C call's name for this kind of target: `flistxattr` or `llistxattr`, and so on.
    fileprivate func call(_ base: String) -> String {
        switch self {
        case .fd: "f" + base
        case .path: "l" + base
        }
    }
}
