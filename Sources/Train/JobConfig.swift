// The job config of `titan train` (torchtitan's JobConfig): one section per component, each declared beside the
// component it builds (model: Model/ModelConfig.swift, parallelism: Parallel/Parallelism.swift, optimizer,
// lr_scheduler, checkpoint, dataloader, metrics, profiling, fault, validation: Train/Components/, generate:
// Train/Generation/), plus the trainer's own sections below.
// `JobConfig.resolve` turns a command line into a validated config.

import Collectives
import Config
import Model
import Parallel
import Tensor

/// [job]: run identity and folder.
public struct JobSection: ConfigSection {
    /// Run folder: config.json, metrics.jsonl, logs/, checkpoint/ live under it.
    public var dump_folder = "./outputs"
    public var description = "default job"
    public init() {}

    public static let doc = "run identity and folder"
    public static let fields: [ConfigField<JobSection>] = [
        ConfigField("dump_folder", \.dump_folder, "run folder: config.json, metrics.jsonl, logs/, checkpoint/"),
        ConfigField("description", \.description, "free text describing the job"),
    ]
}

extension Precision: ConfigEnum {}

/// [training]: steps, batch and sequence shape, seed, clipping, mixed precision.
public struct TrainingConfig: ConfigSection {
    public var steps = 10
    /// Sequences per data-parallel rank per micro-batch.
    public var local_batch_size = 8
    /// Sequences per step over every rank; -1 = local_batch_size × the data-parallel degree. Larger: gradient
    /// accumulation over global / (local × dp) micro-batches.
    public var global_batch_size = -1
    public var seq_len = 2048
    /// Seeds weight initialisation and the synthetic dataset.
    public var seed = 0
    /// Global gradient-norm clip (torch clip_grad_norm_); <= 0 disables clipping.
    public var max_norm = 1.0
    /// torchtitan's mixed precision (FSDP2 MixedPrecisionPolicy + autocast): bfloat16 = parameters all-gathered and used
    /// as bfloat16, matmuls on bfloat16 inputs accumulating in fp32, expert-parallel token rows bfloat16; the master
    /// parameters, gradients and optimizer state stay fp32.
    public var mixed_precision_param = Precision.float32
    /// The format gradients are reduce-scattered (and all-reduced over replicas) in.
    public var mixed_precision_reduce = Precision.float32
    public init() {}

    public static let doc = "steps, batch and sequence shape"
    public static let fields: [ConfigField<TrainingConfig>] = [
        ConfigField("steps", \.steps, "number of optimizer steps"),
        ConfigField("local_batch_size", \.local_batch_size, "sequences per data-parallel rank per micro-batch"),
        ConfigField("global_batch_size", \.global_batch_size, "sequences per step over every rank (-1: local × data-parallel degree; larger: gradient accumulation)"),
        ConfigField("seq_len", \.seq_len, "tokens per sequence (L); windows are L+1 tokens"),
        ConfigField("seed", \.seed, "seed for weight init and the synthetic dataset"),
        ConfigField("max_norm", \.max_norm, "clip the global gradient norm to this (<= 0: no clipping)"),
        ConfigField("mixed_precision_param", \.mixed_precision_param,
                    "parameters all-gathered and computed in (bfloat16: matmuls on bfloat16 inputs with fp32 accumulation, bfloat16 expert dispatch; master weights stay fp32)"),
        ConfigField("mixed_precision_reduce", \.mixed_precision_reduce, "format of the gradient reduce-scatter / all-reduce"),
    ]

    public func validate() throws {
        if steps < 1 { throw ConfigError.invalid(key: "steps", reason: "must be >= 1, got \(steps)") }
        if local_batch_size < 1 { throw ConfigError.invalid(key: "local_batch_size", reason: "must be >= 1, got \(local_batch_size)") }
        if seq_len < 1 { throw ConfigError.invalid(key: "seq_len", reason: "must be >= 1, got \(seq_len)") }
        if global_batch_size < 1 && global_batch_size != -1 {
            throw ConfigError.invalid(key: "global_batch_size", reason: "must be >= 1, or -1 for local_batch_size × the data-parallel degree")
        }
    }
}

