import Config

extension ScoreFunction: ConfigEnum {}

extension RopeScaling: ConfigEnum {}

/// torchtitan's [model] section: the model family (`name`: qwen3 or deepseek_v3), a named architecture of it
/// (`flavor`) and the architecture fields, which start as the flavor's (`JobConfig.resolve` reloads them when the
/// flavor changes) and which `--model.<field>` overrides: `--model.flavor bench_moe --model.dim 128` is bench_moe with
/// dim 128. Each family keeps its own args (`args`: Qwen3, `deepseek_v3`); the fields both families have
/// (`dim`, `n_layers`, `moe.*`, ...) read the selected family's and write both, the DeepSeek-V3 ones (MLA ranks,
/// expert groups, YaRN) are that family's only. `modelArgs` is the selected family's architecture.
public struct ModelConfig: ConfigSection {
    public var name = "qwen3"
    public var flavor = "debugmodel_moe"
    public var args = Qwen3Flavors.all["debugmodel_moe"]!
    public var deepseek_v3 = DeepSeekV3Flavors.all["debugmodel"]!

    public init() {}

    /// The families `name` may pick, each with its named flavors.
    public static let familyFlavors: [String: [String]] = [
        "qwen3": Array(Qwen3Flavors.all.keys), "deepseek_v3": Array(DeepSeekV3Flavors.all.keys),
    ]

    /// The selected family's architecture; setting it selects its family.
    public var modelArgs: ModelArgs {
        get { name == "deepseek_v3" ? .deepseekV3(deepseek_v3) : .qwen3(args) }
        set {
            name = newValue.family
            switch newValue {
            case .qwen3(let a): args = a
            case .deepseekV3(let a): deepseek_v3 = a
            }
        }
    }

    /// This config with `flavor` of family `name` loaded into its args; the error names the closest flavor.
    public func withFlavorArgs() throws -> ModelConfig {
        guard let flavors = Self.familyFlavors[name] else {
            throw ConfigError.invalid(key: "name", reason: "no model family '\(name)' (available: \(Self.familyFlavors.keys.sorted().joined(separator: ", ")))")
        }
        guard flavors.contains(flavor) else {
            let best = flavors.min { editDistance(flavor, $0) < editDistance(flavor, $1) }
            throw ConfigError.invalid(key: "flavor", reason: "no flavor '\(flavor)' in model '\(name)'"
                + (best.map { "; did you mean '\($0)'?" } ?? "") + " (available: \(flavors.sorted().joined(separator: ", ")))")
        }
        var c = self
        if name == "deepseek_v3" { c.deepseek_v3 = DeepSeekV3Flavors.all[flavor]! } else { c.args = Qwen3Flavors.all[flavor]! }
        return c
    }

    public func validate() throws {
        guard Self.familyFlavors[name] != nil else {
            throw ConfigError.invalid(key: "name", reason: "no model family '\(name)' (available: \(Self.familyFlavors.keys.sorted().joined(separator: ", ")))")
        }
        do { try modelArgs.validate() } catch let ModelError.invalidArgs(field, reason) {
            throw ConfigError.invalid(key: field, reason: reason)
        }
    }

    // Fields both families have: read the selected family's, written to both.
    private var isDeepSeekV3: Bool { name == "deepseek_v3" }
    var shared_vocab_size: Int { get { isDeepSeekV3 ? deepseek_v3.vocab_size : args.vocab_size } set { args.vocab_size = newValue; deepseek_v3.vocab_size = newValue } }
    var shared_dim: Int { get { isDeepSeekV3 ? deepseek_v3.dim : args.dim } set { args.dim = newValue; deepseek_v3.dim = newValue } }
    var shared_n_layers: Int { get { isDeepSeekV3 ? deepseek_v3.n_layers : args.n_layers } set { args.n_layers = newValue; deepseek_v3.n_layers = newValue } }
    var shared_n_heads: Int { get { isDeepSeekV3 ? deepseek_v3.n_heads : args.n_heads } set { args.n_heads = newValue; deepseek_v3.n_heads = newValue } }
    var shared_hidden_dim: Int { get { isDeepSeekV3 ? deepseek_v3.hidden_dim : args.hidden_dim } set { args.hidden_dim = newValue; deepseek_v3.hidden_dim = newValue } }
    var shared_norm_eps: Float { get { isDeepSeekV3 ? deepseek_v3.norm_eps : args.norm_eps } set { args.norm_eps = newValue; deepseek_v3.norm_eps = newValue } }
    var shared_rope_theta: Float { get { isDeepSeekV3 ? deepseek_v3.rope_theta : args.rope_theta } set { args.rope_theta = newValue; deepseek_v3.rope_theta = newValue } }
    var shared_max_seq_len: Int { get { isDeepSeekV3 ? deepseek_v3.max_seq_len : args.max_seq_len } set { args.max_seq_len = newValue; deepseek_v3.max_seq_len = newValue } }
    var shared_enable_weight_tying: Bool { get { isDeepSeekV3 ? deepseek_v3.enable_weight_tying : args.enable_weight_tying } set { args.enable_weight_tying = newValue; deepseek_v3.enable_weight_tying = newValue } }
    var shared_init_std: Float { get { isDeepSeekV3 ? deepseek_v3.init_std : args.init_std } set { args.init_std = newValue; deepseek_v3.init_std = newValue } }
    var shared_moe: MoEArgs { get { isDeepSeekV3 ? deepseek_v3.moe : args.moe } set { args.moe = newValue; deepseek_v3.moe = newValue } }

