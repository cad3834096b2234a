import Testing
import Glibc
@testable import Linux

@Test func errnoNamesMatchCConstants() {
    let named: [(Errno, Int32, String)] = [
        (.EPERM, Glibc.EPERM, "EPERM"), (.ENOENT, Glibc.ENOENT, "ENOENT"), (.EINTR, Glibc.EINTR, "EINTR"),
        (.EIO, Glibc.EIO, "EIO"), (.EBADF, Glibc.EBADF, "EBADF"), (.EAGAIN, Glibc.EAGAIN, "EAGAIN"),
        (.ENOMEM, Glibc.ENOMEM, "ENOMEM"), (.EACCES, Glibc.EACCES, "EACCES"), (.EBUSY, Glibc.EBUSY, "EBUSY"),
        (.EEXIST, Glibc.EEXIST, "EEXIST"), (.EXDEV, Glibc.EXDEV, "EXDEV"), (.ENOTDIR, Glibc.ENOTDIR, "ENOTDIR"),
        (.EISDIR, Glibc.EISDIR, "EISDIR"), (.EINVAL, Glibc.EINVAL, "EINVAL"), (.ENOSPC, Glibc.ENOSPC, "ENOSPC"),
        (.EROFS, Glibc.EROFS, "EROFS"), (.ENOTTY, Glibc.ENOTTY, "ENOTTY"), (.ENOTEMPTY, Glibc.ENOTEMPTY, "ENOTEMPTY"),
        (.ENOSYS, Glibc.ENOSYS, "ENOSYS"), (.EOPNOTSUPP, Glibc.EOPNOTSUPP, "EOPNOTSUPP"), (.ENODATA, Glibc.ENODATA, "ENODATA"),
        (.EDQUOT, Glibc.EDQUOT, "EDQUOT"), (.ENXIO, Glibc.ENXIO, "ENXIO"), (.ELOOP, Glibc.ELOOP, "ELOOP"),
        (.ENAMETOOLONG, Glibc.ENAMETOOLONG, "ENAMETOOLONG"), (.ECANCELED, Glibc.ECANCELED, "ECANCELED"),
        (.ESRCH, Glibc.ESRCH, "ESRCH"), (.ENOTCONN, Glibc.ENOTCONN, "ENOTCONN"),
    ]
    for (errno, value, name) in named {
        #expect(errno.rawValue == value, "\(name)")
        #expect(errno.name == name)
        // systemd's System.Error.E… names are these; strerror gives the message.
        #expect(errno.description == String(cString: strerror(value)), "\(name)")
    }
    // A value without a name is still named, by number, never dropped.
    #expect(Errno(4095).name == "E4095")
}

@Test func sysThrowsTheFailingCallAndErrno() {
    let error = #expect(throws: SystemCallError.self) {
        try sys("close", "fd -1") { Glibc.close(-1) }
    }
    #expect(error?.call == "close")
    #expect(error?.subject == "fd -1")
    #expect(error?.errno == .EBADF)
    #expect(error?.description == "close(fd -1): \(String(cString: strerror(Glibc.EBADF))) (EBADF)")
}

@Test func sysRetriesEINTRAndReturnsTheResult() throws {
    var calls = 0
    let result = try sys("read") { () -> Int32 in
        calls += 1
        if calls < 3 { errno = Glibc.EINTR; return -1 }
        return 7
    }
    #expect(result == 7)
    #expect(calls == 3)
}