/// [debug]
public struct DebugConfig: ConfigSection {
    public var deterministic = false
    public init() {}

    public static let doc = "reproducibility"
    public static let fields: [ConfigField<DebugConfig>] = [
        ConfigField("deterministic", \.deterministic,
                    "the same bits for any number of kernel threads and with or without idle-CPU lending (GEMMs are never split: slower with several threads per rank)"),
    ]
}

/// [comm]: collective timeouts and the flight recorder (torchtitan's names).
public struct CommConfig: ConfigSection {
    /// Until the first step completes (start-up, compilation-like first steps): long.
    public var init_timeout_seconds = 300.0
    /// After the first step: a rank silent this long is hung.
    public var timeout_seconds = 100.0
    /// Collectives each rank's flight recorder keeps (DUMP/flight/rank-K.json when the job fails); 0: off.
    public var trace_buf_size = 20000
    /// Collective algorithms: ring (flat), hierarchical (host-aware), auto (hierarchical for groups spanning hosts).
    public var algorithm = CollectiveAlgorithm.auto
    public init() {}

    public static let doc = "collectives"
    public static let fields: [ConfigField<CommConfig>] = [
        ConfigField("init_timeout_seconds", \.init_timeout_seconds, "timeout of every collective until the first step completes, and while a checkpoint is written"),
        ConfigField("timeout_seconds", \.timeout_seconds, "timeout of every collective after the first step"),
        ConfigField("trace_buf_size", \.trace_buf_size, "collectives the flight recorder keeps per rank (0: off)"),
        ConfigField("algorithm", \.algorithm, "collective algorithms: ring (flat), hierarchical (cross each host boundary once), auto (hierarchical when a group spans several hosts)"),
    ]

    public func validate() throws {
        if init_timeout_seconds <= 0 { throw ConfigError.invalid(key: "init_timeout_seconds", reason: "must be > 0") }
        if timeout_seconds <= 0 { throw ConfigError.invalid(key: "timeout_seconds", reason: "must be > 0") }
        if trace_buf_size < 0 { throw ConfigError.invalid(key: "trace_buf_size", reason: "must be >= 0") }
    }
}

extension CollectiveAlgorithm: ConfigEnum {}

public struct JobConfig: Equatable {
    public var job = JobSection()
    public var model = ModelConfig()
    public var training = TrainingConfig()
    public var optimizer = OptimizerConfig()
    public var lr_scheduler = LRSchedulerConfig()
    public var parallelism = ParallelismConfig()
    public var checkpoint = CheckpointConfig()
    public var dataloader = DataLoaderConfig()
    public var debug = DebugConfig()
    public var profiling = ProfilingConfig()
    public var comm = CommConfig()
    public var metrics = MetricsConfig()
    public var fault = FaultConfig()
    public var validation = ValidationConfig()
    public var generate = GenerateConfig()
    public init() {}

    /// Every overridable field, section by section: the order of --help.
    public static let schema = ConfigSchema<JobConfig>(sections: [
        .section("job", \.job),
        .section("model", \.model),
        .section("training", \.training),
        .section("optimizer", \.optimizer),
        .section("lr_scheduler", \.lr_scheduler),
        .section("parallelism", \.parallelism),
        .section("checkpoint", \.checkpoint),
        .section("dataloader", \.dataloader),
        .section("debug", \.debug),
        .section("profiling", \.profiling),
        .section("comm", \.comm),
        .section("metrics", \.metrics),
        .section("fault", \.fault),
        .section("validation", \.validation),
        .section("generate", \.generate),
    ])

