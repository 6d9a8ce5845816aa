import Runtime
import Tensor

/// Backward scratch shared by all layers (grows to the largest need; backward of one layer at a time).
final class Workspace {
    let dxn = GrowBuffer()        // [N, D]    grad of a normalized block input
    let dao = GrowBuffer()        // [N, H*hd]
    let dq = GrowBuffer()         // [N, H*hd]
    let dqn = GrowBuffer()        // [N, H*hd]
    let dk = GrowBuffer()         // [N, KV*hd]
    let dkn = GrowBuffer()        // [N, KV*hd]
    let dv = GrowBuffer()         // [N, KV*hd]
    let dTT = GrowBuffer()        // [B, H, T, T] attention backward scratch
    let dh = GrowBuffer(), dh1 = GrowBuffer(), dh3 = GrowBuffer()  // [N, F] dense / shared FFN
    let logits = GrowBuffer()     // [N, E] router logits (forward)
    let dgate = GrowBuffer()      // [N, K]
    let dscores = GrowBuffer()    // [N, E]
    let dlogits = GrowBuffer()    // [N, E]
    let dys = GrowBuffer()        // [N*K, D]
    let dxs = GrowBuffer()        // [N*K, D]
}

/// Owning Int32 buffer.
final class IntBuffer {
    let count: Int
    let data: UnsafeMutablePointer<Int32>
    init(_ n: Int) {
        count = n
        data = .allocate(capacity: max(n, 1))
        data.initialize(repeating: 0, count: max(n, 1))
    }
    deinit { data.deallocate() }
}

// MARK: - dense SwiGLU feed-forward (also the shared experts)

final class FFNActs {
    let h1: Tensor, h3: Tensor, h: Tensor  // [N, F]
    init(N: Int, F: Int) { h1 = Tensor(shape: [N, F]); h3 = Tensor(shape: [N, F]); h = Tensor(shape: [N, F]) }
}

/// out_ND += (silu(x·w1ᵀ) ⊙ x·w3ᵀ)·w2ᵀ ; w1_FD, w2_DF, w3_FD.
public final class FeedForward {
    public let w1: Parameter, w2: Parameter, w3: Parameter
    public let dim: Int, hiddenDim: Int
    init(prefix: String, params: [String: Parameter], dim: Int, hiddenDim: Int) {
        w1 = params[prefix + "w1.weight"]!; w2 = params[prefix + "w2.weight"]!; w3 = params[prefix + "w3.weight"]!
        self.dim = dim; self.hiddenDim = hiddenDim
    }

    func forward(_ x_ND: UnsafePointer<Float>, accumulateInto out_ND: UnsafeMutablePointer<Float>, acts a: FFNActs, N: Int) {
        let D = dim, F = hiddenDim
        matmul_forward(a.h1.data, x_ND, w1.v, T: N, D: D, N: F)
        matmul_forward(a.h3.data, x_ND, w3.v, T: N, D: D, N: F)
        swiglu_forward(a.h.data, a.h1.data, a.h3.data, N * F)
        matmul_forward(out_ND, a.h.data, w2.v, T: N, D: F, N: D, accumulate: true)
    }

    /// dx_ND += ∂/∂x (dx_ND = ∂/∂x when `overwriteDx`: no zeroing pass first); weight grads accumulated.
    func backward(_ dout_ND: UnsafePointer<Float>, dx_ND: UnsafeMutablePointer<Float>, x_ND: UnsafePointer<Float>, acts a: FFNActs,
                  ws: Workspace, N: Int, overwriteDx: Bool = false) {
        let D = dim, F = hiddenDim
        let dh = ws.dh.get(N * F), dh1 = ws.dh1.get(N * F), dh3 = ws.dh3.get(N * F)
        // scratch written by its first producer (no zeroing pass)
        matmul_backward(dx_TD: dh, dw_ND: w2.g, dout_TN: dout_ND, x_TD: a.h.data, w_ND: w2.v, T: N, D: F, N: D, overwriteDx: true)
        swiglu_backward(dh1, dh3, dh, a.h1.data, a.h3.data, N * F, overwrite: true)
        matmul_backward(dx_TD: dx_ND, dw_ND: w1.g, dout_TN: dh1, x_TD: x_ND, w_ND: w1.v, T: N, D: D, N: F, overwriteDx: overwriteDx)
        matmul_backward(dx_TD: dx_ND, dw_ND: w3.g, dout_TN: dh3, x_TD: x_ND, w_ND: w3.v, T: N, D: D, N: F)
    }
}

