// The full config of `titan train`: torchtitan's JobConfig plus the model architecture args.
// Config (the generic mechanism) cannot see Model, so the bridge lives here: the JobConfig
// field table is lifted under `\.job`, and the Qwen3ModelArgs table is added under the keys
// `model.<field>` and `model.moe.<field>` (same names as the Swift/torchtitan fields):
//
//   --model.flavor debugmodel_moe   base architecture (a named flavor)
//   --model.dim 128                 then any architecture field on top of it
//   --model.moe.num_experts 16

import Config
import Model

extension ScoreFunction: ConfigEnum {}

public struct TrainerConfig: Equatable {
    public var job: JobConfig
    /// Architecture of the model to build. Starts as the flavor's args; `--model.*` overrides apply on top.
    public var model_args: Qwen3ModelArgs

    public init(job: JobConfig = JobConfig(), model_args: Qwen3ModelArgs = Qwen3ModelArgs()) {
        self.job = job
        self.model_args = model_args
    }

    /// Architecture fields, keyed `model.*`; the flavor picks their starting values.
    public static var modelArgsSchema: ConfigSchema<Qwen3ModelArgs> {
        typealias F = ConfigField<Qwen3ModelArgs>
        return ConfigSchema<Qwen3ModelArgs>([
            F("model.vocab_size", \.vocab_size, "vocabulary size (synthetic tokens are < this)"),
            F("model.dim", \.dim, "model width D"),
            F("model.n_layers", \.n_layers, "decoder layers"),
            F("model.n_heads", \.n_heads, "query heads"),
            F("model.n_kv_heads", \.n_kv_heads, "key/value heads (GQA)"),
            F("model.head_dim", \.head_dim, "per-head width"),
            F("model.hidden_dim", \.hidden_dim, "dense SwiGLU hidden size (HF intermediate_size)"),
            F("model.norm_eps", \.norm_eps, "RMSNorm epsilon"),
            F("model.rope_theta", \.rope_theta, "RoPE base"),
            F("model.max_seq_len", \.max_seq_len, "longest supported sequence"),
            F("model.enable_weight_tying", \.enable_weight_tying, "share tok_embeddings and output weights"),
            F("model.init_std", \.init_std, "std of the normal init of weight matrices"),
            F("model.moe_enabled", \.moe_enabled, "use MoE feed-forward blocks"),
            F("model.decoder_sparse_step", \.decoder_sparse_step, "layer i is MoE when (i+1) % step == 0"),
            F("model.moe.num_experts", \.moe.num_experts, "routed experts per MoE layer"),
            F("model.moe.top_k", \.moe.top_k, "experts per token"),
            F("model.moe.hidden_dim", \.moe.hidden_dim, "routed expert hidden size (HF moe_intermediate_size)"),
            F("model.moe.score_func", \.moe.score_func, "router score function"),
            F("model.moe.route_norm", \.moe.route_norm, "renormalize top-k scores (HF norm_topk_prob)"),
            F("model.moe.route_scale", \.moe.route_scale, "multiply routing weights by this"),
            F("model.moe.num_shared_experts", \.moe.num_shared_experts, "always-on shared experts"),
            F("model.moe.load_balance_coeff", \.moe.load_balance_coeff, "aux-loss-free expert bias step (0: off)"),
            F("model.moe.use_grouped_mm", \.moe.use_grouped_mm, "experts run concurrently on the kernel threads instead of a loop"),
        ])
    }

    /// Every overridable field: JobConfig's table, with the architecture fields right after model.flavor.
    public static var schema: ConfigSchema<TrainerConfig> {
        let jobFields = JobConfig.schema.lifted(\TrainerConfig.job)
        let modelFields = modelArgsSchema.lifted(\TrainerConfig.model_args)
        var fields = jobFields.fields
        let insertAt = (fields.firstIndex { $0.key == "model.flavor" } ?? fields.count - 1) + 1
        fields.insert(contentsOf: modelFields.fields, at: insertAt)
        return ConfigSchema(fields, sectionDocs: jobFields.sectionDocs.merging(["model.moe": "mixture-of-experts options"]) { a, _ in a })
    }

