import Tensor

// Incremental decoding (`titan generate`): a prompt runs through the model once (prefill), then every new token runs
// one position through every layer, reading what earlier positions left in a per-layer cache. What a layer caches is
// the family's business (Qwen3: its keys after RoPE and its values; DeepSeek-V3's MLA would keep the compressed
// latent and the rope key), so the cache is a list of row streams per layer whose widths the family declares, and
// the family's `forwardCached` is the only code that reads or writes them.

/// What each layer of a model keeps per position, for up to `capacity` positions; `length` positions are filled.
///   layers[l][s]: stream s of layer l, [capacity, width_s] row-major; row p belongs to position p.
public final class KVCache {
    public let capacity: Int
    /// Positions already in the cache: the next `forwardCached` starts at this position.
    public internal(set) var length = 0
    public let layers: [[Tensor]]
    /// The family's decoding scratch (activations, rope table), created by its `forwardCached` on first use and
    /// carried by the cache, so two caches (two samples) never share it.
    public var scratch: AnyObject?

    /// `widths[l]`: the row width of each stream of layer l.
    public init(capacity: Int, widths: [[Int]]) {
        precondition(capacity >= 1, "KVCache: capacity must be >= 1, got \(capacity)")
        self.capacity = capacity
        layers = widths.map { $0.map { Tensor(shape: [capacity, $0], zeroed: false) } }
    }

    /// An independent copy of the filled positions (the scratch is not copied: the copy makes its own).
    public func copy() -> KVCache {
        let c = KVCache(capacity: capacity, widths: layers.map { $0.map { $0.shape[1] } })
        for (dst, src) in zip(c.layers.joined(), layers.joined()) { copy_N(dst.data, src.data, length * src.shape[1]) }
        c.length = length
        return c
    }

    /// The family's scratch, made by `make` on first use.
    public func scratch<S: AnyObject>(orMake make: () -> S) -> S {
        if let s = scratch as? S { return s }
        let s = make()
        scratch = s
        return s
    }

    /// Checks, before a family's `forwardCached` writes anything, that `T` new positions fit this cache and the model.
    public func checkRoom(for T: Int, maxSeqLen: Int, layers: Int) {
        precondition(T >= 1, "forwardCached: no tokens")
        precondition(length + T <= min(capacity, maxSeqLen),
                     "forwardCached: positions up to \(length + T) exceed the cache (\(capacity)) or max_seq_len (\(maxSeqLen))")
        precondition(self.layers.count == layers, "forwardCached: a cache of \(self.layers.count) layers for \(layers)")
    }

    /// Marks `count` more positions filled (the family's `forwardCached` calls it after writing their rows).
    public func advance(by count: Int) {
        precondition(length + count <= capacity, "KVCache: \(length) + \(count) positions exceed its capacity \(capacity)")
        length += count
    }
}

/// What a model family implements so that `titan generate` can decode with it. Nothing else of the generator is
/// family-specific: it prefills, decodes one token at a time, and samples from the logits.
public protocol IncrementalDecoding: AnyObject {
    var vocabSize: Int { get }
    /// Longest sequence (prompt + new tokens) the model supports.
    var maxSeqLen: Int { get }
    /// Row widths of the streams each layer caches per position (one entry per layer).
    var kvCacheWidths: [[Int]] { get }
    /// Runs `tokens` as positions cache.length ..< cache.length + T (T = tokens.count >= 1) through every layer, each
    /// layer attending to the cached positions and the new ones (causally); appends the new positions' rows to the
    /// cache, advances it by T, and writes their logits to logits_TV [T, V]. The logits must equal those of a full
    /// forward over all cache.length + T tokens at the same positions (to float round-off).
    func forwardCached(tokens: [Int32], cache: KVCache, logits_TV: UnsafeMutablePointer<Float>)
    /// The full forward without a cache: logits [B·T, V] row-major (the reference the cached path must match).
    func logits(inputs: [Int32], B: Int, T: Int) -> [Float]
}

public extension IncrementalDecoding {
    /// An empty cache for up to `capacity` positions.
    func makeKVCache(capacity: Int) -> KVCache { KVCache(capacity: capacity, widths: kvCacheWidths) }
}
