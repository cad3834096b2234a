import Glibc
import Linux
import PoolAPI

extension Context {
    /// Free bytes of the filesystem under test, after committing what was written (btrfs counts
    /// written data in its free space only once the transaction commits).
    func freeBytes() throws -> Int {
        sync()
        var fs = statvfs()
        try sys("statvfs") { statvfs(env.root.string, &fs) }
        return Int(fs.f_bavail) * Int(fs.f_frsize)
    }

    /// `.outOfSpace` where the backend's clones share extents with their source (a reflink or
    /// snapshot on btrfs): such a clone cannot run out of space midway, so what the check asserts
    /// instead is the sharing itself — cloning an image that holds 60 % of the free space
    /// succeeds, costs less than a quarter of its data, leaves no temp entry, and the clone holds
    /// the same bytes.
    func cloneSharesExtents() async throws {
        let bulk = try freeBytes() * 6 / 10 / (1 << 20) * (1 << 20)
        let tree = isTree
        let big = try await makeImage("big") { path in
            try writeData(tree ? path + "/bulk" : path, offset: tree ? 0 : Fixture.sparseSize, bytes: bulk)
        }
        let before = try freeBytes()
        let copy = try await pool.clone("big", to: "big-copy", readOnly: false)
        let after = try freeBytes()
        try require(before - after < bulk / 4,
                    "a clone sharing extents used \((before - after) >> 20) MiB for \(bulk >> 20) MiB of data")
        try requireNoTemporaryEntries("after a sharing clone")
        let file = { (image: Image) in tree ? image.path + "/bulk" : image.path }
        try require(try sameBytes(file(big), file(copy)), "the clone's data differs from its source")
    }

    /// Whether the files at `a` and `b` hold the same bytes.
    private func sameBytes(_ a: String, _ b: String) throws -> Bool {
        let fa = try FileDescriptor.open(a, flags: O_RDONLY), fb = try FileDescriptor.open(b, flags: O_RDONLY)
        var ba = [UInt8](repeating: 0, count: 1 << 20), bb = ba
        var offset: Int64 = 0
        while true {
            let na = try ba.withUnsafeMutableBytes { try fa.read(into: $0, at: offset) }
            let nb = try bb.withUnsafeMutableBytes { try fb.read(into: $0, at: offset) }
            if na != nb || ba[0..<na] != bb[0..<nb] { return false }
            if na == 0 { return true }
            offset += Int64(na)
        }
    }
}
