import Tensor

// Qwen3 / Qwen3-MoE incremental decoding (IncrementalDecoding): the forward of Qwen3Model.forward written for T new
// positions P ..< P+T over a per-layer cache of keys (after q/k-norm and RoPE) and values. The same kernels in the
// same order, so each new position's logits equal the full forward's at that position to float round-off; only
// attention differs (the new queries against the cached keys: attention_cached_forward).

/// Activations of T new positions, reused while T stays the same (prefill once, then T = 1 for every new token).
final class Qwen3DecodeActs {
    let T: Int
    let x: Tensor                      // [T, D] residual stream
    let xn: Tensor, rstd: Tensor       // [T, D], [T]: a norm's output / rstd (attention_norm, ffn_norm, norm)
    let qRaw: Tensor, q: Tensor        // [T, H·hd]
    let qRstd: Tensor                  // [T·H]
    let kRaw: Tensor, kRstd: Tensor    // [T, KV·hd], [T·KV]
    let ao: Tensor                     // [T, H·hd] attention output
    let ffn: FFNActs?                  // dense layers
    let moe: MoEActs?                  // MoE layers (one set serves every MoE layer: layers run one at a time)
    init(args a: Qwen3ModelArgs, T: Int) {
        self.T = T
        let D = a.dim, QD = a.n_heads * a.head_dim, KD = a.n_kv_heads * a.head_dim
        x = Tensor(shape: [T, D]); xn = Tensor(shape: [T, D]); rstd = Tensor(shape: [T])
        qRaw = Tensor(shape: [T, QD]); q = Tensor(shape: [T, QD]); qRstd = Tensor(shape: [T * a.n_heads])
        kRaw = Tensor(shape: [T, KD]); kRstd = Tensor(shape: [T * a.n_kv_heads])
        ao = Tensor(shape: [T, QD])
        let anyDense = (0..<a.n_layers).contains { !a.isMoELayer($0) }
        let anyMoE = (0..<a.n_layers).contains { a.isMoELayer($0) }
        ffn = anyDense ? FFNActs(N: T, F: a.hidden_dim) : nil
        moe = anyMoE ? MoEActs(N: T, D: D, E: a.moe.num_experts, K: a.moe.top_k,
                               sharedHidden: a.moe.hidden_dim * a.moe.num_shared_experts) : nil
    }
}

/// The scratch a Qwen3 cache carries: the RoPE table for every position of the cache, attention scores, the
/// activations of the current T, the MoE workspace.
final class Qwen3DecodeScratch {
    let cos: Tensor, sin: Tensor       // [capacity, hd/2]
    let scores = GrowBuffer()          // [H, T, P+T]
    let ws = Workspace()
    var acts: Qwen3DecodeActs?
    init(args a: Qwen3ModelArgs, capacity: Int) {
        cos = Tensor(shape: [capacity, a.head_dim / 2]); sin = Tensor(shape: [capacity, a.head_dim / 2])
        rope_table(cos_TP: cos.data, sin_TP: sin.data, T: capacity, headDim: a.head_dim, theta: a.rope_theta)
    }
    func acts(args: Qwen3ModelArgs, T: Int) -> Qwen3DecodeActs {
        if let a = acts, a.T == T { return a }
        let a = Qwen3DecodeActs(args: args, T: T)
        acts = a
        return a
    }
}

extension Qwen3Model: IncrementalDecoding {
    public var vocabSize: Int { args.vocab_size }
    public var maxSeqLen: Int { args.max_seq_len }

    /// Per layer: keys after q/k-norm and RoPE, and values, KV·hd floats per position each.
    public var kvCacheWidths: [[Int]] {
        let KD = args.n_kv_heads * args.head_dim
        return layers.map { _ in [KD, KD] }
    }

