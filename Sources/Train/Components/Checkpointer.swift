// The checkpointer (torchtitan's CheckpointManager): where a run starts from (a checkpoint to resume, an HF folder or
// a distributed checkpoint as initial weights, or the seed), periodic atomic saves of the model and optimizer state,
// and the HF export at the end. The on-disk format is CheckpointFormat.swift.

import Collectives
import Config
import Foundation
import Model
import Parallel

/// [checkpoint]
public struct CheckpointConfig: ConfigSection {
    public var enable = false
    /// Relative to job.dump_folder unless absolute.
    public var folder = "checkpoint"
    public var interval = 500
    public var initial_load_path: String? = nil
    public var initial_load_in_hf = false
    public var last_save_in_hf = false
    /// Keep only the newest k checkpoints; 0 keeps all.
    public var keep_latest_k = 10
    public init() {}

    public static let doc = "distributed and HF checkpoints"
    public static let fields: [ConfigField<CheckpointConfig>] = [
        ConfigField("enable", \.enable, "save checkpoints"),
        ConfigField("folder", \.folder, "checkpoint folder, relative to job.dump_folder"),
        ConfigField("interval", \.interval, "save every N steps (and at the last step)"),
        ConfigField("initial_load_path", \.initial_load_path, "checkpoint (or HF folder) to start from"),
        ConfigField("initial_load_in_hf", \.initial_load_in_hf, "initial_load_path is an HF folder (config.json + model.safetensors)"),
        ConfigField("last_save_in_hf", \.last_save_in_hf, "also write the final model in HF format"),
        ConfigField("keep_latest_k", \.keep_latest_k, "keep the newest k checkpoints (0: all)"),
    ]

    public func validate() throws {
        if interval < 1 { throw ConfigError.invalid(key: "interval", reason: "must be >= 1") }
        if keep_latest_k < 0 { throw ConfigError.invalid(key: "keep_latest_k", reason: "must be >= 0") }
        if initial_load_in_hf && initial_load_path == nil {
            throw ConfigError.invalid(key: "initial_load_path", reason: "is required when checkpoint.initial_load_in_hf is true")
        }
    }

    /// The checkpoint folder: `folder` resolved against the run folder (as torchtitan does) unless absolute.
    public func folder(dumpFolder: String) -> String {
        folder.hasPrefix("/") ? folder : (dumpFolder as NSString).appendingPathComponent(folder)
    }
}

public final class Checkpointer {
    public let config: CheckpointConfig
    /// Where checkpoints are saved and resumed from.
    public let folder: String
    let comm: Communicator
    let log: (String) -> Void

    public init(_ config: CheckpointConfig, dumpFolder: String, comm: Communicator, log: @escaping (String) -> Void) {
        self.config = config
        folder = config.folder(dumpFolder: dumpFolder)
        self.comm = comm
        self.log = log
    }

    /// The step folder to resume from (torchtitan: the checkpoint folder's latest, when checkpointing is on), decided
    /// by rank 0 and shared with every rank, so all ranks resume from the same checkpoint (or all start fresh) even
    /// without a shared view of the folder. Collective.
    public func resumeFolder() throws -> String? {
        guard config.enable else { return nil }
        var decision: [UInt8] = []
        if comm.rank == 0 {
            do { decision = Array(("+" + (try Checkpoint.latestStepFolder(in: folder) ?? "")).utf8) }
            catch { decision = Array(("!" + "\(error)").utf8) }
        }
        let text = String(decoding: try comm.world.allGatherBytes(decision)[0], as: UTF8.self)
        if text.hasPrefix("!") { throw CheckpointError(path: folder, "rank 0 could not pick a checkpoint: \(text.dropFirst())") }
        let path = String(text.dropFirst())
        return path.isEmpty ? nil : path
    }

    /// The architecture to build and what initialises it: with initial_load_in_hf, the HF folder's config.json (how
    /// experts are computed and balanced stays `model`'s) and, unless resuming (the checkpoint overwrites the weights),
    /// its weights, read on demand; otherwise `model`'s args and no initial weights (the seed's random values).
    public func initialModel(_ model: ModelConfig, resuming: Bool) throws -> (args: ModelArgs, weights: InitialWeights?) {
        guard config.initial_load_in_hf, let path = config.initial_load_path else { return (model.modelArgs, nil) }
        var args = try HFModelConfig.load(path: (path as NSString).appendingPathComponent("config.json"))
        args.moe.use_grouped_mm = model.modelArgs.moe.use_grouped_mm
        args.moe.load_balance_coeff = model.modelArgs.moe.load_balance_coeff
        let weights = resuming ? nil : try HFInitialWeights(folder: path, adapter: try args.adapter())
        if let note = weights?.skippedNote, comm.rank == 0 { log(note) }
        return (args, weights)
    }

