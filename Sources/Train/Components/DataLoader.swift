// Token sources and the data loader. The loader implements DESIGN.md's numerics exactly:
//   window i        = tokens[i*(L+1) ..< (i+1)*(L+1)]      (non-overlapping, torchtitan style)
//   input / labels  = first L / last L tokens of a window
//   step s (1-based), G = global batch = local_batch_size B * dp_degree * micro-batches M:
//   micro-batch m of dp rank d takes windows (s-1)*G + m*B*dp + d*B ..< ... + B, each index mod numWindows
//   (with M = 1: (s-1)*G + d*B ..< (s-1)*G + (d+1)*B).
// A batch is a pure function of (step, micro-batch, rank): no hidden iterator state, so resuming from a checkpoint
// only needs the step, and every topology with the same G sees the same global batch.

import Config
import Foundation

// MARK: - token stream from config

public enum DataError: Error, CustomStringConvertible {
    case tooFewTokens(source: String, tokens: Int, windowTokens: Int)
    case tokenOutOfVocab(source: String, index: Int, token: Int32, vocabSize: Int)

    public var description: String {
        switch self {
        case let .tooFewTokens(source, tokens, window):
            return "\(source): \(tokens) tokens is less than one window of training.seq_len + 1 = \(window) tokens"
        case let .tokenOutOfVocab(source, index, token, vocab):
            return "\(source): token \(index) is \(token), not < model.vocab_size \(vocab); use a tokenizer/model that match"
        }
    }
}

public enum DatasetKind: String, ConfigEnum, Equatable {
    case synthetic, tokens, text
}

/// [dataloader]: the token source.
public struct DataLoaderConfig: ConfigSection {
    public var dataset = DatasetKind.synthetic
    public var dataset_path: String? = nil
    public var tokenizer_path: String? = nil
    public init() {}

    public static let doc = "token source"
    public static let fields: [ConfigField<DataLoaderConfig>] = [
        ConfigField("dataset", \.dataset, "synthetic (generated from training.seed), tokens (.npy), text (file + tokenizer)"),
        ConfigField("dataset_path", \.dataset_path, "path of the .npy token file or the text file"),
        ConfigField("tokenizer_path", \.tokenizer_path, "HF tokenizer.json for dataset=text (none: byte-level)"),
    ]

    public func validate() throws {
        if dataset != .synthetic && dataset_path == nil {
            throw ConfigError.invalid(key: "dataset_path", reason: "is required when dataloader.dataset is \(dataset.rawValue)")
        }
    }

    /// The whole token stream (every rank loads the same stream and picks its windows):
    /// - synthetic: enough windows for `steps` steps of `globalBatch` windows of L+1 tokens from `seed`;
    /// - tokens: the .npy file at dataset_path;
    /// - text: the file at dataset_path through `tokenizer_path` (bytes when none).
    /// Every token is checked against `vocabSize`: an out-of-range id would index past the embedding.
    public func loadTokens(seqLen: Int, globalBatch: Int, steps: Int, seed: Int, vocabSize: Int) throws -> [Int32] {
        let window = seqLen + 1
        let tokens: [Int32]
        let source: String
        switch dataset {
        case .synthetic:
            source = "synthetic dataset"
            // Enough windows for every step, capped at 4M tokens (16 MB): a longer run wraps around, as any dataset
            // does. The stream is prefix-stable, so the cap never changes early batches.
            let wanted = max(steps, 1) * globalBatch * window
            tokens = SyntheticCorpus.generate(count: max(min(wanted, 1 << 22), window), vocabSize: vocabSize, seed: seed)
        case .tokens:
            let path = dataset_path ?? ""
            source = path
            tokens = try Npy.readTokens(path: path)
        case .text:
            let path = dataset_path ?? ""
            source = path
            let text: String
            do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw NpyError.unreadable(path: path, reason: error.localizedDescription)
            }
            tokens = try loadTokenizer(path: tokenizer_path).encode(text)
        }
        if let bad = tokens.firstIndex(where: { $0 < 0 || Int($0) >= vocabSize }) {
            throw DataError.tokenOutOfVocab(source: source, index: bad, token: tokens[bad], vocabSize: vocabSize)
        }
        guard tokens.count >= window else { throw DataError.tooFewTokens(source: source, tokens: tokens.count, windowTokens: window) }
        return tokens
    }
}

// MARK: - data loader

public struct TokenBatch: Equatable {
    /// Row-major [B, L] token ids.
    public var inputs_BL: [Int32]
    public var labels_BL: [Int32]
    public var batchSize: Int
    public var seqLen: Int
}

public struct DataLoader {
    public let tokens: [Int32]
    public let seqLen: Int
    public let localBatchSize: Int
    public let dpDegree: Int
    public let dpRank: Int
    /// Micro-batches per step (gradient accumulation).
    public let microBatches: Int
    /// Number of complete L+1 windows; the tail shorter than a window is never used.
    public let numWindows: Int

    public init(tokens: [Int32], seqLen: Int, localBatchSize: Int, dpDegree: Int = 1, dpRank: Int = 0, microBatches: Int = 1) {
        precondition(seqLen >= 1 && localBatchSize >= 1, "DataLoader: seqLen and localBatchSize must be >= 1")
        precondition(dpDegree >= 1 && (0..<dpDegree).contains(dpRank), "DataLoader: dpRank \(dpRank) not in 0..<\(dpDegree)")
        precondition(tokens.count >= seqLen + 1, "DataLoader: \(tokens.count) tokens is less than one window of \(seqLen + 1)")
        self.tokens = tokens
        self.seqLen = seqLen
        self.localBatchSize = localBatchSize
        self.dpDegree = dpDegree
        self.dpRank = dpRank
        self.microBatches = microBatches
        self.numWindows = tokens.count / (seqLen + 1)
    }

    /// G: windows consumed by the whole data-parallel group per step.
    public var globalBatchSize: Int { localBatchSize * dpDegree * microBatches }

    /// Window indices of `dpRank`'s local batch at micro-batch `microBatch` of `step` (1-based).
    public func windowIndices(step: Int, microBatch: Int = 0, dpRank: Int? = nil) -> [Int] {
        precondition(step >= 1, "DataLoader: steps are 1-based, got \(step)")
        precondition((0..<microBatches).contains(microBatch), "DataLoader: micro-batch \(microBatch) of \(microBatches)")
        let d = dpRank ?? self.dpRank
        let first = (step - 1) * globalBatchSize + microBatch * localBatchSize * dpDegree + d * localBatchSize
        return (0..<localBatchSize).map { (first + $0) % numWindows }
    }

    /// This rank's batch of micro-batch `microBatch` of `step` (1-based).
    public func batch(step: Int, microBatch: Int = 0) -> TokenBatch {
        let L = seqLen
        var inputs = [Int32](repeating: 0, count: localBatchSize * L)
        var labels = [Int32](repeating: 0, count: localBatchSize * L)
        tokens.withUnsafeBufferPointer { t in
            for (b, w) in windowIndices(step: step, microBatch: microBatch).enumerated() {
                let start = w * (L + 1)
                for j in 0..<L {
                    inputs[b * L + j] = t[start + j]
                    labels[b * L + j] = t[start + j + 1]
                }
            }
        }
        return TokenBatch(inputs_BL: inputs, labels_BL: labels, batchSize: localBatchSize, seqLen: L)
    }
}
