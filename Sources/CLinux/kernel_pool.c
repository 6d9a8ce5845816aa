// The kernel threads' pool: worker threads that run the parts of one region at a time with the calling thread.
// Between regions a worker spins on the region counter for a while before it sleeps on a futex, so back-to-back
// regions (a layer's GEMMs and loops, hundreds per training step) start without a wake-up: on a virtual machine a
// wake-up costs an inter-processor interrupt and a halt exit, tens of microseconds each, and the woken CPU sat idle.
// Which thread runs which part does not matter to the results: the parts are fixed by the caller.
#define _GNU_SOURCE
#include "CLinux.h"
#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct titan_pool {
    // Odd while a region is open to workers, even between regions; the futex word sleeping workers wait on.
    _Atomic uint32_t generation;
    _Atomic int sleepers;
    _Atomic int active;    // workers inside the open region (the caller rewrites the fields below only at 0)
    _Atomic int busy;      // 1 while a caller runs a region (one caller at a time; others run their parts alone)
    _Atomic long next;     // the next part not yet claimed
    _Atomic long done;     // parts finished
    long parts;
    titan_part_fn fn;
    void *ctx;
    long spin_ns;
};

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void run_parts(titan_pool *p) {
    long part;
    while ((part = atomic_fetch_add(&p->next, 1)) < p->parts) {
        p->fn(p->ctx, part);
        atomic_fetch_add(&p->done, 1);
    }
}

static void *worker_main(void *arg) {
    titan_pool *p = arg;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g = atomic_load(&p->generation);
        if (g == seen || !(g & 1)) {
            long start = now_ns();
            for (int i = 1; (g = atomic_load(&p->generation)) == seen || !(g & 1); i++) {
                _mm_pause();
                if ((i & 63) == 0 && now_ns() - start > p->spin_ns) {
                    atomic_fetch_add(&p->sleepers, 1);
                    // Re-read after announcing: the caller wakes sleepers after it opens a region.
                    while ((g = atomic_load(&p->generation)) == seen || !(g & 1))
                        syscall(SYS_futex, &p->generation, FUTEX_WAIT_PRIVATE, g, NULL, NULL, 0);
                    atomic_fetch_sub(&p->sleepers, 1);
                    break;
                }
            }
        }
        seen = g;
        atomic_fetch_add(&p->active, 1);
        // Still the region we saw open: its fields are stable until we leave (the caller waits for active == 0).
        if (atomic_load(&p->generation) == g) run_parts(p);
        atomic_fetch_sub(&p->active, 1);
    }
    return NULL;
}

titan_pool *titan_pool_start(int workers, long spin_ns) {
    titan_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->spin_ns = spin_ns;
    for (int i = 0; i < workers; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, p) != 0) return i == 0 ? (free(p), NULL) : p;
        pthread_detach(t);
    }
    return p;
}

int titan_pool_run(titan_pool *p, long parts, titan_part_fn fn, void *ctx) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&p->busy, &expected, 1)) return 0;
    // Workers that joined the last region late may still be inside it (with no part left to claim).
    while (atomic_load(&p->active) != 0) _mm_pause();
    p->fn = fn;
    p->ctx = ctx;
    p->parts = parts;
    atomic_store(&p->done, 0);
    atomic_store(&p->next, 0);
    atomic_fetch_add(&p->generation, 1);   // open (odd)
    if (atomic_load(&p->sleepers) > 0)
        syscall(SYS_futex, &p->generation, FUTEX_WAKE_PRIVATE, __INT_MAX__, NULL, NULL, 0);
    run_parts(p);
    // The rest are running on workers: wait for them, yielding the CPU when one was preempted.
    for (int i = 1; atomic_load(&p->done) < parts; i++) {
        _mm_pause();
        if ((i & 4095) == 0) sched_yield();
    }
    atomic_fetch_add(&p->generation, 1);   // closed (even)
    atomic_store(&p->busy, 0);
    return 1;
}
