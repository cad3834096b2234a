import Glibc

/// CLOCK_MONOTONIC in seconds: for deadlines, rate limits and ages, which a change of the wall
/// clock must not move.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
