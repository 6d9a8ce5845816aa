// Causal grouped-query attention with GEMMs per (batch, kv head), in blocks of query rows so that only the causal
// (lower-triangular) part of the score matrix is computed. Per kv head: Kᵀ (backward: Vᵀ) once, so that every GEMM
// takes B untransposed (our AVX-512 kernel where the CPU has it, see Matmul.swift); then per query head score GEMMs,
// the causal softmax of its rows, the value GEMMs (backward likewise). With several kernel threads, kv heads run
// concurrently, each with single-threaded GEMMs: the results are the same bits as the serial loop.
//   q_BTHd: [B, T, H, hd], k_BTKd / v_BTKd: [B, T, KV, hd], out_BTHd: [B, T, H, hd]
//   att_BHTT: [B, H, T, T] softmax probabilities (row t: keys 0...t, then zeros to the end of t's block of query rows;
//             entries past the block are not written), saved for backward.
// Query head h uses kv head h / (H / KV). Scale 1/sqrt(hd) unless given (DeepSeek-V3's MLA folds YaRN's mscale into
// it). Values may have their own head width `vd` (MLA: v_head_dim ≠ qk_nope_head_dim + qk_rope_head_dim); then
// v_BTKd is [B, T, KV, vd] and out_BTHd [B, T, H, vd]. Softmax in fp32.

import CKernels
import Runtime

/// Query rows per block.
public let attentionBlockRows = 64

public func attention_forward(_ out_BTHd: UnsafeMutablePointer<Float>, _ att_BHTT: UnsafeMutablePointer<Float>,
                              _ q_BTHd: UnsafePointer<Float>, _ k_BTKd: UnsafePointer<Float>, _ v_BTKd: UnsafePointer<Float>,
                              B: Int, T: Int, H: Int, KV: Int, hd: Int, vd: Int? = nil, scale: Float? = nil) {
    precondition(H % KV == 0, "attention: n_heads \(H) not a multiple of n_kv_heads \(KV)")
    let rep = H / KV
    let scale = scale ?? 1 / Float(hd).squareRoot()
    let vd = vd ?? hd
    let qs = H * hd, ks = KV * hd, vs = KV * vd, os = H * vd
    // One (batch, kv head) at a time, as in backward: Kᵀ of the kv head once, where it stays in cache (so every GEMM
    // takes B untransposed), then per query head of the group its score GEMMs, the causal softmax of its rows, its
    // value GEMMs. Groups are independent, so they run concurrently on the kernel threads with single-threaded GEMMs
    // (many small ones); B · KV groups keep the threads busy where that is at least the thread count. (Measured
    // against Kᵀ formed per head, or for all groups up front: 1-2% faster, within noise.)
    func group(_ bg: Int) {
        let b = bg / KV, g = bg % KV
        let K = k_BTKd + b * T * ks + g * hd
        let Vp = v_BTKd + b * T * vs + g * vd
        let Kt_dT = UnsafeMutablePointer<Float>.allocate(capacity: hd * T)
        defer { Kt_dT.deallocate() }
        transpose(Kt_dT, K, rows: T, cols: hd, srcStride: ks)
        for h in (g * rep)..<((g + 1) * rep) {
            let Q = q_BTHd + b * T * qs + h * hd
            let O = out_BTHd + b * T * os + h * vd
            let P = att_BHTT + (b * H + h) * T * T
            // 1. S = scale · Q · Kᵀ (causal blocks)
            var r0 = 0
            while r0 < T {
                let rn = min(attentionBlockRows, T - r0), kn = r0 + rn
                BLAS.sgemmSerial(transA: false, transB: false, M: rn, N: kn, K: hd, alpha: scale, A: Q + r0 * qs,
                                 lda: qs, B: Kt_dT, ldb: T, beta: 0, C: P + r0 * T, ldc: T)
                r0 = kn
            }
            // 2. causal softmax of every row; zeros after the diagonal up to the end of the row's block (the value
            //    GEMM reads them; nothing reads past the block)
            for t in 0..<T {
                let row = P + t * T
                let kn = min(T, (t / attentionBlockRows + 1) * attentionBlockRows)
                let mx = vmax(row, t + 1)
                let sum = exp_shifted(row, row, t + 1, minus: mx)
                vscale(row, t + 1, 1 / sum)
                if t + 1 < kn { (row + t + 1).update(repeating: 0, count: kn - t - 1) }
            }
            // 3. O = P · V
            r0 = 0
            while r0 < T {
                let rn = min(attentionBlockRows, T - r0), kn = r0 + rn
                BLAS.sgemmSerial(transA: false, transB: false, M: rn, N: vd, K: kn, alpha: 1, A: P + r0 * T, lda: T,
                                 B: Vp, ldb: vs, beta: 0, C: O + r0 * os, ldc: os)
                r0 = kn
            }
        }
    }
    parallelForEach(costs: [Int](repeating: rep * T * T, count: B * KV), group)
}

/// dst_CR[c, r] = src[r · srcStride + c] for r < rows, c < cols: dst is row-major [cols, rows].
@inline(__always)
func transpose(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, rows: Int, cols: Int, srcStride: Int) {
    for c in 0..<cols {
        let d = dst + c * rows
        for r in 0..<rows { d[r] = src[r * srcStride + c] }
    }
}

