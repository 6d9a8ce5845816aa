import Tensor

// DeepSeek-V3 incremental decoding (IncrementalDecoding): DeepSeekV3Model's forward for T new positions P ..< P+T over
// a per-layer cache of each head's key [k_nope | rotated k_pe] and value, the same kernels in the same order, so each
// new position's logits equal the full forward's to float round-off. The cache holds the expanded keys and values
// rather than MLA's compressed latent: simpler, and a decoding step then reads each cached row once (the latent
// would need kv_b re-applied to every cached position, or its weights absorbed into q and o).

/// Activations of T new positions, reused while T stays the same.
final class DeepSeekV3DecodeActs {
    let T: Int
    let x: Tensor                  // [T, D] residual stream
    let xn: Tensor, rstd: Tensor   // a norm's output / rstd
    let attn: MLAActs              // B = 1, T new positions
    let ffn: FFNActs?, moe: MoEActs?
    init(args a: DeepSeekV3ModelArgs, T: Int) {
        self.T = T
        x = Tensor(shape: [T, a.dim]); xn = Tensor(shape: [T, a.dim]); rstd = Tensor(shape: [T])
        attn = MLAActs(args: a, B: 1, T: T)
        let anyDense = (0..<a.n_layers).contains { !a.isMoELayer($0) }, anyMoE = (0..<a.n_layers).contains { a.isMoELayer($0) }
        ffn = anyDense ? FFNActs(N: T, F: a.hidden_dim) : nil
        moe = anyMoE ? MoEActs(N: T, D: a.dim, E: a.moe.num_experts, K: a.moe.top_k,
                               sharedHidden: a.moe.hidden_dim * a.moe.num_shared_experts) : nil
    }
}

/// What a DeepSeek-V3 cache carries: the (YaRN) rope table for every position of the cache, attention scores, the
/// activations of the current T, the MoE workspace.
final class DeepSeekV3DecodeScratch {
    let cos: Tensor, sin: Tensor   // [capacity, qk_rope_head_dim / 2]
    let scores = GrowBuffer()      // [H, T, P+T]
    let ws = Workspace()
    var acts: DeepSeekV3DecodeActs?
    init(args a: DeepSeekV3ModelArgs, capacity: Int) {
        let half = a.qk_rope_head_dim / 2
        cos = Tensor(shape: [capacity, half]); sin = Tensor(shape: [capacity, half])
        let (invFreq, factor) = a.ropeFrequencies
        rope_table(cos_TP: cos.data, sin_TP: sin.data, T: capacity, invFreq_P: invFreq, attentionFactor: factor)
    }
    func acts(args: DeepSeekV3ModelArgs, T: Int) -> DeepSeekV3DecodeActs {
        if let a = acts, a.T == T { return a }
        let a = DeepSeekV3DecodeActs(args: args, T: T)
        acts = a
        return a
    }
}

extension DeepSeekV3Model: IncrementalDecoding {
    public var vocabSize: Int { args.vocab_size }
    public var maxSeqLen: Int { args.max_seq_len }

    /// Per layer: every head's key (qk_nope + qk_rope dims) and value (v_head_dim) per position.
    public var kvCacheWidths: [[Int]] {
        let H = args.n_heads
        return layers.map { _ in [H * args.qkHeadDim, H * args.v_head_dim] }
    }

    public func forwardCached(tokens: [Int32], cache: KVCache, logits_TV: UnsafeMutablePointer<Float>) {
        let T = tokens.count, P = cache.length, D = args.dim, V = args.vocab_size
        cache.checkRoom(for: T, maxSeqLen: args.max_seq_len, layers: layers.count)
        let scratch = cache.scratch { DeepSeekV3DecodeScratch(args: args, capacity: cache.capacity) }
        let a = scratch.acts(args: args, T: T)
        tokens.withUnsafeBufferPointer { embedding_forward(a.x.data, $0.baseAddress!, tokEmbeddings.v, T: T, D: D, V: V) }
        for (i, layer) in layers.enumerated() {
            let eps = layer.eps
            rmsnorm_forward(a.xn.data, a.rstd.data, a.x.ptr, layer.attentionNorm.v, N: T, D: D, eps: eps)
            layer.attention.forwardCached(a.xn.ptr, accumulateInto: a.x.data, a.attn, T: T, kCache: cache.layers[i][0],
                                          vCache: cache.layers[i][1], P: P, scratch: scratch)
            rmsnorm_forward(a.xn.data, a.rstd.data, a.x.ptr, layer.ffnNorm.v, N: T, D: D, eps: eps)
            switch (layer.moe, T) {
            case (let m?, 1): m.forwardOneToken(a.xn.ptr, accumulateInto: a.x.data, acts: a.moe!, ws: scratch.ws)
            case (let m?, _): _ = m.forward(a.xn.ptr, accumulateInto: a.x.data, acts: a.moe!, ws: scratch.ws, N: T)
            case (nil, 1): layer.feedForward!.forwardOneToken(a.xn.ptr, accumulateInto: a.x.data, acts: a.ffn!)
            case (nil, _): layer.feedForward!.forward(a.xn.ptr, accumulateInto: a.x.data, acts: a.ffn!, N: T)
            }
        }
        rmsnorm_forward(a.xn.data, a.rstd.data, a.x.ptr, norm.v, N: T, D: D, eps: args.norm_eps)
        linear(logits_TV, a.xn.ptr, (output ?? tokEmbeddings).gemmInput, T: T, D: D, N: V)
        cache.advance(by: T)
    }
}

extension MLA {
    /// out_TD += MLA of the new positions P ..< P+T over cached positions 0 ..< P+T (MLA.forward's steps with B = 1;
    /// the new keys and values go into cache rows P ..< P+T first).
    func forwardCached(_ xn_TD: UnsafePointer<Float>, accumulateInto out_TD: UnsafeMutablePointer<Float>, _ a: MLAActs, T: Int,
                       kCache: Tensor, vCache: Tensor, P: Int, scratch: DeepSeekV3DecodeScratch) {
        let KVB = Dn + Dv
        let half = Dr / 2
        project(xn_TD, a, cos_TP: scratch.cos.ptr + P * half, sin_TP: scratch.sin.ptr + P * half, B: 1, T: T)   // positions P ..< P+T
        let k_SHQ = kCache.data + P * H * Q, v_SHV = vCache.data + P * H * Dv
        for n in 0..<T {
            for h in 0..<H {
                let row = n * H + h
                (a.q_NHQ.data + row * Q).update(from: a.qRaw_NHQ.data + row * Q, count: Dn)
                (k_SHQ + row * Q).update(from: a.kv_NHX.data + row * KVB, count: Dn)
                (k_SHQ + row * Q + Dn).update(from: a.kpe_NP.data + n * Dr, count: Dr)
                (v_SHV + row * Dv).update(from: a.kv_NHX.data + row * KVB + Dn, count: Dv)
            }
        }
        attention_cached_forward(a.ao_NHV.data, a.q_NHQ.ptr, k_SKd: kCache.ptr, v_SKd: vCache.ptr,
                                 scores_HTS: scratch.scores.get(H * T * (P + T)), P: P, T: T, H: H, KV: H, hd: Q, vd: Dv, scale: scale)
        linear(out_TD, a.ao_NHV.ptr, wo.gemmInput, T: T, D: H * Dv, N: D, accumulate: true)
    }
}
