// GEMM kernels the BLAS libraries here lack or run slower: small single-precision GEMMs with AVX-512 (attention's
// blocks), and GEMMs on bfloat16 inputs with fp32 accumulation (AMX or AVX512_BF16) for mixed precision. Each is
// compiled per function for the instructions it uses and called only where the CPU has them.
#pragma once
#include <stdint.h>

/// Whether this CPU runs `titan_small_sgemm` (AVX-512 F).
int titan_small_sgemm_available(void);

/// C[M×N] = alpha · op(A)[M×K] · B[K×N] + beta · C (beta 0: C is only written; unlike BLAS, alpha 0 still reads A
/// and B). op(A)[i][k] = A[i·rsa + k·csa], so A and Aᵀ both work; B row-major with row stride ldb, C row-major with
/// row stride ldc. Tuned on Zen 5 (two 512-bit FMA pipes).
void titan_small_sgemm(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t rsa, int64_t csa,
                       const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/// The bfloat16 GEMM kernels (`titan_bf16_kernels`' bits).
#define TITAN_BF16_AVX512 1   /* vdpbf16ps (AVX512_BF16) */
#define TITAN_BF16_AMX 2      /* tdpbf16ps (AMX-BF16 tiles; the process asked Linux for their state) */

/// The bfloat16 GEMM kernels this CPU (and kernel) runs: a mask of TITAN_BF16_*; 0 where neither.
int titan_bf16_kernels(void);

/// C[M×N] = alpha · bf16(op(A)) · bf16(op(B)) + beta · C with fp32 accumulation, on `kernel` (one TITAN_BF16_* the
/// CPU runs). A and B are fp32, or bfloat16 (uint16_t bits) where a16 / b16; op(A)[i][k] = A[i·rsa + k·csa],
/// op(B)[k][j] = B[k·rsb + j·csb] (either may be transposed), C fp32 row-major with row stride ldc; beta 0: C is only
/// written. bf16(x) rounds to nearest even (the identity on bfloat16 operands). M, N, K > 0.
void titan_bf16_gemm(int kernel, int64_t M, int64_t N, int64_t K, float alpha, const void *A, int64_t rsa,
                     int64_t csa, int a16, const void *B, int64_t rsb, int64_t csb, int b16, float beta, float *C,
                     int64_t ldc);

/// y[i] = bf16(x[i]) (round to nearest even; every NaN becomes 0x7FC0, as torch's c10::BFloat16).
void titan_f32_to_bf16(const float *x, uint16_t *y, int64_t n);
/// y[i] = x[i] widened (exact).
void titan_bf16_to_f32(const uint16_t *x, float *y, int64_t n);
/// y[i] = x[i] rounded to bfloat16 and widened back (x == y allowed).
void titan_round_bf16(const float *x, float *y, int64_t n);

/// oneDNN where Debian's libdnnl is installed (loaded at run time, for `titan bench-gemm --bf16 --compare-libraries`
/// only), e.g. "oneDNN 2.6.3", or why it is not available.
const char *titan_onednn_describe(void);
/// GFLOP/s of oneDNN's bf16 matmul (fp32 out) of op(A)[M×K] · op(B)[K×N] on one thread, best of 5 rounds of
/// `seconds`, each call converting fp32 A and B to bfloat16 first (as a trainer would feed it); `runtimeM`: M left to
/// run time (one primitive for every M, as expert GEMMs would need). Its creation time and implementation name are
/// written out. -1 where oneDNN is not available.
double titan_onednn_bf16_gemm(int64_t M, int64_t N, int64_t K, int transA, int transB, int runtimeM, double seconds,
                              double *createMilliseconds, char *implementation, int64_t implementationSize);