/// Backward of `attention_forward`: WRITES dq, dk, dv (no zeroing pass first). `scratch_BHTT` holds B·H·T·T floats.
public func attention_backward(dq_BTHd: UnsafeMutablePointer<Float>, dk_BTKd: UnsafeMutablePointer<Float>, dv_BTKd: UnsafeMutablePointer<Float>,
                               scratch_BHTT: UnsafeMutablePointer<Float>, dout_BTHd: UnsafePointer<Float>, att_BHTT: UnsafePointer<Float>,
                               q_BTHd: UnsafePointer<Float>, k_BTKd: UnsafePointer<Float>, v_BTKd: UnsafePointer<Float>,
                               B: Int, T: Int, H: Int, KV: Int, hd: Int, vd: Int? = nil, scale: Float? = nil) {
    let rep = H / KV
    let scale = scale ?? 1 / Float(hd).squareRoot()
    let vd = vd ?? hd
    let qs = H * hd, ks = KV * hd, vs = KV * vd, os = H * vd
    // Row blocks last first: the last block's GEMMs span every key row, so the first of them writes dK / dV whole
    // (beta 0) and the rest accumulate onto it.
    let blockStarts = Array(stride(from: 0, to: T, by: attentionBlockRows).reversed())
    let bf16 = BLAS.matmulPrecision == .bfloat16
    // One (batch, kv head) at a time, its query heads in order: dK and dV of a kv head are accumulated by its query
    // heads only, in the same order as a serial loop, so concurrent kv heads give bit-identical results.
    func group(_ bg: Int) {
        let b = bg / KV, g = bg % KV
        let Vp = v_BTKd + b * T * vs + g * vd
        let K = k_BTKd + b * T * ks + g * hd
        let dV = dv_BTKd + b * T * vs + g * vd
        let dK = dk_BTKd + b * T * ks + g * hd
        let Vt_dT = UnsafeMutablePointer<Float>.allocate(capacity: vd * T)   // Vᵀ: every GEMM takes B untransposed
        defer { Vt_dT.deallocate() }
        transpose(Vt_dT, Vp, rows: T, cols: vd, srcStride: vs)
        gradients(b: b, g: g, Vt_dT: Vt_dT, K: K, dV: dV, dK: dK)
    }
    func gradients(b: Int, g: Int, Vt_dT: UnsafePointer<Float>, K: UnsafePointer<Float>,
                   dV: UnsafeMutablePointer<Float>, dK: UnsafeMutablePointer<Float>) {
        // 1. dP = dO · Vᵀ ; dV = Σ Pᵀ · dO over the group's heads and row blocks (causal blocks)
        for h in (g * rep)..<((g + 1) * rep) {
            let dO = dout_BTHd + b * T * os + h * vd
            let P = att_BHTT + (b * H + h) * T * T
            let dS = scratch_BHTT + (b * H + h) * T * T
            for r0 in blockStarts {
                let rn = min(attentionBlockRows, T - r0), kn = r0 + rn
                BLAS.sgemmSerial(transA: false, transB: false, M: rn, N: kn, K: vd, alpha: 1, A: dO + r0 * os, lda: os,
                           B: Vt_dT, ldb: T, beta: 0, C: dS + r0 * T, ldc: T)
                let first = h == g * rep && kn == T
                BLAS.sgemmSerial(transA: true, transB: false, M: kn, N: vd, K: rn, alpha: 1, A: P + r0 * T, lda: T,
                           B: dO + r0 * os, ldb: os, beta: first ? 0 : 1, C: dV, ldc: vs)
            }
            // 2. dS = P ⊙ (dP − rowsum(P ⊙ dP)) on causal entries; zeros up to the end of the row's block. Under mixed
            //    precision dS feeds GEMMs only: its row is then written back as bfloat16 into the first half of its
            //    own storage (row stride 2T), in place of being rounded by both GEMMs that pack it.
            for t in 0..<T {
                let p = P + t * T, d = dS + t * T
                let kn = min(T, (t / attentionBlockRows + 1) * attentionBlockRows)
                let s = dot(p, d, t + 1)
                for j in 0...t { d[j] = p[j] * (d[j] - s) }
                if t + 1 < kn { (d + t + 1).update(repeating: 0, count: kn - t - 1) }
                if bf16 {
                    withUnsafeTemporaryAllocation(of: UInt16.self, capacity: kn) { row in
                        titan_f32_to_bf16(d, row.baseAddress!, Int64(kn))
                        UnsafeMutableRawPointer(d).copyMemory(from: row.baseAddress!, byteCount: 2 * kn)
                    }
                }
            }
        }
        // 3. dQ = scale · dS · K (each row block once) ;  dK = Σ scale · dSᵀ · Q
        for h in (g * rep)..<((g + 1) * rep) {
            let Q = q_BTHd + b * T * qs + h * hd
            let dQ = dq_BTHd + b * T * qs + h * hd
            let dS = scratch_BHTT + (b * H + h) * T * T
            let dSb = UnsafeRawPointer(dS).assumingMemoryBound(to: UInt16.self)
            for r0 in blockStarts {
                let rn = min(attentionBlockRows, T - r0), kn = r0 + rn
                let a: GEMMInput = bf16 ? .bf16(dSb + r0 * 2 * T) : .f32(dS + r0 * T), lda = bf16 ? 2 * T : T
                BLAS.gemmSerial(transA: false, transB: false, M: rn, N: hd, K: kn, alpha: scale, A: a, lda: lda,
                                B: .f32(K), ldb: ks, beta: 0, C: dQ + r0 * qs, ldc: qs)
                let first = h == g * rep && kn == T
                BLAS.gemmSerial(transA: true, transB: false, M: kn, N: hd, K: rn, alpha: scale, A: a, lda: lda,
                                B: .f32(Q + r0 * qs), ldb: qs, beta: first ? 0 : 1, C: dK, ldc: ks)
            }
        }
    }
    parallelForEach(costs: [Int](repeating: rep * T * T, count: B * KV), group)
}
