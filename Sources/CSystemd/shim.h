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

/* Filling vtable entries here, rather than field by field in Swift, keeps the bitfields and the
 * union in C's hands; the entry layouts are those of the SD_BUS_* macros in sd-bus-vtable.h. */
#include <string.h>
static inline void berth_vtable_start(sd_bus_vtable *v, uint64_t flags) {
    memset(v, 0, sizeof *v);
    v->type = _SD_BUS_VTABLE_START;
    v->flags = flags;
    v->x.start.element_size = sizeof(sd_bus_vtable);
    v->x.start.features = _SD_BUS_VTABLE_PARAM_NAMES;
    v->x.start.vtable_format_reference = &sd_bus_object_vtable_format;
}
static inline void berth_vtable_method(sd_bus_vtable *v, const char *member, const char *signature,
                                       const char *result, const char *names,
                                       sd_bus_message_handler_t handler, uint64_t flags) {
    memset(v, 0, sizeof *v);
    v->type = _SD_BUS_VTABLE_METHOD;
    v->flags = flags;
    v->x.method.member = member;
    v->x.method.signature = signature;
    v->x.method.result = result;
    v->x.method.handler = handler;
    v->x.method.names = names;
}
static inline void berth_vtable_signal(sd_bus_vtable *v, const char *member, const char *signature,
                                       const char *names, uint64_t flags) {
    memset(v, 0, sizeof *v);
    v->type = _SD_BUS_VTABLE_SIGNAL;
    v->flags = flags;
    v->x.signal.member = member;
    v->x.signal.signature = signature;
    v->x.signal.names = names;
}
static inline void berth_vtable_property(sd_bus_vtable *v, const char *member, const char *signature,
                                         sd_bus_property_get_t get, uint64_t flags) {
    memset(v, 0, sizeof *v);
    v->type = _SD_BUS_VTABLE_PROPERTY;
    v->flags = flags;
    v->x.property.member = member;
    v->x.property.signature = signature;
    v->x.property.get = get;
}
static inline void berth_vtable_end(sd_bus_vtable *v) {
    memset(v, 0, sizeof *v);
    v->type = _SD_BUS_VTABLE_END;
}

#endif