    public func forwardCached(tokens: [Int32], cache: KVCache, logits_TV: UnsafeMutablePointer<Float>) {
        let T = tokens.count, P = cache.length
        let D = args.dim, V = args.vocab_size
        cache.checkRoom(for: T, maxSeqLen: args.max_seq_len, layers: layers.count)
        let scratch = cache.scratch { Qwen3DecodeScratch(args: args, capacity: cache.capacity) }
        let a = scratch.acts(args: args, T: T)
        tokens.withUnsafeBufferPointer { embedding_forward(a.x.data, $0.baseAddress!, tokEmbeddings.v, T: T, D: D, V: V) }
        for (i, layer) in layers.enumerated() {
            layer.forwardCached(a, kCache: cache.layers[i][0], vCache: cache.layers[i][1], P: P, scratch: scratch)
        }
        rmsnorm_forward(a.xn.data, a.rstd.data, a.x.ptr, norm.v, N: T, D: D, eps: args.norm_eps)
        linear(logits_TV, a.xn.ptr, (output ?? tokEmbeddings).gemmInput, T: T, D: D, N: V)
        cache.advance(by: T)
    }
}

extension TransformerBlock {
    /// a.x = block(a.x) for positions P ..< P+T; this layer's keys and values of those positions go to rows P ..< P+T
    /// of kCache / vCache.
    func forwardCached(_ a: Qwen3DecodeActs, kCache: Tensor, vCache: Tensor, P: Int, scratch: Qwen3DecodeScratch) {
        let T = a.T
        rmsnorm_forward(a.xn.data, a.rstd.data, a.x.ptr, attentionNorm.v, N: T, D: D, eps: eps)
        attention.forwardCached(a.xn.ptr, accumulateInto: a.x.data, a, kCache: kCache, vCache: vCache, P: P, scratch: scratch)
        rmsnorm_forward(a.xn.data, a.rstd.data, a.x.ptr, ffnNorm.v, N: T, D: D, eps: eps)
        switch (moe, T) {
        case (let m?, 1): m.forwardOneToken(a.xn.ptr, accumulateInto: a.x.data, acts: a.moe!, ws: scratch.ws)
        case (let m?, _): m.forward(a.xn.ptr, accumulateInto: a.x.data, acts: a.moe!, ws: scratch.ws, N: T)
        case (nil, 1): feedForward!.forwardOneToken(a.xn.ptr, accumulateInto: a.x.data, acts: a.ffn!)
        case (nil, _): feedForward!.forward(a.xn.ptr, accumulateInto: a.x.data, acts: a.ffn!, N: T)
        }
    }
}

extension Attention {
    /// out_TD += attention of the new positions P ..< P+T over cached positions 0 ..< P+T. The new keys (normed,
    /// rotated) and values are written into the cache first.
    func forwardCached(_ xn_TD: UnsafePointer<Float>, accumulateInto out_TD: UnsafeMutablePointer<Float>, _ a: Qwen3DecodeActs,
                       kCache: Tensor, vCache: Tensor, P: Int, scratch: Qwen3DecodeScratch) {
        let T = a.T, KD = KV * hd, half = hd / 2
        let kNew = kCache.data + P * KD, vNew = vCache.data + P * KD
        linear(a.qRaw.data, xn_TD, wq.gemmInput, T: T, D: D, N: H * hd)
        linear(a.kRaw.data, xn_TD, wk.gemmInput, T: T, D: D, N: KD)
        linear(vNew, xn_TD, wv.gemmInput, T: T, D: D, N: KD)
        rmsnorm_forward(a.q.data, a.qRstd.data, a.qRaw.ptr, qNorm.v, N: T * H, D: hd, eps: eps)
        rmsnorm_forward(kNew, a.kRstd.data, a.kRaw.ptr, kNorm.v, N: T * KV, D: hd, eps: eps)
        let cos = scratch.cos.ptr + P * half, sin = scratch.sin.ptr + P * half   // the rows of positions P ..< P+T
        rope_forward(a.q.data, a.q.data, cos_TP: cos, sin_TP: sin, B: 1, T: T, H: H, hd: hd)
        rope_forward(kNew, kNew, cos_TP: cos, sin_TP: sin, B: 1, T: T, H: KV, hd: hd)
        attention_cached_forward(a.ao.data, a.q.ptr, k_SKd: kCache.ptr, v_SKd: vCache.ptr,
                                 scores_HTS: scratch.scores.get(H * T * (P + T)), P: P, T: T, H: H, KV: KV, hd: hd)
        linear(out_TD, a.ao.ptr, wo.gemmInput, T: T, D: H * hd, N: D, accumulate: true)
    }
}

