// The typed job config, one struct per section, named as torchtitan names them.
// The model architecture fields (model.dim, model.moe.num_experts, ...) are not here: Config
// must not know the Model target, so Train lifts this schema into a bigger one that adds them.

public struct JobSection: Equatable {
    /// Run folder: config.json, metrics.jsonl, logs/, checkpoint/ live under it.
    public var dump_folder: String = "./outputs"
    public var description: String = "default job"
    public init() {}
}

public struct ModelSection: Equatable {
    /// Model module (torchtitan: the model family, e.g. "qwen3").
    public var name: String = "qwen3"
    /// Named architecture within the module (e.g. "debugmodel_moe").
    public var flavor: String = "debugmodel_moe"
    public init() {}
}

public struct TrainingSection: Equatable {
    public var steps: Int = 10
    /// Sequences per data-parallel rank per step.
    public var local_batch_size: Int = 8
    public var seq_len: Int = 2048
    /// Seeds weight initialisation and the synthetic dataset.
    public var seed: Int = 0
    /// Global gradient-norm clip (torch clip_grad_norm_); <= 0 disables clipping.
    public var max_norm: Double = 1.0
    public init() {}
}

public enum OptimizerName: String, ConfigEnum, Equatable {
    case AdamW
}

public struct OptimizerSection: Equatable {
    public var name: OptimizerName = .AdamW
    public var lr: Double = 8e-4
    public var beta1: Double = 0.9
    public var beta2: Double = 0.95
    public var eps: Double = 1e-8
    public var weight_decay: Double = 0.1
    public init() {}
}

public enum LRDecayType: String, ConfigEnum, Equatable {
    case linear, sqrt, cosine
}

public struct LRSchedulerSection: Equatable {
    public var warmup_steps: Int = 200
    /// Fraction of training.steps spent decaying; none = decay over every step after warmup.
    public var decay_ratio: Double? = nil
    public var decay_type: LRDecayType = .linear
    /// The decay ends at lr * min_lr_factor.
    public var min_lr_factor: Double = 0.0
    public init() {}
}

/// torchtitan's fsdp_reshard_after_forward: free gathered parameters after a block's forward (always: least memory;
/// default: all but the last transformer block, whose backward follows at once) or keep them for backward (never: one
/// all-gather per block less).
public enum ReshardAfterForward: String, ConfigEnum, Equatable {
    case `default`, always, never
}

public struct ParallelismSection: Equatable {
    public var data_parallel_replicate_degree: Int = 1
    /// -1 = every rank not used by the other degrees (torchtitan convention).
    public var data_parallel_shard_degree: Int = -1
    public var expert_parallel_degree: Int = 1
    public var fsdp_reshard_after_forward: ReshardAfterForward = .default
    public init() {}
}

public struct CheckpointSection: Equatable {
    public var enable: Bool = false
    /// Relative to job.dump_folder.
    public var folder: String = "checkpoint"
    public var interval: Int = 500
    public var initial_load_path: String? = nil
    public var initial_load_in_hf: Bool = false
    public var last_save_in_hf: Bool = false
    /// Keep only the newest k checkpoints; 0 keeps all.
    public var keep_latest_k: Int = 10
    public init() {}
}

public enum DatasetKind: String, ConfigEnum, Equatable {
    case synthetic, tokens, text
}

public struct DataloaderSection: Equatable {
    public var dataset: DatasetKind = .synthetic
    public var dataset_path: String? = nil
    public var tokenizer_path: String? = nil
    public init() {}
}

public struct DebugSection: Equatable {
    public var deterministic: Bool = false
    public init() {}
}

public struct ProfilingSection: Equatable {
    public var enable_trace: Bool = false
    public init() {}
}

public struct CommSection: Equatable {
    public var timeout_seconds: Double = 300
    public init() {}
}

public struct MetricsSection: Equatable {
    public var log_freq: Int = 1
    public init() {}
}

