#include "CKernels.h"
#include <immintrin.h>
#include <stdlib.h>

int titan_small_sgemm_available(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

#if defined(__x86_64__)
#define AVX512 __attribute__((target("avx512f")))

// Masks for the 32 columns of a tile: the first and second 16 (n < 32 only at the right edge of C).
AVX512 static inline __mmask16 columns_mask(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

// ROWS rows × up to 32 columns of C: 2·ROWS accumulators in registers, one pass over K.
#define TILE(ROWS)                                                                                                   \
AVX512 static inline void tile_##ROWS(int64_t n, int64_t K, float alpha, const float *A, int64_t rsa, int64_t csa,  \
                                      const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {             \
    const __mmask16 m0 = columns_mask(n), m1 = n > 16 ? columns_mask(n - 16) : 0;                                  \
    const int64_t hi_offset = n > 16 ? 16 : 0;   /* with n <= 16 the second half is masked off: stay in bounds */  \
    __m512 lo[ROWS], hi[ROWS];                                                                                       \
    for (int r = 0; r < ROWS; r++) { lo[r] = _mm512_setzero_ps(); hi[r] = _mm512_setzero_ps(); }                   \
    for (int64_t k = 0; k < K; k++) {                                                                                \
        const float *b = B + k * ldb;                                                                                \
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + hi_offset);            \
        const float *a = A + k * csa;                                                                                \
        for (int r = 0; r < ROWS; r++) {                                                                             \
            const __m512 ar = _mm512_set1_ps(a[r * rsa]);                                                            \
            lo[r] = _mm512_fmadd_ps(ar, b0, lo[r]);                                                                  \
            hi[r] = _mm512_fmadd_ps(ar, b1, hi[r]);                                                                  \
        }                                                                                                            \
    }                                                                                                                \
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);                                            \
    for (int r = 0; r < ROWS; r++) {                                                                                 \
        float *c = C + r * ldc;                                                                                      \
        __m512 c0 = _mm512_mul_ps(va, lo[r]), c1 = _mm512_mul_ps(va, hi[r]);                                        \
        if (beta != 0) {                                                                                             \
            c0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), c0);                                              \
            c1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + hi_offset), c1);                                  \
        }                                                                                                            \
        _mm512_mask_storeu_ps(c, m0, c0);                                                                            \
        _mm512_mask_storeu_ps(c + hi_offset, m1, c1);                                                               \
    }                                                                                                                \
}
TILE(8)
TILE(1)

AVX512 void titan_small_sgemm(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t rsa, int64_t csa,
                              const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    for (int64_t j = 0; j < N; j += 32) {
        const int64_t n = N - j < 32 ? N - j : 32;
        int64_t i = 0;
        for (; i + 8 <= M; i += 8) tile_8(n, K, alpha, A + i * rsa, rsa, csa, B + j, ldb, beta, C + i * ldc + j, ldc);
        for (; i < M; i++) tile_1(n, K, alpha, A + i * rsa, rsa, csa, B + j, ldb, beta, C + i * ldc + j, ldc);
    }
}
#else
void titan_small_sgemm(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t rsa, int64_t csa,
                       const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)rsa; (void)csa; (void)B; (void)ldb; (void)beta; (void)C;
    (void)ldc;
    abort();   // titan_small_sgemm_available() is 0 here: callers never get this far
}
#endif
