#define _GNU_SOURCE
#include "CLinux.h"
#include <dlfcn.h>
#include <errno.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#ifdef __linux__
#include <malloc.h>
#include <sched.h>
#endif

int titan_sched_getaffinity(int tid, size_t bytes, uint64_t *mask) {
#ifdef __linux__
    return sched_getaffinity(tid, bytes, (cpu_set_t *)mask);
#else
    (void)tid; (void)bytes; (void)mask;
    errno = ENOSYS;
    return -1;
#endif
}

int titan_sched_setaffinity(int tid, size_t bytes, const uint64_t *mask) {
#ifdef __linux__
    return sched_setaffinity(tid, bytes, (const cpu_set_t *)mask);
#else
    (void)tid; (void)bytes; (void)mask;
    errno = ENOSYS;
    return -1;
#endif
}

int titan_mallopt(int param, int value) {
#if defined(__linux__) && defined(__GLIBC__)
    return mallopt(param, value);
#else
    (void)param; (void)value;
    return 0;
#endif
}

const char *titan_symbol_library(const char *symbol) {
    void *address = dlsym(RTLD_DEFAULT, symbol);
    Dl_info info;
    if (address == NULL || dladdr(address, &info) == 0) return NULL;
    return info.dli_fname;
}

static pthread_t titan_signal_taker;

static void titan_pass_signal_on(int signal) { pthread_kill(titan_signal_taker, signal); }

void titan_route_signal_to_calling_thread(int signal) {
    titan_signal_taker = pthread_self();
    struct sigaction action = {0};
    action.sa_handler = titan_pass_signal_on;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(signal, &action, NULL);
}

void *titan_map_shared_file(const char *path, size_t bytes) {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || (st.st_size < (off_t)bytes && ftruncate(fd, (off_t)bytes) != 0)) {
        int e = errno; close(fd); errno = e; return NULL;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) { errno = e; return NULL; }
    return p;
}

int titan_child_ended(int pid) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) return -1;
    return info.si_pid == pid ? 1 : 0;
}
