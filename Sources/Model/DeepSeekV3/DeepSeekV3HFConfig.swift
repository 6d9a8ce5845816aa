import Foundation

// HF transformers config.json (DeepseekV3Config, transformers 4.x and 5.x layouts) <-> DeepSeekV3ModelArgs.
//
//   HF config.json                                DeepSeekV3ModelArgs
//   vocab_size, hidden_size, num_hidden_layers    vocab_size, dim, n_layers
//   num_attention_heads                           n_heads (num_key_value_heads must equal it: MLA expands per head)
//   intermediate_size, moe_intermediate_size      hidden_dim, moe.hidden_dim
//   first_k_dense_replace                         n_dense_layers
//   n_routed_experts (num_local_experts)          moe.num_experts
//   num_experts_per_tok, n_shared_experts         moe.top_k, moe.num_shared_experts
//   norm_topk_prob, routed_scaling_factor         moe.route_norm, moe.route_scale      (scores: sigmoid)
//   n_group, topk_group                           n_expert_groups, n_limited_groups
//   q_lora_rank (null = q_proj), kv_lora_rank     q_lora_rank (0 = q_proj), kv_lora_rank
//   qk_nope_head_dim, qk_rope_head_dim, v_head_dim
//   rope_interleave                               rope_interleave
//   rope_parameters (5.x) / rope_scaling + rope_theta (4.x): rope_type yarn | default
//     rope_theta, factor, original_max_position_embeddings, beta_fast, beta_slow, mscale, mscale_all_dim
//   rms_norm_eps, max_position_embeddings, tie_word_embeddings, initializer_range
//   num_nextn_predict_layers                      (multi-token prediction: its layers are skipped on import)
//
// The structural keys (the MLA ranks and head dims, the MoE sizes and routing groups) are required: a config that
// lacks one is an error naming it, never a guess. Options this trainer does not implement (another rope scaling type,
// attention_bias, an activation other than silu, topk_method other than noaux_tc, scoring_func other than sigmoid)
// are errors naming the key.

public enum DeepSeekV3HFConfig {
    public static let architecture = "DeepseekV3ForCausalLM"
    public static let modelType = "deepseek_v3"

    /// Whether a parsed config.json object describes this family (architectures[0], else model_type).
    public static func describes(_ obj: [String: Any]) -> Bool {
        if let archs = obj["architectures"] as? [Any], let first = archs.first as? String { return first == architecture }
        return obj["model_type"] as? String == modelType
    }

