import Foundation

// Architecture hyper-parameters of the DeepSeek-V3 family (torchtitan: DeepSeekV3ModelArgs; HF DeepseekV3Config).
// Field names follow torchtitan where it has them (n_dense_layers, n_expert_groups, n_limited_groups, q_lora_rank, ...,
// rope_factor, original_seq_len, beta_fast, beta_slow, mscale); the fields Qwen3 also has keep Qwen3ModelArgs' names,
// so `--model.dim` means the same for both families. `DeepSeekV3HFConfig` maps them to and from config.json.

/// Rope frequency scaling: none (plain rope_theta frequencies) or YaRN as HF transformers computes it.
public enum RopeScaling: String, Codable, Sendable, CaseIterable {
    case none, yarn
}

public struct DeepSeekV3ModelArgs: Codable, Equatable, Sendable {
    public var vocab_size: Int = 2048
    public var dim: Int = 64
    public var n_layers: Int = 3
    /// The first n_dense_layers layers use the dense SwiGLU FFN, the rest MoE (HF: first_k_dense_replace).
    public var n_dense_layers: Int = 1
    public var n_heads: Int = 4
    /// Dense SwiGLU hidden size (torchtitan inter_dim, HF intermediate_size).
    public var hidden_dim: Int = 128
    public var norm_eps: Float = 1e-6
    public var max_seq_len: Int = 4096
    public var enable_weight_tying: Bool = false
    public var init_std: Float = 0.02
    /// Routed experts, top-k, expert hidden size (torchtitan moe_inter_dim, HF moe_intermediate_size), sigmoid scores,
    /// route_norm (HF norm_topk_prob), route_scale (HF routed_scaling_factor), shared experts, load balancing.
    public var moe: MoEArgs = {
        var m = MoEArgs()
        m.score_func = .sigmoid
        m.num_shared_experts = 1
        return m
    }()
    /// Group-limited routing: experts form n_expert_groups groups, tokens pick among the n_limited_groups best
    /// (HF n_group / topk_group).
    public var n_expert_groups: Int = 1
    public var n_limited_groups: Int = 1

    // Multi-head latent attention.
    /// Rank of the query compression (HF q_a_proj); 0 = a plain q projection (HF q_lora_rank null).
    public var q_lora_rank: Int = 0
    /// Rank of the key/value compression (HF kv_a_proj_with_mqa minus the rope key).
    public var kv_lora_rank: Int = 32
    public var qk_nope_head_dim: Int = 16
    /// Width of the decoupled rope part of q and k (one rope key shared by all heads).
    public var qk_rope_head_dim: Int = 8
    public var v_head_dim: Int = 16

    // Rotary embedding.
    public var rope_theta: Float = 10000
    /// Rope dims in interleaved pairs (x0, x1), (x2, x3), ... (HF rope_interleave) instead of rotate-half halves.
    public var rope_interleave: Bool = true
    public var rope_scaling: RopeScaling = .none
    /// YaRN (HF rope_parameters): factor, original_max_position_embeddings, beta_fast, beta_slow, mscale,
    /// mscale_all_dim (0: the softmax scale is not changed).
    public var rope_factor: Float = 40
    public var original_seq_len: Int = 4096
    public var beta_fast: Float = 32
    public var beta_slow: Float = 1
    public var mscale: Float = 1
    public var mscale_all_dim: Float = 1

    public init() {}

    public var qkHeadDim: Int { qk_nope_head_dim + qk_rope_head_dim }
    public func isMoELayer(_ layer: Int) -> Bool { layer >= n_dense_layers }
    public var hasMoELayers: Bool { n_layers > n_dense_layers }
}

