// libFuzzer's entry points for Berth's fuzz targets (Sources/FuzzTargets). Built only with
// BERTH_FUZZ=1 and `-sanitize=fuzzer` (scripts/fuzz.sh): libFuzzer supplies `main`, so this
// file has none. One executable serves every target, picked by BERTH_FUZZ_TARGET, so the
// instrumented code is linked once rather than once per target.
import FuzzTargets
import Glibc

/// The target BERTH_FUZZ_TARGET names; the list of targets and exit 2 otherwise.
let selectedTarget: FuzzTarget = {
    let name = getenv("BERTH_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    if let target = FuzzTargets.named(name) { return target }
    var message = "berth-fuzz: set BERTH_FUZZ_TARGET to one of:\n"
    for target in FuzzTargets.all { message += "  \(target.name): \(target.summary)\n" }
    fputs(message, stderr)
    exit(2)
}()

/// libFuzzer's start-up hook: resolves the target before the first input.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    _ = selectedTarget
    return 0
}

/// libFuzzer's per-input hook.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selectedTarget.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
