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

/// Activations for one (B, T), allocated once and reused: the shared decoder's, each layer's, the rope table.
final class Activations {
    let stack: DecoderActs
    let layers: [LayerActs]
    let cos: Tensor, sin: Tensor // [T, hd/2]
    var B: Int { stack.B }
    var T: Int { stack.T }
    init(args a: Qwen3ModelArgs, B: Int, T: Int) {
        stack = DecoderActs(B: B, T: T, dim: a.dim, vocab: a.vocab_size, layers: a.n_layers)
        layers = (0..<a.n_layers).map { LayerActs(args: a, layer: $0, B: B, T: T) }
        cos = Tensor(shape: [T, a.head_dim / 2]); sin = Tensor(shape: [T, a.head_dim / 2])
        rope_table(cos_TP: cos.data, sin_TP: sin.data, T: T, headDim: a.head_dim, theta: a.rope_theta)
    }
}

/// Qwen3 / Qwen3-MoE decoder (HF Qwen3ForCausalLM / Qwen3MoeForCausalLM numerics, fp32), torchtitan FQNs.
/// The model knows nothing about ranks: parallelism wraps it through `ParallelizableModel` (`parameterGroups`,
/// `hooks`, `moeModules` and their replaceable `experts`).
///   tok_embeddings.weight [V, D] (HF model.embed_tokens), layers.{i}.* (TransformerBlock), norm.weight [D]
///   (HF model.norm), output.weight [V, D] (HF lm_head; absent when enable_weight_tying: the embedding is used)
/// Embedding, final norm, output and loss are the shared `DecoderStack`'s.
public final class Qwen3Model {
    public let args: Qwen3ModelArgs
    /// Every parameter and buffer, as the modules declared them.
    public let spec: ModelSpec
    public let layers: [TransformerBlock]
    let stack: DecoderStack
    public var tokEmbeddings: Parameter { stack.tokEmbeddings }
    public var norm: Parameter { stack.norm }
    /// nil when `enable_weight_tying` (the embedding weight is used).
    public var output: Parameter? { stack.output }
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
        // Parameter groups: [embedding], [layer 0], ..., [layer n-1], [final norm (+ output)].
        let embedding = DecoderStack.declareEmbedding(spec, vocab: a.vocab_size, dim: a.dim, initStd: a.init_std)
        layers = (0..<a.n_layers).map { i in
            TransformerBlock(spec.newGroup().scope("layers.\(i).", hf: "model.layers.\(i)."), index: i, args: a)
        }
        stack = DecoderStack(spec, tokEmbeddings: embedding, vocab: a.vocab_size, dim: a.dim, layers: a.n_layers,
                             normEps: a.norm_eps, initStd: a.init_std, tied: a.enable_weight_tying)
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

    // MARK: forward / backward (the shared decoder around this family's blocks)

    private func block(_ a: Activations) -> (Int, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> [Int] {
        { [layers, ws] i, xIn, xOut in
            layers[i].forward(xIn, xOut, acts: a.layers[i], ws: ws, cos_TP: a.cos.ptr, sin_TP: a.sin.ptr, B: a.B, T: a.T)
        }
    }

    /// Forward + backward over a (B, T) micro-batch. Gradients are ACCUMULATED into the parameters' grads (the caller
    /// zeroes them); dloss/dlogit is scaled by `lossScale` (e.g. 1 / global label-token count for a global mean).
    /// Labels < 0 are ignored.
    public func forwardBackward(inputs: [Int32], labels: [Int32], B: Int, T: Int, lossScale: Float) -> StepResult {
        DecoderStack.checkInputs(inputs, labels, B: B, T: T)
        let a = activations(B: B, T: T)
        return stack.forwardBackward(inputs: inputs, labels: labels, acts: a.stack, lossScale: lossScale, hooks: hooks,
                                     block: block(a)) { [layers, ws] i, dres, xIn in
            layers[i].backward(dres, xIn: xIn, acts: a.layers[i], ws: ws, cos_TP: a.cos.ptr, sin_TP: a.sin.ptr, B: B, T: T)
        }
    }

    /// Forward only: summed loss over labelled tokens (labels < 0 ignored). Calls only the forward hooks.
    public func evaluate(inputs: [Int32], labels: [Int32], B: Int, T: Int) -> StepResult {
        DecoderStack.checkInputs(inputs, labels, B: B, T: T)
        let a = activations(B: B, T: T)
        return stack.evaluate(inputs: inputs, labels: labels, acts: a.stack, hooks: hooks, block: block(a))
    }

    /// Forward only: logits [B*T, V] row-major.
    public func logits(inputs: [Int32], B: Int, T: Int) -> [Float] {
        DecoderStack.checkInputs(inputs, nil, B: B, T: T)
        let a = activations(B: B, T: T)
        return stack.logits(inputs: inputs, acts: a.stack, hooks: hooks, block: block(a))
    }

    // MARK: load balancing

    /// Auxiliary-loss-free load balancing (torchtitan, see `DecoderStack.updateExpertBias`). No-op when
    /// load_balance_coeff == 0.
    public func updateExpertBias(tokensPerExpert: [[Int]]) {
        DecoderStack.updateExpertBias(layers.map(\.moe), tokensPerExpert: tokensPerExpert, coeff: args.moe.load_balance_coeff)
    }
}

extension Qwen3Model: ParallelizableModel {
    public func flopsPerToken(seqLen: Int) -> Double { args.flopsPerToken(seqLen: seqLen) }
}
