#ifndef BERTH_CBTRFSUTIL_SHIM_H
#define BERTH_CBTRFSUTIL_SHIM_H
#include <btrfsutil.h>
#endif
