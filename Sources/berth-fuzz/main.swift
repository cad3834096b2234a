// libFuzzer's driver for Berth's fuzz targets (Sources/FuzzTargets). Built only with
// BERTH_FUZZ=1 and `-sanitize=fuzzer,address` (scripts/fuzz.sh). SwiftPM gives an executable
// the module's own main, so this one hands over to libFuzzer with LLVMFuzzerRunDriver; all
// libFuzzer's flags work as usual. One executable serves every target, picked by
// BERTH_FUZZ_TARGET (inherited by libFuzzer's child processes in -fork and -merge modes), so
// the instrumented code is linked once rather than once per target.
import CFuzzer
import FuzzTargets
import Glibc

/// The target BERTH_FUZZ_TARGET names; the list of targets and exit 2 otherwise.
let selectedTarget: FuzzTarget = {
    let name = getenv("BERTH_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    if let target = FuzzTargets.named(name) { return target }
    var message = "berth-fuzz: set BERTH_FUZZ_TARGET to one of:\n"
    for target in FuzzTargets.all { message += "  \(target.name): \(target.summary)\n" }
    _ = message.withCString { write(2, $0, strlen($0)) }
    exit(2)
}()

/// libFuzzer's per-input hook, which its runtime references even when driven through
/// LLVMFuzzerRunDriver.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selectedTarget.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

_ = selectedTarget
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzerTestOneInput))
