// oneDNN's bf16 matmul, timed for `titan bench-gemm --bf16 --compare-libraries` against our kernels. Not used for
// training: loaded at run time (dlopen) where Debian's libdnnl is installed, compiled where its header was at build
// time, so the trainer has no oneDNN dependency.
#include "CKernels.h"
#include <stdio.h>
#include <string.h>

#if __has_include(<oneapi/dnnl/dnnl.h>)
#include <dlfcn.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <time.h>

#define API(f) __typeof__(f) *f
static struct {
    API(dnnl_engine_create); API(dnnl_stream_create); API(dnnl_memory_desc_init_by_strides); API(dnnl_matmul_desc_init);
    API(dnnl_primitive_desc_create); API(dnnl_primitive_create); API(dnnl_primitive_desc_query);
    API(dnnl_memory_create); API(dnnl_primitive_execute); API(dnnl_stream_wait); API(dnnl_primitive_destroy);
    API(dnnl_primitive_desc_destroy); API(dnnl_memory_destroy); API(dnnl_version);
    void (*omp_set_num_threads)(int);
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int loaded;   // 1 loaded, -1 failed
    char error[200];
} dnnl;
#undef API

static int load(void) {
    if (dnnl.loaded) return dnnl.loaded;
    dnnl.loaded = -1;
    void *lib = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) { snprintf(dnnl.error, sizeof dnnl.error, "libdnnl.so.2 not found (apt-get install libdnnl2)"); return -1; }
#define LOAD(f) if (!(*(void **)&dnnl.f = dlsym(lib, #f))) { snprintf(dnnl.error, sizeof dnnl.error, "libdnnl lacks %s", #f); return -1; }
    LOAD(dnnl_engine_create) LOAD(dnnl_stream_create) LOAD(dnnl_memory_desc_init_by_strides) LOAD(dnnl_matmul_desc_init)
    LOAD(dnnl_primitive_desc_create) LOAD(dnnl_primitive_create) LOAD(dnnl_primitive_desc_query) LOAD(dnnl_memory_create)
    LOAD(dnnl_primitive_execute) LOAD(dnnl_stream_wait) LOAD(dnnl_primitive_destroy) LOAD(dnnl_primitive_desc_destroy)
    LOAD(dnnl_memory_destroy) LOAD(dnnl_version)
#undef LOAD
    // Debian builds it on OpenMP: one thread per call, as every GEMM here runs.
    void *omp = dlopen("libgomp.so.1", RTLD_NOW | RTLD_LOCAL);
    if (omp) *(void **)&dnnl.omp_set_num_threads = dlsym(omp, "omp_set_num_threads");
    if (dnnl.dnnl_engine_create(&dnnl.engine, dnnl_cpu, 0) != dnnl_success
        || dnnl.dnnl_stream_create(&dnnl.stream, dnnl.engine, dnnl_stream_default_flags) != dnnl_success) {
        snprintf(dnnl.error, sizeof dnnl.error, "no oneDNN CPU engine");
        return -1;
    }
    dnnl.loaded = 1;
    return 1;
}