    /// What a checkpoint holds of this rank: its parameter shards ("model/<fqn>") and, with an optimizer, their
    /// moments ("optim/<name>/<fqn>"), each at the shard's offset in the full parameter.
    static func pieces(_ model: FullyShardedModel, _ optimizer: AdamW?) -> [StatePiece] {
        model.shards.map { StatePiece(key: "model/" + $0.fqn, shape: $0.parameter.shape, offset: $0.offset, count: $0.count, values: $0.param) }
            + (optimizer?.stateDict ?? []).map {
                StatePiece(key: "optim/\($0.name)/\($0.shard.fqn)", shape: $0.shard.parameter.shape, offset: $0.shard.offset,
                           count: $0.shard.count, values: $0.values)
            }
    }

    /// Every key a checkpoint of this model has, with its full shape.
    static func expectedKeys(_ model: FullyShardedModel) -> [String: [Int]] {
        var keys: [String: [Int]] = [:]
        for p in model.model.parameters {
            keys["model/" + p.fqn] = p.shape
            for name in AdamW.stateNames { keys["optim/\(name)/\(p.fqn)"] = p.shape }
        }
        return keys
    }

    /// Restores the run's state before training: from `resumeFolder` (model, optimizer, buffers; returns its step),
    /// else from initial_load_path when it is a distributed checkpoint (the weights only: torchtitan's
    /// initial_load_model_only; returns 0), else nothing (0). Resharded onto this topology; validated first.
    public func load(resumeFolder: String?, model: FullyShardedModel, optimizer: AdamW, modelArgs: ModelArgs) throws -> Int {
        resumedDataLoader = nil
        let stepFolder: String
        let weightsOnly: Bool
        if let resumeFolder {
            (stepFolder, weightsOnly) = (resumeFolder, false)
        } else if let path = config.initial_load_path, !config.initial_load_in_hf {
            (stepFolder, weightsOnly) = (try Checkpoint.resolveStepFolder(path), true)
        } else {
            return 0
        }
        let meta = try Checkpoint.load(stepFolder: stepFolder, pieces: Self.pieces(model, weightsOnly ? nil : optimizer),
                                       buffers: weightsOnly ? nil : model.model.buffers, expected: Self.expectedKeys(model),
                                       modelArgs: modelArgs)
        model.reshard()
        if !weightsOnly { resumedDataLoader = meta.dataloader }
        if comm.rank == 0 {
            log(weightsOnly ? "checkpoint: initial weights from \(stepFolder)" : "checkpoint: resumed from \(stepFolder) at step \(meta.step)")
        }
        return weightsOnly ? 0 : meta.step
    }

    /// The data loader's state in the checkpoint `load` resumed from (nil: none, or one written before it was kept).
    public private(set) var resumedDataLoader: DataLoaderState?

    /// Saves step `step` when checkpointing is on and it is due (every `interval` steps and the last one), with the data
    /// loader's state. Collective.
    public func saveIfDue(step: Int, lastStep: Int, model: FullyShardedModel, optimizer: AdamW, modelArgs: ModelArgs,
                          dataloader: () throws -> DataLoaderState) throws {
        guard config.enable, step % config.interval == 0 || step == lastStep else { return }
        try underDiskDeadline {
            let dataState = try dataloader()
            let mesh = model.mesh
            try Checkpoint.save(folder: folder, step: step, pieces: Self.pieces(model, optimizer), buffers: model.model.buffers,
                                isWriter: mesh.replicaIndex == 0, world: mesh.world, jobID: comm.spec.jobID,
                                modelArgs: modelArgs,
                                topology: CheckpointTopology(world_size: comm.worldSize, replicate: mesh.dims.replicate,
                                                             shard: mesh.dims.shard, ep: mesh.dims.ep),
                                dataloader: dataState, keepLatestK: config.keep_latest_k, log: log)
        }
    }

    /// Runs `body`, disk-bound collective work (ranks wait in its collectives while others write and fsync), under the
    /// start-up deadline (comm.init_timeout_seconds) when that is the longer: a slow disk must not pass for a dead rank.
    func underDiskDeadline(_ body: () throws -> Void) throws {
        let steady = comm.timeoutSeconds, disk = max(comm.timeoutSeconds, comm.spec.timeoutSeconds)
        if disk != steady { try comm.setTimeout(seconds: disk) }
        defer { if disk != steady { try? comm.setTimeout(seconds: steady) } }
        try body()
    }

    /// With last_save_in_hf, the final weights as an HF folder, checkpoint.folder/step-N-hf (gathered on rank 0 only).
    /// Collective.
    public func exportHFIfAsked(step: Int, model: FullyShardedModel, modelArgs: ModelArgs) throws {
        guard config.last_save_in_hf else { return }
        try underDiskDeadline {
            let sd = try model.fullStateDict(root: 0)
            if comm.rank == 0 {
                let hf = Checkpoint.hfExportFolder(folder: folder, step: step)
                try HFCheckpoint.save(model: modelArgs, stateDict: sd, folder: hf)
                log("checkpoint: HF export to \(hf)")
            }
            try comm.world.barrier()
        }
    }
}
