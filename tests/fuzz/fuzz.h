/*
 * fuzz.h - the libFuzzer entry point each fuzz_*.c defines. Built two ways
 * (tests/fuzz/CMakeLists.txt): with clang's -fsanitize=fuzzer as a fuzzer,
 * and with driver.c as a plain program that runs given inputs once (the
 * seed corpus and the crash regressions, in every build).
 */
#ifndef MRB_FUZZ_H
#define MRB_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A NUL-terminated copy of data (the APIs take C strings); free() it. */
char *mrb_fuzz_cstr(const uint8_t *data, size_t size);

/* A property the code promises was broken: report and abort (libFuzzer
 * saves the input). */
void mrb_fuzz_fail(const char *what, const char *detail);

#endif
