// GEMMs on bfloat16 inputs with fp32 accumulation, as torch autocast runs linear / matmul / bmm on a CPU:
//   C = alpha · bf16(op(A)) · bf16(op(B)) + beta · C,   C fp32 in memory,
// A and B each fp32 (rounded to bfloat16, to nearest even as torch's c10::BFloat16, while they are packed) or already
// bfloat16 (where a mixed-precision producer wrote them so: packing is then a copy of half the bytes).
//
// GotoBLAS blocking: for each block of NC columns and KC of the reduction, B is packed into VNNI panels (16 columns,
// pairs of k interleaved: what both AMX and vdpbf16ps multiply); for each block of 32 rows A is packed row-major
// (k contiguous, padded to 32); each 32 × 32 block of C is computed on the packed blocks and merged into C with alpha
// and beta. Two compute kernels share the packs: AMX tiles (tdpbf16ps: 2 × 2 tiles of 16 × 16) and AVX512_BF16
// (vdpbf16ps: 8 rows × 32 columns in registers). The packing needs AVX-512 F/BW only. Every block size is fixed, so a
// GEMM's result depends on its shape only: bitwise reproducible.
#include "CKernels.h"
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

// ---- scalar conversions (torch's c10::BFloat16: round to nearest even; every NaN becomes 0x7FC0) ----

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t bf16_from_f32(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float f32_from_bf16(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

#if defined(__x86_64__)
#define V512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq")))
#define DPBF16 __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq")))

static int has_avx512(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    }
    return known;
}

// Lanes of x rounded to bfloat16, in the top 16 bits of each 32-bit lane (the bottom 16 are not cleared).
V512 static inline __m512i rne_high(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                                          _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(_mm512_add_epi32(u, bias), nan, _mm512_set1_epi32(0x7FC00000));
}

// 16 floats → 16 bfloat16.
V512 static inline __m256i to_bf16(__m512 x) { return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rne_high(x), 16)); }

// Lane i: the pair (bf16(lo[i]), bf16(hi[i])) as one 32-bit lane, lo in the low half: a VNNI pair.
V512 static inline __m512i pair_bf16(__m512 lo, __m512 hi) {
    return _mm512_or_si512(_mm512_and_si512(rne_high(hi), _mm512_set1_epi32((int)0xFFFF0000u)),
                           _mm512_srli_epi32(rne_high(lo), 16));
}

static inline __mmask16 lanes(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

// r[i] lane j ↔ r[j] lane i: a 16 × 16 transpose of 32-bit lanes.
V512 static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int h = 0; h < 16; h += 8) {
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xDD);
        }
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
    }
}

// ---- packing ----
// Both compute kernels need AVX512_BF16's conversions (every AMX CPU has them): vcvtne2ps2bf16 rounds to nearest even
// as torch does, but makes denormals zero and keeps NaN payloads; the kernels treat denormal bfloat16 inputs as zero
// anyway (tdpbf16ps and vdpbf16ps both do), so a GEMM's result is the same as with torch's rounding.

// 16 floats → 16 bfloat16.
DPBF16 static inline __m256i cvt16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }

// Lane i: the VNNI pair (bf16(lo[i]), bf16(hi[i])), lo in the low half.
DPBF16 static inline __m512i pair16(__m512 lo, __m512 hi) {
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

enum { MR = 32, NR = 32, KC = 512, NC = 512 };

static inline int64_t round_up32(int64_t n) { return (n + 31) & ~(int64_t)31; }

// Rows i < mb, columns k < kb of op(A) (op(A)[i][k] = A[i·rsa + k·csa]) as bfloat16 into Ap[MR][kcp], rows ≥ mb and
// columns ≥ kb zero.
DPBF16 static void pack_A(const float *A, int64_t rsa, int64_t csa, int64_t mb, int64_t kb, int64_t kcp, uint16_t *Ap) {
    if (csa == 1) {
        for (int64_t i = 0; i < MR; i++) {
            uint16_t *dst = Ap + i * kcp;
            if (i >= mb) { memset(dst, 0, (size_t)kcp * 2); continue; }
            const float *src = A + i * rsa;
            for (int64_t k = 0; k < kcp; k += 16)
                _mm256_storeu_si256((__m256i *)(dst + k), cvt16(_mm512_maskz_loadu_ps(lanes(kb - k), src + k)));
        }
    } else if (rsa == 1) {
        // op(A) = Aᵀ: rows of the stored matrix run along i. Pairs of k rows become VNNI pairs, then 16 × 16 blocks of
        // pairs are transposed.
        for (int64_t i0 = 0; i0 < MR; i0 += 16) {
            const __mmask16 m = lanes(mb - i0);
            for (int64_t k0 = 0; k0 < kcp; k0 += 32) {
                __m512i r[16];
                for (int p = 0; p < 16; p++) {
                    const int64_t k = k0 + 2 * p;
                    const __m512 lo = k < kb ? _mm512_maskz_loadu_ps(m, A + i0 + k * csa) : _mm512_setzero_ps();
                    const __m512 hi = k + 1 < kb ? _mm512_maskz_loadu_ps(m, A + i0 + (k + 1) * csa) : _mm512_setzero_ps();
                    r[p] = pair16(lo, hi);
                }
                transpose16(r);
                for (int i = 0; i < 16; i++) _mm512_storeu_si512(Ap + (i0 + i) * kcp + k0, r[i]);
            }
        }
    } else {
        for (int64_t i = 0; i < MR; i++)
            for (int64_t k = 0; k < kcp; k++)
                Ap[i * kcp + k] = i < mb && k < kb ? bf16_from_f32(A[i * rsa + k * csa]) : 0;
    }
}

// Rows k < kb, columns j < nb of op(B) (op(B)[k][j] = B[k·rsb + j·csb]) as bfloat16 VNNI panels of 16 columns:
// panel q holds [kcp / 2][16][2] (element (k, 16q + c) at q·kcp·16 + (k / 2)·32 + c·2 + k % 2), ncp / 16 panels;
// rows ≥ kb and columns ≥ nb zero.
DPBF16 static void pack_B(const float *B, int64_t rsb, int64_t csb, int64_t kb, int64_t nb, int64_t kcp, int64_t ncp,
                        uint16_t *Bp) {
    if (csb == 1) {
        for (int64_t q = 0; q < ncp / 16; q++) {
            const __mmask16 m = lanes(nb - 16 * q);
            uint16_t *panel = Bp + q * kcp * 16;
            for (int64_t k = 0; k < kcp; k += 2) {
                const __m512 lo = k < kb ? _mm512_maskz_loadu_ps(m, B + k * rsb + 16 * q) : _mm512_setzero_ps();
                const __m512 hi = k + 1 < kb ? _mm512_maskz_loadu_ps(m, B + (k + 1) * rsb + 16 * q) : _mm512_setzero_ps();
                _mm512_storeu_si512(panel + k * 16, pair16(lo, hi));
            }
        }
    } else if (rsb == 1) {
        // op(B) = Bᵀ: each stored row is one column j with k contiguous, so its pairs are adjacent already; 16 × 16
        // blocks of pairs are transposed.
        for (int64_t q = 0; q < ncp / 16; q++) {
            uint16_t *panel = Bp + q * kcp * 16;
            for (int64_t k0 = 0; k0 < kcp; k0 += 32) {
                __m512i r[16];
                for (int c = 0; c < 16; c++) {
                    const int64_t j = 16 * q + c;
                    if (j >= nb) { r[c] = _mm512_setzero_si512(); continue; }
                    const float *src = B + j * csb + k0;
                    const __m256i lo = cvt16(_mm512_maskz_loadu_ps(lanes(kb - k0), src));
                    const __m256i hi = cvt16(_mm512_maskz_loadu_ps(lanes(kb - k0 - 16), src + 16));
                    r[c] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                }
                transpose16(r);
                for (int p = 0; p < 16; p++) _mm512_storeu_si512(panel + (k0 / 2 + p) * 32, r[p]);
            }
        }
    } else {
        for (int64_t q = 0; q < ncp / 16; q++)
            for (int64_t k = 0; k < kcp; k++)
                for (int64_t c = 0; c < 16; c++) {
                    const int64_t j = 16 * q + c;
                    Bp[q * kcp * 16 + (k / 2) * 32 + c * 2 + (k & 1)] = k < kb && j < nb ? bf16_from_f32(B[k * rsb + j * csb]) : 0;
                }
    }
}

// The same packs from bfloat16 operands: copies, no rounding.

static inline __mmask32 lanes32(int64_t n) { return n >= 32 ? (__mmask32)0xFFFFFFFFu : n <= 0 ? 0 : (__mmask32)((1u << n) - 1); }

// Lane i: the VNNI pair (lo[i], hi[i]) of 16 bfloat16 each.
V512 static inline __m512i pair_bits(__m256i lo, __m256i hi) {
    return _mm512_or_si512(_mm512_cvtepu16_epi32(lo), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
}

V512 static void pack_A16(const uint16_t *A, int64_t rsa, int64_t csa, int64_t mb, int64_t kb, int64_t kcp, uint16_t *Ap) {
    if (csa == 1) {
        for (int64_t i = 0; i < MR; i++) {
            uint16_t *dst = Ap + i * kcp;
            if (i >= mb) { memset(dst, 0, (size_t)kcp * 2); continue; }
            for (int64_t k = 0; k < kcp; k += 32)
                _mm512_storeu_si512(dst + k, _mm512_maskz_loadu_epi16(lanes32(kb - k), A + i * rsa + k));
        }
    } else if (rsa == 1) {
        for (int64_t i0 = 0; i0 < MR; i0 += 16) {
            const __mmask16 m = lanes(mb - i0);
            for (int64_t k0 = 0; k0 < kcp; k0 += 32) {
                __m512i r[16];
                for (int p = 0; p < 16; p++) {
                    const int64_t k = k0 + 2 * p;
                    const __m256i lo = k < kb ? _mm256_maskz_loadu_epi16(m, A + i0 + k * csa) : _mm256_setzero_si256();
                    const __m256i hi = k + 1 < kb ? _mm256_maskz_loadu_epi16(m, A + i0 + (k + 1) * csa) : _mm256_setzero_si256();
                    r[p] = pair_bits(lo, hi);
                }
                transpose16(r);
                for (int i = 0; i < 16; i++) _mm512_storeu_si512(Ap + (i0 + i) * kcp + k0, r[i]);
            }
        }
    } else {
        for (int64_t i = 0; i < MR; i++)
            for (int64_t k = 0; k < kcp; k++) Ap[i * kcp + k] = i < mb && k < kb ? A[i * rsa + k * csa] : 0;
    }
}

V512 static void pack_B16(const uint16_t *B, int64_t rsb, int64_t csb, int64_t kb, int64_t nb, int64_t kcp, int64_t ncp,
                          uint16_t *Bp) {
    if (csb == 1) {
        for (int64_t q = 0; q < ncp / 16; q++) {
            const __mmask16 m = lanes(nb - 16 * q);
            uint16_t *panel = Bp + q * kcp * 16;
            for (int64_t k = 0; k < kcp; k += 2) {
                const __m256i lo = k < kb ? _mm256_maskz_loadu_epi16(m, B + k * rsb + 16 * q) : _mm256_setzero_si256();
                const __m256i hi = k + 1 < kb ? _mm256_maskz_loadu_epi16(m, B + (k + 1) * rsb + 16 * q) : _mm256_setzero_si256();
                _mm512_storeu_si512(panel + k * 16, pair_bits(lo, hi));
            }
        }
    } else if (rsb == 1) {
        for (int64_t q = 0; q < ncp / 16; q++) {
            uint16_t *panel = Bp + q * kcp * 16;
            for (int64_t k0 = 0; k0 < kcp; k0 += 32) {
                __m512i r[16];
                for (int c = 0; c < 16; c++) {
                    const int64_t j = 16 * q + c;
                    r[c] = j < nb ? _mm512_maskz_loadu_epi16(lanes32(kb - k0), B + j * csb + k0) : _mm512_setzero_si512();
                }
                transpose16(r);
                for (int p = 0; p < 16; p++) _mm512_storeu_si512(panel + (k0 / 2 + p) * 32, r[p]);
            }
        }
    } else {
        for (int64_t q = 0; q < ncp / 16; q++)
            for (int64_t k = 0; k < kcp; k++)
                for (int64_t c = 0; c < 16; c++) {
                    const int64_t j = 16 * q + c;
                    Bp[q * kcp * 16 + (k / 2) * 32 + c * 2 + (k & 1)] = k < kb && j < nb ? B[k * rsb + j * csb] : 0;
                }
    }
}

// ---- compute kernels: one 32 × 32 block of C from Ap (32 × kcp) and two panels, into acc[4][256] ----
// acc[0]: rows 0-15, columns 0-15; acc[1]: rows 0-15, columns 16-31; acc[2], acc[3]: rows 16-31 likewise.

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

AMX static void amx_configure(void) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) { c.rows[t] = 16; c.colsb[t] = 64; }
    _tile_loadconfig(&c);
}

