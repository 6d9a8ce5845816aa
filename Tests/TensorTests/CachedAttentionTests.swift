import XCTest
import Tensor

/// attention_cached_forward (new queries at positions P ..< P+T over a key/value cache) against attention_forward over
/// the whole sequence: prefill (P = 0), one position at a time (T = 1), and chunks.
final class CachedAttentionTests: XCTestCase {
    func testMatchesFullCausalAttentionAtEveryPosition() {
        let T = 70, H = 4, KV = 2, hd = 8   // T > attentionBlockRows: the full kernel's second row block too
        var rng = SplitMix64(seed: 5)
        let q = (0..<(T * H * hd)).map { _ in rng.nextNormal() }
        let k = (0..<(T * KV * hd)).map { _ in rng.nextNormal() }
        let v = (0..<(T * KV * hd)).map { _ in rng.nextNormal() }
        var full = [Float](repeating: 0, count: T * H * hd)
        var att = [Float](repeating: 0, count: H * T * T)
        attention_forward(&full, &att, q, k, v, B: 1, T: T, H: H, KV: KV, hd: hd)

        // chunks of new positions: a prefill of 9, single positions, a chunk of 5, single positions to the end
        var chunks = [9] + [Int](repeating: 1, count: 20) + [5]
        chunks += [Int](repeating: 1, count: T - chunks.reduce(0, +))
        var P = 0
        for n in chunks {
            var out = [Float](repeating: .nan, count: n * H * hd)
            var scores = [Float](repeating: 0, count: H * n * (P + n))
            q.withUnsafeBufferPointer { qp in
                attention_cached_forward(&out, qp.baseAddress! + P * H * hd, k_SKd: k, v_SKd: v, scores_HTS: &scores,
                                         P: P, T: n, H: H, KV: KV, hd: hd)
            }
            for i in 0..<(n * H * hd) {
                XCTAssertEqual(out[i], full[P * H * hd + i], accuracy: 1e-5, "position \(P + i / (H * hd))")
            }
            P += n
        }
    }
}
