#ifndef BERTH_CFUZZER_SHIM_H
#define BERTH_CFUZZER_SHIM_H
/* libFuzzer's driver as a library call (compiler-rt's FuzzerInterface.h), for an executable
 * that keeps its own main: SwiftPM names an executable's main itself, so libFuzzer's main
 * would never be linked. Used only by berth-fuzz (BERTH_FUZZ=1, -sanitize=fuzzer). */
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