// The 32 × 32 block into acc, or, with C (a whole block, alpha 1), straight into C: onto C's values when `onto_C`,
// else overwriting them.
AMX static void amx_block(const uint16_t *Ap, int64_t kcp, const uint16_t *B0, float acc[4][256], float *C, int64_t ldc,
                          int onto_C) {
    const uint16_t *B1 = B0 + kcp * 16, *A1 = Ap + 16 * kcp;
    const int64_t stride = kcp * 2, cstride = ldc * 4;
    if (C && onto_C) {
        _tile_loadd(0, C, cstride); _tile_loadd(1, C + 16, cstride);
        _tile_loadd(2, C + 16 * ldc, cstride); _tile_loadd(3, C + 16 * ldc + 16, cstride);
    } else {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    }
    for (int64_t k = 0; k < kcp; k += 32) {
        _tile_loadd(4, Ap + k, stride);
        _tile_loadd(5, A1 + k, stride);
        _tile_loadd(6, B0 + k * 16, 64);
        _tile_loadd(7, B1 + k * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    if (C) {
        _tile_stored(0, C, cstride); _tile_stored(1, C + 16, cstride);
        _tile_stored(2, C + 16 * ldc, cstride); _tile_stored(3, C + 16 * ldc + 16, cstride);
        return;
    }
    _tile_stored(0, acc[0], 64);
    _tile_stored(1, acc[1], 64);
    _tile_stored(2, acc[2], 64);
    _tile_stored(3, acc[3], 64);
}

// Rows < mb only (the others are not merged).
DPBF16 static void dpbf16_block(const uint16_t *Ap, int64_t kcp, const uint16_t *B0, int64_t mb, float acc[4][256]) {
    const uint16_t *B1 = B0 + kcp * 16;
    for (int64_t r0 = 0; r0 < mb; r0 += 8) {
        __m512 lo[8], hi[8];
        for (int r = 0; r < 8; r++) { lo[r] = _mm512_setzero_ps(); hi[r] = _mm512_setzero_ps(); }
        for (int64_t p = 0; p < kcp / 2; p++) {
            const __m512bh b0 = (__m512bh)_mm512_loadu_si512(B0 + p * 32), b1 = (__m512bh)_mm512_loadu_si512(B1 + p * 32);
            for (int r = 0; r < 8; r++) {
                uint32_t pair;
                memcpy(&pair, Ap + (r0 + r) * kcp + 2 * p, 4);
                const __m512bh a = (__m512bh)_mm512_set1_epi32((int)pair);
                lo[r] = _mm512_dpbf16_ps(lo[r], a, b0);
                hi[r] = _mm512_dpbf16_ps(hi[r], a, b1);
            }
        }
        for (int r = 0; r < 8; r++) {
            const int64_t row = r0 + r, t = row < 16 ? 0 : 2;
            _mm512_storeu_ps(acc[t] + (row & 15) * 16, lo[r]);
            _mm512_storeu_ps(acc[t + 1] + (row & 15) * 16, hi[r]);
        }
    }
}

// C[0..mb)[0..nb) = alpha · acc + (first ? beta · C : C); C is not read when first and beta == 0.
V512 static void merge(float acc[4][256], int64_t mb, int64_t nb, float alpha, float beta, int first, float *C, int64_t ldc) {
    const __mmask16 m0 = lanes(nb), m1 = lanes(nb - 16);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int64_t r = 0; r < mb; r++) {
        const int64_t t = r < 16 ? 0 : 2;
        float *c = C + r * ldc;
        __m512 v0 = _mm512_mul_ps(va, _mm512_loadu_ps(acc[t] + (r & 15) * 16));
        __m512 v1 = _mm512_mul_ps(va, _mm512_loadu_ps(acc[t + 1] + (r & 15) * 16));
        if (!first) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c + 16));
        } else if (beta != 0) {
            v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), v0);
            v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16), v1);
        }
        _mm512_mask_storeu_ps(c, m0, v0);
        _mm512_mask_storeu_ps(c + 16, m1, v1);
    }
}

