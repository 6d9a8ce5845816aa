import Tensor

/// A named trainable tensor. `value` and `grad` are replaceable from outside: a sharding wrapper (FSDP) may set them
/// to gathered full-size tensors before a block runs (see `ModelHooks`) and clear them afterwards. The model reads
/// `value` / `grad` only while the owning group's hooks say it is live, and never caches their pointers across groups.
public final class Parameter {
    /// torchtitan fully-qualified name, e.g. "layers.0.attention.wq.weight".
    public let fqn: String
    /// Full (unsharded) logical shape.
    public let shape: [Int]
    public let count: Int
    public var value: Tensor!
    public var grad: Tensor!
    /// Built without storage (meta init) and not yet given any: the wrapper that takes the parameter over (expert
    /// parallelism, FSDP) initialises its slices from the model's `initialValues` and clears this. A nil `value`
    /// without it means the parameter is already held elsewhere (sharded).
    public var awaitsInitialization: Bool

    public init(fqn: String, shape: [Int], allocate: Bool = true) {
        self.fqn = fqn
        self.shape = shape
        self.count = shape.reduce(1, *)
        awaitsInitialization = !allocate
        if allocate {
            value = Tensor(shape: shape)
            grad = Tensor(shape: shape)
        }
    }

    @inline(__always) var v: UnsafeMutablePointer<Float> {
        guard let t = value else {
            fatalError("parameter \(fqn): value is nil (a sharding wrapper must set it in willForward/willBackward)")
        }
        return t.data
    }

    @inline(__always) var g: UnsafeMutablePointer<Float> {
        guard let t = grad else {
            fatalError("parameter \(fqn): grad is nil (a sharding wrapper must set it in willBackward)")
        }
        return t.data
    }
}

/// Callbacks around each parameter group (see `Qwen3Model.parameterGroups`), for FSDP-style gather / free /
/// reduce-scatter from outside. Group indices: 0 = embedding, 1 + i = layer i, n_layers + 1 = final norm + output.
///
/// Order per `forwardBackward`: willForward(0) didForward(0), willForward(1) didForward(1), ..., willForward(L+1)
/// didForward(L+1), then willBackward(L+1) didBackward(L+1), willBackward(L) didBackward(L), ..., willBackward(0)
/// didBackward(0). With weight tying the output projection uses group 0's embedding weight: inside group L+1 the model
/// calls willForward(0)/didForward(0) around the projection, and willBackward(0) before the projection's backward;
/// group 0's backward then stays open (parameters and gradients live) through the blocks' backward until the
/// embedding's backward, and didBackward(0) closes it: willBackward(L+1) willBackward(0) didBackward(L+1)
/// willBackward(L) didBackward(L) ... didBackward(1) didBackward(0). Every group is reduced once per step.
/// In `willBackward` the grads of the group must be valid, zeroed-or-accumulating buffers (kernels add into them).
public protocol ModelHooks: AnyObject {
    func willForward(group: Int)
    func didForward(group: Int)
    func willBackward(group: Int)
    func didBackward(group: Int)
}

public extension ModelHooks {
    func willForward(group: Int) {}
    func didForward(group: Int) {}
    func willBackward(group: Int) {}
    func didBackward(group: Int) {}
}

/// The default: no hooks.
public final class NoModelHooks: ModelHooks {
    public init() {}
}

public enum ModelError: Error, CustomStringConvertible, Equatable {
    case invalidArgs(String)
    case unknownFlavor(String, available: [String])
    case missingKeys([String])
    case unexpectedKeys([String])
    case shapeMismatch(fqn: String, expected: [Int], got: [Int])

    public var description: String {
        switch self {
        case .invalidArgs(let s): return "invalid model args: \(s)"
        case .unknownFlavor(let n, let a): return "unknown model flavor '\(n)'; available: \(a.joined(separator: ", "))"
        case .missingKeys(let k): return "state dict is missing \(k.count) tensor(s): \(k.prefix(8).joined(separator: ", "))\(k.count > 8 ? ", ..." : "")"
        case .unexpectedKeys(let k): return "state dict has \(k.count) unexpected tensor(s): \(k.prefix(8).joined(separator: ", "))\(k.count > 8 ? ", ..." : "")"
        case .shapeMismatch(let f, let e, let g): return "state dict tensor '\(f)' has shape \(g), the model expects \(e)"
        }
    }
}

public extension ParameterNames {
    static func layer(_ i: Int) -> String { "layers.\(i)." }
    static func expertBias(layer i: Int) -> String { "layers.\(i).moe.expert_bias" }

