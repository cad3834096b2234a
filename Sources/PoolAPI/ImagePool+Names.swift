import Linux
import struct SystemPackage.FilePath

/// Name rules: which image names are valid, and the file names derived from a name (temp
/// entries, nspawn settings) and from a path.
extension ImagePool {
    // MARK: names

    /// The longest image name, in bytes: 233, so that every file name derived from a name fits
    /// NAME_MAX (255). The longest is the temp entry of a raw image, `.#NAME.raw` + 16 hex
    /// digits (NAME + 22); the lock files `.#NAME.raw.lck` (NAME + 10) and `name-NAME` in the
    /// locks folder (NAME + 5) are shorter. systemd 252 accepts up to 255 bytes and then fails
    /// with ENAMETOOLONG midway (a clone or rename to a 250-byte name leaves an image that can
    /// no longer be locked, so not renamed, removed or made read-only); Berth refuses such a
    /// name at the call, before anything starts.
    public static let maximumNameBytes = 255 - ".#".utf8.count - ".raw".utf8.count - temporarySuffixDigits

    /// machine1's image name rule (a valid file name): not empty, not `.` or `..`, no `/`, no
    /// control characters, at most `maximumNameBytes` (233) bytes, not starting with `.#` (temp
    /// entries). `a b`, `..x` and long names are fine; a leading dot makes a hidden image. The
    /// one check for every name Berth is given or finds: machine1's and import1's arguments
    /// and the entries of the search paths (a longer entry is not an image).
    public static func validateName(_ name: String) throws {
        let bytes = name.utf8
        // Control characters and '/' are single bytes in UTF-8 (no multi-byte sequence holds a
        // byte below 0x80), so one pass over the bytes checks them all.
        guard !bytes.isEmpty, bytes.count <= maximumNameBytes, name != ".", name != "..", !name.hasPrefix(".#"),
              !bytes.contains(where: { $0 < 0x20 || $0 == 0x7f || $0 == UInt8(ascii: "/") }) else {
            throw PoolError(.invalidName, "invalid image name '\(name)'")
        }
    }

    /// The hex digits after the entry name in a temp name.
    static let temporarySuffixDigits = 16

    /// `.#<entry><16 hex digits>`, systemd's temp-name shape: hidden from listings by `.#`.
    static func temporaryName(for entry: String) -> String {
        var rng = SystemRandomNumberGenerator()
        let r = rng.next() as UInt64
        let hex = String(r, radix: 16)
        return ".#" + entry + String(repeating: "0", count: temporarySuffixDigits - hex.count) + hex
    }

    /// `FOLDER/NAME.nspawn`: where systemd-nspawn looks for the settings of image NAME kept in
    /// FOLDER (an OCI pull writes one there).
    static func settingsPath(_ folder: FilePath, _ name: String) -> FilePath { folder.appending(name + ".nspawn") }
}
