#ifndef BERTH_CSYSTEMD_SHIM_H
#define BERTH_CSYSTEMD_SHIM_H
#include <systemd/sd-bus.h>
#include <systemd/sd-bus-vtable.h>
#include <systemd/sd-event.h>
#include <systemd/sd-daemon.h>
#include <sys/eventfd.h>
#include <signal.h>

/* The vtable's format reference must be libsystemd's own symbol; taking its
 * address from Swift would yield the address of a copy (notes/sd-bus-from-swift.md). */
static inline const unsigned *berth_sd_bus_object_vtable_format(void) {
    return &sd_bus_object_vtable_format;
}

/* Flag constants sd-bus defines as enum members or macros Swift does not import cleanly. */
static const unsigned long long BERTH_SD_BUS_VTABLE_DEPRECATED = SD_BUS_VTABLE_DEPRECATED;
static const unsigned long long BERTH_SD_BUS_VTABLE_HIDDEN = SD_BUS_VTABLE_HIDDEN;
static const unsigned long long BERTH_SD_BUS_VTABLE_UNPRIVILEGED = SD_BUS_VTABLE_UNPRIVILEGED;
static const unsigned long long BERTH_SD_BUS_VTABLE_METHOD_NO_REPLY = SD_BUS_VTABLE_METHOD_NO_REPLY;
static const unsigned long long BERTH_SD_BUS_VTABLE_PROPERTY_CONST = SD_BUS_VTABLE_PROPERTY_CONST;
static const unsigned long long BERTH_SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE = SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE;
static const unsigned long long BERTH_SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION = SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION;
static const unsigned long long BERTH_SD_BUS_VTABLE_PROPERTY_EXPLICIT = SD_BUS_VTABLE_PROPERTY_EXPLICIT;
static const unsigned long long BERTH_SD_BUS_VTABLE_SENSITIVE = SD_BUS_VTABLE_SENSITIVE;
static const unsigned long long BERTH_SD_BUS_CREDS_PID = SD_BUS_CREDS_PID;
static const unsigned long long BERTH_SD_BUS_CREDS_EUID = SD_BUS_CREDS_EUID;
static const unsigned long long BERTH_SD_BUS_CREDS_UID = SD_BUS_CREDS_UID;
static const unsigned long long BERTH_SD_BUS_CREDS_AUGMENT = SD_BUS_CREDS_AUGMENT;

#endif
