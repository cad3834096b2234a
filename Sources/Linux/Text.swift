extension StringProtocol {
    /// Without leading and trailing whitespace (spaces, tabs, the CR of a CRLF line): the one
    /// trim of the configuration, header and metadata parsers.
    public func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let start = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
              let end = scalars.lastIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        var result = ""
        result.unicodeScalars.append(contentsOf: scalars[start...end])
        return result
    }
}
