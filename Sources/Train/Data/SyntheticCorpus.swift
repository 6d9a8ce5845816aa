import Tensor

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
