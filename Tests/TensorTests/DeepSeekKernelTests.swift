import XCTest
import Tensor

/// The kernels DeepSeek-V3 adds: rope on a slice of each head (interleaved pairs or rotate-half, YaRN tables),
/// attention whose values are narrower than its queries and keys with a given softmax scale, group-limited top-k.
final class DeepSeekKernelTests: XCTestCase {
    func testRopeSliceMatchesRopeAndInterleavedReferenceWithGradients() {
        var rng = SplitMix64(seed: 21)
        let B = 2, T = 5, H = 3, Dn = 3, rd = 6, stride = Dn + rd, P = rd / 2
        let inv: [Float] = [1, 0.3, 0.05]
        let cosT = Buf(zeros: T * P), sinT = Buf(zeros: T * P)
        rope_table(cos_TP: cosT.p, sin_TP: sinT.p, T: T, invFreq_P: inv, attentionFactor: 1.25)
        for t in 0..<T { for i in 0..<P {
            XCTAssertEqual(cosT.a[t * P + i], cosf(Float(t) * inv[i]) * 1.25)
            XCTAssertEqual(sinT.a[t * P + i], sinf(Float(t) * inv[i]) * 1.25)
        } }
        let n = B * T * H * stride
        let x = Buf(randn(n, &rng))
        for interleaved in [false, true] {
            let out = Buf([Float](repeating: .nan, count: n))
            let r = randn(n, &rng)
            // only the rope slots of `out` are written; the objective reads those
            var mask = [Float](repeating: 0, count: n)
            for row in 0..<(B * T * H) { for i in 0..<rd { mask[row * stride + Dn + i] = r[row * stride + Dn + i] } }
            let f = { () -> Double in
                rope_slice_forward(out.p + Dn, outStride: stride, x.p + Dn, xStride: stride, cos_TP: cosT.p, sin_TP: sinT.p,
                                   B: B, T: T, H: H, rd: rd, interleaved: interleaved)
                var s = 0.0
                for i in 0..<n where mask[i] != 0 { s += Double(out.p[i]) * Double(mask[i]) }
                return s
            }
            _ = f()
            let xa = x.a, oa = out.a
            for bt in 0..<(B * T) { for h in 0..<H {
                let t = bt % T, base = (bt * H + h) * stride + Dn
                for i in 0..<P {
                    let c = Double(cosT.a[t * P + i]), s = Double(sinT.a[t * P + i])
                    let x1 = Double(interleaved ? xa[base + 2 * i] : xa[base + i]), x2 = Double(interleaved ? xa[base + 2 * i + 1] : xa[base + i + P])
                    XCTAssertEqual(Double(oa[base + i]), x1 * c - x2 * s, accuracy: 1e-5)
                    XCTAssertEqual(Double(oa[base + i + P]), x2 * c + x1 * s, accuracy: 1e-5)
                }
                for i in 0..<Dn { XCTAssertTrue(oa[(bt * H + h) * stride + i].isNaN, "nope slots must be left alone") }
            } }
            let dx = Buf(zeros: n), dout = Buf(mask)
            rope_slice_backward(dx.p + Dn, dxStride: stride, dout.p + Dn, doutStride: stride, cos_TP: cosT.p, sin_TP: sinT.p,
                                B: B, T: T, H: H, rd: rd, interleaved: interleaved)
            checkGradient("rope slice dx (interleaved \(interleaved))", x: x.p, n: n, grad: dx.a, eps: 1e-2, f: f)
            // accumulate adds onto what is there
            let acc = Buf([Float](repeating: 1, count: n))
            rope_slice_backward(acc.p + Dn, dxStride: stride, dout.p + Dn, doutStride: stride, cos_TP: cosT.p, sin_TP: sinT.p,
                                B: B, T: T, H: H, rd: rd, interleaved: interleaved, accumulate: true)
            for i in 0..<n { XCTAssertEqual(acc.a[i], (i % stride) < Dn ? 1 : 1 + dx.a[i]) }
        }
        // rotate-half over a whole head with the default table is rope_forward
        let hd = 8, m = B * T * H * hd
        let c2 = Buf(zeros: T * 4), s2 = Buf(zeros: T * 4), c3 = Buf(zeros: T * 4), s3 = Buf(zeros: T * 4)
        rope_table(cos_TP: c2.p, sin_TP: s2.p, T: T, headDim: hd, theta: 10000)
        rope_table(cos_TP: c3.p, sin_TP: s3.p, T: T, invFreq_P: (0..<4).map { 1 / powf(10000, Float(2 * $0) / Float(hd)) }, attentionFactor: 1)
        XCTAssertEqual(c2.a, c3.a); XCTAssertEqual(s2.a, s3.a)
        let y = Buf(randn(m, &rng)), o1 = Buf(zeros: m), o2 = Buf(zeros: m)
        rope_forward(o1.p, y.p, cos_TP: c2.p, sin_TP: s2.p, B: B, T: T, H: H, hd: hd)
        rope_slice_forward(o2.p, outStride: hd, y.p, xStride: hd, cos_TP: c2.p, sin_TP: s2.p, B: B, T: T, H: H, rd: hd, interleaved: false)
        XCTAssertEqual(o1.a, o2.a)
    }

