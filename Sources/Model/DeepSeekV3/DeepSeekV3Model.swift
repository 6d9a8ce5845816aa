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

/// Activations for one (B, T), allocated once and reused.
final class DeepSeekV3Activations {
    let B: Int, T: Int, N: Int
    let xs: [Tensor]            // residual stream at each layer boundary, [N, D] × (L + 1)
    let layers: [DeepSeekV3LayerActs]
    let xnf: Tensor, rstdf: Tensor
    let logits: Tensor          // [N, V] (overwritten in place by dlogits)
    let cos: Tensor, sin: Tensor // [T, Dr/2] (× YaRN's attention factor)
    let dres: Tensor, dxn: Tensor   // [N, D]
    init(args a: DeepSeekV3ModelArgs, B: Int, T: Int) {
        self.B = B; self.T = T; N = B * T
        let D = a.dim, P = a.qk_rope_head_dim / 2
        xs = (0...a.n_layers).map { _ in Tensor(shape: [B * T, D]) }
        layers = (0..<a.n_layers).map { DeepSeekV3LayerActs(args: a, layer: $0, B: B, T: T) }
        xnf = Tensor(shape: [N, D]); rstdf = Tensor(shape: [N])
        logits = Tensor(shape: [N, a.vocab_size])
        cos = Tensor(shape: [T, P]); sin = Tensor(shape: [T, P])
        let (invFreq, factor) = a.ropeFrequencies
        rope_table(cos_TP: cos.data, sin_TP: sin.data, T: T, invFreq_P: invFreq, attentionFactor: factor)
        dres = Tensor(shape: [N, D]); dxn = Tensor(shape: [N, D])
    }
}