    public static let doc = "model family, flavor and architecture"
    public static let subsectionDocs = ["moe": "mixture-of-experts options"]

    public static let fields: [ConfigField<ModelConfig>] = {
        typealias F = ConfigField<ModelConfig>
        return [
            F("name", \.name, "model module: qwen3 or deepseek_v3"),
            F("flavor", \.flavor, "named architecture of the module; model.* fields override it"),
            F("vocab_size", \.shared_vocab_size, "vocabulary size (synthetic tokens are < this)"),
            F("dim", \.shared_dim, "model width D"),
            F("n_layers", \.shared_n_layers, "decoder layers"),
            F("n_heads", \.shared_n_heads, "query heads"),
            F("n_kv_heads", \.args.n_kv_heads, "key/value heads (GQA; qwen3)"),
            F("head_dim", \.args.head_dim, "per-head width (qwen3)"),
            F("hidden_dim", \.shared_hidden_dim, "dense SwiGLU hidden size (HF intermediate_size; torchtitan inter_dim)"),
            F("norm_eps", \.shared_norm_eps, "RMSNorm epsilon"),
            F("rope_theta", \.shared_rope_theta, "RoPE base"),
            F("max_seq_len", \.shared_max_seq_len, "longest supported sequence"),
            F("enable_weight_tying", \.shared_enable_weight_tying, "share tok_embeddings and output weights"),
            F("init_std", \.shared_init_std, "std of the normal init of weight matrices"),
            F("moe_enabled", \.args.moe_enabled, "use MoE feed-forward blocks (qwen3)"),
            F("decoder_sparse_step", \.args.decoder_sparse_step, "layer i is MoE when (i+1) % step == 0 (qwen3)"),
            F("n_dense_layers", \.deepseek_v3.n_dense_layers, "the first n layers are dense, the rest MoE (deepseek_v3; HF first_k_dense_replace)"),
            F("n_expert_groups", \.deepseek_v3.n_expert_groups, "routed experts form this many groups (deepseek_v3; HF n_group)"),
            F("n_limited_groups", \.deepseek_v3.n_limited_groups, "tokens route within this many best groups (deepseek_v3; HF topk_group)"),
            F("q_lora_rank", \.deepseek_v3.q_lora_rank, "MLA query compression rank, 0: plain q projection (deepseek_v3)"),
            F("kv_lora_rank", \.deepseek_v3.kv_lora_rank, "MLA key/value compression rank (deepseek_v3)"),
            F("qk_nope_head_dim", \.deepseek_v3.qk_nope_head_dim, "MLA per-head q/k width without rope (deepseek_v3)"),
            F("qk_rope_head_dim", \.deepseek_v3.qk_rope_head_dim, "MLA per-head q/k rope width, one rope key shared by all heads (deepseek_v3)"),
            F("v_head_dim", \.deepseek_v3.v_head_dim, "MLA per-head value width (deepseek_v3)"),
            F("rope_interleave", \.deepseek_v3.rope_interleave, "rope dims in interleaved pairs (deepseek_v3; HF rope_interleave)"),
            F("rope_scaling", \.deepseek_v3.rope_scaling, "rope frequency scaling (deepseek_v3)"),
            F("rope_factor", \.deepseek_v3.rope_factor, "YaRN factor (deepseek_v3)"),
            F("original_seq_len", \.deepseek_v3.original_seq_len, "YaRN original_max_position_embeddings (deepseek_v3)"),
            F("beta_fast", \.deepseek_v3.beta_fast, "YaRN beta_fast (deepseek_v3)"),
            F("beta_slow", \.deepseek_v3.beta_slow, "YaRN beta_slow (deepseek_v3)"),
            F("mscale", \.deepseek_v3.mscale, "YaRN mscale, 0: none (deepseek_v3)"),
            F("mscale_all_dim", \.deepseek_v3.mscale_all_dim, "YaRN mscale_all_dim, also scales the softmax; 0: none (deepseek_v3)"),
            F("moe.num_experts", \.shared_moe.num_experts, "routed experts per MoE layer"),
            F("moe.top_k", \.shared_moe.top_k, "experts per token"),
            F("moe.hidden_dim", \.shared_moe.hidden_dim, "routed expert hidden size (HF moe_intermediate_size)"),
            F("moe.score_func", \.shared_moe.score_func, "router score function"),
            F("moe.route_norm", \.shared_moe.route_norm, "renormalize top-k scores (HF norm_topk_prob)"),
            F("moe.route_scale", \.shared_moe.route_scale, "multiply routing weights by this (HF routed_scaling_factor)"),
            F("moe.num_shared_experts", \.shared_moe.num_shared_experts, "always-on shared experts"),
            F("moe.load_balance_coeff", \.shared_moe.load_balance_coeff, "aux-loss-free expert bias step (0: off)"),
            F("moe.use_grouped_mm", \.shared_moe.use_grouped_mm, "experts run concurrently on the kernel threads instead of a loop"),
        ]
    }()
}
