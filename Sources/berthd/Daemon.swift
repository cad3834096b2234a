import BtrfsBackend
import Bus
import DirectoryBackend
import Glibc
import Linux
import Logging
import PoolAPI
import RawLoopBackend
import Services
import Synchronization
import struct SystemPackage.FilePath
import Transfer

/// berthd's composition: one bus connection, the service harnesses asked for, their bus names.
/// Lives on the bus loop's executor, so the signal handlers and startup never race.
actor Daemon {
    nonisolated let loop: EventLoop
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }
    let options: BerthdOptions
    let logger: Logger
    private var bus: Bus?
    private var stopping = false
    /// The process exit status once the loop ends; read by the synchronous main after `join()`.
    nonisolated let exitStatus = Mutex<Int32>(0)

    init(options: BerthdOptions, loop: EventLoop, logger: Logger) {
        self.options = options
        self.loop = loop
        self.logger = logger
    }

    /// At start: removes what a previous run left in `pool` (temp entries, lock files) and logs it,
    /// and warns about a pool folder that other users can reach.
    private func cleanUp(_ pool: ImagePool) async {
        let cleanup = await pool.removeStaleTemporaryEntries()
        for path in cleanup.removed { logger.info("removed stale \(path)") }
        for f in cleanup.failed { logger.warning("cannot remove stale \(f.path): \(f.reason)") }
        if let warning = pool.poolAccessWarning() { logger.warning("\(warning)") }
    }

    /// Connects, exports the services, takes their names, tells the service manager we are ready.
    func start() async {
        do {
            let bus = try await Bus.connect(address: options.busAddress, loop: loop, logger: logger)
            self.bus = bus
            if stopping { return await stop() }
            let paths = ServicePaths(root: options.root)
            let backendConfiguration = try loadBackendConfiguration()
            let info = DaemonInfo(root: options.root, services: options.services)
            // Composition point: the storage backends in claim priority order (a directory that
            // is a subvolume is a subvolume), and the machine image pool over them.
            let raw = RawLoopBackend(runtimeDirectory: FilePath(paths.runtimeDirectory))
            let logger = self.logger
            let registry = BackendRegistry([BtrfsBackend(), raw, DirectoryBackend(report: { logger.warning("\($0)") })])
            // Optional backends (RBD pools) serve machine images only.
            let optional = try await connectRbdPools(backendConfiguration, runtimeDirectory: paths.runtimeDirectory, raw: raw)
            let machineRegistry = optional.isEmpty ? registry : BackendRegistry(registry.backends + optional)
            let pool = ImagePool(configuration: ImagePool.Configuration(root: options.root), registry: machineRegistry)
            // What a previous run left: temp entries of transfers killed with berthd, stale locks,
            // inspection mounts.
            raw.cleanUpStaleInspections()
            await cleanUp(pool)
            // import1's transfers run in berth-transfer, beside berthd. Hostile input may crash a
            // worker: that is a failed transfer, not a backtrace dump in the journal.
            setenv("SWIFT_BACKTRACE", "enable=no", 1)
            let worker = TransferWorker.executableBesideSelf()
            if options.services.contains(.import1) && access(worker, X_OK) != 0 {
                throw DaemonError("import1 needs the transfer worker \(worker), which is \(Errno.current): install it beside berthd")
            }
            // Raw images are probed and mounted for reading in berth-inspect children, never here.
            if (options.services.contains(.machine1) || options.services.contains(.portable1))
                && access(raw.inspectorExecutable, X_OK) != 0 {
                throw DaemonError("reading raw images needs the image inspector \(raw.inspectorExecutable), which is \(Errno.current): install it beside berthd")
            }
            // One pool per image class (import1's `class`): portable1 serves the portable one,
            // import1 routes each transfer to its class's pool.
            let portables = ImagePool(configuration: .portables(root: options.root), registry: registry)
            var pools: [ImageClass: ImagePool] = [.machine: pool, .portable: portables]
            for imageClass in [ImageClass.sysext, .confext] {
                pools[imageClass] = ImagePool(configuration: ImagePool.Configuration(class: imageClass, root: options.root),
                                              registry: registry)
            }
            if options.services.contains(.import1) || options.services.contains(.portable1) { await cleanUp(portables) }
            if options.services.contains(.import1) {
                // Temp entries of killed transfers only: extension folders are commonly 0755
                // (systemd-sysext's), so no warning about their mode.
                for imageClass in [ImageClass.sysext, .confext] {
                    guard let p = pools[imageClass] else { continue }
                    let cleanup = await p.removeStaleTemporaryEntries()
                    for path in cleanup.removed { logger.info("removed stale \(path)") }
                    for f in cleanup.failed { logger.warning("cannot remove stale \(f.path): \(f.reason)") }
                }
            }
            let engine = TransferEngine(pools: pools, workerExecutable: worker, root: options.root)
            for kind in options.services {
                switch kind {
                case .machine1: try await Machine1Service(bus: bus, paths: paths, info: info, pool: pool).export()
                case .import1: try await Import1Service(bus: bus, paths: paths, info: info, engine: engine, logger: logger).export()
                case .portable1:
                    try await Portable1Service(bus: bus, paths: paths, info: info, pool: portables).export()
                }
            }
            for kind in options.services {
                try await bus.requestName(kind.busName)
                logger.info("serving \(kind.busName) with root \(options.root)")
            }
            ServiceManager.notify("READY=1")
        } catch {
            logger.critical("cannot start: \(error)")
            exitStatus.withLock { $0 = 1 }
            await stop()
        }
    }

    /// SIGTERM/SIGINT: answer or cancel the calls in flight, close the bus, end the loop.
    func stop() async {
        if stopping && bus == nil { return }
        stopping = true
        ServiceManager.notify("STOPPING=1")
        if let bus {
            self.bus = nil
            await bus.shutdown(grace: .milliseconds(500))
        }
        loop.requestExit()
    }

    /// A signal arrived (on the loop thread).
    nonisolated func signalled(_ signal: Int32) {
        Task { await self.stop() }
    }
}

/// Where the signal handlers, set up before the daemon exists, find it.
enum SignalTarget {
    static let daemon = Mutex<Daemon?>(nil)

    /// The SIGTERM/SIGINT handler (runs on the loop thread).
    static let forward: @Sendable (Int32) -> Void = { signal in
        daemon.withLock { $0 }?.signalled(signal)
    }
}

/// A reason berthd cannot start, logged as it is.
struct DaemonError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
