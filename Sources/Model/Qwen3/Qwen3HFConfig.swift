import Foundation

// HF transformers config.json <-> Qwen3ModelArgs.
//
//   HF config.json                      Qwen3ModelArgs
//   architectures[0]                    moe_enabled (Qwen3MoeForCausalLM) / dense (Qwen3ForCausalLM)
//   vocab_size                          vocab_size
//   hidden_size                         dim
//   num_hidden_layers                   n_layers
//   num_attention_heads                 n_heads
//   num_key_value_heads                 n_kv_heads            (default: num_attention_heads)
//   head_dim                            head_dim              (default: hidden_size / num_attention_heads)
//   intermediate_size                   hidden_dim
//   rms_norm_eps                        norm_eps
//   rope_theta (5.x: rope_parameters)   rope_theta
//   max_position_embeddings             max_seq_len
//   tie_word_embeddings                 enable_weight_tying
//   initializer_range                   init_std
//   num_experts / num_local_experts     moe.num_experts        (transformers 4.x / 5.x name)
//   num_experts_per_tok                 moe.top_k
//   moe_intermediate_size               moe.hidden_dim
//   norm_topk_prob                      moe.route_norm
//   decoder_sparse_step                 decoder_sparse_step
//   mlp_only_layers                     must be empty
//
// Missing optional fields take the defaults of transformers' Qwen3Config / Qwen3MoeConfig.
// Fields that change the computation in a way this trainer does not implement (sliding window,
// attention bias, rope scaling, activation other than silu, mlp_only_layers) are errors.

public struct HFConfigError: Error, CustomStringConvertible, Sendable {
    public let source: String
    public let key: String?
    public let reason: String
    public init(source: String, key: String?, _ reason: String) {
        self.source = source
        self.key = key
        self.reason = reason
    }
    public var description: String {
        if let k = key { return "HF config \(source): key '\(k)': \(reason)" }
        return "HF config \(source): \(reason)"
    }
}

/// The HF model classes this trainer reads and writes.
public enum HFArchitecture: String, Sendable, CaseIterable {
    case qwen3 = "Qwen3ForCausalLM"
    case qwen3Moe = "Qwen3MoeForCausalLM"

    public var modelType: String {
        switch self {
        case .qwen3: return "qwen3"
        case .qwen3Moe: return "qwen3_moe"
        }
    }

    public init?(modelType: String) {
        switch modelType {
        case "qwen3": self = .qwen3
        case "qwen3_moe": self = .qwen3Moe
        default: return nil
        }
    }
}

public enum HFConfig {
    /// Reads `path` (a config.json file, or a folder containing one).
    public static func load(path: String) throws -> Qwen3ModelArgs {
        let (obj, file) = try HFModelConfig.readObject(path: path)
        return try parse(object: obj, source: file)
    }

    /// Which architecture a config describes (`architectures[0]`, else `model_type`).
    public static func architecture(of obj: [String: Any], source: String) throws -> HFArchitecture {
        if let archs = obj["architectures"], !(archs is NSNull) {
            guard let list = archs as? [Any], let first = list.first as? String else {
                throw HFConfigError(source: source, key: "architectures", "expected a non-empty array of strings")
            }
            guard list.count == 1 else {
                throw HFConfigError(source: source, key: "architectures", "expected exactly one architecture, got \(list.compactMap { $0 as? String })")
            }
            guard let a = HFArchitecture(rawValue: first) else {
                throw HFConfigError(source: source, key: "architectures",
                                    "unsupported architecture \"\(first)\"; supported: \((HFArchitecture.allCases.map { $0.rawValue } + [DeepSeekV3HFConfig.architecture]).joined(separator: ", "))")
            }
            if let mt = obj["model_type"] as? String, HFArchitecture(modelType: mt) != a {
                throw HFConfigError(source: source, key: "model_type", "\"\(mt)\" does not match architecture \(a.rawValue) (expected \"\(a.modelType)\")")
            }
            return a
        }
        guard let mt = obj["model_type"] as? String else {
            throw HFConfigError(source: source, key: "architectures", "missing; neither architectures nor model_type says which model this is")
        }
        guard let a = HFArchitecture(modelType: mt) else {
            throw HFConfigError(source: source, key: "model_type", "unsupported model_type \"\(mt)\"; supported: qwen3, qwen3_moe, \(DeepSeekV3HFConfig.modelType)")
        }
        return a
    }

