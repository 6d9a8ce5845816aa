// Causal grouped-query attention, BLAS per (batch, head).
//   q_BTHd: [B, T, H, hd], k_BTKd / v_BTKd: [B, T, KV, hd], out_BTHd: [B, T, H, hd]
//   att_BHTT: [B, H, T, T] softmax probabilities (row t: keys 0...t, zeros above the diagonal), saved for backward.
// Query head h uses kv head h / (H / KV). Scale 1/sqrt(hd). Softmax in fp32.

public func attention_forward(_ out_BTHd: UnsafeMutablePointer<Float>, _ att_BHTT: UnsafeMutablePointer<Float>,
                              _ q_BTHd: UnsafePointer<Float>, _ k_BTKd: UnsafePointer<Float>, _ v_BTKd: UnsafePointer<Float>,
                              B: Int, T: Int, H: Int, KV: Int, hd: Int) {
    precondition(H % KV == 0, "attention: n_heads \(H) not a multiple of n_kv_heads \(KV)")
    let rep = H / KV
    let scale = 1 / Float(hd).squareRoot()
    let qs = H * hd, ks = KV * hd
    for b in 0..<B {
        for h in 0..<H {
            let g = h / rep
            let Q = q_BTHd + b * T * qs + h * hd
            let K = k_BTKd + b * T * ks + g * hd
            let Vp = v_BTKd + b * T * ks + g * hd
            let P = att_BHTT + (b * H + h) * T * T
            // S_TT = scale · Q_Thd · K_Thdᵀ
            BLAS.sgemm(transA: false, transB: true, M: T, N: T, K: hd, alpha: scale, A: Q, lda: qs, B: K, ldb: ks,
                       beta: 0, C: P, ldc: T)
            for t in 0..<T {
                let row = P + t * T
                let mx = vmax(row, t + 1)
                let sum = exp_shifted(row, row, t + 1, minus: mx)
                vscale(row, t + 1, 1 / sum)
                if t + 1 < T { (row + t + 1).update(repeating: 0, count: T - t - 1) }
            }
            // out_Thd = P_TT · V_Thd
            BLAS.sgemm(transA: false, transB: false, M: T, N: hd, K: T, alpha: 1, A: P, lda: T, B: Vp, ldb: ks,
                       beta: 0, C: out_BTHd + b * T * qs + h * hd, ldc: qs)
        }
    }
}

/// Backward of `attention_forward`, accumulating into dq, dk, dv. `scratch_TT` holds T·T floats.
public func attention_backward(dq_BTHd: UnsafeMutablePointer<Float>, dk_BTKd: UnsafeMutablePointer<Float>, dv_BTKd: UnsafeMutablePointer<Float>,
                               scratch_TT: UnsafeMutablePointer<Float>, dout_BTHd: UnsafePointer<Float>, att_BHTT: UnsafePointer<Float>,
                               q_BTHd: UnsafePointer<Float>, k_BTKd: UnsafePointer<Float>, v_BTKd: UnsafePointer<Float>,
                               B: Int, T: Int, H: Int, KV: Int, hd: Int) {
    let rep = H / KV
    let scale = 1 / Float(hd).squareRoot()
    let qs = H * hd, ks = KV * hd
    let dS = scratch_TT
    for b in 0..<B {
        for h in 0..<H {
            let g = h / rep
            let Q = q_BTHd + b * T * qs + h * hd
            let K = k_BTKd + b * T * ks + g * hd
            let Vp = v_BTKd + b * T * ks + g * hd
            let dO = dout_BTHd + b * T * qs + h * hd
            let P = att_BHTT + (b * H + h) * T * T
            // dP_TT = dO · Vᵀ
            BLAS.sgemm(transA: false, transB: true, M: T, N: T, K: hd, alpha: 1, A: dO, lda: qs, B: Vp, ldb: ks,
                       beta: 0, C: dS, ldc: T)
            // dV += Pᵀ · dO
            BLAS.sgemm(transA: true, transB: false, M: T, N: hd, K: T, alpha: 1, A: P, lda: T, B: dO, ldb: qs,
                       beta: 1, C: dv_BTKd + b * T * ks + g * hd, ldc: ks)
            // dS = P ⊙ (dP − rowsum(P ⊙ dP)), causal entries only
            for t in 0..<T {
                let p = P + t * T, d = dS + t * T
                let s = dot(p, d, t + 1)
                for j in 0...t { d[j] = p[j] * (d[j] - s) }
                if t + 1 < T { (d + t + 1).update(repeating: 0, count: T - t - 1) }
            }
            // dQ += scale · dS · K ; dK += scale · dSᵀ · Q
            BLAS.sgemm(transA: false, transB: false, M: T, N: hd, K: T, alpha: scale, A: dS, lda: T, B: K, ldb: ks,
                       beta: 1, C: dq_BTHd + b * T * qs + h * hd, ldc: qs)
            BLAS.sgemm(transA: true, transB: false, M: T, N: hd, K: T, alpha: scale, A: dS, lda: T, B: Q, ldb: qs,
                       beta: 1, C: dk_BTKd + b * T * ks + g * hd, ldc: ks)
        }
    }
}
