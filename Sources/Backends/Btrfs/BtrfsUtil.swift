import CBtrfsUtil
import Glibc
import Linux

/// Calls into libbtrfsutil, which returns its own error enum and leaves the cause in errno.
enum BtrfsUtil {
    /// Runs one libbtrfsutil call, turning a failure into a `SystemCallError` that names the
    /// call and libbtrfsutil's reason, with the errno it left (EINVAL where it left none, as for
    /// "not a subvolume" found by its own checks).
    static func call(_ name: String, _ subject: String, _ body: () -> btrfs_util_error) throws(SystemCallError) {
        Glibc.errno = 0
        let result = body()
        guard result != BTRFS_UTIL_OK else { return }
        let saved = Glibc.errno
        let reason = btrfs_util_strerror(result).map { String(cString: $0) } ?? "error \(result.rawValue)"
        throw SystemCallError("\(name) [\(reason)]", Errno(saved == 0 ? EINVAL : saved), subject: subject)
    }

    /// btrfs_util_subvolume_info_fd(fd, 0): the subvolume holding `fd`.
    static func info(_ fd: FileDescriptor, subject: String) throws(SystemCallError) -> btrfs_util_subvolume_info {
        var info = btrfs_util_subvolume_info()
        try call("btrfs_util_subvolume_info", subject) { btrfs_util_subvolume_info_fd(fd.rawValue, 0, &info) }
        return info
    }

    /// btrfs_util_subvolume_id_fd: the id of the subvolume holding `fd`.
    static func subvolumeID(_ fd: FileDescriptor, subject: String) throws(SystemCallError) -> UInt64 {
        var id: UInt64 = 0
        try call("btrfs_util_subvolume_id", subject) { btrfs_util_subvolume_id_fd(fd.rawValue, &id) }
        return id
    }

    /// btrfs_util_get_subvolume_read_only_fd.
    static func isReadOnly(_ fd: FileDescriptor, subject: String) throws(SystemCallError) -> Bool {
        var readOnly = false
        try call("btrfs_util_get_subvolume_read_only", subject) { btrfs_util_get_subvolume_read_only_fd(fd.rawValue, &readOnly) }
        return readOnly
    }

    /// btrfs_util_set_subvolume_read_only_fd.
    static func setReadOnly(_ fd: FileDescriptor, _ readOnly: Bool, subject: String) throws(SystemCallError) {
        try call("btrfs_util_set_subvolume_read_only", subject) { btrfs_util_set_subvolume_read_only_fd(fd.rawValue, readOnly) }
    }

    /// Every subvolume below the subvolume of `fd`, parents before children
    /// (btrfs_util_create_subvolume_iterator_fd, btrfs_util_subvolume_iterator_next).
    /// - Returns: paths relative to the top subvolume, with their ids.
    static func nestedSubvolumes(_ fd: FileDescriptor, subject: String) throws(SystemCallError) -> [(path: String, id: UInt64)] {
        var iterator: OpaquePointer?
        try call("btrfs_util_create_subvolume_iterator", subject) {
            btrfs_util_create_subvolume_iterator_fd(fd.rawValue, 0, 0, &iterator)
        }
        defer { btrfs_util_destroy_subvolume_iterator(iterator) }
        var result: [(path: String, id: UInt64)] = []
        while true {
            var path: UnsafeMutablePointer<CChar>?
            var id: UInt64 = 0
            Glibc.errno = 0
            let r = btrfs_util_subvolume_iterator_next(iterator, &path, &id)
            if r == BTRFS_UTIL_ERROR_STOP_ITERATION { break }
            if r != BTRFS_UTIL_OK {
                let saved = Glibc.errno
                throw SystemCallError("btrfs_util_subvolume_iterator_next", Errno(saved == 0 ? EINVAL : saved), subject: subject)
            }
            if let path {
                result.append((String(cString: path), id))
                free(path)
            }
        }
        return result
    }

    /// A qgroup inheritance specifier (btrfs_util_create_qgroup_inherit) naming `qgroups`, so a
    /// new subvolume becomes a member of them at creation, with the kernel keeping the numbers
    /// right; nil for none.
    static func withInherit<T>(_ qgroups: [UInt64], subject: String,
                               _ body: (OpaquePointer?) throws(SystemCallError) -> T) throws(SystemCallError) -> T {
        guard !qgroups.isEmpty else { return try body(nil) }
        var inherit: OpaquePointer?
        try call("btrfs_util_create_qgroup_inherit", subject) { btrfs_util_create_qgroup_inherit(0, &inherit) }
        defer { btrfs_util_destroy_qgroup_inherit(inherit) }
        for group in qgroups {
            try call("btrfs_util_qgroup_inherit_add_group", subject) { btrfs_util_qgroup_inherit_add_group(&inherit, group) }
        }
        return try body(inherit)
    }
}