    /// Parses config.json text into model args.
    public static func parse(_ data: Data, source: String = "config.json") throws -> Qwen3ModelArgs {
        try parse(object: HFModelConfig.object(data, source: source), source: source)
    }

    public static func parse(object obj: [String: Any], source: String = "config.json") throws -> Qwen3ModelArgs {
        let arch = try architecture(of: obj, source: source)
        let moe = arch == .qwen3Moe
        let r = Reader(obj: obj, source: source)

        var a = Qwen3ModelArgs()
        a.vocab_size = try r.int("vocab_size", min: 1)
        a.dim = try r.int("hidden_size", min: 1)
        a.n_layers = try r.int("num_hidden_layers", min: 1)
        a.n_heads = try r.int("num_attention_heads", min: 1)
        a.n_kv_heads = try r.int("num_key_value_heads", min: 1, default: a.n_heads)
        guard a.n_heads % a.n_kv_heads == 0 else {
            throw HFConfigError(source: source, key: "num_key_value_heads",
                                "\(a.n_kv_heads) does not divide num_attention_heads \(a.n_heads)")
        }
        // Qwen3Config defaults head_dim to 128; Qwen3MoeConfig has no such field (hidden_size / heads).
        a.head_dim = try r.int("head_dim", min: 1, default: moe ? a.dim / a.n_heads : 128)
        a.hidden_dim = try r.int("intermediate_size", min: 1, default: moe ? 6144 : 22016)
        a.norm_eps = Float(try r.double("rms_norm_eps", default: 1e-6))
        a.max_seq_len = try r.int("max_position_embeddings", min: 1, default: 32768)
        a.enable_weight_tying = try r.bool("tie_word_embeddings", default: false)
        a.init_std = Float(try r.double("initializer_range", default: 0.02))

        // RoPE: plain rotate-half with rope_theta; no scaling variants.
        var theta = try r.optionalDouble("rope_theta")
        if let rp = r.present("rope_parameters") {  // transformers 5 layout
            guard let o = rp as? [String: Any] else { throw HFConfigError(source: source, key: "rope_parameters", "expected an object") }
            if let t = o["rope_type"] as? String, t != "default" {
                throw HFConfigError(source: source, key: "rope_parameters.rope_type", "\"\(t)\" is not supported (only \"default\")")
            }
            if theta == nil, let t = o["rope_theta"].flatMap(JSONValue.double) { theta = t }
        }
        a.rope_theta = Float(theta ?? 10000.0)
        if let rs = r.present("rope_scaling") {
            let o = rs as? [String: Any]
            let type = o?["rope_type"] as? String ?? o?["type"] as? String
            if type != "default" {
                throw HFConfigError(source: source, key: "rope_scaling",
                                    "rope scaling \(JSONValue.text(rs)) is not supported; only null or rope_type \"default\"")
            }
        }

        // Features that change the computation and are not implemented.
        if try r.bool("attention_bias", default: false) {
            throw HFConfigError(source: source, key: "attention_bias", "true is not supported (q/k/v/o projections have no bias here)")
        }
        let act = try r.string("hidden_act", default: "silu")
        guard act == "silu" else {
            throw HFConfigError(source: source, key: "hidden_act", "\"\(act)\" is not supported (SwiGLU uses silu)")
        }
        if try r.bool("use_sliding_window", default: false) {
            throw HFConfigError(source: source, key: "use_sliding_window", "true is not supported (full causal attention only)")
        }
        if let lt = r.present("layer_types") {
            guard let list = lt as? [Any] else { throw HFConfigError(source: source, key: "layer_types", "expected an array") }
            for (i, t) in list.enumerated() where t as? String != "full_attention" {
                throw HFConfigError(source: source, key: "layer_types", "layer \(i) is \(JSONValue.text(t)); only \"full_attention\" is supported")
            }
        }

        if moe {
            a.moe_enabled = true
            var m = MoEArgs()
            // transformers 5 writes num_local_experts (4.x: num_experts); either name, never two different counts.
            let legacy = try r.optionalInt("num_experts", min: 1), current = try r.optionalInt("num_local_experts", min: 1)
            if let l = legacy, let c = current, l != c {
                throw HFConfigError(source: source, key: "num_local_experts", "\(c) disagrees with num_experts \(l)")
            }
            m.num_experts = current ?? legacy ?? 128
            m.top_k = try r.int("num_experts_per_tok", min: 1, default: 8)
            guard m.top_k <= m.num_experts else {
                throw HFConfigError(source: source, key: "num_experts_per_tok", "\(m.top_k) exceeds num_experts \(m.num_experts)")
            }
            m.hidden_dim = try r.int("moe_intermediate_size", min: 1, default: 768)
            m.route_norm = try r.bool("norm_topk_prob", default: false)
            m.score_func = .softmax
            m.route_scale = 1
            m.num_shared_experts = 0
            a.moe = m
            a.decoder_sparse_step = try r.int("decoder_sparse_step", min: 1, default: 1)
            if let mlo = r.present("mlp_only_layers") {
                guard let list = mlo as? [Any] else { throw HFConfigError(source: source, key: "mlp_only_layers", "expected an array of layer indices") }
                if !list.isEmpty {
                    throw HFConfigError(source: source, key: "mlp_only_layers",
                                        "\(JSONValue.text(mlo)) is not supported: only an empty list (the dense/MoE layer pattern is given by decoder_sparse_step)")
                }
            }
            if let n = obj["shared_expert_intermediate_size"].flatMap(JSONValue.int), n > 0 {
                throw HFConfigError(source: source, key: "shared_expert_intermediate_size", "shared experts are not part of Qwen3-MoE")
            }
        } else {
            a.moe_enabled = false
            a.decoder_sparse_step = 1
        }
        return a
    }