// MARK: - attention

final class AttnActs {
    let qRaw: Tensor, qRstd: Tensor, q: Tensor   // [N, H*hd], [N*H], [N, H*hd] (normed + rotated)
    let kRaw: Tensor, kRstd: Tensor, k: Tensor   // [N, KV*hd], [N*KV], [N, KV*hd]
    let v: Tensor                                 // [N, KV*hd]
    let att: Tensor                               // [B, H, T, T]
    let ao: Tensor                                // [N, H*hd]
    init(B: Int, T: Int, H: Int, KV: Int, hd: Int) {
        let N = B * T
        qRaw = Tensor(shape: [N, H * hd]); qRstd = Tensor(shape: [N * H]); q = Tensor(shape: [N, H * hd])
        kRaw = Tensor(shape: [N, KV * hd]); kRstd = Tensor(shape: [N * KV]); k = Tensor(shape: [N, KV * hd])
        v = Tensor(shape: [N, KV * hd])
        att = Tensor(shape: [B, H, T, T])
        ao = Tensor(shape: [N, H * hd])
    }
}

/// Qwen3 attention: q/k/v projections (no bias), per-head RMSNorm on q and k, RoPE, causal GQA, o projection.
public final class Attention {
    public let wq: Parameter, wk: Parameter, wv: Parameter, wo: Parameter, qNorm: Parameter, kNorm: Parameter
    let D: Int, H: Int, KV: Int, hd: Int, eps: Float

    init(prefix p: String, params: [String: Parameter], args a: Qwen3ModelArgs) {
        wq = params[p + "wq.weight"]!; wk = params[p + "wk.weight"]!; wv = params[p + "wv.weight"]!
        wo = params[p + "wo.weight"]!; qNorm = params[p + "q_norm.weight"]!; kNorm = params[p + "k_norm.weight"]!
        D = a.dim; H = a.n_heads; KV = a.n_kv_heads; hd = a.head_dim; eps = a.norm_eps
    }

    func forward(_ xn_ND: UnsafePointer<Float>, accumulateInto out_ND: UnsafeMutablePointer<Float>, acts a: AttnActs,
                 cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int) {
        let N = B * T
        matmul_forward(a.qRaw.data, xn_ND, wq.v, T: N, D: D, N: H * hd)
        matmul_forward(a.kRaw.data, xn_ND, wk.v, T: N, D: D, N: KV * hd)
        matmul_forward(a.v.data, xn_ND, wv.v, T: N, D: D, N: KV * hd)
        rmsnorm_forward(a.q.data, a.qRstd.data, a.qRaw.data, qNorm.v, N: N * H, D: hd, eps: eps)
        rmsnorm_forward(a.k.data, a.kRstd.data, a.kRaw.data, kNorm.v, N: N * KV, D: hd, eps: eps)
        rope_forward(a.q.data, a.q.data, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T, H: H, hd: hd)
        rope_forward(a.k.data, a.k.data, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T, H: KV, hd: hd)
        attention_forward(a.ao.data, a.att.data, a.q.data, a.k.data, a.v.data, B: B, T: T, H: H, KV: KV, hd: hd)
        matmul_forward(out_ND, a.ao.data, wo.v, T: N, D: H * hd, N: D, accumulate: true)
    }

