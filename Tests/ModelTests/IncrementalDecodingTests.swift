import XCTest
import Model
import Tensor

/// The KV-cache path (IncrementalDecoding.forwardCached) against the full forward: every position's logits, for every
/// Qwen3 variant the trainer builds (dense, MoE with softmax / sigmoid routing, shared experts, expert bias, tied
/// embeddings), whether the prompt is prefilled at once, in chunks or one position at a time.
final class IncrementalDecodingTests: XCTestCase {
    /// Every variant, built with distinct expert biases where a layer has them (so they change the routing).
    func variants() throws -> [(String, IncrementalDecoding)] {
        var biased = tinyArgs(moe: true, lbCoeff: 1e-3)
        biased.decoder_sparse_step = 2   // layer 0 dense, layer 1 MoE
        var models: [(String, IncrementalDecoding & TrainableModel)] = try [
            ("dense", tinyArgs(moe: false)), ("moe", tinyArgs(moe: true)), ("tied", tinyArgs(moe: true, tied: true)),
            ("sigmoid+shared", tinyArgs(moe: true, scoreFunc: .sigmoid, routeNorm: false, routeScale: 2, shared: 1)),
            ("mixed+bias", biased),
        ].map { ($0.0, try Qwen3Model(args: $0.1, seed: 11)) }
        // DeepSeek-V3: MLA with the q low-rank path, interleaved rope and YaRN; q_proj, rotate-half, no YaRN; group-limited
        // routing with the correction bias; a dense first layer; shared experts
        models += try [("deepseek_v3", tinyDeepSeekArgs()), ("deepseek_v3_q0", tinyDeepSeekArgs(qLoraRank: 0, interleave: false, yarn: false))]
            .map { ($0.0, try DeepSeekV3Model(args: $0.1, seed: 11)) }
        for (_, m) in models {
            for moe in m.moeModules where moe.expertBias.count > 0 {
                for e in 0..<moe.args.num_experts { moe.expertBias.data[e] = Float(e % 3) * 0.05 }
            }
        }
        return models
    }

    /// Logits of positions cache.length ..< +chunk for each chunk, concatenated.
    func cachedLogits(_ model: IncrementalDecoding, _ tokens: [Int32], chunks: [Int]) -> [Float] {
        let V = model.vocabSize
        let cache = model.makeKVCache(capacity: tokens.count)
        var out: [Float] = []
        var p = 0
        for n in chunks {
            var logits = [Float](repeating: .nan, count: n * V)
            model.forwardCached(tokens: Array(tokens[p ..< p + n]), cache: cache, logits_TV: &logits)
            out += logits
            p += n
            XCTAssertEqual(cache.length, p)
        }
        return out
    }

    func testCachedLogitsEqualFullForwardAtEveryPosition() throws {
        for (name, model) in try variants() {
            let T = 40
            let tokens = randomTokens(T, vocab: model.vocabSize, seed: 3)
            let full = model.logits(inputs: tokens, B: 1, T: T)
            for chunks in [[T], [Int](repeating: 1, count: T), [7, 1, 1, 12] + [Int](repeating: 1, count: T - 21)] {
                let cached = cachedLogits(model, tokens, chunks: chunks)
                var worst: Float = 0
                for i in full.indices { worst = max(worst, abs(cached[i] - full[i])) }
                XCTAssertLessThanOrEqual(worst, 1e-5, "\(name), chunks \(chunks.prefix(4))...: max |cached − full| \(worst)")
            }
        }
    }

    func testCacheCopyContinuesIndependently() throws {
        let model = try Qwen3Model(args: tinyArgs(moe: true), seed: 2)
        let V = model.vocabSize
        let tokens = randomTokens(12, vocab: V, seed: 4)
        let cache = model.makeKVCache(capacity: 14)
        var logits = [Float](repeating: 0, count: 12 * V)
        model.forwardCached(tokens: tokens, cache: cache, logits_TV: &logits)
        let copy = cache.copy()
        var a = [Float](repeating: 0, count: V), b = a, c = a
        model.forwardCached(tokens: [5], cache: cache, logits_TV: &a)
        model.forwardCached(tokens: [6], cache: copy, logits_TV: &b)   // a different continuation of the copy
        XCTAssertEqual(copy.length, 13)
        let fresh = model.makeKVCache(capacity: 14)
        var prefix = [Float](repeating: 0, count: 13 * V)
        model.forwardCached(tokens: tokens + [6], cache: fresh, logits_TV: &prefix)
        c = Array(prefix[(12 * V)...])
        for i in 0..<V { XCTAssertEqual(b[i], c[i], accuracy: 1e-5, "the copy decodes as a cache filled from scratch") }
        XCTAssertNotEqual(a, b)
    }

    func testKVCacheWidthsArePerLayerKeysAndValues() throws {
        let args = tinyArgs(moe: true)
        let model = try Qwen3Model(args: args, seed: 0)
        XCTAssertEqual(model.kvCacheWidths, [[16, 16], [16, 16]])   // n_kv_heads 2 × head_dim 8, keys and values
        XCTAssertEqual(model.maxSeqLen, args.max_seq_len)
    }
}