    /// HF config.json contents for these args. Throws when the args use options HF's Qwen3 /
    /// Qwen3-MoE cannot express (sigmoid routing, route_scale != 1, shared experts).
    /// `load_balance_coeff` is not exported (the expert bias has no HF counterpart).
    public static func export(_ a: Qwen3ModelArgs) throws -> [String: Any] {
        let src = "export"
        // Through the Float's shortest text: 1e-06, not Double(Float(1e-6)) = 9.999999974752427e-07.
        func d(_ f: Float) -> Double { Double("\(f)") ?? Double(f) }
        var o: [String: Any] = [
            "vocab_size": a.vocab_size,
            "hidden_size": a.dim,
            "num_hidden_layers": a.n_layers,
            "num_attention_heads": a.n_heads,
            "num_key_value_heads": a.n_kv_heads,
            "head_dim": a.head_dim,
            "intermediate_size": a.hidden_dim,
            "hidden_act": "silu",
            "rms_norm_eps": d(a.norm_eps),
            "rope_theta": d(a.rope_theta),
            "rope_scaling": NSNull(),
            "max_position_embeddings": a.max_seq_len,
            "tie_word_embeddings": a.enable_weight_tying,
            "initializer_range": d(a.init_std),
            "attention_bias": false,
            "attention_dropout": 0.0,
            "use_sliding_window": false,
            "sliding_window": NSNull(),
            "max_window_layers": a.n_layers,
            "use_cache": true,
            "torch_dtype": "float32",
        ]
        if a.moe_enabled {
            let m = a.moe
            guard m.score_func == .softmax else {
                throw HFConfigError(source: src, key: "moe.score_func", "sigmoid routing has no Qwen3MoeForCausalLM equivalent")
            }
            guard m.route_scale == 1 else {
                throw HFConfigError(source: src, key: "moe.route_scale", "\(m.route_scale) has no Qwen3MoeForCausalLM equivalent (must be 1)")
            }
            guard m.num_shared_experts == 0 else {
                throw HFConfigError(source: src, key: "moe.num_shared_experts", "shared experts have no Qwen3MoeForCausalLM equivalent")
            }
            o["architectures"] = [HFArchitecture.qwen3Moe.rawValue]
            o["model_type"] = HFArchitecture.qwen3Moe.modelType
            o["num_experts"] = m.num_experts
            o["num_experts_per_tok"] = m.top_k
            o["moe_intermediate_size"] = m.hidden_dim
            o["norm_topk_prob"] = m.route_norm
            o["decoder_sparse_step"] = max(a.decoder_sparse_step, 1)
            o["mlp_only_layers"] = [Int]()
            o["output_router_logits"] = false
            o["router_aux_loss_coef"] = 0.001
        } else {
            o["architectures"] = [HFArchitecture.qwen3.rawValue]
            o["model_type"] = HFArchitecture.qwen3.modelType
            o["layer_types"] = Array(repeating: "full_attention", count: a.n_layers)
        }
        return o
    }