    /// dxn_ND = ∂/∂xn (written: no zeroing pass first); weight grads accumulated.
    func backward(_ dout_ND: UnsafePointer<Float>, dxn_ND: UnsafeMutablePointer<Float>, xn_ND: UnsafePointer<Float>, acts a: AttnActs,
                  cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, ws: Workspace, B: Int, T: Int) {
        let N = B * T, QD = H * hd, KD = KV * hd
        let dao = ws.dao.get(N * QD), dq = ws.dq.get(N * QD), dqn = ws.dqn.get(N * QD)
        let dk = ws.dk.get(N * KD), dkn = ws.dkn.get(N * KD), dv = ws.dv.get(N * KD), dTT = ws.dTT.get(B * H * T * T)
        matmul_backward(dx_TD: dao, dw_ND: wo.g, dout_TN: dout_ND, x_TD: a.ao.data, w_ND: wo.v, T: N, D: QD, N: D, overwriteDx: true)
        attention_backward(dq_BTHd: dq, dk_BTKd: dk, dv_BTKd: dv, scratch_BHTT: dTT, dout_BTHd: dao, att_BHTT: a.att.data,
                           q_BTHd: a.q.data, k_BTKd: a.k.data, v_BTKd: a.v.data, B: B, T: T, H: H, KV: KV, hd: hd)
        // through RoPE, then the per-head norms; dq / dk are reused (overwritten) for the grads of the raw projections
        rope_backward(dqn, dq, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T, H: H, hd: hd, overwrite: true)
        rmsnorm_backward(dq, qNorm.g, dqn, a.qRaw.data, qNorm.v, a.qRstd.data, N: N * H, D: hd, overwriteDx: true)
        rope_backward(dkn, dk, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T, H: KV, hd: hd, overwrite: true)
        rmsnorm_backward(dk, kNorm.g, dkn, a.kRaw.data, kNorm.v, a.kRstd.data, N: N * KV, D: hd, overwriteDx: true)
        matmul_backward(dx_TD: dxn_ND, dw_ND: wq.g, dout_TN: dq, x_TD: xn_ND, w_ND: wq.v, T: N, D: D, N: QD, overwriteDx: true)
        matmul_backward(dx_TD: dxn_ND, dw_ND: wk.g, dout_TN: dk, x_TD: xn_ND, w_ND: wk.v, T: N, D: D, N: KD)
        matmul_backward(dx_TD: dxn_ND, dw_ND: wv.g, dout_TN: dv, x_TD: xn_ND, w_ND: wv.v, T: N, D: D, N: KD)
    }
}

// MARK: - MoE

final class MoEActs {
    let scores: Tensor            // [N, E]
    let idx: IntBuffer            // [N, K] selected experts
    let gate: Tensor              // [N, K] routing weights
    let pos: IntBuffer            // [N, K] position of pair (t, k) in the expert-sorted order
    let src: IntBuffer            // [N*K] token of sorted row s
    var counts: [Int]             // [E]
    let xs: Tensor, ys: Tensor    // [N*K, D] expert-sorted inputs / outputs
    let shared: FFNActs?
    init(N: Int, D: Int, E: Int, K: Int, sharedHidden: Int) {
        scores = Tensor(shape: [N, E]); idx = IntBuffer(N * K); gate = Tensor(shape: [N, K])
        pos = IntBuffer(N * K); src = IntBuffer(N * K); counts = [Int](repeating: 0, count: E)
        xs = Tensor(shape: [N * K, D]); ys = Tensor(shape: [N * K, D])
        shared = sharedHidden > 0 ? FFNActs(N: N, F: sharedHidden) : nil
    }
}

/// Qwen3-MoE sparse block with torchtitan options (HF Qwen3MoeSparseMoeBlock when softmax, route_norm, no shared experts,
/// no load balancing): router logits = x·gateᵀ, scores = softmax (or sigmoid) over all experts, top-k by scores + expert_bias,
/// gate weights from the unbiased scores (renormalised when route_norm, × route_scale), routed expert outputs multiplied by
/// their gate weights and summed, plus the ungated shared experts.
public final class MoE {
    public let args: MoEArgs
    public let dim: Int
    /// The module's FQN, e.g. "layers.3.moe".
    public let fqn: String
    public let gate: Parameter                 // router.gate.weight [E, D]
    public let w1: Parameter, w2: Parameter, w3: Parameter
    /// The routed-expert computation; replace it to distribute experts (expert parallelism).
    public var experts: MoEExperts
    /// The built-in local implementation over w1/w2/w3.
    public let localExperts: GroupedExperts
    public let shared: FeedForward?
    /// Load-balancing bias [E], added to the scores for top-k selection only. Used when load_balance_coeff > 0.
    public let expertBias: Tensor

