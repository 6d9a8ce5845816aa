// Named training configs (torchtitan's config functions) and the model-flavor lookup.

import Config
import Model

// MARK: - model flavors

/// Architecture args of a named flavor of `module`, or nil. Flavors are owned by the Model
/// target (`ModelFlavors`); this is the one place Train maps (module, flavor) to them.
public func modelFlavor(module: String, flavor: String) -> Qwen3ModelArgs? {
    guard module == "qwen3" else { return nil }
    return ModelFlavors.all[flavor]
}

public func modelFlavorNames(module: String) -> [String] {
    module == "qwen3" ? ModelFlavors.names : []
}

// MARK: - training configs

/// A JobConfig + flavor with the small-CPU training defaults shared by the debug configs.
private func debugTrainerConfig(flavor: String) -> TrainerConfig {
    var j = JobConfig()
    j.job.description = "qwen3 \(flavor)"
    j.model.name = "qwen3"
    j.model.flavor = flavor
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
    return TrainerConfig(job: j, model_args: modelFlavor(module: "qwen3", flavor: flavor)!)
}

/// The registry `titan train` consults for `--module M --config C`.
public func trainerConfigRegistry() -> ConfigRegistry<TrainerConfig> {
    var r = ConfigRegistry<TrainerConfig>()
    r.register(module: "qwen3", name: "debugmodel", doc: "dense 2-layer D=64, seq 64, trains in seconds on CPU") {
        debugTrainerConfig(flavor: "debugmodel")
    }
    r.register(module: "qwen3", name: "debugmodel_moe", doc: "MoE 2-layer D=64, 8 experts top-2, seq 64, trains in seconds on CPU") {
        debugTrainerConfig(flavor: "debugmodel_moe")
    }
    r.register(module: "qwen3", name: "bench_moe", doc: "MoE 4-layer D=256, 16 experts top-2, seq 256, local batch 16") {
        var c = debugTrainerConfig(flavor: "bench_moe")
        c.job.job.description = "qwen3 bench_moe"
        c.job.training.seq_len = 256
        c.job.training.local_batch_size = 16
        c.job.training.steps = 10
        c.job.optimizer.lr = 8e-4
        return c
    }
    return r
}
