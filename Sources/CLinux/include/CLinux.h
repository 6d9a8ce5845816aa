// Linux calls that Swift's Glibc module does not declare (glibc declares them only under _GNU_SOURCE or in
// malloc.h). Plain C wrappers, so Swift calls them through a real C declaration.
#pragma once
#include <stddef.h>
#include <stdint.h>

/// sched_getaffinity(2) of thread `tid` (0: the calling thread) into a mask of `bytes` bytes. 0, or -1 with errno.
int titan_sched_getaffinity(int tid, size_t bytes, uint64_t *mask);
/// sched_setaffinity(2) of thread `tid` (0: the calling thread). 0, or -1 with errno.
int titan_sched_setaffinity(int tid, size_t bytes, const uint64_t *mask);
/// glibc's mallopt(3): 1 on success, 0 on error (and where there is no mallopt).
int titan_mallopt(int param, int value);
/// The file of the loaded object that defines `symbol` as the program's calls resolve it (dlsym(RTLD_DEFAULT) +
/// dladdr), or NULL.
const char *titan_symbol_library(const char *symbol);