    public static func parse(object obj: [String: Any], source: String = "config.json") throws -> DeepSeekV3ModelArgs {
        let r = HFConfig.Reader(obj: obj, source: source)
        if let mt = obj["model_type"] as? String, mt != modelType {
            throw HFConfigError(source: source, key: "model_type", "\"\(mt)\" does not match architecture \(architecture) (expected \"\(modelType)\")")
        }
        var a = DeepSeekV3ModelArgs()
        a.vocab_size = try r.int("vocab_size", min: 1)
        a.dim = try r.int("hidden_size", min: 1)
        a.n_layers = try r.int("num_hidden_layers", min: 1)
        a.n_heads = try r.int("num_attention_heads", min: 1)
        let kvHeads = try r.int("num_key_value_heads", min: 1, default: a.n_heads)
        guard kvHeads == a.n_heads else {
            throw HFConfigError(source: source, key: "num_key_value_heads",
                                "\(kvHeads) is not supported: MLA expands keys and values per head (must equal num_attention_heads \(a.n_heads))")
        }
        a.hidden_dim = try r.int("intermediate_size", min: 1)
        a.norm_eps = Float(try r.double("rms_norm_eps", default: 1e-6))
        a.max_seq_len = try r.int("max_position_embeddings", min: 1, default: 4096)
        a.enable_weight_tying = try r.bool("tie_word_embeddings", default: false)
        a.init_std = Float(try r.double("initializer_range", default: 0.02))

        // MLA
        if r.present("q_lora_rank") == nil && obj["q_lora_rank"] == nil {
            throw HFConfigError(source: source, key: "q_lora_rank", "missing (required; null means a plain q_proj)")
        }
        a.q_lora_rank = try r.optionalInt("q_lora_rank", min: 1) ?? 0
        a.kv_lora_rank = try r.int("kv_lora_rank", min: 1)
        a.qk_nope_head_dim = try r.int("qk_nope_head_dim", min: 0)
        a.qk_rope_head_dim = try r.int("qk_rope_head_dim", min: 2)
        guard a.qk_rope_head_dim % 2 == 0 else {
            throw HFConfigError(source: source, key: "qk_rope_head_dim", "\(a.qk_rope_head_dim) must be even (rope rotates pairs)")
        }
        a.v_head_dim = try r.int("v_head_dim", min: 1)
        a.rope_interleave = try r.bool("rope_interleave", default: true)
        if try r.bool("attention_bias", default: false) {
            throw HFConfigError(source: source, key: "attention_bias", "true is not supported (the MLA projections have no bias here)")
        }
        let act = try r.string("hidden_act", default: "silu")
        guard act == "silu" else {
            throw HFConfigError(source: source, key: "hidden_act", "\"\(act)\" is not supported (SwiGLU uses silu)")
        }

        // MoE
        a.n_dense_layers = try r.int("first_k_dense_replace", min: 0)
        a.moe.num_experts = try r.present("n_routed_experts") != nil ? r.int("n_routed_experts", min: 1) : r.int("num_local_experts", min: 1)
        a.moe.top_k = try r.int("num_experts_per_tok", min: 1)
        a.moe.hidden_dim = try r.int("moe_intermediate_size", min: 1)
        a.moe.num_shared_experts = try r.int("n_shared_experts", min: 0)
        a.moe.route_norm = try r.bool("norm_topk_prob", default: true)
        guard let scale = try r.optionalDouble("routed_scaling_factor") else {
            throw HFConfigError(source: source, key: "routed_scaling_factor", "missing (required)")
        }
        a.moe.route_scale = Float(scale)
        a.moe.score_func = .sigmoid
        a.n_expert_groups = try r.int("n_group", min: 1)
        a.n_limited_groups = try r.int("topk_group", min: 1)
        let scoring = try r.string("scoring_func", default: "sigmoid")
        guard scoring == "sigmoid" else {
            throw HFConfigError(source: source, key: "scoring_func", "\"\(scoring)\" is not supported (DeepseekV3TopkRouter scores with sigmoid)")
        }
        let method = try r.string("topk_method", default: "noaux_tc")
        guard method == "noaux_tc" else {
            throw HFConfigError(source: source, key: "topk_method", "\"\(method)\" is not supported (only noaux_tc: group-limited top-k with the correction bias)")
        }

        // Rope: transformers 5 rope_parameters, or 4.x rope_scaling with a top-level rope_theta.
        var theta = try r.optionalDouble("rope_theta")
        var scaling: [String: Any]? = nil
        var scalingKey = "rope_scaling"
        if let rp = r.present("rope_parameters") {
            guard let o = rp as? [String: Any] else { throw HFConfigError(source: source, key: "rope_parameters", "expected an object") }
            scaling = o
            scalingKey = "rope_parameters"
        } else if let rs = r.present("rope_scaling") {
            guard let o = rs as? [String: Any] else { throw HFConfigError(source: source, key: "rope_scaling", "expected an object or null") }
            scaling = o
        }
        if let s = scaling {
            let sr = HFConfig.Reader(obj: s, source: source)
            func key(_ k: String) -> String { "\(scalingKey).\(k)" }
            func num(_ k: String) throws -> Double? {
                guard let v = sr.present(k) else { return nil }
                guard let d = JSONValue.double(v), d.isFinite else {
                    throw HFConfigError(source: source, key: key(k), "expected a number, got \(JSONValue.describe(v))")
                }
                return d
            }
            if theta == nil { theta = try num("rope_theta") }
            let typeKey = s["rope_type"] != nil ? "rope_type" : "type"
            let type = s[typeKey] as? String ?? "default"
            switch type {
            case "default":
                a.rope_scaling = .none
            case "yarn":
                a.rope_scaling = .yarn
                guard let f = try num("factor") else { throw HFConfigError(source: source, key: key("factor"), "missing (required for yarn)") }
                a.rope_factor = Float(f)
                guard let o = try num("original_max_position_embeddings") else {
                    throw HFConfigError(source: source, key: key("original_max_position_embeddings"), "missing (required for yarn)")
                }
                a.original_seq_len = Int(o)
                a.beta_fast = Float(try num("beta_fast") ?? 32)
                a.beta_slow = Float(try num("beta_slow") ?? 1)
                a.mscale = Float(try num("mscale") ?? 0)
                a.mscale_all_dim = Float(try num("mscale_all_dim") ?? 0)
                if sr.present("attention_factor") != nil {
                    throw HFConfigError(source: source, key: key("attention_factor"), "an explicit attention_factor is not supported (it is derived from factor, mscale and mscale_all_dim)")
                }
                if let t = sr.present("truncate"), JSONValue.bool(t) != true {
                    throw HFConfigError(source: source, key: key("truncate"), "only true (the default) is supported")
                }
                if let p = try num("partial_rotary_factor"), p != 1 {
                    throw HFConfigError(source: source, key: key("partial_rotary_factor"), "only 1 is supported")
                }
            default:
                throw HFConfigError(source: source, key: key(typeKey),
                                    "rope scaling type \"\(type)\" is not supported; only \"yarn\" or \"default\" (or no scaling)")
            }
        }
        a.rope_theta = Float(theta ?? 10000)
        do { try a.validate() } catch let ModelError.invalidArgs(field, reason) {
            throw HFConfigError(source: source, key: hfKey(forField: field), reason)
        }
        return a
    }