public extension DeepSeekV3ModelArgs {
    /// Checks the structural constraints; throws `ModelError.invalidArgs` naming the field.
    func validate() throws {
        func req(_ ok: Bool, _ field: String, _ reason: @autoclosure () -> String) throws {
            if !ok { throw ModelError.invalidArgs(field: field, reason()) }
        }
        try req(vocab_size > 0, "vocab_size", "must be > 0 (got \(vocab_size))")
        try req(dim > 0, "dim", "must be > 0 (got \(dim))")
        try req(n_layers >= 0, "n_layers", "must be >= 0 (got \(n_layers))")
        try req(n_dense_layers >= 0, "n_dense_layers", "must be >= 0 (got \(n_dense_layers))")
        try req(n_heads > 0, "n_heads", "must be > 0 (got \(n_heads))")
        try req(hidden_dim > 0, "hidden_dim", "must be > 0 (got \(hidden_dim))")
        try req(norm_eps > 0, "norm_eps", "must be > 0")
        try req(max_seq_len > 0, "max_seq_len", "must be > 0 (got \(max_seq_len))")
        try req(q_lora_rank >= 0, "q_lora_rank", "must be >= 0 (0: plain q projection), got \(q_lora_rank)")
        try req(kv_lora_rank > 0, "kv_lora_rank", "must be > 0 (got \(kv_lora_rank))")
        try req(qk_nope_head_dim >= 0, "qk_nope_head_dim", "must be >= 0 (got \(qk_nope_head_dim))")
        try req(qk_rope_head_dim > 0 && qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", "must be positive and even (got \(qk_rope_head_dim))")
        try req(v_head_dim > 0, "v_head_dim", "must be > 0 (got \(v_head_dim))")
        if rope_scaling == .yarn {
            try req(rope_factor > 0, "rope_factor", "must be > 0 (got \(rope_factor))")
            try req(original_seq_len > 0, "original_seq_len", "must be > 0 (got \(original_seq_len))")
        }
        if hasMoELayers {
            try req(moe.num_experts > 0, "moe.num_experts", "must be > 0")
            try req(moe.top_k >= 1 && moe.top_k <= moe.num_experts, "moe.top_k", "must be in 1...moe.num_experts (\(moe.num_experts)), got \(moe.top_k)")
            try req(moe.hidden_dim > 0, "moe.hidden_dim", "must be > 0")
            try req(moe.num_shared_experts >= 0, "moe.num_shared_experts", "must be >= 0")
            try req(moe.load_balance_coeff >= 0, "moe.load_balance_coeff", "must be >= 0")
            try req(n_expert_groups >= 1 && moe.num_experts % n_expert_groups == 0, "n_expert_groups",
                    "must divide moe.num_experts (\(moe.num_experts)), got \(n_expert_groups)")
            try req(n_expert_groups == 1 || moe.num_experts / n_expert_groups >= 2, "n_expert_groups",
                    "groups need at least 2 experts each (a group's score is its top-2 sum), got \(moe.num_experts / n_expert_groups)")
            try req(n_limited_groups >= 1 && n_limited_groups <= n_expert_groups, "n_limited_groups",
                    "must be in 1...n_expert_groups (\(n_expert_groups)), got \(n_limited_groups)")
            try req(moe.top_k <= n_limited_groups * (moe.num_experts / n_expert_groups), "moe.top_k",
                    "\(moe.top_k) exceeds the experts of n_limited_groups (\(n_limited_groups)) groups")
        }
    }

    /// The rope inverse frequencies [qk_rope_head_dim / 2] and YaRN's attention factor (cos / sin multiplier), as
    /// transformers computes them in float32 (modeling_rope_utils: default, or _compute_yarn_parameters).
    var ropeFrequencies: (invFreq: [Float], attentionFactor: Float) {
        let d = qk_rope_head_dim, P = d / 2
        // pos_freqs = base ** (arange(0, dim, 2).float() / dim)
        let posFreqs = (0..<P).map { i in powf(rope_theta, Float(2 * i) / Float(d)) }
        guard rope_scaling == .yarn else { return (posFreqs.map { 1 / $0 }, 1) }
        let factor = Double(rope_factor)
        let attentionFactor: Double = mscale != 0 && mscale_all_dim != 0
            ? Self.yarnMscale(factor, Double(mscale)) / Self.yarnMscale(factor, Double(mscale_all_dim))
            : Self.yarnMscale(factor, 1)
        func correctionDim(_ rotations: Double) -> Double {
            Double(d) * Foundation.log(Double(original_seq_len) / (rotations * 2 * Double.pi)) / (2 * Foundation.log(Double(rope_theta)))
        }
        // find_correction_range with truncate (HF's default): floor / ceil, clamped to [0, dim - 1]
        let low = max(Foundation.floor(correctionDim(Double(beta_fast))), 0)
        var high = min(Foundation.ceil(correctionDim(Double(beta_slow))), Double(d - 1))
        if low == high { high += 0.001 }
        var inv = [Float](repeating: 0, count: P)
        for i in 0..<P {
            let extrapolation = 1 / posFreqs[i]
            let interpolation = 1 / (Float(factor) * posFreqs[i])
            let ramp = min(max((Float(i) - Float(low)) / Float(high - low), 0), 1)
            let extrapolationFactor = 1 - ramp
            inv[i] = interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor
        }
        return (inv, Float(attentionFactor))
    }

    /// YaRN's mscale (HF yarn_get_mscale): 0.1 · m · ln(scale) + 1 for scale > 1, else 1.
    static func yarnMscale(_ scale: Double, _ m: Double) -> Double { scale <= 1 ? 1 : 0.1 * m * Foundation.log(scale) + 1 }

    /// The attention softmax scale: qk_head_dim^-0.5, × mscale(factor, mscale_all_dim)² under YaRN (HF
    /// yarn_apply_mscale: MLA scales every q·k dim, not only the rotary ones). Computed in Double as Python does.
    var softmaxScale: Float {
        var s = Foundation.pow(Double(qkHeadDim), -0.5)
        if rope_scaling == .yarn && mscale_all_dim != 0 {
            let m = Self.yarnMscale(Double(rope_factor), Double(mscale_all_dim))
            s = s * m * m
        }
        return Float(s)
    }

    /// Parameters a token multiplies by: MLA's projections, the router, top_k routed + shared experts or the dense FFN
    /// per layer, and the output projection (embedding lookups and norms excluded).
    var activeParameters: Int {
        let H = n_heads, qk = qkHeadDim
        var n = 0
        for l in 0..<n_layers {
            n += q_lora_rank > 0 ? dim * q_lora_rank + q_lora_rank * H * qk : dim * H * qk
            n += dim * (kv_lora_rank + qk_rope_head_dim) + kv_lora_rank * H * (qk_nope_head_dim + v_head_dim)
            n += H * v_head_dim * dim
            if isMoELayer(l) {
                n += moe.num_experts * dim + (moe.top_k + moe.num_shared_experts) * 3 * dim * moe.hidden_dim
            } else {
                n += 3 * dim * hidden_dim
            }
        }
        return n + vocab_size * dim
    }

    /// Model FLOPs per training token (torchtitan's get_num_flop_per_token for DeepSeek-V3):
    ///   6 · activeParameters + 6 · n_layers · n_heads · (qk_head_dim + v_head_dim) · seq_len
    /// (QKᵀ over qk_head_dim and PV over v_head_dim, forward 2 FLOPs each, backward twice that; non-causal).
    func flopsPerToken(seqLen: Int) -> Double {
        6 * Double(activeParameters) + 6 * Double(n_layers * n_heads * (qkHeadDim + v_head_dim) * seqLen)
    }

    var summary: String {
        "dim \(dim), \(n_layers) layers (\(n_dense_layers) dense), \(n_heads) heads MLA q_lora \(q_lora_rank) kv_lora \(kv_lora_rank) "
            + "qk \(qk_nope_head_dim)+\(qk_rope_head_dim) v \(v_head_dim), vocab \(vocab_size), \(moe.num_experts) experts × \(moe.hidden_dim) top-\(moe.top_k)"
            + (n_expert_groups > 1 ? " in \(n_expert_groups) groups keep \(n_limited_groups)" : "")
    }
}
