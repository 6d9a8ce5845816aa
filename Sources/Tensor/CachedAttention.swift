// Causal grouped-query attention of T new query positions over a key/value cache (incremental decoding, forward only).
// The new queries sit at positions P ..< P+T; the cache holds keys and values of positions 0 ..< P+T (the new ones
// already appended). Query t attends to keys 0 ... P+t, so with P = 0 this is `attention_forward` (same math, same
// scale, fp32 softmax) and with T = 1 it is one decoding step: O(P) dot products per head, nothing recomputed.
//   q_THd: [T, H, hd] (row stride H·hd), k_SKd: [S, KV, hd] with S >= P+T rows (row stride KV·hd), v_SKd: [S, KV, vd],
//   out_THd: [T, H, vd], scores_HTS: scratch of H · T · (P+T) floats.
// Query head h uses kv head h / (H / KV). Scale 1/sqrt(hd) unless given; values of their own width vd (default hd),
// as attention_forward takes them (DeepSeek-V3's MLA).

import Runtime

public func attention_cached_forward(_ out_THd: UnsafeMutablePointer<Float>, _ q_THd: UnsafePointer<Float>,
                                     k_SKd: UnsafePointer<Float>, v_SKd: UnsafePointer<Float>,
                                     scores_HTS: UnsafeMutablePointer<Float>,
                                     P: Int, T: Int, H: Int, KV: Int, hd: Int, vd: Int? = nil, scale: Float? = nil) {
    precondition(H % KV == 0, "attention: n_heads \(H) not a multiple of n_kv_heads \(KV)")
    let rep = H / KV
    let S = P + T                       // keys visible to the last new query
    let scale = scale ?? 1 / Float(hd).squareRoot()
    let vd = vd ?? hd
    let qs = H * hd, ks = KV * hd, vs = KV * vd, os = H * vd
    // One query head at a time (heads are independent: they run concurrently with single-threaded GEMMs, the same
    // bits as a serial loop). scores = scale · Q_h · K_gᵀ over all S keys, then each row's causal softmax over keys
    // 0 ... P+t (the masked tail zeroed), then O_h = scores · V_g.
    func head(_ h: Int) {
        let g = h / rep
        if T == 1 { return step(h, g) }
        let Q = q_THd + h * hd, O = out_THd + h * vd
        let K = k_SKd + g * hd, V = v_SKd + g * vd
        let Sc = scores_HTS + h * T * S
        BLAS.sgemmSerial(transA: false, transB: true, M: T, N: S, K: hd, alpha: scale, A: Q, lda: qs,
                         B: K, ldb: ks, beta: 0, C: Sc, ldc: S)
        for t in 0..<T {
            let row = Sc + t * S
            let n = P + t + 1
            let mx = vmax(row, n)
            let sum = exp_shifted(row, row, n, minus: mx)
            vscale(row, n, 1 / sum)
            if n < S { (row + n).update(repeating: 0, count: S - n) }
        }
        BLAS.sgemmSerial(transA: false, transB: false, M: T, N: vd, K: S, alpha: 1, A: Sc, lda: S,
                         B: V, ldb: vs, beta: 0, C: O, ldc: os)
    }
    // One new position (a decoding step): dot products with the cached keys and a weighted sum of the cached values,
    // each read once (as GEMMs of one row they would be packed first).
    func step(_ h: Int, _ g: Int) {
        let Q = q_THd + h * hd, O = out_THd + h * vd
        let K = k_SKd + g * hd, V = v_SKd + g * vd
        let row = scores_HTS + h * S
        for j in 0..<S { row[j] = scale * dot(Q, K + j * ks, hd) }
        let mx = vmax(row, S)
        let sum = exp_shifted(row, row, S, minus: mx)
        vscale(row, S, 1 / sum)
        O.update(repeating: 0, count: vd)
        for j in 0..<S { axpy(O, row[j], V + j * vs, vd) }
    }
    parallelForEach(costs: [Int](repeating: T * S * hd, count: H), head)
}
