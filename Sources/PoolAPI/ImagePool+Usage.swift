import Linux

/// Usage: PoolUsage, PoolLimit and SetPoolLimit, from the backends that know them.
extension ImagePool {
    /// PoolUsage and PoolLimit: from the first backend that knows them for the pool folder,
    /// else `Image.unknown` each.
    public func poolUsage() async -> (usage: UInt64, limit: UInt64) {
        let result = try? await Blocking.run(.interactive) { [self] () -> [UInt64] in
            let now = poolUsageNow()
            return [now.usage, now.limit]
        }
        guard let result, result.count == 2 else { return (Image.unknown, Image.unknown) }
        return (result[0], result[1])
    }

    /// PoolUsage and PoolLimit on the calling thread, for synchronous property getters.
    public nonisolated func poolUsageNow() -> (usage: UInt64, limit: UInt64) {
        for b in registry.backends {
            if let r = try? b.poolUsage(of: realPoolPath) { return r }
        }
        return (Image.unknown, Image.unknown)
    }

    /// SetPoolLimit, by the first quota-capable backend that creates in the pool folder.
    public func setPoolLimit(_ bytes: UInt64) async throws {
        try await ensurePoolFolder()
        let pool = realPoolPath
        guard let backend = registry.backends.first(where: { $0.capabilities.contains(.quota) && $0.canCreate(in: pool) }) else {
            throw PoolError(.notSupported, "the pool at \(pool) has no quota support")
        }
        try await Blocking.run {
            do { try backend.setPoolLimit(bytes, of: pool) }
            catch { throw Self.poolError(error, "cannot set the pool limit") }
        }
    }
}
