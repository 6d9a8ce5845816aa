// Token sources and the data loader. The loader implements DESIGN.md's numerics exactly:
//   window i        = tokens[i*(L+1) ..< (i+1)*(L+1)]      (non-overlapping, torchtitan style)
//   input / labels  = first L / last L tokens of a window
//   step s (1-based), G = local_batch_size * dp_degree:
//   dp rank d takes windows (s-1)*G + d*B ..< (s-1)*G + (d+1)*B, each index mod numWindows.
// A batch is a pure function of (step, rank): no hidden iterator state, so resuming from a
// checkpoint only needs the step, and every topology with the same G sees the same global batch.

import Config
import Foundation
import Tensor

// MARK: - synthetic corpus

extension SplitMix64 {
    /// Uniform in 0..<n (modulo bias is irrelevant at these sizes).
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

public enum SyntheticCorpus {
    /// Branching of the Markov chain and the probability (in 1/16) of each branch.
    static let branchWeights16: [Int] = [11, 3, 1, 1]

    /// A deterministic token stream with learnable structure: a first-order Markov chain over
    /// an "active" vocabulary of min(vocabSize, 256) ids (spread across the whole vocab), where
    /// each token has 4 fixed successors taken with probability 11/16, 3/16, 1/16, 1/16.
    /// Loss starts near ln(vocab_size), drops fast to the unigram entropy (~ln 256 = 5.5) and
    /// then towards the chain's entropy (~1.0 nats) as a model learns bigrams: a clear,
    /// monotone fall within ~100 steps for a tiny model. All tokens are < vocabSize.
    /// The stream is a prefix-stable function of (seed, vocabSize): asking for more tokens
    /// never changes the earlier ones.
    public static func generate(count: Int, vocabSize: Int, seed: Int) -> [Int32] {
        precondition(vocabSize >= 2, "synthetic corpus needs vocab_size >= 2")
        var rng = SplitMix64(seed: UInt64(bitPattern: Int64(seed)) ^ 0x5EED_7177_A200_0001)
        let active = min(vocabSize, 256)
        // Active ids spread over the vocab so every embedding row range is exercised.
        let ids: [Int32] = (0..<active).map { Int32($0 * vocabSize / active) }
        let branches = branchWeights16.count
        var successors = [Int](repeating: 0, count: active * branches)
        for t in 0..<active { for b in 0..<branches { successors[t * branches + b] = rng.below(active) } }

        var out = [Int32](repeating: 0, count: max(count, 0))
        var cur = rng.below(active)
        for i in 0..<out.count {
            out[i] = ids[cur]
            var r = rng.below(16)
            var b = 0
            while r >= branchWeights16[b] { r -= branchWeights16[b]; b += 1 }
            cur = successors[cur * branches + b]
        }
        return out
    }
}

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

/// The whole token stream the config asks for (every rank loads the same stream and picks its windows).
/// - synthetic: `steps * G * (L+1)` tokens from `training.seed` (no wrap-around in a normal run);
/// - tokens: the .npy file at dataset_path;
/// - text: the file at dataset_path through `tokenizer_path` (bytes when none).
/// Every token is checked against `vocabSize`: an out-of-range id would index past the embedding.
public func loadTokenStream(_ job: JobConfig, vocabSize: Int, dataParallelDegree: Int) throws -> [Int32] {
    let window = job.training.seq_len + 1
    let tokens: [Int32]
    let source: String
    switch job.dataloader.dataset {
    case .synthetic:
        source = "synthetic dataset"
        // Enough windows for every step, capped at 4M tokens (16 MB): a longer run wraps around,
        // as any dataset does. The stream is prefix-stable, so the cap never changes early batches.
        let g = job.training.local_batch_size * dataParallelDegree
        let wanted = max(job.training.steps, 1) * g * window
        tokens = SyntheticCorpus.generate(count: max(min(wanted, 1 << 22), window), vocabSize: vocabSize, seed: job.training.seed)
    case .tokens:
        let path = job.dataloader.dataset_path ?? ""
        source = path
        tokens = try Npy.readTokens(path: path)
    case .text:
        let path = job.dataloader.dataset_path ?? ""
        source = path
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw NpyError.unreadable(path: path, reason: error.localizedDescription)
        }
        tokens = try loadTokenizer(path: job.dataloader.tokenizer_path).encode(text)
    }
    if let bad = tokens.firstIndex(where: { $0 < 0 || Int($0) >= vocabSize }) {
        throw DataError.tokenOutOfVocab(source: source, index: bad, token: tokens[bad], vocabSize: vocabSize)
    }
    guard tokens.count >= window else { throw DataError.tooFewTokens(source: source, tokens: tokens.count, windowTokens: window) }
    return tokens
}

