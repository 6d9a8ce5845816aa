// Idle-CPU lending between the rank processes of one machine: the board where ranks say whether they wait, and the
// helper thread that runs half of a rank's work on a CPU whose ranks all wait (see Sources/Runtime/IdleCPUs.swift).
#define _GNU_SOURCE
#include "CLinux.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

// One cache line per rank, so that ranks flipping their flags do not share lines.
struct slot {
    _Atomic int cpu;      // the CPU the rank is bound to, + 1 (0: not on the board)
    _Atomic int waiting;  // 1 while its training thread is blocked in a collective
    char pad[56];
};

struct titan_cpu_board {
    struct slot *slots;
    int ranks, rank;
    size_t bytes;
};

titan_cpu_board *titan_cpu_board_open(const char *path, int ranks, int rank, int cpu) {
    if (ranks < 1 || rank < 0 || rank >= ranks || cpu < 0) { errno = EINVAL; return NULL; }
    size_t bytes = (size_t)ranks * sizeof(struct slot);
    void *p = titan_map_shared_file(path, bytes);   // a new file reads as zeros: nobody on the board yet
    if (!p) return NULL;
    titan_cpu_board *b = calloc(1, sizeof *b);
    if (!b) { munmap(p, bytes); errno = ENOMEM; return NULL; }
    b->slots = p; b->ranks = ranks; b->rank = rank; b->bytes = bytes;
    atomic_store(&b->slots[rank].waiting, 0);
    atomic_store(&b->slots[rank].cpu, cpu + 1);
    return b;
}

void titan_cpu_board_close(titan_cpu_board *b) {
    if (!b) return;
    atomic_store(&b->slots[b->rank].cpu, 0);
    munmap(b->slots, b->bytes);
    free(b);
}

void titan_cpu_board_set_waiting(titan_cpu_board *b, int waiting) {
    atomic_store_explicit(&b->slots[b->rank].waiting, waiting != 0, memory_order_relaxed);
}

int titan_cpu_board_idle_cpu(const titan_cpu_board *b) {
    int mine = atomic_load_explicit(&b->slots[b->rank].cpu, memory_order_relaxed);
    for (int r = 0; r < b->ranks; r++) {
        int c = atomic_load_explicit(&b->slots[r].cpu, memory_order_relaxed);
        if (c == 0 || c == mine) continue;
        int idle = 1;
        for (int q = 0; q < b->ranks && idle; q++) {
            if (atomic_load_explicit(&b->slots[q].cpu, memory_order_relaxed) == c
                && !atomic_load_explicit(&b->slots[q].waiting, memory_order_relaxed)) idle = 0;
        }
        if (idle) return c - 1;
    }
    return -1;
}

static titan_cpu_board *_Atomic installed;

void titan_cpu_board_install(titan_cpu_board *b) { atomic_store(&installed, b); }

void titan_cpu_board_mark_waiting(int waiting) {
    titan_cpu_board *b = atomic_load_explicit(&installed, memory_order_acquire);
    if (b) titan_cpu_board_set_waiting(b, waiting);
}

// The helper: one thread that runs at most one posted task at a time, on the CPU it is posted to.
enum { FREE = 0, POSTED = 1, RUNNING = 2, DONE = 3 };

struct titan_helper {
    _Atomic int claimed;  // 1 from a post until its finish: one poster at a time
    _Atomic int state;
    titan_task_fn fn;
    void *ctx;
    int cpu;              // the CPU its affinity names (-1: not set yet)
    pid_t tid;
    sem_t wake, done;
};

static void *helper_main(void *arg) {
    titan_helper *h = arg;
    for (;;) {
        while (sem_wait(&h->wake) != 0) {}
        int expected = POSTED;
        // The poster may have taken the task back; a later wake-up may then find the next one posted.
        if (!atomic_compare_exchange_strong(&h->state, &expected, RUNNING)) continue;
        h->fn(h->ctx);
        atomic_store(&h->state, DONE);
        sem_post(&h->done);
    }
    return NULL;
}

struct start { titan_helper *h; sem_t ready; };

static void *helper_start(void *arg) {
    struct start *s = arg;
    titan_helper *h = s->h;
    h->tid = (pid_t)syscall(SYS_gettid);
    sem_post(&s->ready);
    return helper_main(h);
}

titan_helper *titan_helper_start(void) {
    titan_helper *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->cpu = -1;
    sem_init(&h->wake, 0, 0);
    sem_init(&h->done, 0, 0);
    struct start s = { .h = h };
    sem_init(&s.ready, 0, 0);
    pthread_t t;
    if (pthread_create(&t, NULL, helper_start, &s) != 0) { free(h); return NULL; }
    pthread_detach(t);
    while (sem_wait(&s.ready) != 0) {}
    sem_destroy(&s.ready);
    return h;
}

int titan_helper_post(titan_helper *h, int cpu, titan_task_fn fn, void *ctx) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&h->claimed, &expected, 1)) return 0;  // another thread's task is out
    if (cpu != h->cpu) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        // A CPU outside this process's cgroup fails: the helper then keeps its previous CPU.
        if (sched_setaffinity(h->tid, sizeof set, &set) == 0) h->cpu = cpu;
    }
    h->fn = fn;
    h->ctx = ctx;
    atomic_store(&h->state, POSTED);
    sem_post(&h->wake);
    return 1;
}

void titan_helper_wait_started(titan_helper *h) {
    while (atomic_load(&h->state) == POSTED) sched_yield();
}

int titan_helper_finish(titan_helper *h) {
    int expected = POSTED, ranHere = 1;
    if (!atomic_compare_exchange_strong(&h->state, &expected, FREE)) {
        // Started: it reads the caller's buffers, so the caller waits for it.
        while (sem_wait(&h->done) != 0) {}
        atomic_store(&h->state, FREE);
        ranHere = 0;
    }
    atomic_store(&h->claimed, 0);
    return ranHere;
}
