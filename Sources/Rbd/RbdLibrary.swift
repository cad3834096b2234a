import CRbd
import Linux
#if canImport(Glibc)
import Glibc
#endif

/// librbd and librados, loaded with dlopen(3) the first time an RBD pool is used, never at link
/// time: berthd links no Ceph library, so a berthd without an RBD pool maps none and its idle
/// memory stays as it was (librados alone brings ~20 MB of mappings and its own threads).
///
/// Each function is resolved once with dlsym(3) into the `@convention(c)` type CRbd derives from
/// Ceph's own declaration (`__typeof__`), so no signature is retyped by hand.
public final class RbdLibrary: @unchecked Sendable {
    // @unchecked: every stored property is a C function pointer written once in `init` and only
    // read afterwards; the dlopen handles are never closed (Ceph's libraries cannot be unloaded
    // safely once their threads have run).

    /// The shared library names dlopen looks for (the sonames Debian's librbd1/librados2 ship).
    public static let librbdName = "librbd.so.1"
    public static let libradosName = "librados.so.2"

    /// The libraries, loaded on first use; a failure to load is kept and reported to every caller.
    public static func shared() throws(RbdError) -> RbdLibrary {
        try loaded.get()
    }

    /// Whether the libraries are loaded in this process (without loading them).
    public static var isLoaded: Bool {
        let flags = RTLD_NOW | RTLD_NOLOAD
        guard let handle = dlopen(librbdName, flags) else { return false }
        // RTLD_NOLOAD took a reference of its own; give it back.
        dlclose(handle)
        return true
    }

    private static let loaded: Result<RbdLibrary, RbdError> = Result { () throws(RbdError) -> RbdLibrary in
        try RbdLibrary()
    }

    let rados_create2: berth_rados_create2_fn
    let rados_conf_read_file: berth_rados_conf_read_file_fn
    let rados_conf_set: berth_rados_conf_set_fn
    let rados_connect: berth_rados_connect_fn
    let rados_shutdown: berth_rados_shutdown_fn
    let rados_ioctx_create: berth_rados_ioctx_create_fn
    let rados_ioctx_destroy: berth_rados_ioctx_destroy_fn
    let rbd_list2: berth_rbd_list2_fn
    let rbd_image_spec_list_cleanup: berth_rbd_image_spec_list_cleanup_fn
    let rbd_image_options_create: berth_rbd_image_options_create_fn
    let rbd_image_options_destroy: berth_rbd_image_options_destroy_fn
    let rbd_image_options_set_uint64: berth_rbd_image_options_set_uint64_fn
    let rbd_create4: berth_rbd_create4_fn
    let rbd_clone3: berth_rbd_clone3_fn
    let rbd_remove: berth_rbd_remove_fn
    let rbd_rename: berth_rbd_rename_fn
    let rbd_open: berth_rbd_open_fn
    let rbd_open_read_only: berth_rbd_open_read_only_fn
    let rbd_close: berth_rbd_close_fn
    let rbd_read: berth_rbd_read_fn
    let rbd_write: berth_rbd_write_fn
    let rbd_discard: berth_rbd_discard_fn
    let rbd_flush: berth_rbd_flush_fn
    let rbd_resize: berth_rbd_resize_fn
    let rbd_stat: berth_rbd_stat_fn
    let rbd_get_size: berth_rbd_get_size_fn
    let rbd_get_features: berth_rbd_get_features_fn
    let rbd_get_flags: berth_rbd_get_flags_fn
    let rbd_get_create_timestamp: berth_rbd_get_create_timestamp_fn
    let rbd_get_modify_timestamp: berth_rbd_get_modify_timestamp_fn
    let rbd_get_parent: berth_rbd_get_parent_fn
    let rbd_linked_image_spec_cleanup: berth_rbd_linked_image_spec_cleanup_fn
    let rbd_linked_image_spec_list_cleanup: berth_rbd_linked_image_spec_list_cleanup_fn
    let rbd_snap_spec_cleanup: berth_rbd_snap_spec_cleanup_fn
    let rbd_snap_create: berth_rbd_snap_create_fn
    let rbd_snap_remove: berth_rbd_snap_remove_fn
    let rbd_snap_protect: berth_rbd_snap_protect_fn
    let rbd_snap_unprotect: berth_rbd_snap_unprotect_fn
    let rbd_snap_is_protected: berth_rbd_snap_is_protected_fn
    let rbd_snap_list: berth_rbd_snap_list_fn
    let rbd_snap_list_end: berth_rbd_snap_list_end_fn
    let rbd_list_children3: berth_rbd_list_children3_fn
    let rbd_flatten: berth_rbd_flatten_fn
    let rbd_lock_exclusive: berth_rbd_lock_exclusive_fn
    let rbd_lock_shared: berth_rbd_lock_shared_fn
    let rbd_unlock: berth_rbd_unlock_fn
    let rbd_list_lockers: berth_rbd_list_lockers_fn
    let rbd_break_lock: berth_rbd_break_lock_fn
    let rbd_lock_acquire: berth_rbd_lock_acquire_fn
    let rbd_lock_release: berth_rbd_lock_release_fn
    let rbd_is_exclusive_lock_owner: berth_rbd_is_exclusive_lock_owner_fn
    let rbd_lock_get_owners: berth_rbd_lock_get_owners_fn
    let rbd_lock_get_owners_cleanup: berth_rbd_lock_get_owners_cleanup_fn
    let rbd_lock_break: berth_rbd_lock_break_fn
    let rbd_diff_iterate2: berth_rbd_diff_iterate2_fn
    let rbd_metadata_get: berth_rbd_metadata_get_fn
    let rbd_metadata_set: berth_rbd_metadata_set_fn
    let rbd_metadata_remove: berth_rbd_metadata_remove_fn

