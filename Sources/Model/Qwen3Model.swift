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
public final class Qwen3Model {
    public let args: Qwen3ModelArgs
    public let tokEmbeddings: Parameter
    public let layers: [TransformerBlock]
    public let norm: Parameter
    /// nil when `enable_weight_tying` (the embedding weight is used).
    public let output: Parameter?
    /// [embedding], [layer 0], ..., [layer n-1], [final norm (+ output)]: deterministic order.
    public let parameterGroups: [[Parameter]]
    public var hooks: ModelHooks = NoModelHooks()

    private var acts: Activations?
    private let ws = Workspace()

    /// Builds the model and initialises it deterministically from `seed`: weights normal(0, init_std) (each parameter
    /// from its own stream seeded by seed and its FQN), norm weights 1, expert_bias 0.
    ///
    /// `materialize: false` allocates no parameter storage (torchtitan's meta-device init): a sharding wrapper then
    /// fills only its shards through `initialValues(of:elements:into:)`, with the same values a materialized model
    /// holds there, so no rank ever holds the whole model.
    public init(args: Qwen3ModelArgs, seed: UInt64 = 0, materialize: Bool = true) throws {
        try args.validate()
        self.args = args
        self.initSeed = seed
        var groups: [[Parameter]] = []
        for g in ParameterNames.groupedShapes(for: args) {
            groups.append(g.map { Parameter(fqn: $0.fqn, shape: $0.shape, allocate: materialize) })
        }
        parameterGroups = groups
        tokEmbeddings = groups[0][0]
        layers = (0..<args.n_layers).map { TransformerBlock(index: $0, params: groups[$0 + 1], args: args) }
        let last = groups[args.n_layers + 1]
        norm = last[0]
        output = args.enable_weight_tying ? nil : last[1]
        initialize(seed: seed)
    }

    public convenience init(flavor: String, seed: UInt64 = 0) throws {
        try self.init(args: try ModelFlavors.named(flavor), seed: seed)
    }

    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

    /// The MoE modules, in layer order (dense layers have none).
    public var moeModules: [MoE] { layers.compactMap { $0.moe } }

    /// Non-trainable state-dict buffers (expert_bias per MoE layer when load balancing is on), in layer order.
    public var buffers: [(fqn: String, tensor: Tensor)] {
        guard args.moe.load_balance_coeff > 0 else { return [] }
        return layers.compactMap { l in l.moe.map { (ParameterNames.expertBias(layer: l.index), $0.expertBias) } }
    }

    /// The seed of the current initialisation.
    public private(set) var initSeed: UInt64

    /// Weights `initialValues` copies from instead of drawing random ones (see `setInitialWeights`).
    private var initialWeights: InitialWeights?

    /// Re-initialises all materialized parameters (and zeroes expert biases) deterministically from `seed`.
    public func initialize(seed: UInt64) {
        initSeed = seed
        initialWeights = nil
        for p in parameters where p.value != nil {
            precondition(p.value.count == p.count, "initialize: \(p.fqn) holds a slice; initialise slices with initialValues")
            randomInitialValues(of: p, elements: 0..<p.count, into: p.value.data)
        }
        for l in layers { l.moe?.expertBias.zero() }
    }

    /// Elements `elements` (flat, row-major, of the full shape) of `p`'s initial value, written to out[0..<elements.count]:
    /// from the initial weights when set, else for `initSeed`: norm weights 1, everything else normal(0, init_std)
    /// from the parameter's own stream.
    public func initialValues(of p: Parameter, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) throws {
        precondition(elements.lowerBound >= 0 && elements.upperBound <= p.count, "initialValues: \(elements) outside \(p.fqn)")
        if let w = initialWeights {
            try w.read(p.fqn, elements: elements, into: out)
        } else {
            randomInitialValues(of: p, elements: elements, into: out)
        }
    }

    private func randomInitialValues(of p: Parameter, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        if ParameterNames.isNormWeight(p.fqn) {
            out.update(repeating: 1, count: elements.count)
        } else {
            SplitMix64.fillNormal(seed: initSeed ^ fnv1a64(p.fqn), elements: elements, into: out, std: args.init_std)
        }
    }

    /// Zeroes every gradient that is currently allocated.
    public func zeroGrad() {
        for p in parameters { p.grad?.zero() }
    }

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

    /// Frees the cached activations (they are reallocated on the next call).
    public func releaseActivations() { acts = nil }

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

    // MARK: state dict

