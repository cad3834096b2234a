import Glibc
import Linux
import PoolAPI
import Synchronization

/// One running transfer (an `org.freedesktop.import1.Transfer` object): its constant
/// properties, its progress, its events, and Cancel().
public final class TransferHandle: Sendable {
    /// `Transfer.Id`, from 1 up.
    public let id: UInt32
    /// `Transfer.Type`.
    public let type: TransferType
    /// `Transfer.Local`: the image name.
    public let local: String
    /// `Transfer.Remote`: the URL, or what the fd refers to.
    public let remote: String
    /// `Transfer.Verify`: a pull's verify mode, "" otherwise.
    public let verify: String
    /// The image class (ListTransfersEx's `class` column).
    public let imageClass: ImageClass
    /// The flags it was started with.
    public let flags: TransferFlags
    /// The events, in order; the last is `.finished`. One consumer.
    public let events: AsyncStream<TransferEvent>

    let worker: WorkerProcess
    private let continuation: AsyncStream<TransferEvent>.Continuation
    private struct State {
        var progress: Double?
        var result: TransferResult?
        var waiters: [CheckedContinuation<TransferResult, Never>] = []
    }
    private let state = Mutex(State())

    init(id: UInt32, request: TransferRequest, worker: WorkerProcess) {
        self.id = id
        type = request.type
        local = request.local
        remote = request.remote
        verify = request.verify
        imageClass = request.imageClass
        flags = request.flags
        self.worker = worker
        (events, continuation) = AsyncStream.makeStream(of: TransferEvent.self, bufferingPolicy: .unbounded)
    }

    /// Progress 0…1, nil while unknown (a pipe or a download without Content-Length).
    public var progress: Double? { state.withLock { $0.progress } }

    /// `Transfer.Progress` as systemd-importd 252 reports it: the fraction, or -DBL_MAX while
    /// unknown (transfer_percent_as_double() for progress_percent == UINT_MAX).
    public var systemdProgress: Double { progress ?? -Double.greatestFiniteMagnitude }

    /// The result once finished, nil while running.
    public var result: TransferResult? { state.withLock { $0.result } }

    /// `Transfer.Cancel()` / `Manager.CancelTransfer(id)`: the worker gets SIGTERM, then
    /// SIGKILL after the grace period; the transfer finishes as "canceled" and leaves nothing.
    public func cancel() { worker.cancel() }

