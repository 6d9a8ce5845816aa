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
/// Makes `signal` reach the calling thread, which takes it with sigwait, even when it lands on a thread that does not
/// block it: one started before the process blocked it (OpenBLAS starts its pool in a library constructor, before
/// main). There a C handler passes it on with pthread_kill (async-signal-safe); no Swift code runs in it.
void titan_route_signal_to_calling_thread(int signal);
/// Whether child `pid` has ended, without reaping it (waitid with WNOWAIT): 1 ended (a zombie, so its pid and process
/// group id cannot be reused yet), 0 still running, -1 error (errno set; ECHILD: not a child of ours, or reaped).
int titan_child_ended(int pid);

// Idle-CPU lending between the rank processes of one machine (see Sources/Runtime/IdleCPUs.swift).

/// The board: a shared file, one slot per rank: the CPU it is bound to and whether it waits in a collective.
// Maps `bytes` of the file at `path` shared between processes (created 0600, zeros when new, only ever grown:
// shrinking it under a process that mapped it would fault that process); NULL with errno on failure.
void *titan_map_shared_file(const char *path, size_t bytes);

typedef struct titan_cpu_board titan_cpu_board;
/// Maps the board at `path` (created if missing) as rank `rank` of `ranks`, bound to `cpu`. NULL with errno.
titan_cpu_board *titan_cpu_board_open(const char *path, int ranks, int rank, int cpu);
/// Takes this rank off the board and unmaps it.
void titan_cpu_board_close(titan_cpu_board *board);
void titan_cpu_board_set_waiting(titan_cpu_board *board, int waiting);
/// A CPU other than this rank's whose every rank on the board waits, or -1.
int titan_cpu_board_idle_cpu(const titan_cpu_board *board);
/// The board `titan_cpu_board_mark_waiting` writes to (NULL: none).
void titan_cpu_board_install(titan_cpu_board *board);
/// Marks this process's rank as waiting (1) or not (0) on the installed board; no-op without one.
void titan_cpu_board_mark_waiting(int waiting);

/// A task for the helper: `fn(ctx)`.
typedef void (*titan_task_fn)(void *ctx);
/// The helper: a thread that runs one posted task at a time on the CPU it is posted to.
typedef struct titan_helper titan_helper;
titan_helper *titan_helper_start(void);
/// Offers a task to run on `cpu`, then `titan_helper_finish` must follow. 0 (nothing posted) while another thread's
/// task is out: one poster at a time.
int titan_helper_post(titan_helper *helper, int cpu, titan_task_fn fn, void *ctx);
/// Returns once the helper has taken the posted task (tests: makes it run there).
void titan_helper_wait_started(titan_helper *helper);
/// 1 when the helper had not started the task (the caller runs it now); 0 once the helper has run it.
int titan_helper_finish(titan_helper *helper);

// The kernel threads' pool (see Sources/Runtime/KernelThreads.swift).

/// One part of a region: `fn(ctx, part)`.
typedef void (*titan_part_fn)(void *ctx, long part);
typedef struct titan_pool titan_pool;
/// Starts `workers` threads that spin up to `spin_ns` between regions before they sleep. NULL if none started.
titan_pool *titan_pool_start(int workers, long spin_ns);
/// Runs parts 0..<parts, each once, on the caller and the workers; returns when all ran (1). 0, having run nothing,
/// when another thread is running a region on this pool.
int titan_pool_run(titan_pool *pool, long parts, titan_part_fn fn, void *ctx);

// The simulated network's links, shared by the rank processes of one machine (see
// Sources/Collectives/Transport/LinkShaper.swift).

/// A shared file of `links` "next free" times, one per link and direction, in CLOCK_MONOTONIC nanoseconds.
typedef struct titan_links titan_links;
/// Maps the file at `path` (created if missing, zeros: every link free). NULL with errno.
titan_links *titan_links_open(const char *path, int links);
void titan_links_close(titan_links *links);
/// Reserves `duration_ns` of link `link`, starting at `earliest_ns` or when the link is next free, whichever is later
/// (one atomic compare-and-swap loop, so every process of the machine sees one timeline); returns the start.
uint64_t titan_links_reserve(titan_links *links, int link, uint64_t earliest_ns, uint64_t duration_ns);
/// Moves the end of the caller's reservation from `end_ns` to `later_end_ns` if no one reserved after it; 1 if moved.
int titan_links_postpone(titan_links *links, int link, uint64_t end_ns, uint64_t later_end_ns);
/// CLOCK_MONOTONIC in nanoseconds (one clock for every process of the machine).
uint64_t titan_monotonic_ns(void);
/// Sleeps (clock_nanosleep, absolute) until CLOCK_MONOTONIC reaches `deadline_ns`; returns at once if it has.
void titan_sleep_until_ns(uint64_t deadline_ns);
