// Causal grouped-query attention with BLAS per (batch, head), in blocks of query rows so that only the causal
// (lower-triangular) part of the score matrix is computed. Phases: score GEMMs, a row-parallel softmax over all
// heads, then the value GEMMs (backward likewise).
//   q_BTHd: [B, T, H, hd], k_BTKd / v_BTKd: [B, T, KV, hd], out_BTHd: [B, T, H, hd]
//   att_BHTT: [B, H, T, T] softmax probabilities (row t: keys 0...t, zeros above the diagonal), saved for backward.
// Query head h uses kv head h / (H / KV). Scale 1/sqrt(hd). Softmax in fp32.

/// Query rows per block.
public let attentionBlockRows = 64

public func attention_forward(_ out_BTHd: UnsafeMutablePointer<Float>, _ att_BHTT: UnsafeMutablePointer<Float>,
                              _ q_BTHd: UnsafePointer<Float>, _ k_BTKd: UnsafePointer<Float>, _ v_BTKd: UnsafePointer<Float>,
                              B: Int, T: Int, H: Int, KV: Int, hd: Int) {
    precondition(H % KV == 0, "attention: n_heads \(H) not a multiple of n_kv_heads \(KV)")
    let rep = H / KV
    let scale = 1 / Float(hd).squareRoot()
    let qs = H * hd, ks = KV * hd
    // 1. S = scale · Q · Kᵀ (causal blocks)
    for b in 0..<B {
        for h in 0..<H {
            let Q = q_BTHd + b * T * qs + h * hd
            let K = k_BTKd + b * T * ks + (h / rep) * hd
            let P = att_BHTT + (b * H + h) * T * T
            var r0 = 0
            while r0 < T {
                let rn = min(attentionBlockRows, T - r0), kn = r0 + rn
                BLAS.sgemm(transA: false, transB: true, M: rn, N: kn, K: hd, alpha: scale, A: Q + r0 * qs, lda: qs,
                           B: K, ldb: ks, beta: 0, C: P + r0 * T, ldc: T)
                r0 = kn
            }
        }
    }
    // 2. causal softmax of every row of every head
    parallelFor(B * H * T, costPerItem: T) { rows in
        for r in rows {
            let t = r % T
            let row = att_BHTT + r * T
            let mx = vmax(row, t + 1)
            let sum = exp_shifted(row, row, t + 1, minus: mx)
            vscale(row, t + 1, 1 / sum)
            if t + 1 < T { (row + t + 1).update(repeating: 0, count: T - t - 1) }
        }
    }
    // 3. O = P · V
    for b in 0..<B {
        for h in 0..<H {
            let Vp = v_BTKd + b * T * ks + (h / rep) * hd
            let O = out_BTHd + b * T * qs + h * hd
            let P = att_BHTT + (b * H + h) * T * T
            var r0 = 0
            while r0 < T {
                let rn = min(attentionBlockRows, T - r0), kn = r0 + rn
                BLAS.sgemm(transA: false, transB: false, M: rn, N: hd, K: kn, alpha: 1, A: P + r0 * T, lda: T,
                           B: Vp, ldb: ks, beta: 0, C: O + r0 * qs, ldc: qs)
                r0 = kn
            }
        }
    }
}

/// Backward of `attention_forward`, accumulating into dq, dk, dv. `scratch_BHTT` holds B·H·T·T floats.
public func attention_backward(dq_BTHd: UnsafeMutablePointer<Float>, dk_BTKd: UnsafeMutablePointer<Float>, dv_BTKd: UnsafeMutablePointer<Float>,
                               scratch_BHTT: UnsafeMutablePointer<Float>, dout_BTHd: UnsafePointer<Float>, att_BHTT: UnsafePointer<Float>,
                               q_BTHd: UnsafePointer<Float>, k_BTKd: UnsafePointer<Float>, v_BTKd: UnsafePointer<Float>,
                               B: Int, T: Int, H: Int, KV: Int, hd: Int) {
    let rep = H / KV
    let scale = 1 / Float(hd).squareRoot()
    let qs = H * hd, ks = KV * hd
    // 1. dP = dO · Vᵀ ; dV += Pᵀ · dO   (causal blocks)
    for b in 0..<B {
        for h in 0..<H {
            let g = h / rep
            let Vp = v_BTKd + b * T * ks + g * hd
            let dO = dout_BTHd + b * T * qs + h * hd
            let dV = dv_BTKd + b * T * ks + g * hd
            let P = att_BHTT + (b * H + h) * T * T
            let dS = scratch_BHTT + (b * H + h) * T * T
            var r0 = 0
            while r0 < T {
                let rn = min(attentionBlockRows, T - r0), kn = r0 + rn
                BLAS.sgemm(transA: false, transB: true, M: rn, N: kn, K: hd, alpha: 1, A: dO + r0 * qs, lda: qs,
                           B: Vp, ldb: ks, beta: 0, C: dS + r0 * T, ldc: T)
                BLAS.sgemm(transA: true, transB: false, M: kn, N: hd, K: rn, alpha: 1, A: P + r0 * T, lda: T,
                           B: dO + r0 * qs, ldb: qs, beta: 1, C: dV, ldc: ks)
                r0 = kn
            }
        }
    }
    // 2. dS = P ⊙ (dP − rowsum(P ⊙ dP)) on causal entries; zeros up to the end of the row's block
    parallelFor(B * H * T, costPerItem: 2 * T) { rows in
        for r in rows {
            let t = r % T
            let p = att_BHTT + r * T, d = scratch_BHTT + r * T
            let kn = min(T, (t / attentionBlockRows + 1) * attentionBlockRows)
            let s = dot(p, d, t + 1)
            for j in 0...t { d[j] = p[j] * (d[j] - s) }
            if t + 1 < kn { (d + t + 1).update(repeating: 0, count: kn - t - 1) }
        }
    }
    // 3. dQ += scale · dS · K ;  dK += scale · dSᵀ · Q
    for b in 0..<B {
        for h in 0..<H {
            let g = h / rep
            let Q = q_BTHd + b * T * qs + h * hd
            let K = k_BTKd + b * T * ks + g * hd
            let dQ = dq_BTHd + b * T * qs + h * hd
            let dK = dk_BTKd + b * T * ks + g * hd
            let dS = scratch_BHTT + (b * H + h) * T * T
            var r0 = 0
            while r0 < T {
                let rn = min(attentionBlockRows, T - r0), kn = r0 + rn
                BLAS.sgemm(transA: false, transB: false, M: rn, N: hd, K: kn, alpha: scale, A: dS + r0 * T, lda: T,
                           B: K, ldb: ks, beta: 1, C: dQ + r0 * qs, ldc: qs)
                BLAS.sgemm(transA: true, transB: false, M: kn, N: hd, K: rn, alpha: scale, A: dS + r0 * T, lda: T,
                           B: Q + r0 * qs, ldb: qs, beta: 1, C: dK, ldc: ks)
                r0 = kn
            }
        }
    }
}
