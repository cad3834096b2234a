import PoolAPI
import Testing

@Test func imageNamesFollowMachinedRules() throws {
    for good in ["a", "a b", "..x", ".hidden", String(repeating: "n", count: 70), String(repeating: "n", count: 255),
                 "ünïcode", "with.dots-and_underscores"] {
        try ImagePool.validateName(good)
    }
    for bad in ["", ".", "..", "a/b", "/abs", ".#temp", ".#", "new\nline", "bell\u{7}", "del\u{7f}",
                String(repeating: "n", count: 256)] {
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
