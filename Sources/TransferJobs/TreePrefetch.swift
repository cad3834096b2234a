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
            guard dirFD >= 0 else { continue }
            let directory = FileDescriptor(owning: dirFD)
            defer { directory.close() }
            guard let entries = try? directoryListing(of: directory) else { continue }
            var subdirectories: [String] = []
            for e in entries {
                if stopped.load(ordering: .relaxed) { return }
                var type = e.fileType
                if type == nil {
                    guard let st = try? fileStatus(e.name, relativeTo: directory, followSymlinks: false) else { continue }
                    type = st.mode & UInt32(S_IFMT)
                }
                if type == UInt32(S_IFDIR) {
                    subdirectories.append(path == "." ? e.name : path + "/" + e.name)
                } else if type == UInt32(S_IFREG) {
                    issued += prefetch(e.name, in: directory.rawValue)
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
