import Foundation
import Model
import Tensor

/// The model `titan generate` decodes with, whole in one process, from the same sources training starts from
/// (checkpoint.initial_load_path): an HF folder (initial_load_in_hf: architecture from its config.json), a distributed
/// checkpoint folder (its latest step) or step folder (architecture from its metadata, resharded from any topology
/// into one), or, with neither, the config's architecture initialised from training.seed.
public enum GenerationWeights {
    public static func load(_ config: JobConfig, log: (String) -> Void = { _ in }) throws -> Qwen3Model {
        let model: Qwen3Model
        if config.checkpoint.initial_load_in_hf, let path = config.checkpoint.initial_load_path {
            var (args, sd) = try HFCheckpoint.load(folder: path)
            args.moe.use_grouped_mm = config.model.args.moe.use_grouped_mm   // how experts run is the config's (as training)
            model = try Qwen3Model(args: args, materialize: false)
            try model.load(stateDict: sd, allowMissingBuffers: true)
            log("weights: HF folder \(path) (\(describe(args)))")
        } else if let path = config.checkpoint.initial_load_path {
            let step = try Checkpoint.resolveStepFolder(path)
            var (meta, sd) = try Checkpoint.assembleFull(stepFolder: step)
            meta.model_args.moe.use_grouped_mm = config.model.args.moe.use_grouped_mm
            model = try Qwen3Model(args: meta.model_args, materialize: false)
            try model.load(stateDict: sd, allowMissingBuffers: true)
            log("weights: checkpoint \(step) (step \(meta.step), saved on \(meta.topology.world_size) ranks: \(describe(meta.model_args)))")
        } else {
            model = try Qwen3Model(args: config.model.args, seed: UInt64(config.training.seed))
            log("weights: none given (checkpoint.initial_load_path): \(config.model.flavor) initialised from training.seed \(config.training.seed)")
        }
        // Mixed precision as training runs it on one rank: parameters at bfloat16 values, matmuls on bfloat16 inputs.
        if config.training.mixed_precision_param == .bfloat16 {
            for p in model.parameters { round_bf16(p.value.data, into: p.value.data, p.count) }
        }
        BLAS.matmulPrecision = config.training.mixed_precision_param
        return model
    }

    static func describe(_ a: Qwen3ModelArgs) -> String {
        "\(a.n_layers) layers, dim \(a.dim), vocab \(a.vocab_size)" + (a.moe_enabled ? ", \(a.moe.num_experts) experts top-\(a.moe.top_k)" : ", dense")
    }
}
