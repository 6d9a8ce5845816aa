// The simulated network's links: one "next free" time per link and direction in a file every rank process of the
// machine maps, reserved with compare-and-swap (see Sources/Collectives/Transport/LinkShaper.swift).
#define _GNU_SOURCE
#include "CLinux.h"
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// One cache line per link, so that reservations of different links do not contend.
struct link {
    _Atomic uint64_t next_free_ns;
    char pad[56];
};

struct titan_links {
    struct link *links;
    int count;
    size_t bytes;
};

titan_links *titan_links_open(const char *path, int count) {
    if (count < 1) { errno = EINVAL; return NULL; }
    size_t bytes = (size_t)count * sizeof(struct link);
    void *p = titan_map_shared_file(path, bytes);
    if (!p) return NULL;
    titan_links *l = calloc(1, sizeof *l);
    if (!l) { munmap(p, bytes); errno = ENOMEM; return NULL; }
    l->links = p; l->count = count; l->bytes = bytes;
    return l;
}

void titan_links_close(titan_links *l) {
    if (!l) return;
    munmap(l->links, l->bytes);
    free(l);
}

uint64_t titan_links_reserve(titan_links *l, int link, uint64_t earliest_ns, uint64_t duration_ns) {
    _Atomic uint64_t *next = &l->links[link].next_free_ns;
    uint64_t current = atomic_load_explicit(next, memory_order_relaxed), start;
    do {
        // A link booked an hour ahead is a file left from before a reboot (CLOCK_MONOTONIC started again): free.
        start = current > earliest_ns && current - earliest_ns < 3600000000000u ? current : earliest_ns;
    } while (!atomic_compare_exchange_weak_explicit(next, &current, start + duration_ns, memory_order_relaxed,
                                                    memory_order_relaxed));
    return start;
}

int titan_links_postpone(titan_links *l, int link, uint64_t end_ns, uint64_t later_end_ns) {
    uint64_t expected = end_ns;
    return atomic_compare_exchange_strong_explicit(&l->links[link].next_free_ns, &expected, later_end_ns,
                                                   memory_order_relaxed, memory_order_relaxed);
}

uint64_t titan_monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

void titan_sleep_until_ns(uint64_t deadline_ns) {
    struct timespec t = { .tv_sec = (time_t)(deadline_ns / 1000000000u), .tv_nsec = (long)(deadline_ns % 1000000000u) };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR) {}
}
