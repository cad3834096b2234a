import Foundation

/// One interface as introspected: members with signatures, argument names, access and annotations,
/// in a form two introspections can be compared by.
public struct IntrospectedInterface: Equatable, Sendable, CustomStringConvertible {
    public var name: String
    /// Each member as one line: `method GetImage(in s name, out o image) [annotations]`.
    public var members: [String: String]
    public var description: String { "\(name):\n  " + members.keys.sorted().map { members[$0] ?? "" }.joined(separator: "\n  ") }
}

/// A minimal parser for D-Bus introspection XML (elements and attributes only, which is all it holds).
public enum IntrospectionXML {
    private struct Element {
        var name: String
        var attributes: [String: String]
        var children: [Element] = []
    }

    /// The interfaces of one `<node>`, by name; child `<node>` elements are ignored.
    public static func interfaces(_ xml: String) throws -> [String: IntrospectedInterface] {
        let root = try parse(xml)
        var result: [String: IntrospectedInterface] = [:]
        for i in root.children where i.name == "interface" {
            let iname = i.attributes["name"] ?? ""
            var members: [String: String] = [:]
            for m in i.children where ["method", "signal", "property"].contains(m.name) {
                let mname = m.attributes["name"] ?? ""
                let annotations = m.children.filter { $0.name == "annotation" }
                    .map { "@\($0.attributes["name"] ?? "")=\($0.attributes["value"] ?? "")" }.sorted()
                var line = "\(m.name) \(mname)"
                if m.name == "property" {
                    line += " \(m.attributes["type"] ?? "") \(m.attributes["access"] ?? "")"
                } else {
                    let args = m.children.filter { $0.name == "arg" }.map { a -> String in
                        let dir = a.attributes["direction"] ?? (m.name == "signal" ? "" : "in")
                        return [dir, a.attributes["type"] ?? "", a.attributes["name"] ?? "-"].filter { !$0.isEmpty }.joined(separator: " ")
                    }
                    line += "(" + args.joined(separator: ", ") + ")"
                }
                if !annotations.isEmpty { line += " " + annotations.joined(separator: " ") }
                members["\(m.name) \(mname)"] = line
            }
            result[iname] = IntrospectedInterface(name: iname, members: members)
        }
        return result
    }

    private static func parse(_ xml: String) throws -> Element {
        var stack: [Element] = [Element(name: "#document", attributes: [:])]
        var rest = Substring(xml)
        while let open = rest.firstIndex(of: "<") {
            guard let close = rest[open...].firstIndex(of: ">") else { throw TestSupportError("unterminated tag") }
            let tag = rest[rest.index(after: open)..<close]
            rest = rest[rest.index(after: close)...]
            if tag.hasPrefix("!") || tag.hasPrefix("?") { continue }
            if tag.hasPrefix("/") {
                guard stack.count > 1 else { throw TestSupportError("unbalanced </\(tag)>") }
                let done = stack.removeLast()
                stack[stack.count - 1].children.append(done)
                continue
            }
            let selfClosing = tag.hasSuffix("/")
            let body = selfClosing ? tag.dropLast() : tag
            let name = String(body.prefix { !$0.isWhitespace })
            var attributes: [String: String] = [:]
            let pattern = /([A-Za-z_:.-]+)\s*=\s*"([^"]*)"/
            for match in body.matches(of: pattern) { attributes[String(match.output.1)] = String(match.output.2) }
            let element = Element(name: name, attributes: attributes)
            if selfClosing {
                stack[stack.count - 1].children.append(element)
            } else {
                stack.append(element)
            }
        }
        guard stack.count == 1, let node = stack[0].children.first(where: { $0.name == "node" }) else {
            throw TestSupportError("no <node> in introspection")
        }
        return node
    }
}
