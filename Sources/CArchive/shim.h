#ifndef BERTH_CARCHIVE_SHIM_H
#define BERTH_CARCHIVE_SHIM_H
#include <archive.h>
#include <archive_entry.h>
/* File-type macros are casts, which Swift does not import. */
static const unsigned int BERTH_AE_IFMT = AE_IFMT;
static const unsigned int BERTH_AE_IFREG = AE_IFREG;
static const unsigned int BERTH_AE_IFLNK = AE_IFLNK;
static const unsigned int BERTH_AE_IFSOCK = AE_IFSOCK;
static const unsigned int BERTH_AE_IFCHR = AE_IFCHR;
static const unsigned int BERTH_AE_IFBLK = AE_IFBLK;
static const unsigned int BERTH_AE_IFDIR = AE_IFDIR;
static const unsigned int BERTH_AE_IFIFO = AE_IFIFO;
#endif
