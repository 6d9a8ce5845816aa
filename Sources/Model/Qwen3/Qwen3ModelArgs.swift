// Architecture hyper-parameters of the Qwen3 / Qwen3-MoE family (torchtitan: Qwen3ModelArgs).
// Field names follow torchtitan; `HFConfig` maps them to and from HF transformers' config.json. The parameters they
// make are declared by the modules (Qwen3Model and its blocks).

public struct Qwen3ModelArgs: Codable, Equatable, Sendable {
    public var vocab_size: Int = 2048
    public var dim: Int = 64
    public var n_layers: Int = 2
    public var n_heads: Int = 4
    public var n_kv_heads: Int = 2
    public var head_dim: Int = 16
    /// Hidden size of the dense SwiGLU FFN (HF: intermediate_size).
    public var hidden_dim: Int = 128
    public var norm_eps: Float = 1e-6
    public var rope_theta: Float = 1_000_000
    public var max_seq_len: Int = 4096
    public var enable_weight_tying: Bool = false
    /// Standard deviation of the normal initialisation of weight matrices (HF: initializer_range).
    public var init_std: Float = 0.02
    /// Use MoE feed-forward blocks; layer i is MoE when `moe_enabled && (i + 1) % decoder_sparse_step == 0`.
    public var moe_enabled: Bool = false
    public var decoder_sparse_step: Int = 1
    public var moe: MoEArgs = MoEArgs()
    public init() {}

    public func isMoELayer(_ layer: Int) -> Bool {
        moe_enabled && (layer + 1) % max(decoder_sparse_step, 1) == 0
    }
}

public extension Qwen3ModelArgs {
    /// Checks the structural constraints; throws `ModelError.invalidArgs` naming the field (the config key is
    /// "model." + field).
    func validate() throws {
        func req(_ ok: Bool, _ field: String, _ reason: @autoclosure () -> String) throws {
            if !ok { throw ModelError.invalidArgs(field: field, reason()) }
        }
        try req(vocab_size > 0, "vocab_size", "must be > 0 (got \(vocab_size))")
        try req(dim > 0, "dim", "must be > 0 (got \(dim))")
        try req(n_layers >= 0, "n_layers", "must be >= 0 (got \(n_layers))")
        try req(n_heads > 0, "n_heads", "must be > 0 (got \(n_heads))")
        try req(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "n_kv_heads", "must divide n_heads (\(n_heads)), got \(n_kv_heads)")
        try req(head_dim > 0 && head_dim % 2 == 0, "head_dim", "must be positive and even (got \(head_dim))")
        try req(hidden_dim > 0, "hidden_dim", "must be > 0 (got \(hidden_dim))")
        try req(norm_eps > 0, "norm_eps", "must be > 0")
        try req(max_seq_len > 0, "max_seq_len", "must be > 0 (got \(max_seq_len))")
        if moe_enabled {
            try req(moe.num_experts > 0, "moe.num_experts", "must be > 0")
            try req(moe.top_k >= 1 && moe.top_k <= moe.num_experts, "moe.top_k", "must be in 1...moe.num_experts (\(moe.num_experts)), got \(moe.top_k)")
            try req(moe.hidden_dim > 0, "moe.hidden_dim", "must be > 0")
            try req(moe.num_shared_experts >= 0, "moe.num_shared_experts", "must be >= 0")
            try req(moe.load_balance_coeff >= 0, "moe.load_balance_coeff", "must be >= 0")
            try req(decoder_sparse_step >= 1, "decoder_sparse_step", "must be >= 1")
        }
    }

    /// Parameters a token multiplies by: attention projections (wq, wk, wv, wo), the router, top_k routed experts
    /// (+ shared experts) or the dense FFN per layer, and the output projection (embedding lookups and norms excluded).
    var activeParameters: Int {
        var n = 0
        for l in 0..<n_layers {
            n += dim * n_heads * head_dim * 2 + dim * n_kv_heads * head_dim * 2
            if isMoELayer(l) {
                n += moe.num_experts * dim
                n += (moe.top_k + moe.num_shared_experts) * 3 * dim * moe.hidden_dim
            } else {
                n += 3 * dim * hidden_dim
            }
        }
        return n + vocab_size * dim
    }

    /// Model FLOPs per training token (torchtitan's `get_num_flop_per_token`):
    ///   6 · activeParameters + 12 · n_layers · n_heads · head_dim · seq_len
    /// The attention term counts QKᵀ and PV forward (4·H·hd·T per token per layer) and backward (×2), non-causal as
    /// torchtitan does.
    func flopsPerToken(seqLen: Int) -> Double {
        6 * Double(activeParameters) + 12 * Double(n_layers * n_heads * head_dim * seqLen)
    }

    /// One line for messages: "dim 64, 2 layers, 4/2 heads × 16, vocab 2048, 8 experts × 64".
    var summary: String {
        "dim \(dim), \(n_layers) layers, \(n_heads)/\(n_kv_heads) heads × \(head_dim), vocab \(vocab_size), "
            + (moe_enabled ? "\(moe.num_experts) experts × \(moe.hidden_dim)" : "dense \(hidden_dim)")
    }
}
