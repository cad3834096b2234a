import Foundation

/// A fresh folder under /tmp (or `parent`), removed by `remove()`.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    public init(prefix: String = "berth-test", in parent: String = NSTemporaryDirectory()) throws {
        let template = (parent as NSString).appendingPathComponent("\(prefix).XXXXXX")
        var bytes = Array(template.utf8CString)
        guard let made = mkdtemp(&bytes) else { throw TestSupportError("mkdtemp \(template) failed") }
        path = String(cString: made)
    }

    /// `path/component`.
    public func appending(_ component: String) -> String { (path as NSString).appendingPathComponent(component) }

    /// Removes the folder and all below it; immutable flags are lifted first so nothing stays.
    public func remove() {
        _ = try? run(["chattr", "-R", "-i", path])
        try? FileManager.default.removeItem(atPath: path)
    }
}
