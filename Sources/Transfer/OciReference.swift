import struct SystemPackage.FilePath

/// PullOci's `ref`: `registry/repository:tag` or `registry/repository@sha256:<hex>`, as
/// Docker and skopeo spell image references. Parsed on both sides: berthd refuses a malformed
/// one with InvalidArgs before any worker starts; the worker talks to the registry with it.
///
/// The first component is the registry when it looks like a host (has a `.` or a `:`, or is
/// `localhost`); otherwise the registry is Docker Hub (`registry-1.docker.io`, with `library/`
/// for one-component names), as `docker pull` reads it. A missing tag means `latest`.
public struct OciReference: Sendable, Equatable, CustomStringConvertible {
    /// `host` or `host:port` (or `[v6]:port`).
    public var registry: String
    /// `a/b/c`: lower-case components of `[a-z0-9]` runs joined by `.`, `_`, `__` or `-`.
    public var repository: String
    /// The tag, if the reference names one.
    public var tag: String?
    /// `sha256:<64 hex>`, if the reference pins a digest (then the manifest must hash to it).
    public var digest: String?

    /// The longest reference accepted (Docker's own limit on a name is 255).
    public static let maximumLength = 1024

    /// Parses `text`; nil if it is not a valid reference.
    public init?(_ text: String) {
        guard !text.isEmpty, text.utf8.count <= Self.maximumLength,
              text.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0.value < 0x7f }) else { return nil }
        var rest = Substring(text)
        if let at = rest.firstIndex(of: "@") {
            let d = String(rest[rest.index(after: at)...])
            guard Self.isDigest(d) else { return nil }
            digest = d
            rest = rest[..<at]
        }
        var components = rest.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard let last = components.last else { return nil }
        // The tag is after the last component's colon (a registry's port has its colon in the
        // first component).
        if let colon = last.firstIndex(of: ":") {
            let t = String(last[last.index(after: colon)...])
            guard Self.isTag(t) else { return nil }
            tag = t
            components[components.count - 1] = String(last[..<colon])
        }
        if components.count > 1, let first = components.first,
           first.contains(".") || first.contains(":") || first == "localhost" {
            guard Self.isRegistry(first) else { return nil }
            registry = first
            components.removeFirst()
        } else {
            registry = "registry-1.docker.io"
            if components.count == 1 { components.insert("library", at: 0) }
        }
        guard !components.isEmpty, components.allSatisfy(Self.isRepositoryComponent) else { return nil }
        repository = components.joined(separator: "/")
        if tag == nil && digest == nil { tag = "latest" }
    }

    /// What the manifest is fetched by: the digest when pinned, else the tag.
    public var manifestReference: String { digest ?? tag ?? "latest" }

    /// The repository's last component: the default image name.
    public var defaultImageName: String {
        FilePath(repository).lastComponent?.string ?? repository
    }

    /// The registry's host without the port, for the loopback check.
    public var host: String {
        if registry.hasPrefix("["), let end = registry.firstIndex(of: "]") {
            return String(registry[registry.index(after: registry.startIndex)..<end])
        }
        return String(registry.split(separator: ":").first ?? Substring(registry))
    }

    /// Is the registry on this machine (127.0.0.0/8, ::1, localhost)? Only such a registry may
    /// be reached over plain HTTP (see docs/oci.md).
    public var isLoopback: Bool {
        let h = host
        return h == "localhost" || h == "::1" || h.hasPrefix("127.") && h.split(separator: ".").count == 4
    }

    public var description: String {
        registry + "/" + repository + (tag.map { ":" + $0 } ?? "") + (digest.map { "@" + $0 } ?? "")
    }

    /// `sha256:` and 64 lower-case hex digits: the only digest algorithm accepted.
    public static func isDigest(_ s: String) -> Bool {
        guard s.hasPrefix("sha256:") else { return false }
        let hex = s.utf8.dropFirst(7)
        return hex.count == 64 && hex.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    private static func isTag(_ s: String) -> Bool {
        guard let first = s.utf8.first, s.utf8.count <= 128 else { return false }
        func word(_ c: UInt8) -> Bool { (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 95 }
        return word(first) && s.utf8.allSatisfy { word($0) || $0 == 46 || $0 == 45 }
    }

    private static func isRegistry(_ s: String) -> Bool {
        s.utf8.count <= 255 && s.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 46 || c == 45 || c == 58
                || c == 91 || c == 93
        }
    }

    private static func isRepositoryComponent(_ s: String) -> Bool {
        // [a-z0-9]+ separated by single `.` or `_`, `__`, or runs of `-`.
        let bytes = Array(s.utf8)
        guard let first = bytes.first, let last = bytes.last, bytes.count <= 255 else { return false }
        func alnum(_ c: UInt8) -> Bool { (c >= 48 && c <= 57) || (c >= 97 && c <= 122) }
        guard alnum(first), alnum(last) else { return false }
        var i = 0
        while i < bytes.count {
            if alnum(bytes[i]) { i += 1; continue }
            var j = i
            while j < bytes.count && !alnum(bytes[j]) { j += 1 }
            let separator = String(decoding: bytes[i..<j], as: UTF8.self)
            guard separator == "." || separator == "_" || separator == "__" || separator.allSatisfy({ $0 == "-" }) else { return false }
            i = j
        }
        return true
    }
}
