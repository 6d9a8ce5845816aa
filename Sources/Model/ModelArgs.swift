// Architecture hyper-parameters of the Qwen3 / Qwen3-MoE family (torchtitan: Qwen3ModelArgs).
// Field names follow torchtitan; `HFConfig` maps them to and from HF transformers' config.json.

public enum ScoreFunction: String, Codable, Sendable, CaseIterable {
    case softmax, sigmoid
}

/// Mixture-of-experts options (torchtitan: MoEArgs).
public struct MoEArgs: Codable, Equatable, Sendable {
    public var num_experts: Int = 8
    public var top_k: Int = 2
    /// Hidden size of one routed expert (HF: moe_intermediate_size).
    public var hidden_dim: Int = 64
    public var score_func: ScoreFunction = .softmax
    /// Renormalize the top-k scores to sum to 1 (HF: norm_topk_prob).
    public var route_norm: Bool = true
    public var route_scale: Float = 1.0
    public var num_shared_experts: Int = 0
    /// Auxiliary-loss-free load balancing: expert bias step size; 0 disables it.
    public var load_balance_coeff: Float = 0
    /// Expert computation: grouped (experts run concurrently, whole experts per kernel thread) or a plain loop over
    /// experts with each GEMM split over the threads. The same bits either way with one kernel thread; with several the
    /// loop path's split GEMMs can differ in the last bits.
    public var use_grouped_mm: Bool = true
    public init() {}
}

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

/// A host-side named tensor: the neutral currency of state dicts (checkpoints, HF import/export).
public struct HostTensor: Equatable, Sendable {
    public var shape: [Int]
    public var values: [Float]
    public init(shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count, "HostTensor: shape \(shape) does not match \(values.count) values")
        self.shape = shape
        self.values = values
    }
}

/// Fully-qualified parameter name → tensor, with torchtitan FQNs (see `ParameterNames`).
public typealias StateDict = [String: HostTensor]

/// torchtitan-style fully-qualified parameter names. Shapes as [rows, cols] of the row-major weight.
///   tok_embeddings.weight                     [V, D]
///   layers.{i}.attention_norm.weight          [D]
///   layers.{i}.attention.wq.weight            [H*hd, D]
///   layers.{i}.attention.wk.weight            [KV*hd, D]
///   layers.{i}.attention.wv.weight            [KV*hd, D]
///   layers.{i}.attention.wo.weight            [D, H*hd]
///   layers.{i}.attention.q_norm.weight        [hd]
///   layers.{i}.attention.k_norm.weight        [hd]
///   layers.{i}.ffn_norm.weight                [D]
///   dense layer:
///   layers.{i}.feed_forward.w1.weight         [F, D]   (HF gate_proj)
///   layers.{i}.feed_forward.w2.weight         [D, F]   (HF down_proj)
///   layers.{i}.feed_forward.w3.weight         [F, D]   (HF up_proj)
///   MoE layer:
///   layers.{i}.moe.router.gate.weight         [E, D]   (HF mlp.gate.weight)
///   layers.{i}.moe.experts.w1                 [E, Fe, D]
///   layers.{i}.moe.experts.w2                 [E, D, Fe]
///   layers.{i}.moe.experts.w3                 [E, Fe, D]
///   layers.{i}.moe.shared_experts.w1.weight   [Fs, D]  (Fs = Fe * num_shared_experts)
///   layers.{i}.moe.shared_experts.w2.weight   [D, Fs]
///   layers.{i}.moe.shared_experts.w3.weight   [Fs, D]
///   layers.{i}.moe.expert_bias                [E]      (buffer, not trained by the optimizer)
///   norm.weight                               [D]
///   output.weight                             [V, D]   (absent when enable_weight_tying)
public enum ParameterNames {}