// ---- per-thread packing buffers ----

typedef struct { uint16_t *Ap, *Bp; } workspace;
static pthread_key_t workspace_key;
static pthread_once_t workspace_once = PTHREAD_ONCE_INIT;
static __thread workspace *thread_workspace;

static void workspace_free(void *p) {
    workspace *w = p;
    free(w->Ap); free(w->Bp); free(w);
}
static void workspace_key_create(void) { pthread_key_create(&workspace_key, workspace_free); }

static workspace *get_workspace(void) {
    if (thread_workspace) return thread_workspace;
    pthread_once(&workspace_once, workspace_key_create);
    workspace *w = malloc(sizeof *w);
    w->Ap = aligned_alloc(64, (size_t)MR * KC * 2);
    w->Bp = aligned_alloc(64, (size_t)KC * NC * 2);
    if (!w->Ap || !w->Bp) abort();
    pthread_setspecific(workspace_key, w);
    thread_workspace = w;
    return w;
}

// ---- which kernels this CPU runs ----

static int amx_ready = -1;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

// AMX needs the CPU's tiles and the kernel's permission to use their state (Linux 5.16+: arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, once per process).
static void amx_request(void) {
    amx_ready = 0;
    __builtin_cpu_init();
    if (!has_avx512() || !__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return;
#if defined(__linux__)
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0) amx_ready = 1;
#endif
}

