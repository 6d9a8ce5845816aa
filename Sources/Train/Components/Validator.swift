// Validation during training (torchtitan's Validator): every `freq` steps and after the last, the mean cross-entropy
// over `steps` batches of a held-out stream, forward only (no gradients, no optimizer step; FSDP still gathers and
// prefetches each group, expert parallelism still dispatches). Windows come from the start of the validation stream,
// in order: batch k is windows k·G ..< (k+1)·G, data-parallel rank d taking k·G + d·B ..< + B, so every topology
// evaluates the same tokens and reports the same loss.

import Collectives
import Config
import Model
import Parallel

/// [validation]
public struct ValidationConfig: ConfigSection {
    public var enable = false
    public var freq = 10
    public var steps = -1
    public var dataset: DatasetKind? = nil
    public var dataset_path: String? = nil
    public var local_batch_size = -1
    public var seq_len = -1
    public init() {}

    public static let doc = "validation loss during training"
    public static let fields: [ConfigField<ValidationConfig>] = [
        ConfigField("enable", \.enable, "evaluate the validation loss during training"),
        ConfigField("freq", \.freq, "every freq steps, and after the last step"),
        ConfigField("steps", \.steps, "batches per evaluation (-1: the whole stream once; not for synthetic)"),
        ConfigField("dataset", \.dataset, "synthetic, tokens, text or jsonl (none: the training dataset; synthetic then draws from training.seed + 1)"),
        ConfigField("dataset_path", \.dataset_path, "the validation file (none: the training one)"),
        ConfigField("local_batch_size", \.local_batch_size, "sequences per rank and batch (-1: training.local_batch_size)"),
        ConfigField("seq_len", \.seq_len, "tokens per sequence (-1: training.seq_len)"),
    ]

    public func validate() throws {
        if freq < 1 { throw ConfigError.invalid(key: "freq", reason: "must be >= 1") }
        if steps == 0 || steps < -1 { throw ConfigError.invalid(key: "steps", reason: "must be >= 1, or -1 for the whole stream") }
        if local_batch_size == 0 || local_batch_size < -1 { throw ConfigError.invalid(key: "local_batch_size", reason: "must be >= 1, or -1 for training's") }
        if seq_len == 0 || seq_len < -1 { throw ConfigError.invalid(key: "seq_len", reason: "must be >= 1, or -1 for training's") }
    }
}

public final class Validator {
    let config: ValidationConfig
    /// The validation stream's config (the training dataloader's, with validation's dataset and path).
    let data: DataLoaderConfig
    let seed: Int
    let localBatchSize: Int
    let seqLen: Int
    let vocabSize: Int
    let dpDegree: Int
    let dpRank: Int
    /// Batches per evaluation.
    let batches: Int

    public init(_ config: ValidationConfig, training: JobConfig, vocabSize: Int, dpDegree: Int, dpRank: Int) throws {
        self.config = config
        var data = training.dataloader
        if let kind = config.dataset {
            data.dataset = kind
            data.dataset_path = config.dataset_path
        } else if let path = config.dataset_path {
            data.dataset_path = path
        }
        func invalid(_ key: String, _ reason: String) -> ConfigError { .invalid(key: "validation.\(key)", reason: reason) }
        if data.dataset != .synthetic && data.dataset_path == nil { throw invalid("dataset_path", "is required for dataset \(data.dataset.rawValue)") }
        self.data = data
        seed = training.training.seed + 1   // a synthetic validation stream is not the training one
        localBatchSize = config.local_batch_size == -1 ? training.training.local_batch_size : config.local_batch_size
        seqLen = config.seq_len == -1 ? training.training.seq_len : config.seq_len
        self.vocabSize = vocabSize
        self.dpDegree = dpDegree
        self.dpRank = dpRank
        let G = localBatchSize * dpDegree
        if config.steps > 0 {
            batches = config.steps
        } else {
            // The whole stream once: its complete global batches.
            let windows: Int
            switch data.dataset {
            case .synthetic: throw invalid("steps", "-1 (the whole stream) needs a finite dataset, not synthetic: give a number of batches")
            case .tokens: windows = try data.windows(seqLen: seqLen, globalBatch: G, steps: 1, seed: seed, vocabSize: vocabSize).count!
            case .text, .jsonl: windows = try Self.firstPassWindows(data, seqLen: seqLen, vocabSize: vocabSize)
            }
            batches = windows / G
            if batches == 0 { throw invalid("steps", "the validation stream holds \(windows) windows of \(seqLen + 1) tokens, less than one batch of \(G)") }
        }
    }

    /// Windows a document file holds before its stream loops.
    static func firstPassWindows(_ data: DataLoaderConfig, seqLen: Int, vocabSize: Int) throws -> Int {
        let docs = try PackedDocuments(path: data.dataset_path ?? "", format: data.dataset == .text ? .text : .jsonl(field: data.text_field),
                                       tokenizer: try loadTokenizer(path: data.tokenizer_path), windowTokens: seqLen + 1, vocabSize: vocabSize)
        var n = 0
        while true {
            _ = try docs.next()
            if docs.position.epoch > 0 { return n }    // that window ran past the end of the file
            n += 1
            if try docs.nextPosition().epoch > 0 { return n }
        }
    }

    public func isDue(step: Int, lastStep: Int) -> Bool { config.enable && (step % config.freq == 0 || step == lastStep) }

    /// The mean cross-entropy over every validation token (summed over the data-parallel ranks by `world`). Collective.
    public func run(model: TrainableModel, parallel: FullyShardedModel, world: ProcessGroup) throws -> Double {
        let G = localBatchSize * dpDegree
        let source = try data.windows(seqLen: seqLen, globalBatch: G, steps: batches, seed: seed, vocabSize: vocabSize)
        let loader = DataLoader(source: source, localBatchSize: localBatchSize, dpDegree: dpDegree, dpRank: dpRank)
        var lossSum = 0.0, tokens = 0.0
        for k in 1...batches {
            let batch = try loader.batch(step: k)
            let r = model.evaluate(inputs: batch.inputs_BL, labels: batch.labels_BL, B: batch.batchSize, T: batch.seqLen)
            try ExpertParallel.throwIfFailed(model)
            lossSum += r.lossSum
            tokens += Double(r.tokenCount)
        }
        parallel.reshard()   // the forward left its last group gathered
        let total = try world.allReduce([lossSum, tokens])
        return total[0] / total[1]
    }
}
