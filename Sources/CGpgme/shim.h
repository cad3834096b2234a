#ifndef BERTH_CGPGME_SHIM_H
#define BERTH_CGPGME_SHIM_H
#include <gpgme.h>
/* gpgme_check_version is a checking macro around gpgme_check_version_internal. */
static inline const char *berth_gpgme_check_version(const char *v) { return gpgme_check_version(v); }
#endif
