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
///
/// Group-limited routing (DeepSeek-V3, HF DeepseekV3TopkRouter) when `groups` > 1: the E experts form `groups`
/// consecutive groups; a group's score is the sum of its two largest biased scores; only the experts of the
/// `topkGroups` best groups (ties: lower group index) take part in the top-k. Group choice is piecewise constant, so
/// `topk_backward` is the same.
public func topk_forward(_ idx_TK: UnsafeMutablePointer<Int32>, _ gate_TK: UnsafeMutablePointer<Float>,
                         _ scores_TE: UnsafePointer<Float>, bias_E: UnsafePointer<Float>?,
                         T: Int, E: Int, K: Int, routeNorm: Bool, routeScale: Float, groups: Int = 1, topkGroups: Int = 1) {
    precondition(K >= 1 && K <= E, "top-k: k = \(K) with \(E) experts")
    precondition(groups >= 1 && E % groups == 0 && topkGroups >= 1 && topkGroups <= groups, "top-k: \(groups) groups, keep \(topkGroups), \(E) experts")
    let perGroup = E / groups
    precondition(groups == 1 || (perGroup >= 2 && K <= topkGroups * perGroup), "top-k: groups of \(perGroup) experts, keep \(topkGroups), k = \(K)")
    var allowed = [Bool](repeating: true, count: E)
    var groupScore = [Float](repeating: 0, count: groups)
    var keep = [Int](repeating: 0, count: topkGroups)
    for t in 0..<T {
        let s = scores_TE + t * E
        let idx = idx_TK + t * K, g = gate_TK + t * K
        if groups > 1 {
            // group score: top-1 + top-2 of the biased scores (HF: topk(2).values.sum), added in that order
            for gi in 0..<groups {
                var a = -Float.infinity, b = -Float.infinity
                for e in (gi * perGroup)..<((gi + 1) * perGroup) {
                    let v = s[e] + (bias_E?[e] ?? 0)
                    if v > a { b = a; a = v } else if v > b { b = v }
                }
                groupScore[gi] = a + b
            }
            // the topkGroups best groups (insertion, strict > keeps the lower index on ties)
            var n = 0
            for gi in 0..<groups {
                let v = groupScore[gi]
                if n == topkGroups {
                    if !(v > groupScore[keep[n - 1]]) { continue }
                    n -= 1
                }
                var j = n
                while j > 0 && v > groupScore[keep[j - 1]] { keep[j] = keep[j - 1]; j -= 1 }
                keep[j] = gi
                n += 1
            }
            for e in 0..<E { allowed[e] = false }
            for k in 0..<topkGroups { for e in (keep[k] * perGroup)..<((keep[k] + 1) * perGroup) { allowed[e] = true } }
        }
        // insertion into a sorted list of k (value desc, index asc); strict > keeps the lower index on ties
        var n = 0
        for e in 0..<E where allowed[e] {
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
