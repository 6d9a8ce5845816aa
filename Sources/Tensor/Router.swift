// MoE router kernels: scores (softmax / sigmoid over all experts), top-k selection and gate weights.
//   logits_TE, scores_TE: [T, E];  idx_TK: [T, K] expert ids;  gate_TK: [T, K] routing weights.

/// scores_TE = softmax(logits_TE) over experts (sigmoid: element-wise σ). May alias.
public func router_scores_forward(_ scores_TE: UnsafeMutablePointer<Float>, _ logits_TE: UnsafePointer<Float>,
                                  T: Int, E: Int, sigmoid: Bool) {
    if sigmoid {
        for i in 0..<(T * E) { scores_TE[i] = sigmoidf(logits_TE[i]) }
        return
    }
    for t in 0..<T {
        let l = logits_TE + t * E, s = scores_TE + t * E
        let mx = vmax(l, E)
        let sum = exp_shifted(s, l, E, minus: mx)
        vscale(s, E, 1 / sum)
    }
}

/// dlogits_TE += J(scores)ᵀ · dscores_TE, from the saved scores.
public func router_scores_backward(_ dlogits_TE: UnsafeMutablePointer<Float>, _ dscores_TE: UnsafePointer<Float>,
                                   _ scores_TE: UnsafePointer<Float>, T: Int, E: Int, sigmoid: Bool) {
    if sigmoid {
        for i in 0..<(T * E) { let s = scores_TE[i]; dlogits_TE[i] += dscores_TE[i] * s * (1 - s) }
        return
    }
    for t in 0..<T {
        let s = scores_TE + t * E, ds = dscores_TE + t * E, dl = dlogits_TE + t * E
        let m = dot(s, ds, E)
        for e in 0..<E { dl[e] += s[e] * (ds[e] - m) }
    }
}

/// Top-k expert selection per token by (scores + bias_E) (bias may be nil), ties broken by the lower expert index;
/// experts listed in descending biased score. The gate weights come from the UNBIASED scores:
///   g_k = scores[t, idx_k], renormalised g_k / (Σ_j g_j + 1e-20) when `routeNorm`, then × routeScale.
public func topk_forward(_ idx_TK: UnsafeMutablePointer<Int32>, _ gate_TK: UnsafeMutablePointer<Float>,
                         _ scores_TE: UnsafePointer<Float>, bias_E: UnsafePointer<Float>?,
                         T: Int, E: Int, K: Int, routeNorm: Bool, routeScale: Float) {
    precondition(K >= 1 && K <= E, "top-k: k = \(K) with \(E) experts")
    for t in 0..<T {
        let s = scores_TE + t * E
        let idx = idx_TK + t * K, g = gate_TK + t * K
        // insertion into a sorted list of k (value desc, index asc); strict > keeps the lower index on ties
        var n = 0
        for e in 0..<E {
            let v = s[e] + (bias_E?[e] ?? 0)
            if n == K {
                let last = Int(idx[K - 1])
                let lv = s[last] + (bias_E?[last] ?? 0)
                if !(v > lv) { continue }
                n -= 1
            }
            var j = n
            while j > 0 {
                let pe = Int(idx[j - 1])
                let pv = s[pe] + (bias_E?[pe] ?? 0)
                if v > pv { idx[j] = idx[j - 1]; j -= 1 } else { break }
            }
            idx[j] = Int32(e)
            n += 1
        }
        var sum: Float = 0
        for k in 0..<K { g[k] = s[Int(idx[k])]; sum += g[k] }
        if routeNorm {
            // Divide, as HF and torchtitan do (a reciprocal-multiply can differ by an ulp).
            let denominator = sum + 1e-20
            for k in 0..<K { g[k] = g[k] / denominator }
        }
        if routeScale != 1 { for k in 0..<K { g[k] *= routeScale } }
    }
}

/// dscores_TE += ∂gate/∂scores ᵀ · dgate_TK (selection is piecewise constant: no gradient through the choice).
public func topk_backward(_ dscores_TE: UnsafeMutablePointer<Float>, _ dgate_TK: UnsafePointer<Float>,
                          _ scores_TE: UnsafePointer<Float>, _ idx_TK: UnsafePointer<Int32>,
                          T: Int, E: Int, K: Int, routeNorm: Bool, routeScale: Float) {
    for t in 0..<T {
        let s = scores_TE + t * E, idx = idx_TK + t * K, dg = dgate_TK + t * K, ds = dscores_TE + t * E
        if routeNorm {
            var sum: Float = 0, dot: Float = 0
            for k in 0..<K { let v = s[Int(idx[k])]; sum += v; dot += dg[k] * v }
            let d = sum + 1e-20
            for k in 0..<K {
                ds[Int(idx[k])] += routeScale * (dg[k] / d - dot / (d * d))
            }
        } else {
            for k in 0..<K { ds[Int(idx[k])] += routeScale * dg[k] }
        }
    }
}
