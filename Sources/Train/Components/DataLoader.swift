// Token sources and the data loader. The loader implements DESIGN.md's numerics exactly:
//   window i        = tokens[i*(L+1) ..< (i+1)*(L+1)]      (non-overlapping, torchtitan style)
//   input / labels  = first L / last L tokens of a window
//   step s (1-based), G = global batch = local_batch_size B * dp_degree * micro-batches M:
//   micro-batch m of dp rank d takes windows (s-1)*G + m*B*dp + d*B ..< ... + B
//   (with M = 1: (s-1)*G + d*B ..< (s-1)*G + (d+1)*B); an in-memory stream wraps around (index mod its windows),
//   a document file loops over its documents.
// A batch is a function of (step, micro-batch, rank) and of where the run started: window W at step S (0 and 0 for a
// new run; a checkpoint's next window and step when resuming). The window index is global, so a run resumes on any
// topology, and with another global batch size, without repeating or skipping a window.

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
    case synthetic, tokens, text, jsonl
}

/// [dataloader]: the token source.
public struct DataLoaderConfig: ConfigSection {
    public var dataset = DatasetKind.synthetic
    public var dataset_path: String? = nil
    public var tokenizer_path: String? = nil
    public var text_field = "text"
    public init() {}

    public static let doc = "token source"
    public static let fields: [ConfigField<DataLoaderConfig>] = [
        ConfigField("dataset", \.dataset, "synthetic (generated from training.seed), tokens (.npy), text (a document per line), jsonl (a JSON object per line)"),
        ConfigField("dataset_path", \.dataset_path, "path of the .npy token file, or of the text / jsonl documents"),
        ConfigField("tokenizer_path", \.tokenizer_path, "HF tokenizer.json for text / jsonl (none: byte-level, BOS 256, EOS 257)"),
        ConfigField("text_field", \.text_field, "the field of each jsonl object that holds its text"),
    ]

    public func validate() throws {
        if dataset != .synthetic && dataset_path == nil {
            throw ConfigError.invalid(key: "dataset_path", reason: "is required when dataloader.dataset is \(dataset.rawValue)")
        }
    }

    /// The windows of the configured dataset (every rank reads the same stream and picks its windows). Document
    /// datasets (text, jsonl) stream from `resume` (a checkpoint's position; the start when nil); the others are read
    /// whole (`loadTokens`).
    public func windows(seqLen: Int, globalBatch: Int, steps: Int, seed: Int, vocabSize: Int,
                        resume: DocumentPosition? = nil) throws -> WindowSource {
        switch dataset {
        case .synthetic, .tokens:
            return TokenWindows(tokens: try loadTokens(seqLen: seqLen, globalBatch: globalBatch, steps: steps, seed: seed,
                                                       vocabSize: vocabSize), windowTokens: seqLen + 1)
        case .text, .jsonl:
            let tokenizer = try loadTokenizer(path: tokenizer_path)
            return DocumentWindows(try PackedDocuments(path: dataset_path ?? "", format: dataset == .text ? .text : .jsonl(field: text_field),
                                                       tokenizer: tokenizer, windowTokens: seqLen + 1, vocabSize: vocabSize,
                                                       from: resume ?? .start))
        }
    }

    /// The whole token stream of an in-memory dataset:
    /// - synthetic: enough windows for `steps` steps of `globalBatch` windows of L+1 tokens from `seed`;
    /// - tokens: the .npy file at dataset_path.
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
        case .text, .jsonl:
            preconditionFailure("document datasets stream: use windows(...)")
        }
        if let bad = tokens.firstIndex(where: { $0 < 0 || Int($0) >= vocabSize }) {
            throw DataError.tokenOutOfVocab(source: source, index: bad, token: tokens[bad], vocabSize: vocabSize)
        }
        guard tokens.count >= window else { throw DataError.tooFewTokens(source: source, tokens: tokens.count, windowTokens: window) }
        return tokens
    }
}

// MARK: - window sources

/// Windows of L+1 tokens in a fixed global order.
public protocol WindowSource: AnyObject {
    var windowTokens: Int { get }
    /// Complete windows when the stream is held in memory (indices wrap around); nil for a document file.
    var count: Int? { get }
    /// Window `w` (a global index). A document file serves non-decreasing indices only: each rank reads the file
    /// forward and keeps its windows.
    func window(_ w: Int) throws -> ArraySlice<Int32>
    /// Where window `w` starts in a document file (it reads ahead to it), for a checkpoint; nil for in-memory streams,
    /// whose index says it all.
    func position(of w: Int) throws -> DocumentPosition?
}

/// An in-memory token stream: window w is tokens[(w mod count)·(L+1) ..< +L+1].
public final class TokenWindows: WindowSource {
    public let tokens: [Int32]
    public let windowTokens: Int
    public var count: Int? { tokens.count / windowTokens }
    public init(tokens: [Int32], windowTokens: Int) {
        precondition(tokens.count >= windowTokens, "TokenWindows: \(tokens.count) tokens is less than one window of \(windowTokens)")
        self.tokens = tokens
        self.windowTokens = windowTokens
    }
    public func window(_ w: Int) -> ArraySlice<Int32> {
        let start = (w % count!) * windowTokens
        return tokens[start..<(start + windowTokens)]
    }
    public func position(of w: Int) -> DocumentPosition? { nil }
}

