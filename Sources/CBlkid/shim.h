#ifndef BERTH_CBLKID_SHIM_H
#define BERTH_CBLKID_SHIM_H
/* libblkid (util-linux): partition-table and filesystem probing for berth-inspect, the child
 * that probes raw images. berthd itself never links it. */
#include <blkid/blkid.h>

/* The probing flags as typed constants (the header's are macros Swift imports as Int32 already,
 * but named here once so the Swift side reads like systemd's dissect). */
static const int BERTH_BLKID_SUBLKS = BLKID_SUBLKS_TYPE | BLKID_SUBLKS_USAGE;
static const int BERTH_BLKID_PARTS = BLKID_PARTS_ENTRY_DETAILS;
#endif
