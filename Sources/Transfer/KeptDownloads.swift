import Glibc
import Linux
import PoolAPI

/// keep-download (IMPORT_PULL_KEEP_DOWNLOAD): a pull's verified download is kept as a hidden,
/// read-only image of its class's pool, named as systemd-pull names it, `.tar-<URL>\<ETag>` or
/// `.raw-<URL>\<ETag>` with `/`, `\` and control characters escaped as `\xNN`. A later
/// keep-download pull of the same URL asks the server with `If-None-Match`; on 304 the kept
/// image is copied to the new name instead of downloading again.
package enum KeptDownloads {
    /// `.tar-<escaped URL>\` or `.raw-<escaped URL>\`: every kept download of `url` starts so.
    static func prefix(_ type: TransferType, url: String) -> String {
        (type == .pullRaw ? ".raw-" : ".tar-") + escape(url) + "\\"
    }

    /// The kept image's name for `etag`, nil if it would be no valid image name (too long).
    static func name(prefix: String, etag: String) -> String? {
        let name = prefix + escape(etag)
        return (try? ImagePool.validateName(name)) == nil ? nil : name
    }

    /// The ETags kept for `prefix` in `pool`, with their image names.
    static func kept(in pool: ImagePool, prefix: String) -> [(etag: String, name: String)] {
        pool.imageNamesNow().filter { $0.hasPrefix(prefix) }.compactMap { name in
            unescape(String(name.dropFirst(prefix.count))).map { (etag: $0, name: name) }
        }
    }

    /// `\xNN` for '/', '\' and control bytes, in the manner of systemd-pull's names: the
    /// result is a file name, and `unescape` gives the text back.
    package static func escape(_ s: String) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in s.utf8 {
            if b == UInt8(ascii: "/") || b == UInt8(ascii: "\\") || b < 0x20 || b == 0x7f {
                out += [UInt8(ascii: "\\"), UInt8(ascii: "x"), digits[Int(b >> 4)], digits[Int(b & 0xf)]]
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The inverse of `escape`; nil for a malformed escape.
    package static func unescape(_ s: String) -> String? {
        var bytes: [UInt8] = []
        var i = s.utf8.startIndex
        let u = s.utf8
        while i < u.endIndex {
            let b = u[i]
            if b == UInt8(ascii: "\\") {
                let x = u.index(after: i)
                guard x < u.endIndex, u[x] == UInt8(ascii: "x") else { return nil }
                let h = u.index(after: x)
                guard h < u.endIndex, u.index(after: h) < u.endIndex,
                      let v = UInt8(String(decoding: [u[h], u[u.index(after: h)]], as: UTF8.self), radix: 16) else { return nil }
                bytes.append(v)
                i = u.index(h, offsetBy: 2)
            } else {
                bytes.append(b)
                i = u.index(after: i)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