public struct JobConfig: Equatable {
    public var job = JobSection()
    public var model = ModelSection()
    public var training = TrainingSection()
    public var optimizer = OptimizerSection()
    public var lr_scheduler = LRSchedulerSection()
    public var parallelism = ParallelismSection()
    public var checkpoint = CheckpointSection()
    public var dataloader = DataloaderSection()
    public var debug = DebugSection()
    public var profiling = ProfilingSection()
    public var comm = CommSection()
    public var metrics = MetricsSection()
    public init() {}

    /// The field table. Order here is the order of --help and of config.json.
    public static var schema: ConfigSchema<JobConfig> {
        typealias F = ConfigField<JobConfig>
        return ConfigSchema<JobConfig>([
            F("job.dump_folder", \.job.dump_folder, "run folder: config.json, metrics.jsonl, logs/, checkpoint/"),
            F("job.description", \.job.description, "free text describing the job"),

            F("model.name", \.model.name, "model module, e.g. qwen3"),
            F("model.flavor", \.model.flavor, "named architecture of the module; model.* fields override it"),

            F("training.steps", \.training.steps, "number of optimizer steps"),
            F("training.local_batch_size", \.training.local_batch_size, "sequences per data-parallel rank per step"),
            F("training.seq_len", \.training.seq_len, "tokens per sequence (L); windows are L+1 tokens"),
            F("training.seed", \.training.seed, "seed for weight init and the synthetic dataset"),
            F("training.max_norm", \.training.max_norm, "clip the global gradient norm to this (<= 0: no clipping)"),

            F("optimizer.name", \.optimizer.name, "optimizer"),
            F("optimizer.lr", \.optimizer.lr, "peak learning rate"),
            F("optimizer.beta1", \.optimizer.beta1, "AdamW first-moment decay"),
            F("optimizer.beta2", \.optimizer.beta2, "AdamW second-moment decay"),
            F("optimizer.eps", \.optimizer.eps, "AdamW denominator epsilon"),
            F("optimizer.weight_decay", \.optimizer.weight_decay, "decoupled weight decay"),

            F("lr_scheduler.warmup_steps", \.lr_scheduler.warmup_steps, "linear warmup steps"),
            F("lr_scheduler.decay_ratio", \.lr_scheduler.decay_ratio, "fraction of steps spent decaying (none: all steps after warmup)"),
            F("lr_scheduler.decay_type", \.lr_scheduler.decay_type, "shape of the decay"),
            F("lr_scheduler.min_lr_factor", \.lr_scheduler.min_lr_factor, "final lr = lr * min_lr_factor"),

            F("parallelism.data_parallel_replicate_degree", \.parallelism.data_parallel_replicate_degree, "DDP replicas"),
            F("parallelism.data_parallel_shard_degree", \.parallelism.data_parallel_shard_degree, "FSDP shard degree (-1: all remaining ranks)"),
            F("parallelism.expert_parallel_degree", \.parallelism.expert_parallel_degree, "ranks that split the experts of a layer"),
            F("parallelism.fsdp_reshard_after_forward", \.parallelism.fsdp_reshard_after_forward, "free gathered parameters after forward (always; default keeps the last block) or keep them for backward (never)"),

            F("checkpoint.enable", \.checkpoint.enable, "save checkpoints"),
            F("checkpoint.folder", \.checkpoint.folder, "checkpoint folder, relative to job.dump_folder"),
            F("checkpoint.interval", \.checkpoint.interval, "save every N steps (and at the last step)"),
            F("checkpoint.initial_load_path", \.checkpoint.initial_load_path, "checkpoint (or HF folder) to start from"),
            F("checkpoint.initial_load_in_hf", \.checkpoint.initial_load_in_hf, "initial_load_path is an HF folder (config.json + model.safetensors)"),
            F("checkpoint.last_save_in_hf", \.checkpoint.last_save_in_hf, "also write the final model in HF format"),
            F("checkpoint.keep_latest_k", \.checkpoint.keep_latest_k, "keep the newest k checkpoints (0: all)"),

            F("dataloader.dataset", \.dataloader.dataset, "synthetic (generated from training.seed), tokens (.npy), text (file + tokenizer)"),
            F("dataloader.dataset_path", \.dataloader.dataset_path, "path of the .npy token file or the text file"),
            F("dataloader.tokenizer_path", \.dataloader.tokenizer_path, "HF tokenizer.json for dataset=text (none: byte-level)"),

            F("debug.deterministic", \.debug.deterministic, "bit-for-bit reproducible runs (fixed reduction order)"),
            F("profiling.enable_trace", \.profiling.enable_trace, "write a timing trace of the run"),
            F("comm.timeout_seconds", \.comm.timeout_seconds, "timeout of every collective receive"),
            F("metrics.log_freq", \.metrics.log_freq, "print/log metrics every N steps"),
        ], sectionDocs: [
            "job": "run identity and folder",
            "model": "model family, flavor and architecture",
            "training": "steps, batch and sequence shape",
            "optimizer": "AdamW (torch.optim.AdamW semantics)",
            "lr_scheduler": "linear warmup, stable, decay (torchtitan)",
            "parallelism": "data / expert parallel degrees",
            "checkpoint": "distributed and HF checkpoints",
            "dataloader": "token source",
        ])
    }