    init(prefix p: String, params: [String: Parameter], args a: Qwen3ModelArgs) {
        args = a.moe; dim = a.dim; fqn = String(p.dropLast())
        gate = params[p + "router.gate.weight"]!
        w1 = params[p + "experts.w1"]!; w2 = params[p + "experts.w2"]!; w3 = params[p + "experts.w3"]!
        localExperts = GroupedExperts(w1: w1, w2: w2, w3: w3, dim: a.dim, hiddenDim: a.moe.hidden_dim, useGroupedMM: a.moe.use_grouped_mm)
        experts = localExperts
        shared = a.moe.num_shared_experts > 0
            ? FeedForward(prefix: p + "shared_experts.", params: params, dim: a.dim, hiddenDim: a.moe.hidden_dim * a.moe.num_shared_experts)
            : nil
        expertBias = Tensor(shape: [a.moe.num_experts])
    }

    var usesBias: Bool { args.load_balance_coeff > 0 }

    /// The routed experts' weights, whose leading dimension indexes the experts: w1 [E, F, D], w2 [E, D, F], w3 [E, F, D].
    public var routedExpertParameters: [Parameter] { [w1, w2, w3] }

    /// out_ND += MoE(xn_ND). Returns tokens per expert [E].
    @discardableResult
    func forward(_ xn_ND: UnsafePointer<Float>, accumulateInto out_ND: UnsafeMutablePointer<Float>, acts a: MoEActs, ws: Workspace, N: Int) -> [Int] {
        let D = dim, E = args.num_experts, K = args.top_k
        let logits = ws.logits.get(N * E)
        matmul_forward(logits, xn_ND, gate.v, T: N, D: D, N: E)
        router_scores_forward(a.scores.data, logits, T: N, E: E, sigmoid: args.score_func == .sigmoid)
        topk_forward(a.idx.data, a.gate.data, a.scores.data, bias_E: usesBias ? UnsafePointer(expertBias.data) : nil,
                     T: N, E: E, K: K, routeNorm: args.route_norm, routeScale: args.route_scale)
        // stable counting sort of the (token, k) pairs by expert
        var counts = [Int](repeating: 0, count: E)
        for p in 0..<(N * K) { counts[Int(a.idx.data[p])] += 1 }
        var next = [Int](repeating: 0, count: E)
        var o = 0
        for e in 0..<E { next[e] = o; o += counts[e] }
        for p in 0..<(N * K) {
            let e = Int(a.idx.data[p])
            let s = next[e]
            next[e] += 1
            a.pos.data[p] = Int32(s)
            a.src.data[s] = Int32(p / K)
        }
        a.counts = counts
        parallelFor(N * K, costPerItem: D) { rows in
            for s in rows { (a.xs.data + s * D).update(from: xn_ND + Int(a.src.data[s]) * D, count: D) }
        }
        experts.forward(x_SD: a.xs.ptr, counts_E: counts, y_SD: a.ys.data)
        // combine: out[t] += Σ_k gate[t,k] · y[pos[t,k]]
        parallelFor(N, costPerItem: K * D) { rows in
            for t in rows {
                let out = out_ND + t * D
                for k in 0..<K {
                    let p = t * K + k
                    axpy(out, a.gate.data[p], a.ys.data + Int(a.pos.data[p]) * D, D)
                }
            }
        }
        if let sh = shared { sh.forward(xn_ND, accumulateInto: out_ND, acts: a.shared!, N: N) }
        return counts
    }

