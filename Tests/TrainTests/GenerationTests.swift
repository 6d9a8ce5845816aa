import Config
import Foundation
import Model
import Tensor
@testable import Train
import XCTest

/// The generator against HF transformers' generate() (greedy continuations and the logits processors' distributions,
/// KIND/generate.json made by scripts/make_hf_fixtures.py --generate-expectations), with and without the KV cache;
/// seeded sampling; the sampler's semantics on hand-made rows; bad input naming its key.
final class GenerationTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("ModelTests/Fixtures").path

    struct Expectations: Decodable {
        struct Sampling: Decodable {
            var temperature: Double; var top_k: Int?; var top_p: Double?
            var kept_ids: [Int]; var kept_probs: [Double]
        }
        struct Case: Decodable { var prompt_ids: [Int32]; var new_ids: [Int32]; var min_top2_gap: Double; var sampling: [Sampling] }
        var max_new_tokens: Int
        var cases: [Case]
    }

    func fixture(_ kind: String) throws -> (TrainableModel & IncrementalDecoding, Expectations) {
        let folder = "\(Self.fixtures)/\(kind)"
        let (args, sd, _) = try HFCheckpoint.loadModel(folder: folder)
        let model = try XCTUnwrap(try args.build(materialize: false) as? TrainableModel & IncrementalDecoding)
        try model.load(stateDict: sd, allowMissingBuffers: true)
        let e = try JSONDecoder().decode(Expectations.self, from: Data(contentsOf: URL(fileURLWithPath: folder + "/generate.json")))
        return (model, e)
    }

    func testGreedyEqualsHFGenerateWithAndWithoutKVCache() throws {
        for kind in ["qwen3_moe", "qwen3_dense", "qwen3_tied", "deepseek_v3", "deepseek_v3_q0"] {
            let (model, e) = try fixture(kind)
            for c in e.cases {
                XCTAssertGreaterThan(c.min_top2_gap, 1e-4, "\(kind): the reference's greedy choice is at round-off")
                for kv in [true, false] {
                    let r = Generator(model: model).generate(prompt: c.prompt_ids, maxNewTokens: e.max_new_tokens,
                                                             sampling: SamplingOptions(), seed: 0, kvCache: kv)
                    XCTAssertEqual(r.map(\.newIDs), [c.new_ids], "\(kind) prompt \(c.prompt_ids), kv_cache \(kv)")
                }
            }
        }
    }

    func testLogitsProcessorsMatchHF() throws {
        for kind in ["qwen3_moe", "qwen3_dense", "deepseek_v3"] {
            let (model, e) = try fixture(kind)
            for c in e.cases {
                let V = model.vocabSize
                let last = Array(model.logits(inputs: c.prompt_ids, B: 1, T: c.prompt_ids.count).suffix(V))
                for s in c.sampling {
                    let o = SamplingOptions(temperature: s.temperature, topK: s.top_k ?? 0, topP: s.top_p ?? 1)
                    let probs = Sampler.softmax(last.withUnsafeBufferPointer { Sampler.processedScores($0, o) })
                    let kept = probs.indices.filter { probs[$0] > 0 }
                    XCTAssertEqual(kept, s.kept_ids, "\(kind) \(o)")
                    if kept == s.kept_ids {
                        for (i, p) in zip(kept, s.kept_probs) { XCTAssertEqual(probs[i], p, accuracy: 1e-5, "\(kind) \(o) token \(i)") }
                    }
                }
            }
        }
    }

    func testSeededSamplingRepeatsExactlyAndDiffersAcrossSeeds() throws {
        let (model, _) = try fixture("qwen3_moe")
        let prompt: [Int32] = [1, 2, 3, 4, 5]
        let o = SamplingOptions(temperature: 1.0, topK: 50, topP: 0.95)
        func run(_ seed: Int, samples: Int, kv: Bool = true) -> [[Int32]] {
            Generator(model: model).generate(prompt: prompt, maxNewTokens: 20, sampling: o, seed: seed, numSamples: samples, kvCache: kv).map(\.newIDs)
        }
        let a = run(7, samples: 3)
        XCTAssertEqual(a, run(7, samples: 3), "the same seed repeats")
        XCTAssertEqual(a, run(7, samples: 3, kv: false), "with or without the cache")
        XCTAssertEqual(Array(a.prefix(2)), run(7, samples: 2), "sample i does not depend on how many follow it")
        XCTAssertNotEqual(a, run(8, samples: 3), "another seed draws differently")
        XCTAssertEqual(Set(a.map { $0 }).count, 3, "the samples of one run differ")
    }

    func testSamplerSemantics() {
        let row: [Float] = [1, 3, 3, 2, -1, 0]
        func kept(_ o: SamplingOptions) -> [Int] {
            let s = row.withUnsafeBufferPointer { Sampler.processedScores($0, o) }
            return s.indices.filter { s[$0] > -.infinity }
        }
        XCTAssertEqual(row.withUnsafeBufferPointer(Sampler.argmax), 1, "greedy: the first of tied maxima")
        XCTAssertEqual(kept(SamplingOptions(temperature: 1, topK: 1)), [1, 2], "top_k keeps every score tied with the k-th")
        XCTAssertEqual(kept(SamplingOptions(temperature: 1, topK: 3)), [1, 2, 3])
        XCTAssertEqual(kept(SamplingOptions(temperature: 1, topK: 0)), [0, 1, 2, 3, 4, 5], "top_k 0 is off")
        XCTAssertEqual(kept(SamplingOptions(temperature: 1, topP: 1e-6)), [2], "top_p keeps at least the most likely (last in a stable ascending sort)")
        // softmax of [1,3,3,2,-1,0], ascending: 0.0071 (4), 0.0194 (5), 0.0526 (0), 0.143 (3), 0.389 (1), 0.389 (2);
        // cumulative 0.0071, 0.0265, 0.0791, 0.222, ...: <= 0.1 drops 4, 5, 0 (HF's TopPLogitsWarper keeps [1, 2, 3] too)
        XCTAssertEqual(kept(SamplingOptions(temperature: 1, topP: 0.9)), [1, 2, 3], "drops tokens whose cumulative probability <= 1 - top_p")
        XCTAssertEqual(kept(SamplingOptions(temperature: 1, topK: 3, topP: 0.5)), [1, 2], "top_p after top_k, on what top_k left")
        // temperature scales before the filters: very hot, top_p 0.9 keeps more
        XCTAssertEqual(kept(SamplingOptions(temperature: 100, topP: 0.9)).count, 6)
        // draws: one uniform per token, the inverse CDF in index order
        var rng = SplitMix64(seed: 1)
        var counts = [Int](repeating: 0, count: row.count)
        for _ in 0..<20000 { counts[Int(row.withUnsafeBufferPointer { Sampler.next($0, SamplingOptions(temperature: 1, topK: 2), rng: &rng) })] += 1 }
        XCTAssertEqual(counts[0] + counts[3] + counts[4] + counts[5], 0, "never a removed token")
        XCTAssertEqual(Double(counts[1]) / 20000, 0.5, accuracy: 0.02)
    }

    func testStreamerHoldsBackIncompleteCharacters() {
        var s = TextStreamer(tokenizer: ByteTokenizer())
        let bytes = Array("aé€".utf8).map { Int32($0) }   // 1 + 2 + 3 bytes
        let pieces = bytes.map { s.add($0) }
        XCTAssertEqual(pieces, ["a", "", "é", "", "", "€"])
        XCTAssertEqual(s.finish(), "")
    }

    func testStreamedTextOfABPETokenizerIsTheDecodedContinuation() throws {
        let tok = try BPETokenizer(json: TokenizerTests.tokenizerJSON(preTokenizer: TokenizerTests.qwenPre))
        var s = TextStreamer(tokenizer: tok)
        let ids = tok.encode("hello world!") + [0xE2, 0x82, 0xAC, 33]   // then "€" as its three byte tokens, then "!"
        var streamed = ids.map { s.add($0) }
        streamed.append(s.finish())
        XCTAssertEqual(streamed, ["hello", " world", "!", "", "", "€", "!", ""])
        XCTAssertEqual(streamed.joined(), tok.decode(ids))
    }

    // MARK: bad input

    func resolve(_ args: [String]) throws -> JobConfig {
        guard case .run(let c) = try JobConfig.resolve(arguments: args) else { throw XCTSkip("help") }
        return c
    }

    func assertInvalid(_ args: [String], key: String, _ fragment: String, vocabSize: Int = 256,
                       file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try {
            let c = try resolve(args)
            _ = try c.generate.promptTokens(tokenizer: ByteTokenizer(), vocabSize: vocabSize, maxSeqLen: 128)
        }(), file: file, line: line) { error in
            guard case let ConfigError.invalid(k, reason) = error else { return XCTFail("\(error)", file: file, line: line) }
            XCTAssertEqual(k, key, reason, file: file, line: line)
            XCTAssertTrue(reason.contains(fragment), reason, file: file, line: line)
        }
    }

    func testBadInputNamesTheKey() {
        assertInvalid([], key: "generate.prompt_ids", "no prompt")
        assertInvalid(["--generate.prompt_ids", ""], key: "generate.prompt_ids", "empty")
        assertInvalid(["--generate.prompt", ""], key: "generate.prompt", "empty")
        assertInvalid(["--generate.prompt_ids", "1,x,3"], key: "generate.prompt_ids", "entry 1 'x'")
        assertInvalid(["--generate.prompt_ids", "1,-2"], key: "generate.prompt_ids", "entry 1 '-2'")
        assertInvalid(["--generate.prompt_ids", "1,256"], key: "generate.prompt_ids", "token 1 is 256, not < the model's vocab_size 256")
        assertInvalid(["--generate.prompt", "\u{7F}é"], key: "generate.prompt", "token 1 is 195, not < the model's vocab_size 128",
                      vocabSize: 128)   // bytes: é is 195 169
        assertInvalid(["--generate.prompt_ids", "1,2", "--generate.max_new_tokens", "127"], key: "generate.max_new_tokens", "= 129 exceed the model's max_seq_len 128")
        assertInvalid(["--generate.prompt_ids", "1", "--generate.max_new_tokens", "0"], key: "generate.max_new_tokens", ">= 1")
        assertInvalid(["--generate.prompt_ids", "1", "--generate.temperature", "-0.5"], key: "generate.temperature", ">= 0")
        assertInvalid(["--generate.prompt_ids", "1", "--generate.top_p", "0"], key: "generate.top_p", "(0, 1]")
        assertInvalid(["--generate.prompt_ids", "1", "--generate.top_p", "1.5"], key: "generate.top_p", "(0, 1]")
        assertInvalid(["--generate.prompt_ids", "1", "--generate.top_k", "-1"], key: "generate.top_k", ">= 0")
        assertInvalid(["--generate.prompt_ids", "1", "--generate.num_samples", "0"], key: "generate.num_samples", ">= 1")
        assertInvalid(["--generate.prompt_ids", "1", "--generate.prompt", "hi"], key: "generate.prompt", "not both")
    }
}