    /// Cross-field checks; errors name the offending key.
    public func validate() throws {
        func bad(_ key: String, _ reason: String) -> ConfigError { .invalid(key: key, reason: reason) }
        if training.steps < 1 { throw bad("training.steps", "must be >= 1, got \(training.steps)") }
        if training.local_batch_size < 1 { throw bad("training.local_batch_size", "must be >= 1, got \(training.local_batch_size)") }
        if training.seq_len < 1 { throw bad("training.seq_len", "must be >= 1, got \(training.seq_len)") }
        if optimizer.lr < 0 { throw bad("optimizer.lr", "must be >= 0") }
        if !(0..<1).contains(optimizer.beta1) { throw bad("optimizer.beta1", "must be in [0, 1)") }
        if !(0..<1).contains(optimizer.beta2) { throw bad("optimizer.beta2", "must be in [0, 1)") }
        if optimizer.eps < 0 { throw bad("optimizer.eps", "must be >= 0") }
        if lr_scheduler.warmup_steps < 0 { throw bad("lr_scheduler.warmup_steps", "must be >= 0") }
        if let r = lr_scheduler.decay_ratio, !(0...1).contains(r) {
            throw bad("lr_scheduler.decay_ratio", "must be in [0, 1] or none, got \(r)")
        }
        if !(0...1).contains(lr_scheduler.min_lr_factor) { throw bad("lr_scheduler.min_lr_factor", "must be in [0, 1]") }
        if parallelism.data_parallel_replicate_degree < 1 { throw bad("parallelism.data_parallel_replicate_degree", "must be >= 1") }
        if parallelism.data_parallel_shard_degree < 1 && parallelism.data_parallel_shard_degree != -1 {
            throw bad("parallelism.data_parallel_shard_degree", "must be >= 1 or -1")
        }
        if parallelism.expert_parallel_degree < 1 { throw bad("parallelism.expert_parallel_degree", "must be >= 1") }
        if checkpoint.interval < 1 { throw bad("checkpoint.interval", "must be >= 1") }
        if checkpoint.keep_latest_k < 0 { throw bad("checkpoint.keep_latest_k", "must be >= 0") }
        if checkpoint.initial_load_in_hf && checkpoint.initial_load_path == nil {
            throw bad("checkpoint.initial_load_path", "is required when checkpoint.initial_load_in_hf is true")
        }
        if dataloader.dataset != .synthetic && dataloader.dataset_path == nil {
            throw bad("dataloader.dataset_path", "is required when dataloader.dataset is \(dataloader.dataset.rawValue)")
        }
        if metrics.log_freq < 1 { throw bad("metrics.log_freq", "must be >= 1") }
        if comm.timeout_seconds <= 0 { throw bad("comm.timeout_seconds", "must be > 0") }
    }
}