    public func validate() throws {
        try job.validate()
        let m = model_args
        func bad(_ key: String, _ reason: String) -> ConfigError { .invalid(key: key, reason: reason) }
        if m.vocab_size < 1 { throw bad("model.vocab_size", "must be >= 1") }
        if m.n_heads < 1 || m.n_kv_heads < 1 || m.n_heads % m.n_kv_heads != 0 {
            throw bad("model.n_kv_heads", "must divide model.n_heads (\(m.n_heads)), got \(m.n_kv_heads)")
        }
        if job.training.seq_len > m.max_seq_len {
            throw bad("training.seq_len", "\(job.training.seq_len) exceeds model.max_seq_len \(m.max_seq_len)")
        }
        if m.moe_enabled {
            if m.moe.top_k < 1 || m.moe.top_k > m.moe.num_experts {
                throw bad("model.moe.top_k", "must be in 1...model.moe.num_experts (\(m.moe.num_experts)), got \(m.moe.top_k)")
            }
            let ep = job.parallelism.expert_parallel_degree
            if m.moe.num_experts % ep != 0 {
                throw bad("parallelism.expert_parallel_degree", "\(ep) must divide model.moe.num_experts (\(m.moe.num_experts))")
            }
        }
    }

    /// Resolved config as JSON for DUMP/config.json (stable key order).
    public var json: String { TrainerConfig.schema.json(of: self) }
}

/// What the command line asked for.
public enum TrainerConfigRequest {
    case run(TrainerConfig)
    /// `--help`: print this text and exit 0.
    case help(String)
}

extension TrainerConfig {
    public static let defaultModule = "qwen3"
    public static let defaultConfigName = "debugmodel_moe"

    /// Entry point for `titan train` arguments (everything after the subcommand):
    ///   [--module M] [--config C] [--section.field value | --section.field=value | --bool_flag]... [--help]
    /// 1. the registry function for (module, config) builds the base config;
    /// 2. `--model.name` / `--model.flavor`, if given, are applied and the architecture is
    ///    reloaded from that flavor (so `--model.flavor X --model.dim 8` means "X with dim 8");
    /// 3. every other override is applied in command-line order; 4. validate().
    public static func resolve(arguments: [String],
                               registry: ConfigRegistry<TrainerConfig> = trainerConfigRegistry()) throws -> TrainerConfigRequest {
        let schema = TrainerConfig.schema
        let cl = try schema.parseCommandLine(arguments)
        let module = cl.module ?? defaultModule
        let configName = cl.config ?? defaultConfigName
        var cfg = try registry.make(module: module, name: configName)

        let selectsModel: (ConfigAssignment) -> Bool = { $0.key == "model.name" || $0.key == "model.flavor" }
        let modelSelection = cl.assignments.filter(selectsModel)
        if !modelSelection.isEmpty {
            try schema.apply(modelSelection, to: &cfg)
            guard let args = modelFlavor(module: cfg.job.model.name, flavor: cfg.job.model.flavor) else {
                let names = modelFlavorNames(module: cfg.job.model.name)
                let best = names.min { editDistance(cfg.job.model.flavor, $0) < editDistance(cfg.job.model.flavor, $1) }
                throw ConfigError.invalid(key: "model.flavor",
                    reason: "no flavor '\(cfg.job.model.flavor)' in model '\(cfg.job.model.name)'"
                        + (best.map { "; did you mean '\($0)'?" } ?? "")
                        + " (available: \(names.joined(separator: ", ")))")
            }
            cfg.model_args = args
        }
        try schema.apply(cl.assignments.filter { !selectsModel($0) }, to: &cfg)

        if cl.help {
            let header = """
            usage: titan train [--module M --config C] [--section.field value]...
            Booleans may be given bare (--checkpoint.enable) or as true/false; optional values accept none.
            Defaults below are those of --module \(module) --config \(configName) (with the overrides given).

            registered configs:
            \(registry.listing)
            """
            return .help(schema.helpText(defaults: cfg, header: header))
        }
        try cfg.validate()
        return .run(cfg)
    }
}
