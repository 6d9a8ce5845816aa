// Choosing the next token from a row of logits, as HF transformers' generate() does:
//   greedy (temperature 0, HF do_sample=False): the first index of the largest logit (torch.argmax);
//   sampling: HF's logits processors in HF's order, then one draw from the softmax of what is left:
//     1. temperature   scores = logits / temperature                                   (TemperatureLogitsWarper)
//     2. top_k > 0     scores < the k-th largest score → -inf; ties with it are kept      (TopKLogitsWarper)
//     3. top_p < 1     sort ascending, cumulative softmax; drop tokens whose cumulative probability is
//                      <= 1 - top_p, always keeping the most likely one (min_tokens_to_keep = 1)  (TopPLogitsWarper)
//     4. probs = softmax(scores); the token is the first index whose running sum of probs (index order, Double)
//        exceeds u · Σprobs, u uniform in [0, 1) from the sample's generator.
// Ties in top_p's sort are ordered by token index (a stable sort), so the set kept is defined; torch.sort leaves
// their order unspecified. The draws cannot repeat torch.multinomial's: only the distribution is HF's.
//
// The RNG is Tensor's SplitMix64. Sample i of a run with seed s draws from SplitMix64(seed: x_i), where x_i is the
// i-th output of SplitMix64(seed: s): samples are independent streams, sample i's tokens do not depend on how many
// samples come before it, and one u = nextDouble() (53 random bits) is drawn per generated token.

import Foundation
import Tensor

public struct SamplingOptions: Equatable, Sendable {
    public var temperature: Double
    public var topK: Int
    public var topP: Double
    public init(temperature: Double = 0, topK: Int = 0, topP: Double = 1) {
        self.temperature = temperature; self.topK = topK; self.topP = topP
    }
    public var isGreedy: Bool { temperature == 0 }
}

public enum Sampler {
    /// The generator of sample `index` of a run seeded with `seed` (see the header).
    public static func rng(seed: Int, sample index: Int) -> SplitMix64 {
        var master = SplitMix64(seed: UInt64(bitPattern: Int64(seed)))
        var x: UInt64 = 0
        for _ in 0...index { x = master.next() }
        return SplitMix64(seed: x)
    }

    /// The first index of the largest value (torch.argmax). NaN is never chosen over a number.
    public static func argmax(_ logits_V: UnsafeBufferPointer<Float>) -> Int32 {
        var best = 0
        for i in 1..<logits_V.count where logits_V[i] > logits_V[best] || (logits_V[best].isNaN && !logits_V[i].isNaN) { best = i }
        return Int32(best)
    }

    /// The scores after temperature, top_k and top_p (removed tokens at -inf), as HF's processors leave them.
    public static func processedScores(_ logits_V: UnsafeBufferPointer<Float>, _ o: SamplingOptions) -> [Float] {
        precondition(o.temperature > 0, "processedScores: temperature must be > 0 (0 is greedy)")
        let V = logits_V.count
        var scores = [Float](repeating: 0, count: V)
        let t = Float(o.temperature)
        for i in 0..<V { scores[i] = o.temperature == 1 ? logits_V[i] : logits_V[i] / t }
        if o.topK > 0 && o.topK < V {
            let kth = scores.sorted(by: >)[o.topK - 1]
            for i in 0..<V where scores[i] < kth { scores[i] = -.infinity }
        }
        if o.topP < 1 {
            let order = (0..<V).sorted { scores[$0] < scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }   // ascending, stable
            let probs = softmax(order.map { scores[$0] })
            var cumulative = 0.0
            for (r, i) in order.enumerated() where r < V - 1 {   // the last (most likely) token is always kept
                cumulative += probs[r]
                if cumulative <= 1 - o.topP { scores[i] = -.infinity }
            }
        }
        return scores
    }

    /// softmax in Double (removed tokens, -inf, get 0).
    static func softmax(_ x: [Float]) -> [Double] {
        let m = x.max() ?? 0
        var e = x.map { $0 == -.infinity ? 0 : exp(Double($0 - m)) }
        let s = e.reduce(0, +)
        for i in e.indices { e[i] /= s }
        return e
    }

    /// The next token: argmax when greedy, else one draw (see the header).
    public static func next(_ logits_V: UnsafeBufferPointer<Float>, _ o: SamplingOptions, rng: inout SplitMix64) -> Int32 {
        if o.isGreedy { return argmax(logits_V) }
        let probs = softmax(processedScores(logits_V, o))
        let u = rng.nextDouble() * probs.reduce(0, +)
        var cumulative = 0.0
        var last = 0
        for (i, p) in probs.enumerated() where p > 0 {
            cumulative += p
            last = i
            if cumulative > u { return Int32(i) }
        }
        return Int32(last)   // u within round-off of the total: the last token that may be drawn
    }
}