// MARK: - data loader

public struct TokenBatch: Equatable {
    /// Row-major [B, L] token ids.
    public var inputs_BL: [Int]
    public var labels_BL: [Int]
    public var batchSize: Int
    public var seqLen: Int
}

public struct DataLoader {
    public let tokens: [Int32]
    public let seqLen: Int
    public let localBatchSize: Int
    public let dpDegree: Int
    public let dpRank: Int
    /// Number of complete L+1 windows; the tail shorter than a window is never used.
    public let numWindows: Int
    /// Next step `next()` returns (1-based). This is the whole checkpointable state.
    public var step: Int = 1

    public init(tokens: [Int32], seqLen: Int, localBatchSize: Int, dpDegree: Int = 1, dpRank: Int = 0) {
        precondition(seqLen >= 1 && localBatchSize >= 1, "DataLoader: seqLen and localBatchSize must be >= 1")
        precondition(dpDegree >= 1 && (0..<dpDegree).contains(dpRank), "DataLoader: dpRank \(dpRank) not in 0..<\(dpDegree)")
        precondition(tokens.count >= seqLen + 1, "DataLoader: \(tokens.count) tokens is less than one window of \(seqLen + 1)")
        self.tokens = tokens
        self.seqLen = seqLen
        self.localBatchSize = localBatchSize
        self.dpDegree = dpDegree
        self.dpRank = dpRank
        self.numWindows = tokens.count / (seqLen + 1)
    }

    /// G: windows consumed by the whole data-parallel group per step.
    public var globalBatchSize: Int { localBatchSize * dpDegree }

    /// Window indices of `dpRank`'s local batch at `step` (1-based).
    public func windowIndices(step: Int, dpRank: Int? = nil) -> [Int] {
        precondition(step >= 1, "DataLoader: steps are 1-based, got \(step)")
        let d = dpRank ?? self.dpRank
        let first = (step - 1) * globalBatchSize + d * localBatchSize
        return (0..<localBatchSize).map { (first + $0) % numWindows }
    }

    /// This rank's batch of `step` (1-based).
    public func batch(step: Int) -> TokenBatch {
        let L = seqLen
        var inputs = [Int](repeating: 0, count: localBatchSize * L)
        var labels = [Int](repeating: 0, count: localBatchSize * L)
        tokens.withUnsafeBufferPointer { t in
            for (b, w) in windowIndices(step: step).enumerated() {
                let start = w * (L + 1)
                for j in 0..<L {
                    inputs[b * L + j] = Int(t[start + j])
                    labels[b * L + j] = Int(t[start + j + 1])
                }
            }
        }
        return TokenBatch(inputs_BL: inputs, labels_BL: labels, batchSize: localBatchSize, seqLen: L)
    }

    /// The batch of `step`, then advance.
    public mutating func next() -> TokenBatch {
        defer { step += 1 }
        return batch(step: step)
    }

    /// Checkpoint state: the next step to load. Restoring it resumes the exact data order.
    public var stateStep: Int {
        get { step }
        set { precondition(newValue >= 1); step = newValue }
    }
}