int titan_bf16_kernels(void) {
    pthread_once(&amx_once, amx_request);
    int k = 0;
    if (has_avx512() && __builtin_cpu_supports("avx512bf16")) k |= TITAN_BF16_AVX512;
    if (amx_ready == 1) k |= TITAN_BF16_AMX;
    return k;
}

// ---- the GEMM ----

V512 static void gemm_blocks(int kernel, int64_t M, int64_t N, int64_t K, float alpha, const void *A, int64_t rsa,
                             int64_t csa, int a16, const void *B, int64_t rsb, int64_t csb, int b16, float beta, float *C,
                             int64_t ldc) {
    workspace *w = get_workspace();
    float acc[4][256] __attribute__((aligned(64)));
    const float *Af = A, *Bf = B;
    const uint16_t *Ah = A, *Bh = B;
    for (int64_t jc = 0; jc < N; jc += NC) {
        const int64_t nc = N - jc < NC ? N - jc : NC, ncp = round_up32(nc);
        for (int64_t pc = 0; pc < K; pc += KC) {
            const int64_t kc = K - pc < KC ? K - pc : KC, kcp = round_up32(kc);
            if (b16) pack_B16(Bh + pc * rsb + jc * csb, rsb, csb, kc, nc, kcp, ncp, w->Bp);
            else pack_B(Bf + pc * rsb + jc * csb, rsb, csb, kc, nc, kcp, ncp, w->Bp);
            for (int64_t ic = 0; ic < M; ic += MR) {
                const int64_t mb = M - ic < MR ? M - ic : MR;
                if (a16) pack_A16(Ah + ic * rsa + pc * csa, rsa, csa, mb, kc, kcp, w->Ap);
                else pack_A(Af + ic * rsa + pc * csa, rsa, csa, mb, kc, kcp, w->Ap);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int64_t nb = nc - jr < NR ? nc - jr : NR;
                    const uint16_t *panels = w->Bp + (jr / 16) * kcp * 16;
                    float *c = C + ic * ldc + jc + jr;
                    if (kernel == TITAN_BF16_AMX) {
                        // A whole block with alpha 1 accumulates in the tiles from C's values (or zero) and is
                        // stored straight to C: no round trip through acc.
                        const int onto_C = pc > 0 || beta == 1;
                        if (mb == MR && nb == NR && alpha == 1 && (onto_C || beta == 0)) {
                            amx_block(w->Ap, kcp, panels, acc, c, ldc, onto_C);
                            continue;
                        }
                        amx_block(w->Ap, kcp, panels, acc, NULL, 0, 0);
                    } else {
                        dpbf16_block(w->Ap, kcp, panels, mb, acc);
                    }
                    merge(acc, mb, nb, alpha, beta, pc == 0, c, ldc);
                }
            }
        }
    }
}

