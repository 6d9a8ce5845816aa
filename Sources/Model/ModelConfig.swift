import Config

extension ScoreFunction: ConfigEnum {}

/// torchtitan's [model] section: the model family (`name`), a named architecture of it (`flavor`) and the
/// architecture fields, which start as the flavor's (`JobConfig.resolve` reloads them when the flavor changes) and
/// which `--model.<field>` overrides: `--model.flavor bench_moe --model.dim 128` is bench_moe with dim 128.
public struct ModelConfig: ConfigSection {
    public var name = "qwen3"
    public var flavor = "debugmodel_moe"
    public var args = Qwen3Flavors.all["debugmodel_moe"]!

    public init() {}

    /// The families `name` may pick, each with its named flavors.
    public static let families: [String: [String: Qwen3ModelArgs]] = ["qwen3": Qwen3Flavors.all]

    /// This config with `flavor` of family `name` loaded into `args`; the error names the closest flavor.
    public func withFlavorArgs() throws -> ModelConfig {
        guard let flavors = Self.families[name] else {
            throw ConfigError.invalid(key: "name", reason: "no model family '\(name)' (available: \(Self.families.keys.sorted().joined(separator: ", ")))")
        }
        guard let args = flavors[flavor] else {
            let best = flavors.keys.min { editDistance(flavor, $0) < editDistance(flavor, $1) }
            throw ConfigError.invalid(key: "flavor", reason: "no flavor '\(flavor)' in model '\(name)'"
                + (best.map { "; did you mean '\($0)'?" } ?? "") + " (available: \(flavors.keys.sorted().joined(separator: ", ")))")
        }
        var c = self
        c.args = args
        return c
    }

    public func validate() throws {
        do { try args.validate() } catch let ModelError.invalidArgs(field, reason) {
            throw ConfigError.invalid(key: field, reason: reason)
        }
    }

    public static let doc = "model family, flavor and architecture"
    public static let subsectionDocs = ["moe": "mixture-of-experts options"]

    public static let fields: [ConfigField<ModelConfig>] = {
        typealias F = ConfigField<ModelConfig>
        return [
            F("name", \.name, "model module, e.g. qwen3"),
            F("flavor", \.flavor, "named architecture of the module; model.* fields override it"),
            F("vocab_size", \.args.vocab_size, "vocabulary size (synthetic tokens are < this)"),
            F("dim", \.args.dim, "model width D"),
            F("n_layers", \.args.n_layers, "decoder layers"),
            F("n_heads", \.args.n_heads, "query heads"),
            F("n_kv_heads", \.args.n_kv_heads, "key/value heads (GQA)"),
            F("head_dim", \.args.head_dim, "per-head width"),
            F("hidden_dim", \.args.hidden_dim, "dense SwiGLU hidden size (HF intermediate_size)"),
            F("norm_eps", \.args.norm_eps, "RMSNorm epsilon"),
            F("rope_theta", \.args.rope_theta, "RoPE base"),
            F("max_seq_len", \.args.max_seq_len, "longest supported sequence"),
            F("enable_weight_tying", \.args.enable_weight_tying, "share tok_embeddings and output weights"),
            F("init_std", \.args.init_std, "std of the normal init of weight matrices"),
            F("moe_enabled", \.args.moe_enabled, "use MoE feed-forward blocks"),
            F("decoder_sparse_step", \.args.decoder_sparse_step, "layer i is MoE when (i+1) % step == 0"),
            F("moe.num_experts", \.args.moe.num_experts, "routed experts per MoE layer"),
            F("moe.top_k", \.args.moe.top_k, "experts per token"),
            F("moe.hidden_dim", \.args.moe.hidden_dim, "routed expert hidden size (HF moe_intermediate_size)"),
            F("moe.score_func", \.args.moe.score_func, "router score function"),
            F("moe.route_norm", \.args.moe.route_norm, "renormalize top-k scores (HF norm_topk_prob)"),
            F("moe.route_scale", \.args.moe.route_scale, "multiply routing weights by this"),
            F("moe.num_shared_experts", \.args.moe.num_shared_experts, "always-on shared experts"),
            F("moe.load_balance_coeff", \.args.moe.load_balance_coeff, "aux-loss-free expert bias step (0: off)"),
            F("moe.use_grouped_mm", \.args.moe.use_grouped_mm, "experts run concurrently on the kernel threads instead of a loop"),
        ]
    }()
}
