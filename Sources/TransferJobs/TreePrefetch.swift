import Glibc
import Linux
import Synchronization

/// Reads an image tree ahead of ExportTar's archive writer, on a thread of its own.
///
/// The writer (libarchive's disk reader) reads one file after another and waits for each on
/// a cold cache: with many small files an export is mostly I/O latency. This thread walks the
/// tree in the order libarchive does (a directory's entries in readdir order; then its
/// subdirectories, the last one found first), stats each entry (bringing the inode in) and
/// asks for each regular file's data with posix_fadvise(POSIX_FADV_WILLNEED), which queues the
/// reads without waiting for them. It stays at most `window` bytes of file data ahead of what
/// the writer has done, so a big tree does not push its own start out of the page cache.
/// It only reads; an error anywhere just ends the walk early (the export does not depend on it).
/// `@unchecked Sendable`: `root` is only read; the rest is atomics.
final class TreePrefetcher: @unchecked Sendable {
    /// Bytes of regular-file data the writer has finished with.
    let consumedBytes = Atomic<Int64>(0)
    private let stopped = Atomic<Bool>(false)
    private let root: Int32
    private let window: Int64
    private var thread: WorkerThread<Void>?
    /// At most this much of one file is read ahead.
    static let perFileLimit: Int64 = 4 << 20

    /// Starts walking the tree at `directory` (duplicated: the caller keeps its descriptor).
    init(directory: FileDescriptor, window: Int64 = 64 << 20) {
        root = fcntl(directory.rawValue, F_DUPFD_CLOEXEC, 0)
        self.window = window
        guard root >= 0 else { return }
        thread = try? WorkerThread { [self] in walk() }
    }

    /// The writer finished a regular file of `size` bytes.
    func consumed(_ size: Int64) {
        consumedBytes.add(size, ordering: .relaxed)
    }

    /// Stops the walk and waits for the thread.
    func stop() {
        stopped.store(true, ordering: .relaxed)
        _ = thread?.join()
        thread = nil
    }

    deinit {
        stop()
        if root >= 0 { close(root) }
    }

    private func walk() {
        var issued: Int64 = 0
        var pending: [String] = ["."]
        while let path = pending.popLast() {
            if stopped.load(ordering: .relaxed) { return }
            let dirFD = openat(root, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard dirFD >= 0, let stream = fdopendir(dirFD) else {
                if dirFD >= 0 { close(dirFD) }
                continue
            }
            defer { closedir(stream) }
            var subdirectories: [String] = []
            while let e = readdir(stream) {
                if stopped.load(ordering: .relaxed) { return }
                let name = withUnsafePointer(to: e.pointee.d_name) {
                    $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
                }
                if name == "." || name == ".." { continue }
                var type = e.pointee.d_type
                if type == UInt8(DT_UNKNOWN) {
                    var st = stat()
                    guard fstatat(dirfd(stream), name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
                    type = (st.st_mode & S_IFMT) == S_IFDIR ? UInt8(DT_DIR) : (st.st_mode & S_IFMT) == S_IFREG ? UInt8(DT_REG) : 0
                }
                if type == UInt8(DT_DIR) {
                    subdirectories.append(path == "." ? name : path + "/" + name)
                } else if type == UInt8(DT_REG) {
                    issued += prefetch(name, in: dirfd(stream))
                    // Stay within the window of what the writer has reached.
                    while issued - consumedBytes.load(ordering: .relaxed) > window {
                        if stopped.load(ordering: .relaxed) { return }
                        usleep(2000)
                    }
                }
            }
            pending.append(contentsOf: subdirectories)
        }
    }

    /// Queues the file's data for reading; returns its size.
    private func prefetch(_ name: String, in directory: Int32) -> Int64 {
        let fd = openat(directory, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return 0 }
        // The start of a big file is enough: the writer's sequential reads get the kernel's
        // own readahead for the rest; and a huge sparse file is not read ahead as zeros.
        _ = posix_fadvise(fd, 0, off_t(min(Int64(st.st_size), Self.perFileLimit)), POSIX_FADV_WILLNEED)
        return Int64(st.st_size)
    }
}