/// A document file's packed stream, read forward.
public final class DocumentWindows: WindowSource {
    let documents: PackedDocuments
    private var last: (index: Int, tokens: [Int32])?
    public init(_ documents: PackedDocuments) { self.documents = documents }
    public var windowTokens: Int { documents.windowTokens }
    public var count: Int? { nil }

    public func window(_ w: Int) throws -> ArraySlice<Int32> {
        if let last, last.index == w { return last.tokens[...] }
        guard w >= documents.position.window else {
            throw DocumentError(path: documents.path, line: nil,
                                reason: "window \(w) was asked for after window \(documents.position.window - 1): a document stream is read forward only")
        }
        while documents.position.window < w { _ = try documents.next() }
        let tokens = try documents.next()
        last = (w, tokens)
        return tokens[...]
    }

    public func position(of w: Int) throws -> DocumentPosition? {
        guard w >= documents.position.window else {
            throw DocumentError(path: documents.path, line: nil, reason: "the position of window \(w) is behind the stream")
        }
        while documents.position.window < w { _ = try documents.next() }
        return try documents.nextPosition()
    }
}

/// What a checkpoint keeps of the data loader: the global index of the next window, and for a document file where it
/// starts.
public struct DataLoaderState: Codable, Equatable, Sendable {
    public var next_window: Int
    public var document: DocumentPosition?
    public init(next_window: Int, document: DocumentPosition?) {
        self.next_window = next_window
        self.document = document
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
    public let source: WindowSource
    public let seqLen: Int
    public let localBatchSize: Int
    public let dpDegree: Int
    public let dpRank: Int
    /// Micro-batches per step (gradient accumulation).
    public let microBatches: Int
    /// Where the run started: step `startStep` was done and window `startWindow` comes next (0, 0: a new run).
    public let startStep: Int
    public let startWindow: Int

    public init(source: WindowSource, localBatchSize: Int, dpDegree: Int = 1, dpRank: Int = 0, microBatches: Int = 1,
                startStep: Int = 0, startWindow: Int = 0) {
        precondition(source.windowTokens >= 2 && localBatchSize >= 1, "DataLoader: seqLen and localBatchSize must be >= 1")
        precondition(dpDegree >= 1 && (0..<dpDegree).contains(dpRank), "DataLoader: dpRank \(dpRank) not in 0..<\(dpDegree)")
        self.source = source
        self.seqLen = source.windowTokens - 1
        self.localBatchSize = localBatchSize
        self.dpDegree = dpDegree
        self.dpRank = dpRank
        self.microBatches = microBatches
        self.startStep = startStep
        self.startWindow = startWindow
    }

    /// An in-memory token stream (tests, and the synthetic and .npy datasets).
    public init(tokens: [Int32], seqLen: Int, localBatchSize: Int, dpDegree: Int = 1, dpRank: Int = 0, microBatches: Int = 1) {
        precondition(seqLen >= 1, "DataLoader: seqLen must be >= 1")
        precondition(tokens.count >= seqLen + 1, "DataLoader: \(tokens.count) tokens is less than one window of \(seqLen + 1)")
        self.init(source: TokenWindows(tokens: tokens, windowTokens: seqLen + 1), localBatchSize: localBatchSize,
                  dpDegree: dpDegree, dpRank: dpRank, microBatches: microBatches)
    }

    /// Complete windows of an in-memory stream (the tail shorter than a window is never used).
    public var numWindows: Int? { source.count }

    /// G: windows consumed by the whole data-parallel group per step.
    public var globalBatchSize: Int { localBatchSize * dpDegree * microBatches }

    /// The global index of the first window of `step` (1-based, after `startStep`).
    public func firstWindow(step: Int) -> Int { startWindow + (step - startStep - 1) * globalBatchSize }

    /// What a checkpoint after `step` keeps: the next window and, for a document file, where it starts.
    public func state(after step: Int) throws -> DataLoaderState {
        let next = firstWindow(step: step + 1)
        return DataLoaderState(next_window: next, document: try source.position(of: next))
    }

    /// Window indices of `dpRank`'s local batch at micro-batch `microBatch` of `step` (1-based); an in-memory stream's
    /// indices wrap around.
    public func windowIndices(step: Int, microBatch: Int = 0, dpRank: Int? = nil) -> [Int] {
        precondition(step > startStep, "DataLoader: step \(step) is not after the start step \(startStep)")
        precondition((0..<microBatches).contains(microBatch), "DataLoader: micro-batch \(microBatch) of \(microBatches)")
        let d = dpRank ?? self.dpRank
        let first = firstWindow(step: step) + microBatch * localBatchSize * dpDegree + d * localBatchSize
        let n = numWindows
        return (0..<localBatchSize).map { i in n.map { (first + i) % $0 } ?? first + i }
    }

    /// This rank's batch of micro-batch `microBatch` of `step` (1-based).
    public func batch(step: Int, microBatch: Int = 0) throws -> TokenBatch {
        let L = seqLen
        var inputs = [Int32](), labels = [Int32]()
        inputs.reserveCapacity(localBatchSize * L)
        labels.reserveCapacity(localBatchSize * L)
        for w in windowIndices(step: step, microBatch: microBatch) {
            let t = try source.window(w)
            inputs += t.dropLast()
            labels += t.dropFirst()
        }
        return TokenBatch(inputs_BL: inputs, labels_BL: labels, batchSize: localBatchSize, seqLen: L)
    }
}
