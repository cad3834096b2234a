import ImageProbe
import InspectProtocol

extension FuzzTargets {
    /// The image size plans are read against: partitions must end inside it.
    static let inspectorImageSize: UInt64 = 1 << 30

    /// What crosses from a less-trusted process during an inspection: the `berth-inspect`
    /// child's one-line answer that berthd reads (`InspectorAnswer.parse`), and the plan its
    /// unprivileged libblkid probe writes for the child (`InspectionPlan(wire:imageSize:)`).
    /// Whatever parses must say the same when written out and read back, and a plan's
    /// partitions must lie inside the image.
    static func inspector(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        if let answer = InspectorAnswer.parse(bytes) {
            FuzzCheck.require(InspectorAnswer.parse(Array(answer.line.utf8)) == answer, "answer does not read back: \(answer)")
        }
        if let plan = InspectionPlan(wire: bytes, imageSize: inspectorImageSize) {
            for mount in plan.mounts {
                guard let p = mount.partition else { continue }
                FuzzCheck.require(p.length > 0 && p.start <= inspectorImageSize - p.length, "partition outside the image: \(p)")
            }
            FuzzCheck.require(InspectionPlan(wire: Array(plan.wire.utf8), imageSize: inspectorImageSize) == plan,
                              "plan does not read back: \(plan)")
        }
    }
}