    /// dxn_ND = ∂/∂xn (through experts, router weights and shared experts; written: no zeroing pass first); parameter
    /// grads accumulated.
    func backward(_ dout_ND: UnsafePointer<Float>, dxn_ND: UnsafeMutablePointer<Float>, xn_ND: UnsafePointer<Float>, acts a: MoEActs,
                  ws: Workspace, N: Int) {
        let D = dim, E = args.num_experts, K = args.top_k, S = N * K
        let dgate = ws.dgate.get(S), dys = ws.dys.get(S * D), dxs = ws.dxs.get(S * D)
        parallelFor(N, costPerItem: 3 * K * D) { rows in
            for t in rows {
                let dout = dout_ND + t * D
                for k in 0..<K {
                    let p = t * K + k
                    let s = Int(a.pos.data[p])
                    dgate[p] = dot(dout, a.ys.data + s * D, D)
                    let g = a.gate.data[p]
                    let dy = dys + s * D
                    for i in 0..<D { dy[i] = g * dout[i] }
                }
            }
        }
        experts.backward(x_SD: a.xs.ptr, dy_SD: dys, counts_E: a.counts, dx_SD: dxs)
        parallelFor(N, costPerItem: 2 * K * D) { rows in
            for t in rows {
                let dxn = dxn_ND + t * D
                dxn.update(from: dxs + Int(a.pos.data[t * K]) * D, count: D)
                for k in 1..<K { add_inplace(dxn, dxs + Int(a.pos.data[t * K + k]) * D, D) }
            }
        }
        let dscores = ws.dscores.get(N * E), dlogits = ws.dlogits.get(N * E)
        dscores.update(repeating: 0, count: N * E)
        dlogits.update(repeating: 0, count: N * E)
        topk_backward(dscores, dgate, a.scores.data, a.idx.data, T: N, E: E, K: K, routeNorm: args.route_norm, routeScale: args.route_scale)
        router_scores_backward(dlogits, dscores, a.scores.data, T: N, E: E, sigmoid: args.score_func == .sigmoid)
        matmul_backward(dx_TD: dxn_ND, dw_ND: gate.g, dout_TN: dlogits, x_TD: xn_ND, w_ND: gate.v, T: N, D: D, N: E)
        if let sh = shared { sh.backward(dout_ND, dx_ND: dxn_ND, x_ND: xn_ND, acts: a.shared!, ws: ws, N: N) }
    }

    /// torchtitan's auxiliary-loss-free update from (globally summed) tokens per expert:
    ///   delta = coeff · sign(mean(tpe) − tpe);  delta −= mean(delta);  expert_bias += delta.
    public static func expertBiasDelta(tokensPerExpert tpe: [Double], coeff: Float) -> [Float] {
        let E = tpe.count
        guard E > 0 else { return [] }
        let tf = tpe.map { Float($0) }
        var mean: Float = 0
        for v in tf { mean += v }
        mean /= Float(E)
        var delta = tf.map { v -> Float in
            let d = mean - v
            return coeff * (d > 0 ? 1 : (d < 0 ? -1 : 0))
        }
        var dm: Float = 0
        for v in delta { dm += v }
        dm /= Float(E)
        for i in 0..<E { delta[i] -= dm }
        return delta
    }
}

// MARK: - decoder block

final class LayerActs {
    let xn1: Tensor, rstd1: Tensor    // attention_norm output / rstd
    let attn: AttnActs
    let xMid: Tensor                  // residual after attention
    let xn2: Tensor, rstd2: Tensor    // ffn_norm output / rstd
    let ffn: FFNActs?
    let moe: MoEActs?
    init(args a: Qwen3ModelArgs, layer: Int, B: Int, T: Int) {
        let N = B * T, D = a.dim
        xn1 = Tensor(shape: [N, D]); rstd1 = Tensor(shape: [N])
        attn = AttnActs(B: B, T: T, H: a.n_heads, KV: a.n_kv_heads, hd: a.head_dim)
        xMid = Tensor(shape: [N, D])
        xn2 = Tensor(shape: [N, D]); rstd2 = Tensor(shape: [N])
        if a.isMoELayer(layer) {
            moe = MoEActs(N: N, D: D, E: a.moe.num_experts, K: a.moe.top_k, sharedHidden: a.moe.hidden_dim * a.moe.num_shared_experts)
            ffn = nil
        } else {
            ffn = FFNActs(N: N, F: a.hidden_dim)
            moe = nil
        }
    }
}