    /// Every section's own rules, then the rules between sections (the degrees: `dims(worldSize:)`).
    public func validate() throws {
        try Self.schema.validate(self)
        if training.seq_len > model.modelArgs.max_seq_len {
            throw ConfigError.invalid(key: "training.seq_len", reason: "\(training.seq_len) exceeds model.max_seq_len \(model.modelArgs.max_seq_len)")
        }
        if validation.seq_len > model.modelArgs.max_seq_len {
            throw ConfigError.invalid(key: "validation.seq_len", reason: "\(validation.seq_len) exceeds model.max_seq_len \(model.modelArgs.max_seq_len)")
        }
    }

    /// Micro-batches per step on `dims`: training.global_batch_size over local_batch_size × the data-parallel degree,
    /// which must divide it.
    public func microBatches(_ dims: ParallelDims) throws -> Int {
        let perMicroBatch = training.local_batch_size * dims.world
        guard training.global_batch_size != -1 else { return 1 }
        guard training.global_batch_size % perMicroBatch == 0 else {
            throw ConfigError.invalid(key: "training.global_batch_size",
                reason: "\(training.global_batch_size) is not a multiple of local_batch_size (\(training.local_batch_size)) × the data-parallel degree (\(dims.world)) = \(perMicroBatch)")
        }
        return training.global_batch_size / perMicroBatch
    }

    /// The parallelism degrees for `worldSize` ranks and this model, checked; errors name the parallelism key.
    public func dims(worldSize: Int) throws -> ParallelDims {
        do {
            return try parallelism.dims(worldSize: worldSize, numExperts: model.modelArgs.routedExperts)
        } catch let ParallelError.invalidDegrees(key, reason) {
            throw ConfigError.invalid(key: key, reason: reason)
        }
    }

    /// Resolved config as JSON for DUMP/config.json.
    public func json() throws -> String { try Self.schema.json(of: self) }
}

/// What the command line asked for.
public enum JobConfigRequest {
    case run(JobConfig)
    /// `--help`: print this text and exit 0.
    case help(String)
}

extension JobConfig {
    public static let defaultModule = "qwen3"
    public static let defaultConfigName = "debugmodel_moe"

