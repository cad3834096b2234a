import Foundation
import PoolAPI
import Testing

@Test func imageNamesFollowMachinedRules() throws {
    for good in ["a", "a b", "..x", ".hidden", String(repeating: "n", count: 70), String(repeating: "n", count: 233),
                 "ünïcode", "with.dots-and_underscores"] {
        try ImagePool.validateName(good)
    }
    for bad in ["", ".", "..", "a/b", "/abs", ".#temp", ".#", "new\nline", "bell\u{7}", "del\u{7f}",
                String(repeating: "n", count: 234), String(repeating: "n", count: 255), String(repeating: "n", count: 256)] {
        #expect(throws: PoolError.self, "\(bad.debugDescription) must be refused") {
            try ImagePool.validateName(bad)
        }
        do { try ImagePool.validateName(bad) } catch let e as PoolError { #expect(e.code == .invalidName) }
    }
}

@Test func environmentFilesParseLikeSystemd() {
    let text = #"""
    # a comment
    ; another comment
    NAME="Debian GNU/Linux"
    ID=debian
    PRETTY_NAME='Single "quoted" $literal\n'
    VERSION_ID="12"   
      SPACED  =  value with inner spaces   
    ESCAPED="a \"quote\", a \\ backslash, a \$dollar, kept \n"
    UNQUOTED=back\ slash\\x
    CONTINUED=one\
    two
    EMPTY=
    9INVALID=x
    bad-key=y
    NOEQUALS
    ID=overridden
    LAST="no newline at end"
    """#
    let pairs = EnvironmentFile.parse(text)
    #expect(pairs["NAME"] == "Debian GNU/Linux")
    #expect(pairs["ID"] == "overridden")
    #expect(pairs["PRETTY_NAME"] == #"Single "quoted" $literal\n"#)
    #expect(pairs["VERSION_ID"] == "12")
    #expect(pairs["SPACED"] == "value with inner spaces")
    #expect(pairs["ESCAPED"] == #"a "quote", a \ backslash, a $dollar, kept \n"#)
    #expect(pairs["UNQUOTED"] == #"back slash\x"#)
    #expect(pairs["CONTINUED"] == "onetwo")
    #expect(pairs["EMPTY"] == "")
    #expect(pairs["9INVALID"] == nil)
    #expect(pairs["bad-key"] == nil)
    #expect(pairs["NOEQUALS"] == nil)
    #expect(pairs["LAST"] == "no newline at end")
}

/// Every file name derived from a name at the limit fits NAME_MAX, so an image named so can be
/// cloned, renamed, made read-only and removed; one byte more is refused before anything is made.
@Test func aNameAtTheLimitWorksForEveryOperationAndOneByteMoreIsRefusedUpFront() async throws {
    #expect(ImagePool.maximumNameBytes == 233)
    let r = try PoolRoot()
    try r.makeTree("var/lib/machines/src", files: ["etc/os-release": "ID=x\n"])
    let pool = r.pool()
    let a = String(repeating: "a", count: 233), b = String(repeating: "b", count: 233)
    _ = try await pool.clone("src", to: a, readOnly: true)
    try await pool.rename(a, to: b)
    try await pool.setReadOnly(b, false)
    _ = try await pool.clone(b, to: a, readOnly: false)
    try await pool.remove(a)
    try await pool.remove(b)
    let over = String(repeating: "o", count: 234)
    #expect(await expectPoolError(.invalidName) { _ = try await pool.clone("src", to: over, readOnly: false) })
    #expect(await expectPoolError(.invalidName) { try await pool.rename("src", to: over) })
    #expect(await expectPoolError(.invalidName) {
        _ = try await pool.install(over, type: .directory, force: false, readOnly: false) { _ in }
    })
    #expect(try FileManager.default.contentsOfDirectory(atPath: r.path("var/lib/machines")) == ["src"])
}
