import Tensor

/// Result of one forward(+backward) pass over a (B, T) micro-batch.
public struct StepResult: Equatable {
    /// Σ over labelled tokens of −log p(label) (Double accumulation).
    public var lossSum: Double
    /// Number of labelled tokens (labels >= 0).
    public var tokenCount: Int
    /// Tokens routed to each expert, per layer (index = layer; empty for dense layers).
    public var tokensPerExpert: [[Int]]
    public var meanLoss: Double { tokenCount > 0 ? lossSum / Double(tokenCount) : 0 }

    /// The sum of two micro-batches' results.
    public static func + (a: StepResult, b: StepResult) -> StepResult {
        StepResult(lossSum: a.lossSum + b.lossSum, tokenCount: a.tokenCount + b.tokenCount,
                   tokensPerExpert: zip(a.tokensPerExpert, b.tokensPerExpert).map { zip($0, $1).map(+) })
    }
}

/// Activations for one (B, T), allocated once and reused.
final class Activations {
    let B: Int, T: Int, N: Int
    let xs: [Tensor]            // residual stream at each layer boundary, [N, D] × (L + 1)
    let layers: [LayerActs]
    let xnf: Tensor, rstdf: Tensor
    let logits: Tensor          // [N, V] (overwritten in place by dlogits)
    let cos: Tensor, sin: Tensor // [T, hd/2]
    let dres: Tensor            // [N, D]
    let dxn: Tensor             // [N, D]
    init(args a: Qwen3ModelArgs, B: Int, T: Int) {
        self.B = B; self.T = T; N = B * T
        let D = a.dim
        xs = (0...a.n_layers).map { _ in Tensor(shape: [B * T, D]) }
        layers = (0..<a.n_layers).map { LayerActs(args: a, layer: $0, B: B, T: T) }
        xnf = Tensor(shape: [N, D]); rstdf = Tensor(shape: [N])
        logits = Tensor(shape: [N, a.vocab_size])
        cos = Tensor(shape: [T, a.head_dim / 2]); sin = Tensor(shape: [T, a.head_dim / 2])
        rope_table(cos_TP: cos.data, sin_TP: sin.data, T: T, headDim: a.head_dim, theta: a.rope_theta)
        dres = Tensor(shape: [N, D]); dxn = Tensor(shape: [N, D])
    }
}

/// Qwen3 / Qwen3-MoE decoder (HF Qwen3ForCausalLM / Qwen3MoeForCausalLM numerics, fp32), torchtitan FQNs.
/// The model knows nothing about ranks: parallelism wraps it through `ParallelizableModel` (`parameterGroups`,
/// `hooks`, `moeModules` and their replaceable `experts`).
///   tok_embeddings.weight [V, D] (HF model.embed_tokens), layers.{i}.* (TransformerBlock), norm.weight [D]
///   (HF model.norm), output.weight [V, D] (HF lm_head; absent when enable_weight_tying: the embedding is used)
public final class Qwen3Model {
    public let args: Qwen3ModelArgs
    /// Every parameter and buffer, as the modules declared them.
    public let spec: ModelSpec
    public let tokEmbeddings: Parameter
    public let layers: [TransformerBlock]
    public let norm: Parameter
    /// nil when `enable_weight_tying` (the embedding weight is used).
    public let output: Parameter?
    public var hooks: ModelHooks = NoModelHooks()

    private var acts: Activations?
    private let ws = Workspace()

    /// Builds the model and initialises it deterministically from `seed`: weights normal(0, init_std) (each parameter
    /// from its own stream seeded by seed and its FQN), norm weights 1, expert_bias 0.
    ///
    /// `materialize: false` allocates no parameter storage (torchtitan's meta-device init): a sharding wrapper then
    /// fills only its shards through `initialValues(of:elements:into:)`, with the same values a materialized model
    /// holds there, so no rank ever holds the whole model.
    public init(args a: Qwen3ModelArgs, seed: UInt64 = 0, materialize: Bool = true) throws {
        try a.validate()
        args = a
        let spec = ModelSpec(materialize: materialize)
        spec.hfArchitecture = a.moe_enabled ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM"
        spec.hfIgnoredSuffixes = ["rotary_emb.inv_freq"]
        let normal = ParameterInit.normal(std: a.init_std)
        // Parameter groups: [embedding], [layer 0], ..., [layer n-1], [final norm (+ output)].
        tokEmbeddings = spec.newGroup().parameter("tok_embeddings.weight", [a.vocab_size, a.dim], init: normal,
                                                  hf: "model.embed_tokens.weight")
        layers = (0..<a.n_layers).map { i in
            TransformerBlock(spec.newGroup().scope("layers.\(i).", hf: "model.layers.\(i)."), index: i, args: a)
        }
        let last = spec.newGroup()
        norm = last.parameter("norm.weight", [a.dim], init: .ones, hf: "model.norm.weight")
        if a.enable_weight_tying {
            output = nil
            spec.hfTied["lm_head.weight"] = "model.embed_tokens.weight"   // HF may store the tied head: it must match
        } else {
            output = last.parameter("output.weight", [a.vocab_size, a.dim], init: normal, hf: "lm_head.weight")
        }
        self.spec = spec
        spec.initialize(seed: seed)
    }