    /// Trainable parameters grouped as the model groups them: [embedding], [layer 0], ..., [layer n-1], [norm (+ output)].
    /// Deterministic order (the FQN table order in ModelArgs.swift).
    static func groupedShapes(for a: Qwen3ModelArgs) -> [[(fqn: String, shape: [Int])]] {
        let D = a.dim, hd = a.head_dim
        var groups: [[(fqn: String, shape: [Int])]] = [[("tok_embeddings.weight", [a.vocab_size, D])]]
        for i in 0..<a.n_layers {
            let p = layer(i)
            var g: [(fqn: String, shape: [Int])] = [
                (p + "attention_norm.weight", [D]),
                (p + "attention.wq.weight", [a.n_heads * hd, D]),
                (p + "attention.wk.weight", [a.n_kv_heads * hd, D]),
                (p + "attention.wv.weight", [a.n_kv_heads * hd, D]),
                (p + "attention.wo.weight", [D, a.n_heads * hd]),
                (p + "attention.q_norm.weight", [hd]),
                (p + "attention.k_norm.weight", [hd]),
                (p + "ffn_norm.weight", [D]),
            ]
            if a.isMoELayer(i) {
                let E = a.moe.num_experts, F = a.moe.hidden_dim
                g += [
                    (p + "moe.router.gate.weight", [E, D]),
                    (p + "moe.experts.w1", [E, F, D]),
                    (p + "moe.experts.w2", [E, D, F]),
                    (p + "moe.experts.w3", [E, F, D]),
                ]
                if a.moe.num_shared_experts > 0 {
                    let Fs = F * a.moe.num_shared_experts
                    g += [
                        (p + "moe.shared_experts.w1.weight", [Fs, D]),
                        (p + "moe.shared_experts.w2.weight", [D, Fs]),
                        (p + "moe.shared_experts.w3.weight", [Fs, D]),
                    ]
                }
            } else {
                g += [
                    (p + "feed_forward.w1.weight", [a.hidden_dim, D]),
                    (p + "feed_forward.w2.weight", [D, a.hidden_dim]),
                    (p + "feed_forward.w3.weight", [a.hidden_dim, D]),
                ]
            }
            groups.append(g)
        }
        var last: [(fqn: String, shape: [Int])] = [("norm.weight", [D])]
        if !a.enable_weight_tying { last.append(("output.weight", [a.vocab_size, D])) }
        groups.append(last)
        return groups
    }

    /// Non-trainable buffers in the state dict: expert_bias of each MoE layer when load balancing is on.
    static func bufferShapes(for a: Qwen3ModelArgs) -> [(fqn: String, shape: [Int])] {
        guard a.moe_enabled, a.moe.load_balance_coeff > 0 else { return [] }
        return (0..<a.n_layers).filter { a.isMoELayer($0) }.map { (expertBias(layer: $0), [a.moe.num_experts]) }
    }

    /// Norm weights (initialised to 1).
    static func isNormWeight(_ fqn: String) -> Bool { fqn.hasSuffix("norm.weight") }
}

public extension Qwen3ModelArgs {
    /// Checks the structural constraints; throws `ModelError.invalidArgs` naming the field.
    func validate() throws {
        func req(_ c: Bool, _ m: String) throws { if !c { throw ModelError.invalidArgs(m) } }
        try req(vocab_size > 0, "vocab_size must be > 0 (got \(vocab_size))")
        try req(dim > 0, "dim must be > 0 (got \(dim))")
        try req(n_layers >= 0, "n_layers must be >= 0 (got \(n_layers))")
        try req(n_heads > 0 && n_kv_heads > 0, "n_heads and n_kv_heads must be > 0")
        try req(n_heads % n_kv_heads == 0, "n_heads (\(n_heads)) must be a multiple of n_kv_heads (\(n_kv_heads))")
        try req(head_dim > 0 && head_dim % 2 == 0, "head_dim must be positive and even (got \(head_dim))")
        try req(hidden_dim > 0, "hidden_dim must be > 0 (got \(hidden_dim))")
        try req(norm_eps > 0, "norm_eps must be > 0")
        if moe_enabled {
            try req(moe.num_experts > 0, "moe.num_experts must be > 0")
            try req(moe.top_k >= 1 && moe.top_k <= moe.num_experts, "moe.top_k must be in 1...num_experts (got \(moe.top_k))")
            try req(moe.hidden_dim > 0, "moe.hidden_dim must be > 0")
            try req(moe.num_shared_experts >= 0, "moe.num_shared_experts must be >= 0")
            try req(moe.load_balance_coeff >= 0, "moe.load_balance_coeff must be >= 0")
            try req(decoder_sparse_step >= 1, "decoder_sparse_step must be >= 1")
        }
    }
}