/// x += attn(attention_norm(x)); x += ffn_or_moe(ffn_norm(x)).
public final class TransformerBlock {
    public let index: Int
    public let attentionNorm: Parameter, ffnNorm: Parameter
    public let attention: Attention
    public let feedForward: FeedForward?
    public let moe: MoE?
    /// This block's parameters in FQN-table order (one parameter group).
    public let parameters: [Parameter]
    let D: Int, eps: Float

    init(index i: Int, params: [Parameter], args a: Qwen3ModelArgs) {
        index = i
        parameters = params
        let byName = Dictionary(uniqueKeysWithValues: params.map { ($0.fqn, $0) })
        let p = ParameterNames.layer(i)
        attentionNorm = byName[p + "attention_norm.weight"]!
        ffnNorm = byName[p + "ffn_norm.weight"]!
        attention = Attention(prefix: p + "attention.", params: byName, args: a)
        if a.isMoELayer(i) {
            moe = MoE(prefix: p + "moe.", params: byName, args: a); feedForward = nil
        } else {
            feedForward = FeedForward(prefix: p + "feed_forward.", params: byName, dim: a.dim, hiddenDim: a.hidden_dim); moe = nil
        }
        D = a.dim; eps = a.norm_eps
    }

    /// x_out = block(x_in). Returns tokens per expert (empty for a dense block).
    func forward(_ xIn: UnsafePointer<Float>, _ xOut: UnsafeMutablePointer<Float>, acts a: LayerActs, ws: Workspace,
                 cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int) -> [Int] {
        let N = B * T
        rmsnorm_forward(a.xn1.data, a.rstd1.data, xIn, attentionNorm.v, N: N, D: D, eps: eps)
        copy_N(a.xMid.data, xIn, N * D)
        attention.forward(a.xn1.ptr, accumulateInto: a.xMid.data, acts: a.attn, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T)
        rmsnorm_forward(a.xn2.data, a.rstd2.data, a.xMid.data, ffnNorm.v, N: N, D: D, eps: eps)
        copy_N(xOut, a.xMid.data, N * D)
        if let m = moe {
            return m.forward(a.xn2.ptr, accumulateInto: xOut, acts: a.moe!, ws: ws, N: N)
        }
        feedForward!.forward(a.xn2.ptr, accumulateInto: xOut, acts: a.ffn!, N: N)
        return []
    }

    /// On entry dres_ND = ∂L/∂x_out; on exit ∂L/∂x_in (updated in place).
    func backward(_ dres_ND: UnsafeMutablePointer<Float>, xIn: UnsafePointer<Float>, acts a: LayerActs, ws: Workspace,
                  cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int) {
        let N = B * T
        let dxn = ws.dxn.get(N * D)   // written by each sub-layer's backward
        if let m = moe {
            m.backward(dres_ND, dxn_ND: dxn, xn_ND: a.xn2.ptr, acts: a.moe!, ws: ws, N: N)
        } else {
            feedForward!.backward(dres_ND, dx_ND: dxn, x_ND: a.xn2.ptr, acts: a.ffn!, ws: ws, N: N, overwriteDx: true)
        }
        rmsnorm_backward(dres_ND, ffnNorm.g, dxn, a.xMid.data, ffnNorm.v, a.rstd2.data, N: N, D: D)
        attention.backward(dres_ND, dxn_ND: dxn, xn_ND: a.xn1.ptr, acts: a.attn, cos_TP: cos_TP, sin_TP: sin_TP, ws: ws, B: B, T: T)
        rmsnorm_backward(dres_ND, attentionNorm.g, dxn, xIn, attentionNorm.v, a.rstd1.data, N: N, D: D)
    }
}
