import Bus
import Testing

/// The readers clients use on replies: `ay` as bytes, dictionaries in the order they came.
struct BusValueAccessorTests {
    @Test func bytesComeOutOfAnAyOnly() {
        #expect(BusValue.bytes([0, 1, 255]).bytesValue == [0, 1, 255])
        #expect(BusValue.variant(.bytes([7])).bytesValue == [7])
        #expect(BusValue.bytes([]).bytesValue == [])
        #expect(BusValue.strings(["a"]).bytesValue == nil)
        #expect(BusValue.string("ab").bytesValue == nil)
    }

    @Test func dictionaryEntriesKeepTheirOrder() {
        let units = BusValue.dictionary(key: "s", value: "ay", [.init(.string("z.service"), .bytes([1])),
                                                                .init(.string("a.service"), .bytes([2]))])
        #expect(units.dictionaryEntries?.map { $0.key.stringValue } == ["z.service", "a.service"])
        #expect(units.dictionaryEntries?.map { $0.value.bytesValue } == [[1], [2]])
        #expect(BusValue.variant(units).dictionaryEntries?.count == 2)
        #expect(BusValue.strings([]).dictionaryEntries == nil)
    }
}
