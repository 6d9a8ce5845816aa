// Ceiling for any ZeroMQ collective on this machine: N processes pass SIZE-byte messages around a
// ring (PUSH to the next, PULL from the previous) over ipc or tcp, zero-copy sends, REPS rounds
// after 3 warm-up rounds. Every rank sends and receives at once, as in a ring all-gather step.
// Prints per-link GB/s = SIZE * REPS / time (what a ring collective's busbw can reach).
//   cc -O2 -o /tmp/zring scripts/zmq_ring_ceiling.c -lzmq && /tmp/zring 8 2097152 50 ipc
// A fifth argument `consume` copies every received message into its place in an output buffer of N messages (as an
// all-gather must put every byte it receives into the caller's buffer; a reduction reads it too): the ceiling of a
// collective that delivers its data, where the plain ring drops what it receives.
//   /tmp/zring 8 2097152 50 ipc consume
// (scripts/bench_collectives.sh builds and runs it beside `titan bench`: the ceiling and the table in one command.)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <time.h>
#include <zmq.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void nofree(void *data, void *hint) { (void)data; (void)hint; }

static void endpoint(char *buf, const char *transport, int rank, int pid) {
    if (strcmp(transport, "tcp") == 0) sprintf(buf, "tcp://127.0.0.1:%d", 35000 + rank);
    else sprintf(buf, "ipc:///tmp/zring-%d-%d", pid, rank);
}

static int run_rank(int rank, int n, size_t size, int reps, const char *transport, int consume, int pid, int result_fd) {
    void *ctx = zmq_ctx_new();
    void *pull = zmq_socket(ctx, ZMQ_PULL), *push = zmq_socket(ctx, ZMQ_PUSH);
    int hwm = 0; zmq_setsockopt(pull, ZMQ_RCVHWM, &hwm, sizeof hwm); zmq_setsockopt(push, ZMQ_SNDHWM, &hwm, sizeof hwm);
    char me[128], next[128];
    endpoint(me, transport, rank, pid); endpoint(next, transport, (rank + 1) % n, pid);
    if (zmq_bind(pull, me) != 0) { perror("bind"); return 1; }
    usleep(200000);
    if (zmq_connect(push, next) != 0) { perror("connect"); return 1; }
    char *buf = malloc(size); memset(buf, rank, size);
    char *out = consume ? malloc(size * (size_t)n) : NULL;
    if (out) memset(out, 0, size * (size_t)n);
    zmq_msg_t m;
    double t0 = 0;
    for (int r = 0; r < reps + 3; r++) {
        if (r == 3) t0 = now();
        zmq_msg_init_data(&m, buf, size, nofree, NULL);
        zmq_msg_send(&m, push, 0);
        zmq_msg_t in; zmq_msg_init(&in); zmq_msg_recv(&in, pull, 0);
        if (out) memcpy(out + (size_t)(r % n) * size, zmq_msg_data(&in), size);
        zmq_msg_close(&in);
    }
    double dt = now() - t0;
    double gbps = (double)size * reps / dt / 1e9;
    if (write(result_fd, &gbps, sizeof gbps) != sizeof gbps) return 1;
    zmq_close(pull); zmq_close(push); zmq_ctx_term(ctx);
    if (strcmp(transport, "ipc") == 0) unlink(me + 6);
    return 0;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8; size_t size = argc > 2 ? strtoull(argv[2], 0, 10) : 2097152;
    int reps = argc > 3 ? atoi(argv[3]) : 50; const char *transport = argc > 4 ? argv[4] : "ipc";
    int consume = argc > 5 && strcmp(argv[5], "consume") == 0;
    int fds[2]; if (pipe(fds)) return 1;
    int pid = getpid();
    for (int r = 0; r < n; r++) if (fork() == 0) _exit(run_rank(r, n, size, reps, transport, consume, pid, fds[1]));
    double sum = 0, lo = 1e9;
    for (int r = 0; r < n; r++) { double g; if (read(fds[0], &g, sizeof g) != sizeof g) return 1; sum += g; if (g < lo) lo = g; }
    while (wait(NULL) > 0) {}
    printf("zmq C ring %d procs %zu B %s%s: per-link %.3f GB/s (slowest link %.3f, aggregate %.2f)\n", n, size, transport,
           consume ? ", consumed" : "", sum / n, lo, sum);
    return 0;
}
