import Linux
import RawLoopBackend

extension FuzzTargets {
    /// Conversion writes the whole virtual disk: a fuzzed header may promise up to 64 PiB of
    /// (mostly sparse) disk, which is within bounds but a waste of each run. Only images up to
    /// this size are converted; larger ones are still parsed (header and L1 table).
    static let qcow2ConvertLimit: UInt64 = 64 << 20

    /// The bytes as a qcow2 file: the header and L1 table are read and checked, and an image
    /// that passes is converted to a raw file, which must come out exactly `virtualSize` long.
    static func qcow2(_ data: UnsafeRawBufferPointer) {
        let input = scratchFile(data)
        defer { input.close() }
        _ = Qcow2Image.isQcow2(input)
        guard let image = try? Qcow2Image(fd: input) else { return }
        FuzzCheck.require(image.virtualSize <= Qcow2Image.maximumVirtualSize, "virtual size \(image.virtualSize) over the limit")
        FuzzCheck.require(image.clusterSize >= 512 && image.clusterSize <= 2 << 20, "cluster size \(image.clusterSize)")
        guard image.virtualSize <= qcow2ConvertLimit else { return }
        let output = scratchFile(UnsafeRawBufferPointer(start: nil, count: 0))
        defer { output.close() }
        var last: UInt64 = 0
        do {
            try image.convert(to: output) { done, total in
                FuzzCheck.require(total == image.virtualSize && done <= total && done >= last, "progress \(done)/\(total)")
                last = done
            }
        } catch {
            return
        }
        let size = (try? output.stat().size).map { UInt64(max($0, 0)) }
        FuzzCheck.require(size == image.virtualSize, "converted to \(String(describing: size)) bytes, not \(image.virtualSize)")
    }
}
