import Config
import Foundation
import Model
import Tensor

/// The model `titan generate` decodes with, whole in one process, from the same sources training starts from
/// (checkpoint.initial_load_path): an HF folder (initial_load_in_hf: architecture from its config.json), a distributed
/// checkpoint folder (its latest step) or step folder (architecture from its metadata, resharded from any topology
/// into one), or, with neither, the config's architecture initialised from training.seed. Any family; decoding needs
/// the family's `IncrementalDecoding`.
public enum GenerationWeights {
    public static func load(_ config: JobConfig, log: (String) -> Void = { _ in }) throws -> TrainableModel & IncrementalDecoding {
        var args: ModelArgs
        var stateDict: StateDict?
        if config.checkpoint.initial_load_in_hf, let path = config.checkpoint.initial_load_path {
            let (a, sd, skipped) = try HFCheckpoint.loadModel(folder: path)
            (args, stateDict) = (a, sd)
            if let skipped { log(skipped) }
            log("weights: HF folder \(path) (\(a.family): \(a.summary))")
        } else if let path = config.checkpoint.initial_load_path {
            let step = try Checkpoint.resolveStepFolder(path)
            let (meta, sd) = try Checkpoint.assembleFull(stepFolder: step)
            (args, stateDict) = (meta.model_args, sd)
            log("weights: checkpoint \(step) (step \(meta.step), saved on \(meta.topology.world_size) ranks; \(args.family): \(args.summary))")
        } else {
            args = config.model.modelArgs
            log("weights: none given (checkpoint.initial_load_path): \(config.model.name)/\(config.model.flavor) initialised from training.seed \(config.training.seed)")
        }
        args.moe.use_grouped_mm = config.model.modelArgs.moe.use_grouped_mm   // how experts run is the config's (as training)
        let built = try args.build(seed: UInt64(config.training.seed), materialize: stateDict == nil)
        if let stateDict { try built.load(stateDict: stateDict, allowMissingBuffers: true) }
        guard let model = built as? TrainableModel & IncrementalDecoding else {
            throw ConfigError.invalid(key: "model.name", reason: "model family \(args.family) has no incremental decoding yet "
                + "(IncrementalDecoding, Model/Core/IncrementalDecoding.swift): titan generate cannot run it")
        }
        // Mixed precision as training runs it on one rank: parameters at bfloat16 values, matmuls on bfloat16 inputs.
        if config.training.mixed_precision_param == .bfloat16 {
            for p in model.parameters { round_bf16(p.value.data, into: p.value.data, p.count) }
        }
        BLAS.matmulPrecision = config.training.mixed_precision_param
        return model
    }
}