/// DeepSeek-V3 decoder (HF DeepseekV3ForCausalLM numerics, fp32, eager attention), torchtitan FQNs. Like Qwen3Model it
/// knows nothing about ranks: parallelism wraps it through `ParallelizableModel`.
///   tok_embeddings.weight [V, D] (HF model.embed_tokens), layers.{i}.* (DeepSeekV3Block), norm.weight [D] (HF
///   model.norm), output.weight [V, D] (HF lm_head; absent when enable_weight_tying)
public final class DeepSeekV3Model {
    public let args: DeepSeekV3ModelArgs
    public let spec: ModelSpec
    public let tokEmbeddings: Parameter
    public let layers: [DeepSeekV3Block]
    public let norm: Parameter
    public let output: Parameter?
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
        let normal = ParameterInit.normal(std: a.init_std)
        tokEmbeddings = spec.newGroup().parameter("tok_embeddings.weight", [a.vocab_size, a.dim], init: normal,
                                                  hf: "model.embed_tokens.weight")
        layers = (0..<a.n_layers).map { i in
            DeepSeekV3Block(spec.newGroup().scope("layers.\(i).", hf: "model.layers.\(i)."), index: i, args: a)
        }
        let last = spec.newGroup()
        norm = last.parameter("norm.weight", [a.dim], init: .ones, hf: "model.norm.weight")
        if a.enable_weight_tying {
            output = nil
            spec.hfTied["lm_head.weight"] = "model.embed_tokens.weight"
        } else {
            output = last.parameter("output.weight", [a.vocab_size, a.dim], init: normal, hf: "lm_head.weight")
        }
        self.spec = spec
        spec.initialize(seed: seed)
    }

    /// The family's parameter table for `args`, without storage.
    public static func spec(_ args: DeepSeekV3ModelArgs) throws -> ModelSpec {
        try DeepSeekV3Model(args: args, materialize: false).spec
    }

    public var moeModules: [MoE] { layers.compactMap { $0.moe } }

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

    private var outputWeight: Parameter { output ?? tokEmbeddings }

    // MARK: forward / backward (hook order as Qwen3Model's; see ModelHooks)

    private func forward(_ inputs: UnsafePointer<Int32>, B: Int, T: Int, a: DeepSeekV3Activations) -> [[Int]] {
        let N = B * T, D = args.dim, V = args.vocab_size, L = args.n_layers
        hooks.willForward(group: 0)
        embedding_forward(a.xs[0].data, inputs, tokEmbeddings.v, T: N, D: D, V: V)
        hooks.didForward(group: 0)
        var tpe: [[Int]] = []
        for (i, layer) in layers.enumerated() {
            hooks.willForward(group: i + 1)
            tpe.append(layer.forward(a.xs[i].ptr, a.xs[i + 1].data, acts: a.layers[i], ws: ws,
                                     cos_TP: a.cos.ptr, sin_TP: a.sin.ptr, B: B, T: T))
            hooks.didForward(group: i + 1)
        }
        hooks.willForward(group: L + 1)
        rmsnorm_forward(a.xnf.data, a.rstdf.data, a.xs[L].ptr, norm.v, N: N, D: D, eps: args.norm_eps)
        if output == nil { hooks.willForward(group: 0) }
        matmul_forward(a.logits.data, a.xnf.ptr, outputWeight.v, T: N, D: D, N: V)
        if output == nil { hooks.didForward(group: 0) }
        hooks.didForward(group: L + 1)
        return tpe
    }

    private func checkInputs(_ inputs: [Int32], _ labels: [Int32]?, B: Int, T: Int) {
        precondition(inputs.count == B * T, "inputs has \(inputs.count) tokens, expected B*T = \(B * T)")
        if let l = labels { precondition(l.count == B * T, "labels has \(l.count) tokens, expected B*T = \(B * T)") }
    }

    public func forwardBackward(inputs: [Int32], labels: [Int32], B: Int, T: Int, lossScale: Float) -> StepResult {
        checkInputs(inputs, labels, B: B, T: T)
        let a = activations(B: B, T: T)
        let N = B * T, D = args.dim, V = args.vocab_size, L = args.n_layers
        return inputs.withUnsafeBufferPointer { inp in
            labels.withUnsafeBufferPointer { lab in
                let tpe = forward(inp.baseAddress!, B: B, T: T, a: a)
                let (lossSum, count) = crossentropy_forward_backward(dlogits_TV: a.logits.data, logits_TV: a.logits.ptr,
                                                                     labels_T: lab.baseAddress!, T: N, V: V, dlossScale: lossScale)
                hooks.willBackward(group: L + 1)
                if output == nil { hooks.willBackward(group: 0) }
                let ow = outputWeight
                matmul_backward(dx_TD: a.dxn.data, dw_ND: ow.g, dout_TN: a.logits.ptr, x_TD: a.xnf.ptr, w_ND: ow.v, T: N, D: D, N: V,
                                overwriteDx: true)
                rmsnorm_backward(a.dres.data, norm.g, a.dxn.ptr, a.xs[L].ptr, norm.v, a.rstdf.ptr, N: N, D: D, overwriteDx: true)
                hooks.didBackward(group: L + 1)
                for i in stride(from: L - 1, through: 0, by: -1) {
                    hooks.willBackward(group: i + 1)
                    layers[i].backward(a.dres.data, xIn: a.xs[i].ptr, acts: a.layers[i], ws: ws, mla: mlaWS,
                                       cos_TP: a.cos.ptr, sin_TP: a.sin.ptr, B: B, T: T)
                    hooks.didBackward(group: i + 1)
                }
                if output != nil { hooks.willBackward(group: 0) }
                embedding_backward(tokEmbeddings.g, a.dres.ptr, inp.baseAddress!, T: N, D: D)
                hooks.didBackward(group: 0)
                return StepResult(lossSum: lossSum, tokenCount: count, tokensPerExpert: tpe)
            }
        }
    }

    public func evaluate(inputs: [Int32], labels: [Int32], B: Int, T: Int) -> StepResult {
        checkInputs(inputs, labels, B: B, T: T)
        let a = activations(B: B, T: T)
        return inputs.withUnsafeBufferPointer { inp in
            labels.withUnsafeBufferPointer { lab in
                let tpe = forward(inp.baseAddress!, B: B, T: T, a: a)
                let (s, c) = crossentropy_forward_backward(dlogits_TV: nil, logits_TV: a.logits.ptr, labels_T: lab.baseAddress!,
                                                           T: B * T, V: args.vocab_size, dlossScale: 0)
                return StepResult(lossSum: s, tokenCount: c, tokensPerExpert: tpe)
            }
        }
    }

    public func logits(inputs: [Int32], B: Int, T: Int) -> [Float] {
        checkInputs(inputs, nil, B: B, T: T)
        let a = activations(B: B, T: T)
        inputs.withUnsafeBufferPointer { _ = forward($0.baseAddress!, B: B, T: T, a: a) }
        return a.logits.toArray()
    }

    /// Auxiliary-loss-free load balancing (as Qwen3Model's): the bias is DeepSeek-V3's e_score_correction_bias.
    public func updateExpertBias(tokensPerExpert: [[Int]]) {
        let coeff = args.moe.load_balance_coeff
        guard coeff > 0 else { return }
        precondition(tokensPerExpert.count == layers.count, "updateExpertBias: \(tokensPerExpert.count) layers, model has \(layers.count)")
        for (i, l) in layers.enumerated() {
            guard let m = l.moe else { continue }
            let delta = MoE.expertBiasDelta(tokensPerExpert: tokensPerExpert[i].map { Double($0) }, coeff: coeff)
            for e in 0..<delta.count { m.expertBias.data[e] += delta[e] }
        }
    }
}

extension DeepSeekV3Model: TrainableModel {}