/// matmul_forward, or for one position (a decoding step) on an fp32 weight matvec_forward (which is matmul_forward under
/// bfloat16 matmuls, the only ones that take a bfloat16 weight).
@inline(__always)
func linear(_ out_TN: UnsafeMutablePointer<Float>, _ x_TD: UnsafePointer<Float>, _ w_ND: GEMMInput,
            T: Int, D: Int, N: Int, accumulate: Bool = false) {
    if T == 1, case .f32(let w) = w_ND { matvec_forward(out_TN, x_TD, w, D: D, N: N, accumulate: accumulate) }
    else { matmul_forward(out_TN, x_TD, w_ND, T: T, D: D, N: N, accumulate: accumulate) }
}

extension MoE {
    /// out_D += MoE(xn_D) for one token (a decoding step): MoE.forward's routing (router scores, top-k by scores +
    /// expert bias, gate weights), then only the token's k experts, each as matrix-vector products, summed in the
    /// order of its top-k list as MoE.forward's combine does; plus the shared experts.
    func forwardOneToken(_ xn_D: UnsafePointer<Float>, accumulateInto out_D: UnsafeMutablePointer<Float>, acts a: MoEActs, ws: Workspace) {
        let D = dim, E = args.num_experts, K = args.top_k, F = args.hidden_dim
        let logits = ws.logits.get(E)
        matvec_forward(logits, xn_D, gate.v, D: D, N: E)
        router_scores_forward(a.scores.data, logits, T: 1, E: E, sigmoid: args.score_func == .sigmoid)
        topk_forward(a.idx.data, a.gate.data, a.scores.data, bias_E: usesBias ? UnsafePointer(expertBias.data) : nil,
                     T: 1, E: E, K: K, routeNorm: args.route_norm, routeScale: args.route_scale, groups: groups, topkGroups: topkGroups)
        let h1 = ws.dh1.get(F), h3 = ws.dh3.get(F), h = ws.dh.get(F), y = ws.dys.get(D)
        for k in 0..<K {
            let e = Int(a.idx.data[k])
            matvec_forward(h1, xn_D, w1.v + e * F * D, D: D, N: F)
            matvec_forward(h3, xn_D, w3.v + e * F * D, D: D, N: F)
            swiglu_forward(h, h1, h3, F)
            matvec_forward(y, h, w2.v + e * D * F, D: F, N: D)
            axpy(out_D, a.gate.data[k], y, D)
        }
        if let sh = shared { sh.forwardOneToken(xn_D, accumulateInto: out_D, acts: a.shared!) }
    }
}

extension FeedForward {
    /// out_D += FFN(x_D) for one token, as matrix-vector products.
    func forwardOneToken(_ x_D: UnsafePointer<Float>, accumulateInto out_D: UnsafeMutablePointer<Float>, acts a: FFNActs) {
        let D = dim, F = hiddenDim
        matvec_forward(a.h1.data, x_D, w1.v, D: D, N: F)
        matvec_forward(a.h3.data, x_D, w3.v, D: D, N: F)
        swiglu_forward(a.h.data, a.h1.data, a.h3.data, F)
        matvec_forward(out_D, a.h.data, w2.v, D: F, N: D, accumulate: true)
    }
}
