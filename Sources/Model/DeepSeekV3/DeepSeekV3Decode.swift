import Tensor

// DeepSeek-V3 incremental decoding (IncrementalDecoding): DeepSeekV3Model's forward for T new positions P ..< P+T over
// a per-layer cache. MLA's cache here holds what attention reads, expanded per head: keys [k_nope | rotated k_pe]
// (H · qk_head_dim) and values (H · v_head_dim), so a new token costs one position through every layer whatever the
// prefix (apart from attention's dot products). Caching the compressed latent (kv_lora_rank) and the rope key
// (qk_rope_head_dim) instead would take 1/10 of the memory but expand every cached position again at each step (or
// absorb wkv_b into the query and output, which reorders the sums): a later option, behind the same interface.

/// Activations of T new positions (prefill once, then T = 1).
final class DeepSeekV3DecodeActs {
    let T: Int
    let x: Tensor, xn: Tensor, rstd: Tensor   // [T, D] residual stream, a norm's output, [T] its rstd
    let mla: MLAActs                          // B = 1 (its k_NHQ / v_NHV are unused: the cache holds them)
    let ffn: FFNActs?, moe: MoEActs?
    init(args a: DeepSeekV3ModelArgs, T: Int) {
        self.T = T
        x = Tensor(shape: [T, a.dim]); xn = Tensor(shape: [T, a.dim]); rstd = Tensor(shape: [T])
        mla = MLAActs(args: a, B: 1, T: T)
        let anyDense = (0..<a.n_layers).contains { !a.isMoELayer($0) }
        let anyMoE = (0..<a.n_layers).contains { a.isMoELayer($0) }
        ffn = anyDense ? FFNActs(N: T, F: a.hidden_dim) : nil
        moe = anyMoE ? MoEActs(N: T, D: a.dim, E: a.moe.num_experts, K: a.moe.top_k,
                               sharedHidden: a.moe.hidden_dim * a.moe.num_shared_experts) : nil
    }
}