    /// The config.json key of an args field, for errors found by `validate` on an imported config.
    static func hfKey(forField f: String) -> String {
        ["n_expert_groups": "n_group", "n_limited_groups": "topk_group", "moe.top_k": "num_experts_per_tok",
         "moe.num_experts": "n_routed_experts", "dim": "hidden_size", "n_heads": "num_attention_heads",
         "n_dense_layers": "first_k_dense_replace", "moe.hidden_dim": "moe_intermediate_size"][f] ?? f
    }

    /// HF config.json contents (transformers 5 layout, as DeepseekV3Config.save_pretrained writes it). The expert bias
    /// is HF's e_score_correction_bias; load_balance_coeff is ours only and not written.
    public static func export(_ a: DeepSeekV3ModelArgs) throws -> [String: Any] {
        func d(_ f: Float) -> Double { Double("\(f)") ?? Double(f) }
        guard a.moe.score_func == .sigmoid else {
            throw HFConfigError(source: "export", key: "moe.score_func", "softmax routing has no DeepseekV3ForCausalLM equivalent")
        }
        var rope: [String: Any] = ["rope_theta": d(a.rope_theta), "rope_type": a.rope_scaling == .yarn ? "yarn" : "default"]
        if a.rope_scaling == .yarn {
            rope["factor"] = d(a.rope_factor)
            rope["original_max_position_embeddings"] = a.original_seq_len
            rope["beta_fast"] = d(a.beta_fast)
            rope["beta_slow"] = d(a.beta_slow)
            if a.mscale != 0 { rope["mscale"] = d(a.mscale) }
            if a.mscale_all_dim != 0 { rope["mscale_all_dim"] = d(a.mscale_all_dim) }
        }
        return [
            "architectures": [architecture],
            "model_type": modelType,
            "vocab_size": a.vocab_size,
            "hidden_size": a.dim,
            "intermediate_size": a.hidden_dim,
            "moe_intermediate_size": a.moe.hidden_dim,
            "num_hidden_layers": a.n_layers,
            "first_k_dense_replace": a.n_dense_layers,
            "num_attention_heads": a.n_heads,
            "num_key_value_heads": a.n_heads,
            "n_routed_experts": a.moe.num_experts,
            "num_experts_per_tok": a.moe.top_k,
            "n_shared_experts": a.moe.num_shared_experts,
            "norm_topk_prob": a.moe.route_norm,
            "routed_scaling_factor": d(a.moe.route_scale),
            "n_group": a.n_expert_groups,
            "topk_group": a.n_limited_groups,
            "q_lora_rank": a.q_lora_rank > 0 ? a.q_lora_rank as Any : NSNull(),
            "kv_lora_rank": a.kv_lora_rank,
            "qk_nope_head_dim": a.qk_nope_head_dim,
            "qk_rope_head_dim": a.qk_rope_head_dim,
            "v_head_dim": a.v_head_dim,
            "rope_interleave": a.rope_interleave,
            "rope_parameters": rope,
            "rms_norm_eps": d(a.norm_eps),
            "max_position_embeddings": a.max_seq_len,
            "tie_word_embeddings": a.enable_weight_tying,
            "initializer_range": d(a.init_std),
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "num_nextn_predict_layers": 0,
            "use_cache": true,
            "dtype": "float32",
        ]
    }
}
