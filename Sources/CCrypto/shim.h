#ifndef BERTH_CCRYPTO_SHIM_H
#define BERTH_CCRYPTO_SHIM_H
/* OpenSSL's libcrypto, for SHA-256 of downloads (EVP digest API). */
#include <openssl/evp.h>
#endif