    /// Queries and keys of width hd, values of width vd (MLA), softmax scale given: against a naive reference, and
    /// finite-difference gradients.
    func testAttentionWithNarrowerValuesAndGivenScale() {
        var rng = SplitMix64(seed: 22)
        let B = 2, T = 7, H = 3, hd = 6, vd = 4, scale: Float = 0.37
        let q = Buf(randn(B * T * H * hd, &rng)), k = Buf(randn(B * T * H * hd, &rng)), v = Buf(randn(B * T * H * vd, &rng))
        let out = Buf(zeros: B * T * H * vd), att = Buf(zeros: B * H * T * T)
        let r = randn(out.n, &rng)
        let f = { () -> Double in
            attention_forward(out.p, att.p, q.p, k.p, v.p, B: B, T: T, H: H, KV: H, hd: hd, vd: vd, scale: scale); return dotD(out.p, r)
        }
        _ = f()
        let qa = q.a, ka = k.a, va = v.a, oa = out.a
        for b in 0..<B { for h in 0..<H { for t in 0..<T {
            var s = [Double](repeating: 0, count: t + 1)
            for j in 0...t {
                var d = 0.0
                for i in 0..<hd { d += Double(qa[((b * T + t) * H + h) * hd + i]) * Double(ka[((b * T + j) * H + h) * hd + i]) }
                s[j] = d * Double(scale)
            }
            let mx = s.max()!
            let e = s.map { exp($0 - mx) }, z = e.reduce(0, +)
            for i in 0..<vd {
                var o = 0.0
                for j in 0...t { o += e[j] / z * Double(va[((b * T + j) * H + h) * vd + i]) }
                XCTAssertEqual(Double(oa[((b * T + t) * H + h) * vd + i]), o, accuracy: 1e-5)
            }
        } } }
        let dq = Buf([Float](repeating: .nan, count: q.n)), dk = Buf([Float](repeating: .nan, count: k.n))
        let dv = Buf([Float](repeating: .nan, count: v.n)), scratch = Buf(zeros: B * H * T * T), dout = Buf(r)
        attention_backward(dq_BTHd: dq.p, dk_BTKd: dk.p, dv_BTKd: dv.p, scratch_BHTT: scratch.p, dout_BTHd: dout.p, att_BHTT: att.p,
                           q_BTHd: q.p, k_BTKd: k.p, v_BTKd: v.p, B: B, T: T, H: H, KV: H, hd: hd, vd: vd, scale: scale)
        checkGradient("mla attention dq", x: q.p, n: q.n, grad: dq.a, eps: 3e-3, f: f)
        checkGradient("mla attention dk", x: k.p, n: k.n, grad: dk.a, eps: 3e-3, f: f)
        checkGradient("mla attention dv", x: v.p, n: v.n, grad: dv.a, eps: 3e-3, f: f)
    }

    /// 8 experts in 4 groups: a group's score is its top-2 sum (biased), only the best 2 groups compete.
    func testGroupLimitedTopK() {
        //                 group 0      group 1      group 2      group 3
        let scores: [Float] = [0.90, 0.10, 0.50, 0.45, 0.80, 0.05, 0.46, 0.44]
        // group sums: 1.00, 0.95, 0.85, 0.90 → groups 0 and 1
        var idx = [Int32](repeating: -1, count: 3), gate = [Float](repeating: 0, count: 3)
        scores.withUnsafeBufferPointer {
            topk_forward(&idx, &gate, $0.baseAddress!, bias_E: nil, T: 1, E: 8, K: 3, routeNorm: false, routeScale: 1, groups: 4, topkGroups: 2)
        }
        XCTAssertEqual(idx, [0, 2, 3])   // expert 4 (0.80) is outside the kept groups
        XCTAssertEqual(gate, [0.90, 0.50, 0.45])
        scores.withUnsafeBufferPointer {
            topk_forward(&idx, &gate, $0.baseAddress!, bias_E: nil, T: 1, E: 8, K: 3, routeNorm: false, routeScale: 1)
        }
        XCTAssertEqual(idx, [0, 4, 2])
        // the bias moves group 3 ahead (0.56 + 0.54 = 1.10) and experts 6, 7 into the top-k; gates stay unbiased
        let bias: [Float] = [0, 0, 0, 0, 0, 0, 0.1, 0.1]
        scores.withUnsafeBufferPointer { s in bias.withUnsafeBufferPointer { b in
            topk_forward(&idx, &gate, s.baseAddress!, bias_E: b.baseAddress!, T: 1, E: 8, K: 3, routeNorm: true, routeScale: 2.5, groups: 4, topkGroups: 2)
        } }
        XCTAssertEqual(idx, [0, 6, 7])
        let sum: Float = 0.90 + 0.46 + 0.44
        XCTAssertEqual(gate[0], 0.90 / (sum + 1e-20) * 2.5)
        XCTAssertEqual(gate[1], 0.46 / (sum + 1e-20) * 2.5)
        // gradients with groups: well separated scores, a perturbation never changes the choice
        var rng = SplitMix64(seed: 23)
        let T = 4, E = 8, K = 3
        var sv = [Float]()
        for _ in 0..<T {
            var row = (0..<E).map { Float($0) * 0.11 + 0.03 }
            for i in Swift.stride(from: E - 1, to: 0, by: -1) { row.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
            sv += row
        }
        let s = Buf(sv), g = Buf(zeros: T * K)
        var ids = [Int32](repeating: 0, count: T * K)
        let r = randn(T * K, &rng)
        let f = { () -> Double in
            topk_forward(&ids, g.p, s.p, bias_E: nil, T: T, E: E, K: K, routeNorm: true, routeScale: 2.5, groups: 4, topkGroups: 2)
            return dotD(g.p, r)
        }
        _ = f()
        let ds = Buf(zeros: T * E), dg = Buf(r)
        topk_backward(ds.p, dg.p, s.p, ids, T: T, E: E, K: K, routeNorm: true, routeScale: 2.5)
        checkGradient("group-limited topk dscores", x: s.p, n: s.n, grad: ds.a, eps: 1e-3, f: f)
    }
}
