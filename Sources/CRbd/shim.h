#ifndef BERTH_CRBD_SHIM_H
#define BERTH_CRBD_SHIM_H
/* Ceph's client headers, for their types only (Debian: librbd-dev, librados-dev). Nothing here is
 * linked: the Rbd module loads librbd.so.1 and librados.so.2 with dlopen when an RBD pool is
 * configured, and calls them through the function-pointer types below, each taken from the
 * library's own declaration with __typeof__ so a signature can never be retyped wrongly. */
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <rbd/features.h>

#define BERTH_RBD_FN(name) typedef __typeof__(name) *berth_##name##_fn;

BERTH_RBD_FN(rados_create2)
BERTH_RBD_FN(rados_conf_read_file)
BERTH_RBD_FN(rados_conf_set)
BERTH_RBD_FN(rados_connect)
BERTH_RBD_FN(rados_shutdown)
BERTH_RBD_FN(rados_ioctx_create)
BERTH_RBD_FN(rados_ioctx_destroy)
BERTH_RBD_FN(rbd_list2)
BERTH_RBD_FN(rbd_image_spec_list_cleanup)
BERTH_RBD_FN(rbd_image_options_create)
BERTH_RBD_FN(rbd_image_options_destroy)
BERTH_RBD_FN(rbd_image_options_set_uint64)
BERTH_RBD_FN(rbd_create4)
BERTH_RBD_FN(rbd_clone3)
BERTH_RBD_FN(rbd_remove)
BERTH_RBD_FN(rbd_rename)
BERTH_RBD_FN(rbd_open)
BERTH_RBD_FN(rbd_open_read_only)
BERTH_RBD_FN(rbd_close)
BERTH_RBD_FN(rbd_read)
BERTH_RBD_FN(rbd_write)
BERTH_RBD_FN(rbd_discard)
BERTH_RBD_FN(rbd_flush)
BERTH_RBD_FN(rbd_resize)
BERTH_RBD_FN(rbd_stat)
BERTH_RBD_FN(rbd_get_size)
BERTH_RBD_FN(rbd_get_features)
BERTH_RBD_FN(rbd_get_flags)
BERTH_RBD_FN(rbd_get_create_timestamp)
BERTH_RBD_FN(rbd_get_modify_timestamp)
BERTH_RBD_FN(rbd_get_parent)
BERTH_RBD_FN(rbd_linked_image_spec_cleanup)
BERTH_RBD_FN(rbd_linked_image_spec_list_cleanup)
BERTH_RBD_FN(rbd_snap_spec_cleanup)
BERTH_RBD_FN(rbd_snap_create)
BERTH_RBD_FN(rbd_snap_remove)
BERTH_RBD_FN(rbd_snap_protect)
BERTH_RBD_FN(rbd_snap_unprotect)
BERTH_RBD_FN(rbd_snap_is_protected)
BERTH_RBD_FN(rbd_snap_list)
BERTH_RBD_FN(rbd_snap_list_end)
BERTH_RBD_FN(rbd_list_children3)
BERTH_RBD_FN(rbd_flatten)
BERTH_RBD_FN(rbd_lock_exclusive)
BERTH_RBD_FN(rbd_lock_shared)
BERTH_RBD_FN(rbd_unlock)
BERTH_RBD_FN(rbd_list_lockers)
BERTH_RBD_FN(rbd_break_lock)
BERTH_RBD_FN(rbd_lock_acquire)
BERTH_RBD_FN(rbd_lock_release)
BERTH_RBD_FN(rbd_is_exclusive_lock_owner)
BERTH_RBD_FN(rbd_lock_get_owners)
BERTH_RBD_FN(rbd_lock_get_owners_cleanup)
BERTH_RBD_FN(rbd_lock_break)
BERTH_RBD_FN(rbd_diff_iterate2)
BERTH_RBD_FN(rbd_metadata_get)
BERTH_RBD_FN(rbd_metadata_set)
BERTH_RBD_FN(rbd_metadata_remove)

#undef BERTH_RBD_FN

/* Feature bits as typed constants (the header's are ULL macros Swift imports already, kept here
 * with a module prefix so call sites read as Berth's). */
static const uint64_t BERTH_RBD_FEATURE_LAYERING = RBD_FEATURE_LAYERING;
static const uint64_t BERTH_RBD_FEATURE_EXCLUSIVE_LOCK = RBD_FEATURE_EXCLUSIVE_LOCK;
static const uint64_t BERTH_RBD_FEATURE_OBJECT_MAP = RBD_FEATURE_OBJECT_MAP;
static const uint64_t BERTH_RBD_FEATURE_FAST_DIFF = RBD_FEATURE_FAST_DIFF;
static const uint64_t BERTH_RBD_FEATURE_DEEP_FLATTEN = RBD_FEATURE_DEEP_FLATTEN;

#endif