AMX static void gemm_amx(int64_t M, int64_t N, int64_t K, float alpha, const void *A, int64_t rsa, int64_t csa, int a16,
                         const void *B, int64_t rsb, int64_t csb, int b16, float beta, float *C, int64_t ldc) {
    amx_configure();
    gemm_blocks(TITAN_BF16_AMX, M, N, K, alpha, A, rsa, csa, a16, B, rsb, csb, b16, beta, C, ldc);
    _tile_release();   // the kernel then saves no tile state at context switches
}

void titan_bf16_gemm(int kernel, int64_t M, int64_t N, int64_t K, float alpha, const void *A, int64_t rsa,
                     int64_t csa, int a16, const void *B, int64_t rsb, int64_t csb, int b16, float beta, float *C,
                     int64_t ldc) {
    if (M <= 0 || N <= 0 || K <= 0) abort();   // callers handle empty GEMMs
    if (!(titan_bf16_kernels() & kernel)) abort();
    if (kernel == TITAN_BF16_AMX) gemm_amx(M, N, K, alpha, A, rsa, csa, a16, B, rsb, csb, b16, beta, C, ldc);
    else gemm_blocks(kernel, M, N, K, alpha, A, rsa, csa, a16, B, rsb, csb, b16, beta, C, ldc);
}

// ---- conversions ----

V512 static void f32_to_bf16_avx512(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(y + i), to_bf16(_mm512_loadu_ps(x + i)));
    if (i < n) _mm256_mask_storeu_epi16(y + i, lanes(n - i), to_bf16(_mm512_maskz_loadu_ps(lanes(n - i), x + i)));
}

V512 static void round_bf16_avx512(const float *x, float *y, int64_t n) {
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_si512(y + i, _mm512_and_si512(rne_high(_mm512_loadu_ps(x + i)), high));
    if (i < n) {
        const __mmask16 m = lanes(n - i);
        _mm512_mask_storeu_epi32(y + i, m, _mm512_and_si512(rne_high(_mm512_maskz_loadu_ps(m, x + i)), high));
    }
}

V512 static void bf16_to_f32_avx512(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_si512(y + i, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + i))), 16));
    for (; i < n; i++) y[i] = f32_from_bf16(x[i]);
}
#else
int titan_bf16_kernels(void) { return 0; }
void titan_bf16_gemm(int kernel, int64_t M, int64_t N, int64_t K, float alpha, const void *A, int64_t rsa,
                     int64_t csa, int a16, const void *B, int64_t rsb, int64_t csb, int b16, float beta, float *C,
                     int64_t ldc) {
    (void)kernel; (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)rsa; (void)csa; (void)a16; (void)B; (void)rsb;
    (void)csb; (void)b16; (void)beta; (void)C; (void)ldc;
    abort();   // titan_bf16_kernels() is 0 here: callers never get this far
}
#endif

void titan_f32_to_bf16(const float *x, uint16_t *y, int64_t n) {
#if defined(__x86_64__)
    if (has_avx512()) { f32_to_bf16_avx512(x, y, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) y[i] = bf16_from_f32(x[i]);
}

void titan_bf16_to_f32(const uint16_t *x, float *y, int64_t n) {
#if defined(__x86_64__)
    if (has_avx512()) { bf16_to_f32_avx512(x, y, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) y[i] = f32_from_bf16(x[i]);
}

void titan_round_bf16(const float *x, float *y, int64_t n) {
#if defined(__x86_64__)
    if (has_avx512()) { round_bf16_avx512(x, y, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) y[i] = f32_from_bf16(bf16_from_f32(x[i]));
}
