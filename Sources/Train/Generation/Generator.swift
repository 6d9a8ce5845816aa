// `titan generate`'s engine (torchtitan's generate script, HF generate()): the weights a training run starts from or
// saved, a prompt, and then one token at a time. With the KV cache the prompt runs through the model once (prefill)
// and each new token runs one position through every layer; without it every token recomputes the whole sequence
// (the reference the cache must equal). Family-independent: it needs only `IncrementalDecoding`.

import Foundation
import Model
import Runtime
import Tensor

/// One sample's outcome.
public struct GenerationResult: Equatable {
    public var promptIDs: [Int32]
    public var newIDs: [Int32]
    /// Why the sample ended: "eos" (its last token is one of the stop ids) or "length" (max_new_tokens).
    public var finishReason = "length"
    /// The prompt's forward (the prefill; with several samples, shared: each sample reports it).
    public var prefillSeconds: Double
    /// From the first new token's choice to the last's.
    public var decodeSeconds: Double
    /// New tokens over the whole time, prefill included.
    public var tokensPerSecond: Double { Double(newIDs.count) / max(prefillSeconds + decodeSeconds, 1e-12) }
    /// New tokens over the decoding time alone: what a longer prompt must not slow down (with the cache).
    public var decodeTokensPerSecond: Double { Double(newIDs.count) / max(decodeSeconds, 1e-12) }

    /// {"prompt_ids": [...], "new_ids": [...], "tokens_per_sec": ..., ...}: the line `titan generate` ends with.
    public var jsonLine: String {
        func ids(_ a: [Int32]) -> String { "[" + a.map(String.init).joined(separator: ", ") + "]" }
        func num(_ x: Double) -> String { String(format: "%.6g", x) }
        return "{\"prompt_ids\": \(ids(promptIDs)), \"new_ids\": \(ids(newIDs)), \"tokens_per_sec\": \(num(tokensPerSecond)), "
            + "\"decode_tokens_per_sec\": \(num(decodeTokensPerSecond)), \"prefill_s\": \(num(prefillSeconds)), "
            + "\"decode_s\": \(num(decodeSeconds)), \"finish_reason\": \"\(finishReason)\"}"
    }
}

public final class Generator {
    public let model: IncrementalDecoding
    public init(model: IncrementalDecoding) { self.model = model }

    /// `numSamples` continuations of `prompt`, each ending after `maxNewTokens` tokens or with the first of `stopIDs`
    /// (kept, as HF generate() keeps its eos token). `onToken(sample, token)` is called as each token is chosen (to
    /// stream text). Sample i draws from `Sampler.rng(seed:sample:)`.
    public func generate(prompt: [Int32], maxNewTokens: Int, sampling: SamplingOptions, seed: Int, numSamples: Int = 1,
                         kvCache: Bool = true, stopIDs: Set<Int32> = [],
                         onToken: (Int, Int32) -> Void = { _, _ in }) -> [GenerationResult] {
        precondition(!prompt.isEmpty && maxNewTokens >= 1 && numSamples >= 1, "generate: empty prompt or nothing to generate")
        precondition(prompt.count + maxNewTokens <= model.maxSeqLen, "generate: prompt + new tokens exceed max_seq_len")
        let V = model.vocabSize
        var logits_V = [Float](repeating: 0, count: V)

        // The prompt once: its last position's logits choose every sample's first token.
        let start = Runtime.now()
        var prefilled: KVCache?
        if kvCache {
            let cache = model.makeKVCache(capacity: prompt.count + maxNewTokens)
            var logits_TV = [Float](repeating: 0, count: prompt.count * V)
            logits_TV.withUnsafeMutableBufferPointer { model.forwardCached(tokens: prompt, cache: cache, logits_TV: $0.baseAddress!) }
            logits_V = Array(logits_TV[(prompt.count - 1) * V ..< prompt.count * V])
            prefilled = cache
        } else {
            logits_V = lastRow(model.logits(inputs: prompt, B: 1, T: prompt.count), V)
        }
        let prefillSeconds = seconds(since: start)
        let promptLogits_V = logits_V

        var results: [GenerationResult] = []
        for sample in 0..<numSamples {
            var rng = Sampler.rng(seed: seed, sample: sample)
            let cache = prefilled.map { sample == numSamples - 1 ? $0 : $0.copy() }   // the last sample may use the original
            var logits_V = promptLogits_V
            var sequence = prompt
            var newIDs: [Int32] = []
            var finishReason = "length"
            let decodeStart = Runtime.now()
            while true {
                let token = logits_V.withUnsafeBufferPointer { Sampler.next($0, sampling, rng: &rng) }
                newIDs.append(token)
                sequence.append(token)
                onToken(sample, token)
                if stopIDs.contains(token) { finishReason = "eos"; break }
                if newIDs.count == maxNewTokens { break }
                if let cache {
                    model.forwardCached(tokens: [token], cache: cache, logits_TV: &logits_V)   // one position
                } else {
                    logits_V = lastRow(model.logits(inputs: sequence, B: 1, T: sequence.count), V)   // the whole sequence
                }
            }
            results.append(GenerationResult(promptIDs: prompt, newIDs: newIDs, finishReason: finishReason,
                                            prefillSeconds: prefillSeconds, decodeSeconds: seconds(since: decodeStart)))
        }
        return results
    }

    private func lastRow(_ logits: [Float], _ V: Int) -> [Float] { Array(logits[(logits.count - V)...]) }
    private func seconds(since t: UInt64) -> Double { Double(Runtime.now() - t) / 1e9 }
}

/// Streams the text of generated tokens: each call prints what the new token adds to the decoded continuation,
/// holding back an incomplete UTF-8 sequence (decoded as U+FFFD) until the tokens that complete it arrive.
public struct TextStreamer {
    let tokenizer: Tokenizer
    var ids: [Int32] = []
    var printed = 0   // characters of the decoded continuation already printed
    public init(tokenizer: Tokenizer) { self.tokenizer = tokenizer }

    /// The text to print after `token` ("" while a character is incomplete).
    public mutating func add(_ token: Int32) -> String {
        ids.append(token)
        var text = Array(tokenizer.decode(ids))
        while text.last == "\u{FFFD}" { text.removeLast() }
        guard text.count > printed else { return "" }
        defer { printed = text.count }
        return String(text[printed...])
    }

    /// Whatever is still held back (an incomplete character at the end, printed as U+FFFD).
    public mutating func finish() -> String {
        let text = Array(tokenizer.decode(ids))
        defer { printed = text.count }
        return text.count > printed ? String(text[printed...]) : ""
    }
}