/// What a DeepSeek-V3 cache carries: the rope table (YaRN's frequencies and attention factor) for every position of
/// the cache, attention scores, the activations of the current T, the MoE workspace.
final class DeepSeekV3DecodeScratch {
    let cos: Tensor, sin: Tensor   // [capacity, qk_rope_head_dim / 2]
    let scores = GrowBuffer()
    let ws = Workspace()
    var acts: DeepSeekV3DecodeActs?
    init(args a: DeepSeekV3ModelArgs, capacity: Int) {
        let P = a.qk_rope_head_dim / 2
        cos = Tensor(shape: [capacity, P]); sin = Tensor(shape: [capacity, P])
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

    /// Per layer: keys [k_nope | k_pe] per head (H · qk_head_dim) and values per head (H · v_head_dim).
    public var kvCacheWidths: [[Int]] {
        layers.map { _ in [args.n_heads * args.qkHeadDim, args.n_heads * args.v_head_dim] }
    }

    public func forwardCached(tokens: [Int32], cache: KVCache, logits_TV: UnsafeMutablePointer<Float>) {
        let T = tokens.count, P = cache.length, D = args.dim, V = args.vocab_size
        precondition(T >= 1, "forwardCached: no tokens")
        precondition(P + T <= min(cache.capacity, args.max_seq_len),
                     "forwardCached: positions up to \(P + T) exceed the cache (\(cache.capacity)) or max_seq_len (\(args.max_seq_len))")
        precondition(cache.layers.count == layers.count, "forwardCached: a cache of \(cache.layers.count) layers for \(layers.count)")
        let scratch: DeepSeekV3DecodeScratch
        if let s = cache.scratch as? DeepSeekV3DecodeScratch { scratch = s } else {
            scratch = DeepSeekV3DecodeScratch(args: args, capacity: cache.capacity)
            cache.scratch = scratch
        }
        let a = scratch.acts(args: args, T: T)
        tokens.withUnsafeBufferPointer { embedding_forward(a.x.data, $0.baseAddress!, tokEmbeddings.v, T: T, D: D, V: V) }
        for (i, layer) in layers.enumerated() {
            let eps = layer.eps
            rmsnorm_forward(a.xn.data, a.rstd.data, a.x.ptr, layer.attentionNorm.v, N: T, D: D, eps: eps)
            layer.attention.forwardCached(a.xn.ptr, accumulateInto: a.x.data, a.mla, T: T, kCache: cache.layers[i][0],
                                          vCache: cache.layers[i][1], P: P, scratch: scratch)
            rmsnorm_forward(a.xn.data, a.rstd.data, a.x.ptr, layer.ffnNorm.v, N: T, D: D, eps: eps)
            switch (layer.moe, T) {
            case (let m?, 1): m.forwardOneToken(a.xn.ptr, accumulateInto: a.x.data, acts: a.moe!, ws: scratch.ws)
            case (let m?, _): m.forward(a.xn.ptr, accumulateInto: a.x.data, acts: a.moe!, ws: scratch.ws, N: T)
            case (nil, 1): layer.feedForward!.forwardOneToken(a.xn.ptr, accumulateInto: a.x.data, acts: a.ffn!)
            case (nil, _): layer.feedForward!.forward(a.xn.ptr, accumulateInto: a.x.data, acts: a.ffn!, N: T)
            }
        }
        rmsnorm_forward(a.xn.data, a.rstd.data, a.x.ptr, norm.v, N: T, D: D, eps: args.norm_eps)
        linear(logits_TV, a.xn.ptr, (output ?? tokEmbeddings).v, T: T, D: D, N: V)
        cache.advance(by: T)
    }
}

extension MLA {
    /// out_TD += MLA of the new positions P ..< P+T over cached positions 0 ..< P+T: MLA.forward's projections, norms
    /// and rope for the new positions, their per-head keys and values written into rows P ..< P+T of the cache, then
    /// attention against every cached row.
    func forwardCached(_ xn_TD: UnsafePointer<Float>, accumulateInto out_TD: UnsafeMutablePointer<Float>, _ a: MLAActs, T: Int,
                       kCache: Tensor, vCache: Tensor, P: Int, scratch: DeepSeekV3DecodeScratch) {
        let KVA = Rkv + Dr, KVB = Dn + Dv, half = Dr / 2
        if let wqA, let wqB, let qNorm {
            linear(a.qa_NR!.data, xn_TD, wqA.v, T: T, D: D, N: Rq)
            rmsnorm_forward(a.qan_NR!.data, a.qaRstd_N!.data, a.qa_NR!.data, qNorm.v, N: T, D: Rq, eps: Self.latentNormEps)
            linear(a.qRaw_NHQ.data, a.qan_NR!.data, wqB.v, T: T, D: Rq, N: H * Q)
        } else {
            linear(a.qRaw_NHQ.data, xn_TD, wq!.v, T: T, D: D, N: H * Q)
        }
        linear(a.kva_NC.data, xn_TD, wkvA.v, T: T, D: D, N: KVA)
        for n in 0..<T { (a.kvc_NL.data + n * Rkv).update(from: a.kva_NC.data + n * KVA, count: Rkv) }
        rmsnorm_forward(a.kvn_NL.data, a.kvRstd_N.data, a.kvc_NL.data, kvNorm.v, N: T, D: Rkv, eps: Self.latentNormEps)
        linear(a.kv_NHX.data, a.kvn_NL.data, wkvB.v, T: T, D: Rkv, N: H * KVB)
        let cos = scratch.cos.ptr + P * half, sin = scratch.sin.ptr + P * half   // the rows of positions P ..< P+T
        rope_slice_forward(a.q_NHQ.data + Dn, outStride: Q, a.qRaw_NHQ.data + Dn, xStride: Q, cos_TP: cos, sin_TP: sin,
                           B: 1, T: T, H: H, rd: Dr, interleaved: interleaved)
        rope_slice_forward(a.kpe_NP.data, outStride: Dr, a.kva_NC.data + Rkv, xStride: KVA, cos_TP: cos, sin_TP: sin,
                           B: 1, T: T, H: 1, rd: Dr, interleaved: interleaved)
        let kNew = kCache.data + P * H * Q, vNew = vCache.data + P * H * Dv
        for n in 0..<T {
            for h in 0..<H {
                let row = n * H + h
                (a.q_NHQ.data + row * Q).update(from: a.qRaw_NHQ.data + row * Q, count: Dn)
                (kNew + row * Q).update(from: a.kv_NHX.data + row * KVB, count: Dn)
                (kNew + row * Q + Dn).update(from: a.kpe_NP.data + n * Dr, count: Dr)
                (vNew + row * Dv).update(from: a.kv_NHX.data + row * KVB + Dn, count: Dv)
            }
        }
        attention_cached_forward(a.ao_NHV.data, a.q_NHQ.ptr, k_SKd: kCache.ptr, v_SKd: vCache.ptr,
                                 scores_HTS: scratch.scores.get(H * T * (P + T)), P: P, T: T, H: H, KV: H, hd: Q, vd: Dv, scale: scale)
        linear(out_TD, a.ao_NHV.ptr, wo.v, T: T, D: H * Dv, N: D, accumulate: true)
    }
}
