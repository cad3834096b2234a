import Testing
import Glibc
@testable import Linux

@Test func errnoNamesMatchCConstants() {
    #expect(Errno.ENOENT.name == "ENOENT")
    #expect(Errno.EROFS.name == "EROFS")
}

@Test func sysThrowsTheFailingCallAndErrno() {
    #expect(throws: SystemCallError.self) {
        try sys("close", "fd -1") { Glibc.close(-1) }
    }
}