    /// Pretty-printed config.json text (keys sorted), ending with a newline.
    public static func exportJSON(_ a: Qwen3ModelArgs) throws -> Data {
        try JSONValue.prettyData(export(a))
    }

    /// Writes `config.json` into `folder` (created if needed).
    public static func write(_ a: Qwen3ModelArgs, toFolder folder: String) throws {
        let data = try exportJSON(a)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = (folder as NSString).appendingPathComponent("config.json")
        do {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw HFConfigError(source: path, key: nil, "cannot write: \(error)")
        }
    }

    /// Typed field access with errors naming the key.
    struct Reader {
        let obj: [String: Any]
        let source: String

        func present(_ key: String) -> Any? {
            guard let v = obj[key], !(v is NSNull) else { return nil }
            return v
        }

        func int(_ key: String, min: Int, default def: Int? = nil) throws -> Int {
            guard let v = present(key) else {
                if let d = def { return d }
                throw HFConfigError(source: source, key: key, "missing (required)")
            }
            guard let i = JSONValue.int(v) else {
                throw HFConfigError(source: source, key: key, "expected an integer, got \(JSONValue.describe(v))")
            }
            guard i >= min else { throw HFConfigError(source: source, key: key, "\(i) is out of range (must be >= \(min))") }
            return i
        }

        func optionalInt(_ key: String, min: Int) throws -> Int? {
            guard present(key) != nil else { return nil }
            return try int(key, min: min)
        }

        func optionalDouble(_ key: String) throws -> Double? {
            guard let v = present(key) else { return nil }
            guard let d = JSONValue.double(v), d.isFinite else {
                throw HFConfigError(source: source, key: key, "expected a number, got \(JSONValue.describe(v))")
            }
            return d
        }

        func double(_ key: String, default def: Double) throws -> Double {
            try optionalDouble(key) ?? def
        }

        func bool(_ key: String, default def: Bool) throws -> Bool {
            guard let v = present(key) else { return def }
            guard let b = JSONValue.bool(v) else {
                throw HFConfigError(source: source, key: key, "expected true or false, got \(JSONValue.describe(v))")
            }
            return b
        }

        func string(_ key: String, default def: String) throws -> String {
            guard let v = present(key) else { return def }
            guard let s = v as? String else {
                throw HFConfigError(source: source, key: key, "expected a string, got \(JSONValue.describe(v))")
            }
            return s
        }
    }
}