    /// The family's parameter table for `args`, without storage.
    public static func spec(_ args: Qwen3ModelArgs) throws -> ModelSpec {
        try Qwen3Model(args: args, materialize: false).spec
    }

    /// The MoE modules, in layer order (dense layers have none).
    public var moeModules: [MoE] { layers.compactMap { $0.moe } }

    /// Selects the local experts' path (grouped or loop) in every MoE layer.
    public func setUseGroupedMM(_ on: Bool) {
        for l in layers { l.moe?.localExperts.useGroupedMM = on }
    }

    private func activations(B: Int, T: Int) -> Activations {
        precondition(B > 0 && T > 0, "batch must be non-empty (B=\(B), T=\(T))")
        precondition(T <= args.max_seq_len, "sequence length \(T) exceeds max_seq_len \(args.max_seq_len)")
        if let a = acts, a.B == B, a.T == T { return a }
        acts = nil
        let a = Activations(args: args, B: B, T: T)
        acts = a
        return a
    }


    private var outputWeight: Parameter { output ?? tokEmbeddings }

    // MARK: forward

    private func forward(_ inputs: UnsafePointer<Int32>, B: Int, T: Int, a: Activations) -> [[Int]] {
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

    /// Forward + backward over a (B, T) micro-batch. Gradients are ACCUMULATED into the parameters' grads (the caller
    /// zeroes them); dloss/dlogit is scaled by `lossScale` (e.g. 1 / global label-token count for a global mean).
    /// Labels < 0 are ignored.
    public func forwardBackward(inputs: [Int32], labels: [Int32], B: Int, T: Int, lossScale: Float) -> StepResult {
        checkInputs(inputs, labels, B: B, T: T)
        let a = activations(B: B, T: T)
        let N = B * T, D = args.dim, V = args.vocab_size, L = args.n_layers
        return inputs.withUnsafeBufferPointer { inp in
            labels.withUnsafeBufferPointer { lab in
                let tpe = forward(inp.baseAddress!, B: B, T: T, a: a)
                let (lossSum, count) = crossentropy_forward_backward(dlogits_TV: a.logits.data, logits_TV: a.logits.ptr,
                                                                     labels_T: lab.baseAddress!, T: N, V: V, dlossScale: lossScale)
                // backward
                hooks.willBackward(group: L + 1)
                // Tied weights: the output projection's gradient belongs to group 0, whose backward opens here and
                // stays open until the embedding's backward has added its part (one gather, one reduction per step).
                if output == nil { hooks.willBackward(group: 0) }
                let ow = outputWeight
                matmul_backward(dx_TD: a.dxn.data, dw_ND: ow.g, dout_TN: a.logits.ptr, x_TD: a.xnf.ptr, w_ND: ow.v, T: N, D: D, N: V,
                                overwriteDx: true)
                rmsnorm_backward(a.dres.data, norm.g, a.dxn.ptr, a.xs[L].ptr, norm.v, a.rstdf.ptr, N: N, D: D, overwriteDx: true)
                hooks.didBackward(group: L + 1)
                for i in stride(from: L - 1, through: 0, by: -1) {
                    hooks.willBackward(group: i + 1)
                    layers[i].backward(a.dres.data, xIn: a.xs[i].ptr, acts: a.layers[i], ws: ws,
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

    /// Forward only: summed loss over labelled tokens (labels < 0 ignored). Calls only the forward hooks.
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

    /// Forward only: logits [B*T, V] row-major.
    public func logits(inputs: [Int32], B: Int, T: Int) -> [Float] {
        checkInputs(inputs, nil, B: B, T: T)
        let a = activations(B: B, T: T)
        inputs.withUnsafeBufferPointer { _ = forward($0.baseAddress!, B: B, T: T, a: a) }
        return a.logits.toArray()
    }

    // MARK: load balancing

    /// Auxiliary-loss-free load balancing (torchtitan): for each MoE layer, expert_bias += delta with
    /// delta = coeff·sign(mean(tpe) − tpe), delta −= mean(delta). `tokensPerExpert` is indexed by layer (entries for dense
    /// layers ignored) and should be summed over micro-batches and data-parallel ranks. No-op when load_balance_coeff == 0.
    public func updateExpertBias(tokensPerExpert: [[Int]]) {
        let coeff = args.moe.load_balance_coeff
        guard coeff > 0 else { return }
        precondition(tokensPerExpert.count == layers.count, "updateExpertBias: \(tokensPerExpert.count) layers, model has \(layers.count)")
        for (i, l) in layers.enumerated() {
            guard let m = l.moe else { continue }
            let tpe = tokensPerExpert[i]
            precondition(tpe.count == m.args.num_experts, "updateExpertBias: layer \(i) has \(tpe.count) counts for \(m.args.num_experts) experts")
            let delta = MoE.expertBiasDelta(tokensPerExpert: tpe.map { Double($0) }, coeff: coeff)
            for e in 0..<delta.count { m.expertBias.data[e] += delta[e] }
        }
    }
}

extension Qwen3Model: ParallelizableModel {
    public func flopsPerToken(seqLen: Int) -> Double { args.flopsPerToken(seqLen: seqLen) }
}