    /// All parameters (requires their values to be present) and buffers as host tensors, by torchtitan FQN.
    public func stateDict() -> StateDict {
        var sd: StateDict = [:]
        for p in parameters { sd[p.fqn] = HostTensor(shape: p.shape, values: p.value.toArray()) }
        for (n, t) in buffers { sd[n] = HostTensor(shape: t.shape, values: t.toArray()) }
        return sd
    }

    /// Expected names and shapes of `stateDict()`.
    public var stateDictShapes: [String: [Int]] {
        var r: [String: [Int]] = [:]
        for p in parameters { r[p.fqn] = p.shape }
        for (n, t) in buffers { r[n] = t.shape }
        return r
    }

    /// Throws on missing or unexpected names and shape mismatches: the check every loader runs before it
    /// changes anything. With `allowMissingBuffers`, absent expert_bias entries are fine.
    public func validate(stateDict sd: StateDict, allowMissingBuffers: Bool = false) throws {
        try Self.checkNamesAndShapes(expected: stateDictShapes, got: sd.mapValues(\.shape),
                                     optional: allowMissingBuffers ? Set(buffers.map(\.fqn)) : [])
    }

    /// Missing (unless `optional`), unexpected and misshapen names, in that order, each reported sorted.
    private static func checkNamesAndShapes(expected: [String: [Int]], got: [String: [Int]], optional: Set<String>) throws {
        let missing = expected.keys.filter { got[$0] == nil && !optional.contains($0) }.sorted()
        if !missing.isEmpty { throw ModelError.missingKeys(missing) }
        let extra = got.keys.filter { expected[$0] == nil }.sorted()
        if !extra.isEmpty { throw ModelError.unexpectedKeys(extra) }
        for (name, shape) in expected.sorted(by: { $0.key < $1.key }) {
            if let g = got[name], g != shape { throw ModelError.shapeMismatch(fqn: name, expected: shape, got: g) }
        }
    }

    /// Makes `sd` the initial weights of a model built without parameter storage (see the `InitialWeights` form).
    /// Validated like `load`; absent expert_bias entries are zeroed with `allowMissingBuffers`.
    public func setInitialWeights(_ sd: StateDict, allowMissingBuffers: Bool = false) throws {
        try validate(stateDict: sd, allowMissingBuffers: allowMissingBuffers)
        try setInitialWeights(StateDictWeights(sd, bufferNames: Set(buffers.map(\.fqn))))
    }

    /// Makes `w` the initial weights of a model built without parameter storage: `initialValues` reads from it, so a
    /// sharding wrapper takes just its slices and the model never holds a full copy. Buffers are loaded at once (zero
    /// where `w` has none). Throws unless `w` holds exactly the model's parameters with their shapes.
    /// `clearInitialWeights()` drops the source once the wrapper has its shards.
    public func setInitialWeights(_ w: InitialWeights) throws {
        precondition(parameters.allSatisfy { $0.awaitsInitialization },
                     "setInitialWeights: the model has parameter storage (or is sharded already); use load(stateDict:)")
        try Self.checkNamesAndShapes(expected: Dictionary(uniqueKeysWithValues: parameters.map { ($0.fqn, $0.shape) }),
                                     got: w.parameterShapes, optional: [])
        for (n, t) in buffers {
            if let h = w.buffer(n), h.shape != t.shape { throw ModelError.shapeMismatch(fqn: n, expected: t.shape, got: h.shape) }
        }
        loadBuffers(w.buffer)
        initialWeights = w
    }

    public func clearInitialWeights() { initialWeights = nil }

    /// Buffers from `source` (zero where it has none); shapes already checked.
    private func loadBuffers(_ source: (String) -> HostTensor?) {
        for (n, t) in buffers {
            if let h = source(n) {
                h.values.withUnsafeBufferPointer { t.data.update(from: $0.baseAddress!, count: t.count) }
            } else {
                t.zero()
            }
        }
    }

    /// Loads parameters and buffers. Throws (before changing anything) on missing or unexpected names or shape mismatches.
    /// With `allowMissingBuffers`, absent expert_bias entries are set to zero (e.g. when importing an HF checkpoint).
    public func load(stateDict sd: StateDict, allowMissingBuffers: Bool = false) throws {
        try validate(stateDict: sd, allowMissingBuffers: allowMissingBuffers)
        for p in parameters {
            let t = sd[p.fqn]!
            if p.value == nil { p.value = Tensor(shape: p.shape); p.grad = Tensor(shape: p.shape); p.awaitsInitialization = false }
            t.values.withUnsafeBufferPointer { p.value.data.update(from: $0.baseAddress!, count: p.count) }
        }
        loadBuffers { sd[$0] }
    }
}