    /// Waits for the end of the transfer.
    public func wait() async -> TransferResult {
        await withCheckedContinuation { c in
            let done: TransferResult? = state.withLock { s in
                if let r = s.result { return r }
                s.waiters.append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
    }

    func emit(_ event: TransferEvent) {
        if case .progress(let p) = event { state.withLock { $0.progress = p } }
        continuation.yield(event)
    }

    func finish(_ result: TransferResult) {
        let waiters = state.withLock { s -> [CheckedContinuation<TransferResult, Never>] in
            s.result = result
            if result == .done { s.progress = 1 }
            defer { s.waiters = [] }
            return s.waiters
        }
        continuation.yield(.finished(result))
        continuation.finish()
        for w in waiters { w.resume(returning: result) }
    }
}

/// import1's logic behind its D-Bus harness: starts transfers in worker processes, tracks
/// them (ListTransfers), refuses a second writer of one image name, and installs imports
/// atomically through the pool so that a failed, cancelled or crashed transfer leaves nothing.
public actor TransferEngine {
    /// The pool of each image class served: transfers of a class go to its pool.
    public nonisolated let pools: [ImageClass: ImagePool]
    /// The machine pool (252's members): `pools[.machine]`.
    public nonisolated var pool: ImagePool? { pools[.machine] }
    /// The worker binary: berth-transfer beside berthd (`TransferWorker.executableBesideSelf()`) in production.
    public let workerExecutable: String
    /// berthd's `--root`: keyrings are read under it.
    public let root: String
    /// Seconds between SIGTERM and SIGKILL when a transfer is cancelled.
    public let cancelGracePeriod: Double

    private var nextID: UInt32 = 1
    private var running: [UInt32: TransferHandle] = [:]
    /// Images being written and read by transfers, by `key(class, name)`: one name may be
    /// busy in one class and free in another.
    private var writing: Set<String> = []
    private var reading: [String: Int] = [:]

    /// `class/name`: '/' is in no image name, so no two pairs share a key.
    private static func key(_ imageClass: ImageClass, _ name: String) -> String { "\(imageClass.rawValue)/\(name)" }

    /// An engine over `pool` (machine images only), spawning `workerExecutable` for each transfer.
    public init(pool: ImagePool, workerExecutable: String, root: String, cancelGracePeriod: Double = 5) {
        self.init(pools: [.machine: pool], workerExecutable: workerExecutable, root: root, cancelGracePeriod: cancelGracePeriod)
    }

    /// An engine over one pool per image class, spawning `workerExecutable` for each transfer.
    public init(pools: [ImageClass: ImagePool], workerExecutable: String, root: String, cancelGracePeriod: Double = 5) {
        self.pools = pools
        self.workerExecutable = workerExecutable
        self.root = root
        self.cancelGracePeriod = cancelGracePeriod
    }

    /// ListTransfers: the running transfers, by id.
    public func transfers() -> [TransferHandle] {
        running.values.sorted { $0.id < $1.id }
    }

    /// The running transfer `id`, if any.
    public func transfer(id: UInt32) -> TransferHandle? { running[id] }

    /// CancelTransfer(id): cancels transfer `id`; false if no such transfer runs (the harness
    /// answers `org.freedesktop.import1.NoSuchTransfer`).
    @discardableResult
    public func cancel(id: UInt32) -> Bool {
        guard let t = running[id] else { return false }
        t.cancel()
        return true
    }

    /// ImportTar/ImportRaw/ImportFileSystem/ExportTar/ExportRaw/PullTar/PullRaw: checks the
    /// request, then starts it and returns at once (TransferNew follows).
    /// - Throws: `PoolError(.invalidName)` for a bad name; `.busy` if a transfer already
    ///   writes (or, for imports, reads) that name; `.imageExists` for an existing name
    ///   without `force`; `.noSuchImage` for an export of a missing image; `.notSupported`
    ///   for a raw image in ExportTar or a tree in ExportRaw; `TransferError` for a bad URL
    ///   or fd, or flags the type does not take (InvalidArgs); `.notSupported` for a class
    ///   this engine has no pool for.
    public func start(_ request: TransferRequest) async throws -> TransferHandle {
        try ImagePool.validateName(request.local)
        _ = try TransferFlags(validating: request.flags.rawValue, allowed: .allowed(for: request.type))
        guard let pool = pools[request.imageClass] else {
            throw PoolError(.notSupported, "no pool for \(request.imageClass.rawValue) images")
        }
        let name = Self.key(request.imageClass, request.local)
        let force = request.flags.contains(.force)
        var exportSource: String?
        var dataFD: Int32?
        var hold: ImageReadHold?
        switch request.operation {
        case .importing(let fd):
            try refuseBusyWriter(name, request.local)
            if !force { try await refuseExisting(request.local, in: pool) }
            dataFD = fd
        case .pulling(let url, _):
            if request.type == .pullOci {
                guard OciReference(url) != nil else { throw TransferError("image reference \(url) is not valid") }
            } else {
                guard Pull.isValidURL(url) else { throw TransferError("URL \(url) is not valid") }
            }
            try refuseBusyWriter(name, request.local)
            if !force { try await refuseExisting(request.local, in: pool) }
        case .exporting(let fd, _):
            if writing.contains(name) { throw PoolError(.busy, "image '\(request.local)' is being written by another transfer") }
            // Held until the worker has ended: RemoveImage/RenameImage meanwhile are EBUSY
            // rather than cutting the export short.
            let held = try await pool.holdForReading(request.local)
            hold = held
            switch (request.type, held.image.type) {
            case (.exportTar, .directory), (.exportTar, .subvolume), (.exportRaw, .raw): break
            default:
                await held.release()
                throw PoolError(.notSupported, "cannot \(request.type.rawValue) a \(held.image.type.rawValue) image")
            }
            exportSource = held.image.path
            dataFD = fd
        }
        let ownFD: FileDescriptor?
        do {
            // The caller may close its fd as soon as we return.
            ownFD = try dataFD.map { fd in
                FileDescriptor(owning: try sys("fcntl(F_DUPFD_CLOEXEC)") { fcntl(fd, F_DUPFD_CLOEXEC, 3) })
            }
            // Re-checked after the awaits above, which let other starts in.
            switch request.operation {
            case .importing, .pulling:
                try refuseBusyWriter(name, request.local)
                writing.insert(name)
            case .exporting:
                if writing.contains(name) { throw PoolError(.busy, "image '\(request.local)' is being written by another transfer") }
                reading[name, default: 0] += 1
            }
        } catch {
            await hold?.release()
            throw error
        }

        let id = nextID
        nextID = nextID == UInt32.max ? 1 : nextID + 1
        var arguments = TransferWorker.Arguments(type: request.type)
        arguments.parent = getpid()
        arguments.root = root
        arguments.source = exportSource
        arguments.imageClass = request.imageClass
        arguments.flags = request.flags
        arguments.poolPath = pool.poolPath
        switch request.operation {
        case .exporting(_, let format): arguments.format = format
        case .pulling(let url, let verify):
            arguments.url = url
            arguments.verify = verify
            if request.flags.contains(.keepDownload) {
                arguments.knownETags = KeptDownloads.kept(in: pool, prefix: KeptDownloads.prefix(request.type, url: url)).map(\.etag)
            }
        case .importing: break
        }
        let worker = WorkerProcess(executable: workerExecutable, gracePeriod: cancelGracePeriod)
        let handle = TransferHandle(id: id, request: request, worker: worker)
        running[id] = handle
        let heldImage = hold
        Task {
            let result = await Self.execute(request, arguments: arguments, data: ownFD, handle: handle, pool: pool)
            ownFD?.close()
            // The worker has been reaped (it ended, failed, was cancelled or killed): only now
            // may the exported image change.
            await heldImage?.release()
            self.finished(handle, result: result)
        }
        return handle
    }

    private func refuseBusyWriter(_ key: String, _ name: String) throws {
        if writing.contains(key) || reading[key, default: 0] > 0 {
            throw PoolError(.busy, "image '\(name)' is already being transferred")
        }
    }

    private func refuseExisting(_ name: String, in pool: ImagePool) async throws {
        do {
            _ = try await pool.image(named: name)
            throw PoolError(.imageExists, "image '\(name)' already exists")
        } catch let e as PoolError where e.code == .noSuchImage {
            return
        }
    }

    private func finished(_ handle: TransferHandle, result: TransferResult) {
        running[handle.id] = nil
        let key = Self.key(handle.imageClass, handle.local)
        switch handle.type {
        case .exportTar, .exportRaw:
            reading[key, default: 1] -= 1
            if reading[key] == 0 { reading[key] = nil }
        default:
            writing.remove(key)
        }
        handle.finish(result)
    }

    /// Runs the worker; for imports and pulls inside `pool.install`, so the temp entry is
    /// removed on any failure and the image appears only once the worker succeeded.
    private static func execute(_ request: TransferRequest, arguments: TransferWorker.Arguments, data: FileDescriptor?,
                                handle: TransferHandle, pool: ImagePool) async -> TransferResult {
        @Sendable func runWorker(_ arguments: TransferWorker.Arguments) async -> WorkerProcess.Outcome {
            await handle.worker.run(arguments: arguments.commandLine, data: data?.rawValue) { event in handle.emit(event) }
        }
        if case .exporting = request.operation {
            let outcome = await runWorker(arguments)
            if outcome.succeeded { return .done }
            return outcome.canceled ? .canceled : .failed(outcome.failureMessage)
        }
        let force = request.flags.contains(.force), readOnly = request.flags.contains(.readOnly)
        let type: ImageType = (request.type == .importRaw || request.type == .pullRaw) ? .raw : .directory
        let kept: String? = if request.flags.contains(.keepDownload), case .pulling(let url, _) = request.operation {
            KeptDownloads.prefix(request.type, url: url)
        } else { nil }
        let download = Mutex<DownloadNote?>(nil)
        // pull-oci: the worker writes the image's nspawn settings beside the temp entry.
        let settings = Mutex<String?>(nil)
        defer { OciSettingsFile.discard(settings.withLock { $0 }) }
        do {
            let warn: @Sendable (String) -> Void = { handle.emit(.log(priority: LogPriority.warning, message: $0)) }
            let image = try await pool.install(request.local, type: type, force: force, readOnly: readOnly, warn: warn) { temp in
                var a = arguments
                a.target = temp
                if request.type == .pullOci { settings.withLock { $0 = OciSettingsFile.temporaryPath(for: temp) } }
                let outcome = await runWorker(a)
                if outcome.canceled { throw PoolError(.cancelled, "transfer canceled") }
                if !outcome.succeeded { throw TransferError(outcome.failureMessage) }
                download.withLock { $0 = outcome.download }
                if let kept, let note = outcome.download, note.notModified {
                    try await copyKept(prefix: kept, etag: note.etag, into: temp, tree: type != .raw, arguments: arguments,
                                       handle: handle, pool: pool)
                }
            }
            if let kept, let note = download.withLock({ $0 }), !note.notModified {
                await keep(request.local, prefix: kept, etag: note.etag, handle: handle, pool: pool)
            }
            if let temp = settings.withLock({ $0 }) { OciSettingsFile.install(temp, for: image, warn: warn) }
            return .done
        } catch let e as PoolError where e.code == .cancelled {
            return .canceled
        } catch let e as PoolError {
            if let cause = e.cause as? TransferError { return .failed(cause.message) }
            handle.emit(.log(priority: LogPriority.error, message: "\(e)"))
            return .failed("\(e)")
        } catch {
            handle.emit(.log(priority: LogPriority.error, message: "\(error)"))
            return .failed("\(error)")
        }
    }

    /// keep-download, 304: the kept image of `etag` is copied into `temp` by a second worker
    /// (import-fs of its tree, import-raw of its file), held for reading meanwhile.
    private static func copyKept(prefix: String, etag: String, into temp: String, tree: Bool,
                                 arguments: TransferWorker.Arguments, handle: TransferHandle, pool: ImagePool) async throws {
        guard let name = KeptDownloads.name(prefix: prefix, etag: etag) else {
            throw TransferError("no kept download for ETag \(etag)")
        }
        let hold = try await pool.holdForReading(name)
        let outcome: WorkerProcess.Outcome
        do {
            let path = hold.image.path
            let source = tree ? try FileDescriptor.openDirectory(path, followSymlinks: false)
                : try FileDescriptor.open(path, flags: O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            defer { source.close() }
            var copy = arguments
            copy.type = tree ? .importFileSystem : .importRaw
            copy.target = temp
            copy.url = nil
            copy.knownETags = []
            // The download is over (100 %): the copy's own progress would only run it back.
            outcome = await handle.worker.run(arguments: copy.commandLine, data: source.rawValue) { event in
                if case .progress = event { return }
                handle.emit(event)
            }
        } catch {
            await hold.release()
            throw error
        }
        await hold.release()
        if outcome.canceled { throw PoolError(.cancelled, "transfer canceled") }
        if !outcome.succeeded { throw TransferError(outcome.failureMessage) }
    }

    /// keep-download, a fresh download: a read-only copy of the new image becomes the kept
    /// download of its ETag (a snapshot on btrfs), replacing the ones kept for other ETags of
    /// the URL. A failure here is a warning: the image itself is installed.
    private static func keep(_ local: String, prefix: String, etag: String, handle: TransferHandle, pool: ImagePool) async {
        func warn(_ text: String) { handle.emit(.log(priority: LogPriority.warning, message: text)) }
        guard let name = KeptDownloads.name(prefix: prefix, etag: etag) else {
            warn("download not kept: its name would be too long for an image name")
            return
        }
        for old in KeptDownloads.kept(in: pool, prefix: prefix) {
            do {
                try await pool.setReadOnly(old.name, false)
                try await pool.remove(old.name)
            } catch {
                warn("cannot remove the download kept before (\(old.name)): \(error)")
            }
        }
        do {
            _ = try await pool.clone(local, to: name, readOnly: true)
            handle.emit(.log(priority: LogPriority.info, message: "download kept as \(name)"))
        } catch {
            warn("download not kept: \(error)")
        }
    }
}