    /// Entry point for `titan train` arguments (everything after the subcommand):
    ///   [--module M] [--config C] [--section.field value | --section.field=value | --bool_flag]... [--help]
    /// 1. the registry function for (module, config) builds the base config;
    /// 2. `--model.name` / `--model.flavor`, if given, are applied and the architecture is reloaded from that flavor
    ///    (so `--model.flavor X --model.dim 8` means "X with dim 8");
    /// 3. the topology's degrees, if any, replace the config's (its expert-parallel degree only for a model with
    ///    routed experts, so a dense model runs on any topology);
    /// 4. every other override is applied in command-line order; 5. validate, the degrees against `worldSize` ranks
    ///    too, and write data_parallel_shard_degree -1 as the number it stands for.
    public static func resolve(arguments: [String], topology: ParallelismConfig? = nil, worldSize: Int = 1,
                               registry: ConfigRegistry<JobConfig> = jobConfigRegistry()) throws -> JobConfigRequest {
        let cl = try schema.parseCommandLine(arguments)
        let module = cl.module ?? defaultModule
        let configName = cl.config ?? defaultConfigName
        var cfg = try registry.make(module: module, name: configName)

        let selectsModel: (ConfigAssignment) -> Bool = { $0.key == "model.name" || $0.key == "model.flavor" }
        let modelSelection = cl.assignments.filter(selectsModel)
        if !modelSelection.isEmpty {
            try schema.apply(modelSelection, to: &cfg)
            do { cfg.model = try cfg.model.withFlavorArgs() } catch let ConfigError.invalid(key, reason) {
                throw ConfigError.invalid(key: "model." + key, reason: reason)
            }
        }
        if let t = topology {
            cfg.parallelism.data_parallel_replicate_degree = t.data_parallel_replicate_degree
            cfg.parallelism.data_parallel_shard_degree = t.data_parallel_shard_degree
            if cfg.model.modelArgs.hasMoE { cfg.parallelism.expert_parallel_degree = t.expert_parallel_degree }
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
        let dims = try cfg.dims(worldSize: worldSize)
        _ = try cfg.microBatches(dims)
        cfg.parallelism.data_parallel_shard_degree = dims.shard
        return .run(cfg)
    }
}

// MARK: - named configs (torchtitan's config functions)

/// A config of `flavor` with the small-CPU training defaults shared by the debug configs.
private func debugJobConfig(flavor: String) -> JobConfig {
    var j = JobConfig()
    j.job.description = "qwen3 \(flavor)"
    j.model.name = "qwen3"
    j.model.flavor = flavor
    j.model.args = Qwen3Flavors.all[flavor]!
    j.training.steps = 100  // enough for the synthetic corpus's loss to fall from ~7.6 to ~1.2
    j.training.local_batch_size = 4
    j.training.seq_len = 64
    j.training.seed = 0
    j.training.max_norm = 1.0
    j.optimizer.lr = 3e-3
    j.optimizer.weight_decay = 0.1
    j.lr_scheduler.warmup_steps = 5
    j.lr_scheduler.decay_ratio = 0.8
    j.lr_scheduler.decay_type = .linear
    j.lr_scheduler.min_lr_factor = 0.1
    j.checkpoint.interval = 10
    j.dataloader.dataset = .synthetic
    return j
}

/// The registry `titan train` consults for `--module M --config C`.
public func jobConfigRegistry() -> ConfigRegistry<JobConfig> {
    var r = ConfigRegistry<JobConfig>()
    r.register(module: "qwen3", name: "debugmodel", doc: "dense 2-layer D=64, seq 64, trains in seconds on CPU") {
        debugJobConfig(flavor: "debugmodel")
    }
    r.register(module: "qwen3", name: "debugmodel_moe", doc: "MoE 2-layer D=64, 8 experts top-2, seq 64, trains in seconds on CPU") {
        debugJobConfig(flavor: "debugmodel_moe")
    }
    r.register(module: "deepseek_v3", name: "debugmodel",
               doc: "DeepSeek-V3 3-layer D=64 (1 dense), MLA, 8 experts in 4 groups keep 2, top-2, 1 shared, seq 64, trains in seconds on CPU") {
        var c = debugJobConfig(flavor: "debugmodel_moe")
        c.job.description = "deepseek_v3 debugmodel"
        c.model.name = "deepseek_v3"
        c.model.flavor = "debugmodel"
        c.model.deepseek_v3 = DeepSeekV3Flavors.all["debugmodel"]!
        return c
    }
    r.register(module: "deepseek_v3", name: "bench_moe",
               doc: "DeepSeek-V3 4-layer D=256 (1 dense), MLA q_lora 128 kv_lora 64, YaRN, 16 experts in 4 groups keep 2, top-4, seq 256, local batch 16") {
        var c = debugJobConfig(flavor: "bench_moe")
        c.job.description = "deepseek_v3 bench_moe"
        c.model.name = "deepseek_v3"
        c.model.flavor = "bench_moe"
        c.model.deepseek_v3 = DeepSeekV3Flavors.all["bench_moe"]!
        c.training.seq_len = 256
        c.training.local_batch_size = 16
        c.training.steps = 10
        c.optimizer.lr = 8e-4
        return c
    }
    r.register(module: "qwen3", name: "bench_moe", doc: "MoE 4-layer D=256, 16 experts top-2, seq 256, local batch 16") {
        var c = debugJobConfig(flavor: "bench_moe")
        c.job.description = "qwen3 bench_moe"
        c.training.seq_len = 256
        c.training.local_batch_size = 16
        c.training.steps = 10
        c.optimizer.lr = 8e-4
        return c
    }
    return r
}
