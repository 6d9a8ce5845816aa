import Foundation
import Model
import Tensor

/// The model `titan generate` decodes with, whole in one process, from the same sources training starts from
/// (checkpoint.initial_load_path): an HF folder (initial_load_in_hf: architecture from its config.json), a distributed
/// checkpoint folder (its latest step) or step folder (architecture from its metadata, resharded from any topology
/// into one), or, with neither, the config's architecture initialised from training.seed.
public enum GenerationWeights {
    /// A model that decodes: a family implementing `IncrementalDecoding`, with its parameters.
    public typealias Decoder = IncrementalDecoding & ParallelizableModel

    public static func load(_ config: JobConfig, log: (String) -> Void = { _ in }) throws -> Decoder {
        let built: TrainableModel
        if config.checkpoint.initial_load_in_hf, let path = config.checkpoint.initial_load_path {
            var (args, sd, skipped) = try HFCheckpoint.loadModel(folder: path)
            args.moe.use_grouped_mm = config.model.modelArgs.moe.use_grouped_mm   // how experts run is the config's (as training)
            built = try args.build(materialize: false)
            try built.load(stateDict: sd, allowMissingBuffers: true)
            if let skipped { log(skipped) }
            log("weights: HF folder \(path) (\(args.family): \(args.summary))")
        } else if let path = config.checkpoint.initial_load_path {
            let step = try Checkpoint.resolveStepFolder(path)
            var (meta, sd) = try Checkpoint.assembleFull(stepFolder: step)
            meta.model_args.moe.use_grouped_mm = config.model.modelArgs.moe.use_grouped_mm
            built = try meta.model_args.build(materialize: false)
            try built.load(stateDict: sd, allowMissingBuffers: true)
            log("weights: checkpoint \(step) (step \(meta.step), saved on \(meta.topology.world_size) ranks: \(meta.model_args.family): \(meta.model_args.summary))")
        } else {
            built = try config.model.modelArgs.build(seed: UInt64(config.training.seed))
            log("weights: none given (checkpoint.initial_load_path): \(config.model.flavor) initialised from training.seed \(config.training.seed)")
        }
        guard let model = built as? Decoder else {
            throw GenerateError.unsupportedFamily(String(describing: type(of: built)))
        }
        // Mixed precision as training runs it on one rank: parameters at bfloat16 values, matmuls on bfloat16 inputs.
        if config.training.mixed_precision_param == .bfloat16 {
            for p in model.parameters { round_bf16(p.value.data, into: p.value.data, p.count) }
        }
        BLAS.matmulPrecision = config.training.mixed_precision_param
        return model
    }
}

public enum GenerateError: Error, CustomStringConvertible {
    case unsupportedFamily(String)
    public var description: String {
        switch self {
        case .unsupportedFamily(let t):
            return "\(t) does not implement incremental decoding yet (IncrementalDecoding: Sources/Model/Core/IncrementalDecoding.swift)"
        }
    }
}
