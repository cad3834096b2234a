import PoolAPI

/// Fails the check with `message` unless `condition` holds.
func require(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw ConformanceFailure(message()) }
}

/// What every check context (per-host `Context`, shared-storage `SharedContext`) asserts with.
protocol Checking {}

extension Checking {
    func require(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        try BackendConformance.require(condition, message())
    }

    /// Expects `body` to fail with a `PoolError` of `code`.
    func expect(_ code: PoolError.Code, _ what: String, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let e as PoolError {
            try require(e.code == code, "\(what): expected \(code), got \(e.code): \(e)")
            return
        }
        throw ConformanceFailure("\(what): expected \(code), but it succeeded")
    }
}