    private init() throws(RbdError) {
        // librbd needs librados; load it first so a missing librados is named as such.
        let rados = try Self.open(Self.libradosName)
        let rbd = try Self.open(Self.librbdName)
        rados_create2 = try Self.symbol(rados, "rados_create2")
        rados_conf_read_file = try Self.symbol(rados, "rados_conf_read_file")
        rados_conf_set = try Self.symbol(rados, "rados_conf_set")
        rados_connect = try Self.symbol(rados, "rados_connect")
        rados_shutdown = try Self.symbol(rados, "rados_shutdown")
        rados_ioctx_create = try Self.symbol(rados, "rados_ioctx_create")
        rados_ioctx_destroy = try Self.symbol(rados, "rados_ioctx_destroy")
        rbd_list2 = try Self.symbol(rbd, "rbd_list2")
        rbd_image_spec_list_cleanup = try Self.symbol(rbd, "rbd_image_spec_list_cleanup")
        rbd_image_options_create = try Self.symbol(rbd, "rbd_image_options_create")
        rbd_image_options_destroy = try Self.symbol(rbd, "rbd_image_options_destroy")
        rbd_image_options_set_uint64 = try Self.symbol(rbd, "rbd_image_options_set_uint64")
        rbd_create4 = try Self.symbol(rbd, "rbd_create4")
        rbd_clone3 = try Self.symbol(rbd, "rbd_clone3")
        rbd_remove = try Self.symbol(rbd, "rbd_remove")
        rbd_rename = try Self.symbol(rbd, "rbd_rename")
        rbd_open = try Self.symbol(rbd, "rbd_open")
        rbd_open_read_only = try Self.symbol(rbd, "rbd_open_read_only")
        rbd_close = try Self.symbol(rbd, "rbd_close")
        rbd_read = try Self.symbol(rbd, "rbd_read")
        rbd_write = try Self.symbol(rbd, "rbd_write")
        rbd_discard = try Self.symbol(rbd, "rbd_discard")
        rbd_flush = try Self.symbol(rbd, "rbd_flush")
        rbd_resize = try Self.symbol(rbd, "rbd_resize")
        rbd_stat = try Self.symbol(rbd, "rbd_stat")
        rbd_get_size = try Self.symbol(rbd, "rbd_get_size")
        rbd_get_features = try Self.symbol(rbd, "rbd_get_features")
        rbd_get_flags = try Self.symbol(rbd, "rbd_get_flags")
        rbd_get_create_timestamp = try Self.symbol(rbd, "rbd_get_create_timestamp")
        rbd_get_modify_timestamp = try Self.symbol(rbd, "rbd_get_modify_timestamp")
        rbd_get_parent = try Self.symbol(rbd, "rbd_get_parent")
        rbd_linked_image_spec_cleanup = try Self.symbol(rbd, "rbd_linked_image_spec_cleanup")
        rbd_linked_image_spec_list_cleanup = try Self.symbol(rbd, "rbd_linked_image_spec_list_cleanup")
        rbd_snap_spec_cleanup = try Self.symbol(rbd, "rbd_snap_spec_cleanup")
        rbd_snap_create = try Self.symbol(rbd, "rbd_snap_create")
        rbd_snap_remove = try Self.symbol(rbd, "rbd_snap_remove")
        rbd_snap_protect = try Self.symbol(rbd, "rbd_snap_protect")
        rbd_snap_unprotect = try Self.symbol(rbd, "rbd_snap_unprotect")
        rbd_snap_is_protected = try Self.symbol(rbd, "rbd_snap_is_protected")
        rbd_snap_list = try Self.symbol(rbd, "rbd_snap_list")
        rbd_snap_list_end = try Self.symbol(rbd, "rbd_snap_list_end")
        rbd_list_children3 = try Self.symbol(rbd, "rbd_list_children3")
        rbd_flatten = try Self.symbol(rbd, "rbd_flatten")
        rbd_lock_exclusive = try Self.symbol(rbd, "rbd_lock_exclusive")
        rbd_lock_shared = try Self.symbol(rbd, "rbd_lock_shared")
        rbd_unlock = try Self.symbol(rbd, "rbd_unlock")
        rbd_list_lockers = try Self.symbol(rbd, "rbd_list_lockers")
        rbd_break_lock = try Self.symbol(rbd, "rbd_break_lock")
        rbd_lock_acquire = try Self.symbol(rbd, "rbd_lock_acquire")
        rbd_lock_release = try Self.symbol(rbd, "rbd_lock_release")
        rbd_is_exclusive_lock_owner = try Self.symbol(rbd, "rbd_is_exclusive_lock_owner")
        rbd_lock_get_owners = try Self.symbol(rbd, "rbd_lock_get_owners")
        rbd_lock_get_owners_cleanup = try Self.symbol(rbd, "rbd_lock_get_owners_cleanup")
        rbd_lock_break = try Self.symbol(rbd, "rbd_lock_break")
        rbd_diff_iterate2 = try Self.symbol(rbd, "rbd_diff_iterate2")
        rbd_metadata_get = try Self.symbol(rbd, "rbd_metadata_get")
        rbd_metadata_set = try Self.symbol(rbd, "rbd_metadata_set")
        rbd_metadata_remove = try Self.symbol(rbd, "rbd_metadata_remove")
    }

    /// dlopen(3) with RTLD_NOW, so a missing symbol dependency fails here and not mid-operation.
    private static func open(_ name: String) throws(RbdError) -> UnsafeMutableRawPointer {
        guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else {
            throw RbdError(call: "dlopen", subject: name, message: lastDynamicLinkerError())
        }
        return handle
    }

    /// dlsym(3) of `name`, reinterpreted as the C function type `T` CRbd declared for it.
    private static func symbol<T>(_ handle: UnsafeMutableRawPointer, _ name: String) throws(RbdError) -> T {
        guard let pointer = dlsym(handle, name) else {
            throw RbdError(call: "dlsym", subject: name, message: lastDynamicLinkerError())
        }
        return unsafeBitCast(pointer, to: T.self)
    }

    private static func lastDynamicLinkerError() -> String {
        guard let message = dlerror() else { return "unknown dynamic linker error" }
        return String(cString: message)
    }
}
