import Foundation

/// Incompressible bytes from /dev/urandom.
func randomBytes(_ count: Int) -> [UInt8] {
    let urandom = FileHandle(forReadingAtPath: "/dev/urandom")
    defer { try? urandom?.close() }
    var bytes = [UInt8](urandom?.readData(ofLength: count) ?? Data())
    precondition(bytes.count == count, "short read from /dev/urandom")
    // Callers count on no zero block by chance: make every byte non-zero.
    for i in bytes.indices where bytes[i] == 0 { bytes[i] = 1 }
    return bytes
}
