// berthd: a synchronous main on purpose. An async main parks the main thread with signals
// unblocked, so SIGTERM would kill the process instead of reaching sd-event (notes/sd-bus-from-swift.md).
import Bus
import Glibc
import Linux
import Logging

// A few malloc arenas, not one per thread that ever allocated: berthd's threads mostly wait.
limitMallocArenas(to: 2)
EventLoop.blockSignals([SIGTERM, SIGINT])
let options = BerthdOptions.parseOrExit()
let logLevel: Logger.Level = options.verbose ? .debug : .info
LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = logLevel
    return handler
}
let logger = Logger(label: "berthd")

let loop: EventLoop
do {
    // The loop is not known inside its own init: the handlers find it through the daemon.
    loop = try EventLoop(name: "berthd", signals: [
        (SIGTERM, SignalTarget.forward),
        (SIGINT, SignalTarget.forward),
    ])
} catch {
    logger.critical("cannot start the event loop: \(error)")
    exit(1)
}
let daemon = Daemon(options: options, loop: loop, logger: logger)
SignalTarget.daemon.withLock { $0 = daemon }
Task.detached { await daemon.start() }
loop.join()
// No `await` anywhere in this file: that would turn it into an async main.
exit(daemon.exitStatus.withLock { $0 })
