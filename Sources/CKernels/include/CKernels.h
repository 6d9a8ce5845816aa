// Small single-precision GEMMs with AVX-512, for shapes where the BLAS libraries' packing costs more than their kernels
// gain (attention's 64-row blocks). Compiled for AVX-512 per function and used only where the CPU has it.
#pragma once
#include <stdint.h>

/// Whether this CPU runs `titan_small_sgemm` (AVX-512 F).
int titan_small_sgemm_available(void);

/// C[M×N] = alpha · op(A)[M×K] · B[K×N] + beta · C (beta 0: C is only written; unlike BLAS, alpha 0 still reads A
/// and B). op(A)[i][k] = A[i·rsa + k·csa], so A and Aᵀ both work; B row-major with row stride ldb, C row-major with
/// row stride ldc. Tuned on Zen 5 (two 512-bit FMA pipes).
void titan_small_sgemm(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t rsa, int64_t csa,
                       const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
