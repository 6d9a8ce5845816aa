import Tensor

/// Activations of one DeepSeek-V3 layer for one (B, T).
final class DeepSeekV3LayerActs {
    let xn1: Tensor, rstd1: Tensor    // attention_norm output / rstd
    let attn: MLAActs
    let xMid: Tensor                  // residual after attention
    let xn2: Tensor, rstd2: Tensor    // ffn_norm output / rstd
    let ffn: FFNActs?
    let moe: MoEActs?
    init(args a: DeepSeekV3ModelArgs, layer: Int, B: Int, T: Int) {
        let N = B * T, D = a.dim
        xn1 = Tensor(shape: [N, D]); rstd1 = Tensor(shape: [N])
        attn = MLAActs(args: a, B: B, T: T)
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

/// x += mla(attention_norm(x)); x += ffn_or_moe(ffn_norm(x)).
///   attention_norm.weight, ffn_norm.weight [D] (HF input_layernorm, post_attention_layernorm); attention.* (MLA, HF
///   self_attn.*); feed_forward.* (the first n_dense_layers layers, HF mlp.{gate,up,down}_proj) or moe.* (HF mlp.*:
///   gate.weight, gate.e_score_correction_bias = our expert_bias, experts.{e}.*, shared_experts.*)
public final class DeepSeekV3Block {
    public let index: Int
    public let attentionNorm: Parameter, ffnNorm: Parameter
    public let attention: MLA
    public let feedForward: FeedForward?
    public let moe: MoE?
    let D: Int, eps: Float

    init(_ t: ParameterScope, index i: Int, args a: DeepSeekV3ModelArgs) {
        index = i
        D = a.dim; eps = a.norm_eps
        attentionNorm = t.parameter("attention_norm.weight", [D], init: .ones, hf: "input_layernorm.weight")
        attention = MLA(t.scope("attention.", hf: "self_attn."), args: a)
        ffnNorm = t.parameter("ffn_norm.weight", [D], init: .ones, hf: "post_attention_layernorm.weight")
        if a.isMoELayer(i) {
            moe = MoE(t.scope("moe.", hf: "mlp."), args: a.moe, dim: D, initStd: a.init_std,
                      groups: a.n_expert_groups, topkGroups: a.n_limited_groups,
                      sharedExpertsHF: "shared_experts.", correctionBiasHF: "gate.e_score_correction_bias")
            feedForward = nil
        } else {
            feedForward = FeedForward(t.scope("feed_forward.", hf: "mlp."), dim: D, hiddenDim: a.hidden_dim, initStd: a.init_std)
            moe = nil
        }
    }

    /// x_out = block(x_in). Returns tokens per expert (empty for a dense block).
    func forward(_ xIn: UnsafePointer<Float>, _ xOut: UnsafeMutablePointer<Float>, acts a: DeepSeekV3LayerActs, ws: Workspace,
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
    func backward(_ dres_ND: UnsafeMutablePointer<Float>, xIn: UnsafePointer<Float>, acts a: DeepSeekV3LayerActs, ws: Workspace,
                  mla: MLAWorkspace, cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int) {
        let N = B * T
        let dxn = ws.dxn.get(N * D)   // written by each sub-layer's backward
        if let m = moe {
            m.backward(dres_ND, dxn_ND: dxn, xn_ND: a.xn2.ptr, acts: a.moe!, ws: ws, N: N)
        } else {
            feedForward!.backward(dres_ND, dx_ND: dxn, x_ND: a.xn2.ptr, acts: a.ffn!, ws: ws, N: N, overwriteDx: true)
        }
        rmsnorm_backward(dres_ND, ffnNorm.g, dxn, a.xMid.data, ffnNorm.v, a.rstd2.data, N: N, D: D)
        attention.backward(dres_ND, dxn_ND: dxn, xn_ND: a.xn1.ptr, acts: a.attn, cos_TP: cos_TP, sin_TP: sin_TP, ws: mla, B: B, T: T)
        rmsnorm_backward(dres_ND, attentionNorm.g, dxn, xIn, attentionNorm.v, a.rstd1.data, N: N, D: D)
    }
}

/// Activations for one (B, T), allocated once and reused: the shared decoder's, each layer's, the rope table.
final class DeepSeekV3Activations {
    let stack: DecoderActs
    let layers: [DeepSeekV3LayerActs]
    let cos: Tensor, sin: Tensor // [T, P] (P = qk_rope_head_dim / 2; × YaRN's attention factor)
    var B: Int { stack.B }
    var T: Int { stack.T }
    init(args a: DeepSeekV3ModelArgs, B: Int, T: Int) {
        stack = DecoderActs(B: B, T: T, dim: a.dim, vocab: a.vocab_size, layers: a.n_layers)
        layers = (0..<a.n_layers).map { DeepSeekV3LayerActs(args: a, layer: $0, B: B, T: T) }
        let P = a.qk_rope_head_dim / 2
        cos = Tensor(shape: [T, P]); sin = Tensor(shape: [T, P])
        let (invFreq, factor) = a.ropeFrequencies
        rope_table(cos_TP: cos.data, sin_TP: sin.data, T: T, invFreq_P: invFreq, attentionFactor: factor)
    }
}

/// DeepSeek-V3 decoder (HF DeepseekV3ForCausalLM numerics, fp32, eager attention), torchtitan FQNs. Like Qwen3Model it
/// knows nothing about ranks: parallelism wraps it through `ParallelizableModel`; embedding, final norm, output and loss
/// are the shared `DecoderStack`'s.
///   tok_embeddings.weight [V, D] (HF model.embed_tokens), layers.{i}.* (DeepSeekV3Block), norm.weight [D] (HF
///   model.norm), output.weight [V, D] (HF lm_head; absent when enable_weight_tying)
public final class DeepSeekV3Model {
    public let args: DeepSeekV3ModelArgs
    public let spec: ModelSpec
    public let layers: [DeepSeekV3Block]
    let stack: DecoderStack
    public var tokEmbeddings: Parameter { stack.tokEmbeddings }
    public var norm: Parameter { stack.norm }
    public var output: Parameter? { stack.output }
    public var hooks: ModelHooks = NoModelHooks()

    private var acts: DeepSeekV3Activations?
    private let ws = Workspace()
    private let mlaWS = MLAWorkspace()

    /// Builds the model, initialised deterministically from `seed` (see Qwen3Model.init; `materialize: false` is the
    /// meta-device init).
    public init(args a: DeepSeekV3ModelArgs, seed: UInt64 = 0, materialize: Bool = true) throws {
        try a.validate()
        args = a
        let spec = ModelSpec(materialize: materialize)
        spec.hfArchitecture = DeepSeekV3HFConfig.architecture
        spec.hfIgnoredSuffixes = ["rotary_emb.inv_freq", "rotary_emb.original_inv_freq"]
        spec.hfIgnoredLayersFrom = a.n_layers
        let embedding = DecoderStack.declareEmbedding(spec, vocab: a.vocab_size, dim: a.dim, initStd: a.init_std)
        layers = (0..<a.n_layers).map { i in
            DeepSeekV3Block(spec.newGroup().scope("layers.\(i).", hf: "model.layers.\(i)."), index: i, args: a)
        }
        stack = DecoderStack(spec, tokEmbeddings: embedding, vocab: a.vocab_size, dim: a.dim, layers: a.n_layers,
                             normEps: a.norm_eps, initStd: a.init_std, tied: a.enable_weight_tying)
        self.spec = spec
        spec.initialize(seed: seed)
    }

    /// The family's parameter table for `args`, without storage.
    public static func spec(_ args: DeepSeekV3ModelArgs) throws -> ModelSpec {
        try DeepSeekV3Model(args: args, materialize: false).spec
    }

    public var moeModules: [MoE] { layers.compactMap { $0.moe } }
    public func flopsPerToken(seqLen: Int) -> Double { args.flopsPerToken(seqLen: seqLen) }

    public func setUseGroupedMM(_ on: Bool) {
        for l in layers { l.moe?.localExperts.useGroupedMM = on }
    }

    private func activations(B: Int, T: Int) -> DeepSeekV3Activations {
        precondition(B > 0 && T > 0, "batch must be non-empty (B=\(B), T=\(T))")
        precondition(T <= args.max_seq_len, "sequence length \(T) exceeds max_seq_len \(args.max_seq_len)")
        if let a = acts, a.B == B, a.T == T { return a }
        acts = nil
        let a = DeepSeekV3Activations(args: args, B: B, T: T)
        acts = a
        return a
    }

    // MARK: forward / backward (the shared decoder around this family's blocks)

    private func block(_ a: DeepSeekV3Activations) -> (Int, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> [Int] {
        { [layers, ws] i, xIn, xOut in
            layers[i].forward(xIn, xOut, acts: a.layers[i], ws: ws, cos_TP: a.cos.ptr, sin_TP: a.sin.ptr, B: a.B, T: a.T)
        }
    }

    public func forwardBackward(inputs: [Int32], labels: [Int32], B: Int, T: Int, lossScale: Float) -> StepResult {
        DecoderStack.checkInputs(inputs, labels, B: B, T: T)
        let a = activations(B: B, T: T)
        return stack.forwardBackward(inputs: inputs, labels: labels, acts: a.stack, lossScale: lossScale, hooks: hooks,
                                     block: block(a)) { [layers, ws, mlaWS] i, dres, xIn in
            layers[i].backward(dres, xIn: xIn, acts: a.layers[i], ws: ws, mla: mlaWS, cos_TP: a.cos.ptr, sin_TP: a.sin.ptr, B: B, T: T)
        }
    }

    public func evaluate(inputs: [Int32], labels: [Int32], B: Int, T: Int) -> StepResult {
        DecoderStack.checkInputs(inputs, labels, B: B, T: T)
        let a = activations(B: B, T: T)
        return stack.evaluate(inputs: inputs, labels: labels, acts: a.stack, hooks: hooks, block: block(a))
    }

    public func logits(inputs: [Int32], B: Int, T: Int) -> [Float] {
        DecoderStack.checkInputs(inputs, nil, B: B, T: T)
        let a = activations(B: B, T: T)
        return stack.logits(inputs: inputs, acts: a.stack, hooks: hooks, block: block(a))
    }

    /// Auxiliary-loss-free load balancing (as Qwen3Model's): the bias is DeepSeek-V3's e_score_correction_bias.
    public func updateExpertBias(tokensPerExpert: [[Int]]) {
        DecoderStack.updateExpertBias(layers.map(\.moe), tokensPerExpert: tokensPerExpert, coeff: args.moe.load_balance_coeff)
    }
}

extension DeepSeekV3Model: TrainableModel {}