const char *titan_onednn_describe(void) {
    static char text[200];
    if (load() < 0) return dnnl.error;
    const dnnl_version_t *v = dnnl.dnnl_version();
    snprintf(text, sizeof text, "oneDNN %d.%d.%d", v->major, v->minor, v->patch);
    return text;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

double titan_onednn_bf16_gemm(int64_t M, int64_t N, int64_t K, int transA, int transB, int runtimeM, double seconds,
                              double *createMilliseconds, char *implementation, int64_t implementationSize) {
    if (load() < 0) return -1;
    if (dnnl.omp_set_num_threads) dnnl.omp_set_num_threads(1);
    float *a32 = malloc(sizeof(float) * M * K), *b32 = malloc(sizeof(float) * K * N), *c = calloc(M * N, sizeof(float));
    uint16_t *a = malloc(2 * M * K), *b = malloc(2 * K * N);
    for (int64_t i = 0; i < M * K; i++) a32[i] = (float)((i * 7919) % 1999) / 1999.0f - 0.5f;
    for (int64_t i = 0; i < K * N; i++) b32[i] = (float)((i * 104729) % 1997) / 1997.0f - 0.5f;
    // op(A) M × K stored K × M when transposed; op(B) K × N stored N × K when transposed.
    const int64_t m = runtimeM ? DNNL_RUNTIME_DIM_VAL : M;
    dnnl_dims_t aDims = {m, K}, bDims = {K, N}, cDims = {m, N};
    dnnl_dims_t aStrides = {transA ? 1 : K, transA ? m : 1}, bStrides = {transB ? 1 : N, transB ? K : 1}, cStrides = {N, 1};
    dnnl_memory_desc_t aDesc, bDesc, cDesc, aRun, cRun;
    dnnl_matmul_desc_t op;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t primitive = NULL;
    dnnl_memory_t am = NULL, bm = NULL, cm = NULL;
    double result = -1;
    const double t0 = now();
    if (dnnl.dnnl_memory_desc_init_by_strides(&aDesc, 2, aDims, dnnl_bf16, aStrides) != dnnl_success
        || dnnl.dnnl_memory_desc_init_by_strides(&bDesc, 2, bDims, dnnl_bf16, bStrides) != dnnl_success
        || dnnl.dnnl_memory_desc_init_by_strides(&cDesc, 2, cDims, dnnl_f32, cStrides) != dnnl_success
        || dnnl.dnnl_matmul_desc_init(&op, &aDesc, &bDesc, NULL, &cDesc) != dnnl_success
        || dnnl.dnnl_primitive_desc_create(&pd, &op, NULL, dnnl.engine, NULL) != dnnl_success
        || dnnl.dnnl_primitive_create(&primitive, pd) != dnnl_success) goto done;
    *createMilliseconds = (now() - t0) * 1e3;
    const char *impl = "?";
    dnnl.dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    snprintf(implementation, (size_t)implementationSize, "%s", impl);
    // The memory objects of an execution have the actual M.
    dnnl_dims_t aDimsRun = {M, K}, cDimsRun = {M, N}, aStridesRun = {transA ? 1 : K, transA ? M : 1};
    if (dnnl.dnnl_memory_desc_init_by_strides(&aRun, 2, aDimsRun, dnnl_bf16, aStridesRun) != dnnl_success
        || dnnl.dnnl_memory_desc_init_by_strides(&cRun, 2, cDimsRun, dnnl_f32, cStrides) != dnnl_success
        || dnnl.dnnl_memory_create(&am, &aRun, dnnl.engine, a) != dnnl_success
        || dnnl.dnnl_memory_create(&bm, &bDesc, dnnl.engine, b) != dnnl_success
        || dnnl.dnnl_memory_create(&cm, &cRun, dnnl.engine, c) != dnnl_success) goto done;
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
    // Timed as a trainer would run it: the fp32 operands converted to bfloat16 (with our conversion), then the matmul.
    double best = 0;
    for (int round = 0; round < 5; round++) {
        const double start = now();
        int64_t calls = 0;
        double elapsed;
        do {
            titan_f32_to_bf16(a32, a, M * K);
            titan_f32_to_bf16(b32, b, K * N);
            if (dnnl.dnnl_primitive_execute(primitive, dnnl.stream, 3, args) != dnnl_success) goto done;
            dnnl.dnnl_stream_wait(dnnl.stream);
            calls++;
            elapsed = now() - start;
        } while (elapsed < seconds);
        const double gflops = 2.0 * M * N * K * calls / elapsed / 1e9;
        if (gflops > best) best = gflops;
    }
    result = best;
done:
    if (cm) dnnl.dnnl_memory_destroy(cm);
    if (bm) dnnl.dnnl_memory_destroy(bm);
    if (am) dnnl.dnnl_memory_destroy(am);
    if (primitive) dnnl.dnnl_primitive_destroy(primitive);
    if (pd) dnnl.dnnl_primitive_desc_destroy(pd);
    free(a32); free(b32); free(c); free(a); free(b);
    return result;
}
#else
const char *titan_onednn_describe(void) { return "oneDNN's header was not installed when titan was built (apt-get install libdnnl-dev)"; }

double titan_onednn_bf16_gemm(int64_t M, int64_t N, int64_t K, int transA, int transB, int runtimeM, double seconds,
                              double *createMilliseconds, char *implementation, int64_t implementationSize) {
    (void)M; (void)N; (void)K; (void)transA; (void)transB; (void)runtimeM; (void)seconds; (void)createMilliseconds;
    (void)implementation; (void)implementationSize;
    return -1;
}
#endif
