import XCTest
import Runtime
import Tensor

final class TensorBasicsTests: XCTestCase {
    func testAllocationAlignmentAndViews() {
        let t = Tensor(shape: [3, 5])
        XCTAssertEqual(t.count, 15)
        XCTAssertEqual(Int(bitPattern: UnsafeRawPointer(t.data)) % 64, 0)
        XCTAssertEqual(t.toArray(), [Float](repeating: 0, count: 15))
        t.fill(2)
        let v = Tensor(viewOf: t, offset: 5, shape: [5])
        v.zero()
        XCTAssertEqual(t.toArray(), [2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2])
        let c = t.clone()
        t.zero()
        XCTAssertEqual(c[0], 2)
        XCTAssertEqual(c.sumOfSquares(), 40)
    }

    func testRNGDeterministicAndNormal() {
        var a = SplitMix64(seed: 7), b = SplitMix64(seed: 7)
        let xs = (0..<20000).map { _ in a.nextNormal() }
        let ys = (0..<20000).map { _ in b.nextNormal() }
        XCTAssertEqual(xs, ys)
        let mean = xs.reduce(0, +) / Float(xs.count)
        let varc = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(xs.count)
        XCTAssertEqual(mean, 0, accuracy: 0.03)
        XCTAssertEqual(varc, 1, accuracy: 0.05)
    }
}

final class KernelGradientTests: XCTestCase {
    /// Any slice of a normal stream, generated on its own, equals that slice of the whole stream (odd and even
    /// boundaries, single elements, empty ranges), and a fresh generator's fillNormal is the whole stream.
    func testNormalStreamSlices() {
        let seed: UInt64 = 0xC0FFEE, n = 41
        var whole = [Float](repeating: 0, count: n)
        var rng = SplitMix64(seed: seed)
        rng.fillNormal(&whole, n, std: 0.5)
        var direct = [Float](repeating: 0, count: n)
        SplitMix64.fillNormal(seed: seed, elements: 0..<n, into: &direct, std: 0.5)
        XCTAssertEqual(direct, whole)
        for range in [0..<1, 1..<2, 3..<10, 4..<11, 7..<8, 10..<10, 13..<41, 0..<40, 40..<41] {
            var part = [Float](repeating: .nan, count: range.count)
            part.withUnsafeMutableBufferPointer { SplitMix64.fillNormal(seed: seed, elements: range, into: $0.baseAddress ?? UnsafeMutablePointer(bitPattern: 64)!, std: 0.5) }
            XCTAssertEqual(part, Array(whole[range]), "\(range)")
        }
        XCTAssertTrue(whole.allSatisfy { $0.isFinite } && Set(whole).count == n)
    }

    func testMatmulForwardAgainstNaiveAndAccumulate() {
        var rng = SplitMix64(seed: 1)
        let T = 4, D = 5, N = 3
        let x = Buf(randn(T * D, &rng)), w = Buf(randn(N * D, &rng)), out = Buf(zeros: T * N)
        matmul_forward(out.p, x.p, w.p, T: T, D: D, N: N)
        for t in 0..<T { for n in 0..<N {
            var s: Float = 0
            for d in 0..<D { s += x.a[t * D + d] * w.a[n * D + d] }
            XCTAssertEqual(out.a[t * N + n], s, accuracy: 1e-5)
        } }
        let first = out.a
        matmul_forward(out.p, x.p, w.p, T: T, D: D, N: N, accumulate: true)
        for i in 0..<(T * N) { XCTAssertEqual(out.a[i], 2 * first[i], accuracy: 1e-5) }
    }

    func testMatmulBackward() {
        var rng = SplitMix64(seed: 2)
        let T = 5, D = 7, N = 6
        let x = Buf(randn(T * D, &rng)), w = Buf(randn(N * D, &rng)), out = Buf(zeros: T * N)
        let r = randn(T * N, &rng)
        let f = { () -> Double in matmul_forward(out.p, x.p, w.p, T: T, D: D, N: N); return dotD(out.p, r) }
        let dx = Buf(zeros: T * D), dw = Buf(zeros: N * D), dout = Buf(r)
        matmul_backward(dx_TD: dx.p, dw_ND: dw.p, dout_TN: dout.p, x_TD: x.p, w_ND: w.p, T: T, D: D, N: N)
        checkGradient("matmul dx", x: x.p, n: x.n, grad: dx.a, f: f)
        checkGradient("matmul dw", x: w.p, n: w.n, grad: dw.a, f: f)
        // accumulation: a second backward doubles the gradients
        let dx1 = dx.a
        matmul_backward(dx_TD: dx.p, dw_ND: nil, dout_TN: dout.p, x_TD: x.p, w_ND: w.p, T: T, D: D, N: N)
        for i in 0..<dx1.count { XCTAssertEqual(dx.a[i], 2 * dx1[i], accuracy: 1e-5) }
    }

    func testEmbedding() {
        var rng = SplitMix64(seed: 3)
        let V = 6, D = 4, T = 7
        let tokens: [Int32] = [0, 3, 3, 5, 1, 3, 0]
        let wte = Buf(randn(V * D, &rng)), out = Buf(zeros: T * D)
        let r = randn(T * D, &rng)
        let f = { () -> Double in
            tokens.withUnsafeBufferPointer { embedding_forward(out.p, $0.baseAddress!, wte.p, T: T, D: D, V: V) }
            return dotD(out.p, r)
        }
        _ = f()
        XCTAssertEqual(Array(out.a[4..<8]), Array(wte.a[12..<16]))
        let dwte = Buf(zeros: V * D), dout = Buf(r)
        tokens.withUnsafeBufferPointer { embedding_backward(dwte.p, dout.p, $0.baseAddress!, T: T, D: D) }
        checkGradient("embedding dwte", x: wte.p, n: wte.n, grad: dwte.a, f: f)
        XCTAssertEqual(Array(dwte.a[8..<12]), [0, 0, 0, 0])  // token 2 never used
    }

    func testRMSNorm() {
        var rng = SplitMix64(seed: 4)
        let N = 5, D = 8
        let x = Buf(randn(N * D, &rng)), w = Buf(randn(D, &rng)), out = Buf(zeros: N * D), rstd = Buf(zeros: N)
        let r = randn(N * D, &rng)
        let eps: Float = 1e-6
        let f = { () -> Double in rmsnorm_forward(out.p, rstd.p, x.p, w.p, N: N, D: D, eps: eps); return dotD(out.p, r) }
        _ = f()
        // reference
        for n in 0..<N {
            let row = Array(x.a[n * D..<(n + 1) * D])
            let ms = row.map { Double($0) * Double($0) }.reduce(0, +) / Double(D)
            for i in 0..<D { XCTAssertEqual(Double(out.a[n * D + i]), Double(row[i]) / (ms + Double(eps)).squareRoot() * Double(w.a[i]), accuracy: 1e-5) }
        }
        let dx = Buf(zeros: N * D), dw = Buf(zeros: D), dout = Buf(r)
        rmsnorm_backward(dx.p, dw.p, dout.p, x.p, w.p, rstd.p, N: N, D: D)
        checkGradient("rmsnorm dx", x: x.p, n: x.n, grad: dx.a, eps: 3e-3, f: f)
        checkGradient("rmsnorm dw", x: w.p, n: w.n, grad: dw.a, eps: 3e-3, f: f)
        // overwriteDx writes what accumulating onto zeros gives, whatever dx held; accumulating adds to what it held
        let junk = randn(N * D, &rng)
        let over = Buf(junk), acc = Buf(junk)
        rmsnorm_backward(over.p, nil, dout.p, x.p, w.p, rstd.p, N: N, D: D, overwriteDx: true)
        rmsnorm_backward(acc.p, nil, dout.p, x.p, w.p, rstd.p, N: N, D: D)
        XCTAssertEqual(over.a, dx.a)
        for i in 0..<(N * D) { XCTAssertEqual(acc.a[i], junk[i] + dx.a[i]) }
    }

    func testRoPE() {
        var rng = SplitMix64(seed: 5)
        let B = 2, T = 6, H = 3, hd = 8, P = hd / 2
        let theta: Float = 10000
        let cosT = Buf(zeros: T * P), sinT = Buf(zeros: T * P)
        rope_table(cos_TP: cosT.p, sin_TP: sinT.p, T: T, headDim: hd, theta: theta)
        let n = B * T * H * hd
        let x = Buf(randn(n, &rng)), out = Buf(zeros: n)
        let r = randn(n, &rng)
        let f = { () -> Double in
            rope_forward(out.p, x.p, cos_TP: cosT.p, sin_TP: sinT.p, B: B, T: T, H: H, hd: hd); return dotD(out.p, r)
        }
        _ = f()
        // reference: HF q*cos + rotate_half(q)*sin with cos = cat(freqs, freqs)
        for b in 0..<B { for t in 0..<T { for h in 0..<H {
            let off = ((b * T + t) * H + h) * hd
            for i in 0..<hd {
                let fi = i % P
                let ang = Double(t) / pow(Double(theta), Double(2 * fi) / Double(hd))
                let rot = i < P ? -Double(x.a[off + i + P]) : Double(x.a[off + i - P])
                let ref = Double(x.a[off + i]) * cos(ang) + rot * sin(ang)
                XCTAssertEqual(Double(out.a[off + i]), ref, accuracy: 1e-4)
            }
        } } }
        // in place gives the same result
        let y = Buf(x.a)
        rope_forward(y.p, y.p, cos_TP: cosT.p, sin_TP: sinT.p, B: B, T: T, H: H, hd: hd)
        XCTAssertEqual(y.a, out.a)
        let dx = Buf(zeros: n), dout = Buf(r)
        rope_backward(dx.p, dout.p, cos_TP: cosT.p, sin_TP: sinT.p, B: B, T: T, H: H, hd: hd)
        checkGradient("rope dx", x: x.p, n: n, grad: dx.a, f: f)
        let junk = randn(n, &rng)
        let over = Buf(junk), acc = Buf(junk)
        rope_backward(over.p, dout.p, cos_TP: cosT.p, sin_TP: sinT.p, B: B, T: T, H: H, hd: hd, overwrite: true)
        rope_backward(acc.p, dout.p, cos_TP: cosT.p, sin_TP: sinT.p, B: B, T: T, H: H, hd: hd)
        XCTAssertEqual(over.a, dx.a)
        for i in 0..<n { XCTAssertEqual(acc.a[i], junk[i] + dx.a[i]) }
    }

    func testAttentionForwardReferenceAndGradients() {
        attentionCase(B: 2, T: 5, H: 4, KV: 2, hd: 4)
    }

    /// More rows than one query block (attentionBlockRows), with a ragged last block.
    func testAttentionMultiBlock() {
        attentionCase(B: 1, T: attentionBlockRows * 2 + 3, H: 2, KV: 1, hd: 4, maxChecks: 60)
    }

    /// Head dims of the real models: 32 (full 32-column tiles in the value GEMMs), 24 (a masked second half), and 128
    /// with more keys than 64Ki / 128 (score GEMMs whose Kᵀ is too large for the AVX-512 kernel: BLIS or OpenBLAS).
    func testAttentionModelHeadDims() {
        attentionCase(B: 1, T: attentionBlockRows + 9, H: 2, KV: 1, hd: 32, maxChecks: 30)
        attentionCase(B: 2, T: 70, H: 2, KV: 2, hd: 24, maxChecks: 30)
        attentionCase(B: 1, T: 520, H: 2, KV: 1, hd: 128, checkGradients: false)
    }

    func attentionCase(B: Int, T: Int, H: Int, KV: Int, hd: Int, maxChecks: Int = 80, checkGradients: Bool = true) {
        var rng = SplitMix64(seed: 6)
        let q = Buf(randn(B * T * H * hd, &rng)), k = Buf(randn(B * T * KV * hd, &rng)), v = Buf(randn(B * T * KV * hd, &rng))
        let out = Buf(zeros: B * T * H * hd), att = Buf(zeros: B * H * T * T)
        let r = randn(out.n, &rng)
        let f = { () -> Double in
            attention_forward(out.p, att.p, q.p, k.p, v.p, B: B, T: T, H: H, KV: KV, hd: hd); return dotD(out.p, r)
        }
        _ = f()
        // naive reference
        let qa = q.a, ka = k.a, va = v.a, oa = out.a
        for b in 0..<B { for h in 0..<H {
            let g = h / (H / KV)
            for t in 0..<T {
                var s = [Double](repeating: 0, count: t + 1)
                for j in 0...t {
                    var d = 0.0
                    for i in 0..<hd { d += Double(qa[((b * T + t) * H + h) * hd + i]) * Double(ka[((b * T + j) * KV + g) * hd + i]) }
                    s[j] = d / Double(hd).squareRoot()
                }
                let m = s.max()!
                let e = s.map { exp($0 - m) }
                let z = e.reduce(0, +)
                for i in 0..<hd {
                    var o = 0.0
                    for j in 0...t { o += e[j] / z * Double(va[((b * T + j) * KV + g) * hd + i]) }
                    XCTAssertEqual(Double(oa[((b * T + t) * H + h) * hd + i]), o, accuracy: 1e-5)
                }
            }
        } }
        guard checkGradients else { return }
        // dq, dk, dv are written, not accumulated: they start as NaN
        let dq = Buf([Float](repeating: .nan, count: q.n)), dk = Buf([Float](repeating: .nan, count: k.n))
        let dv = Buf([Float](repeating: .nan, count: v.n)), scratch = Buf(zeros: B * H * T * T), dout = Buf(r)
        attention_backward(dq_BTHd: dq.p, dk_BTKd: dk.p, dv_BTKd: dv.p, scratch_BHTT: scratch.p, dout_BTHd: dout.p, att_BHTT: att.p,
                           q_BTHd: q.p, k_BTKd: k.p, v_BTKd: v.p, B: B, T: T, H: H, KV: KV, hd: hd)
        checkGradient("attention dq", x: q.p, n: q.n, grad: dq.a, eps: 3e-3, maxChecks: maxChecks, f: f)
        checkGradient("attention dk", x: k.p, n: k.n, grad: dk.a, eps: 3e-3, maxChecks: maxChecks, f: f)
        checkGradient("attention dv", x: v.p, n: v.n, grad: dv.a, eps: 3e-3, maxChecks: maxChecks, f: f)
        XCTAssertFalse(dq.a.contains { $0.isNaN } || dk.a.contains { $0.isNaN } || dv.a.contains { $0.isNaN },
                       "attention_backward left part of dq / dk / dv unwritten")
        // probabilities: rows sum to 1, zero above the diagonal
        let pa = att.a
        for bh in 0..<(B * H) { for t in 0..<T {
            var s: Float = 0
            for j in 0..<T { let p = pa[(bh * T + t) * T + j]; if j > t { XCTAssertEqual(p, 0) }; s += p }
            XCTAssertEqual(s, 1, accuracy: 1e-5)
        } }
    }

    func testSwiGLU() {
        var rng = SplitMix64(seed: 7)
        let n = 40
        let g = Buf(randn(n, &rng, std: 2)), u = Buf(randn(n, &rng)), out = Buf(zeros: n)
        let r = randn(n, &rng)
        let f = { () -> Double in swiglu_forward(out.p, g.p, u.p, n); return dotD(out.p, r) }
        _ = f()
        for i in 0..<n { XCTAssertEqual(out.a[i], g.a[i] / (1 + exp(-g.a[i])) * u.a[i], accuracy: 1e-5) }
        let dg = Buf(zeros: n), du = Buf(zeros: n), dout = Buf(r)
        swiglu_backward(dg.p, du.p, dout.p, g.p, u.p, n)
        checkGradient("swiglu dgate", x: g.p, n: n, grad: dg.a, eps: 3e-3, f: f)
        checkGradient("swiglu dup", x: u.p, n: n, grad: du.a, eps: 3e-3, f: f)
    }

    /// The bfloat16-writing SwiGLU kernels (mixed precision) write exactly the fp32 kernels' values rounded to nearest
    /// even, over several chunks, a scalar tail and the kernel threads' split.
    func testSwiGLUWritesRoundedValuesInBFloat16() {
        var rng = SplitMix64(seed: 9)
        let n = 3 * 512 + 77
        let g = Buf(randn(n, &rng, std: 2)), u = Buf(randn(n, &rng)), dout = Buf(randn(n, &rng))
        let before = KernelThreads.count
        defer { BLAS.setThreads(before) }
        for threads in [1, 2] {
            BLAS.setThreads(threads)
            let out = Buf(zeros: n), dg = Buf(zeros: n), du = Buf(zeros: n)
            swiglu_forward(out.p, g.p, u.p, n)
            swiglu_backward(dg.p, du.p, dout.p, g.p, u.p, n, overwrite: true)
            var out16 = [UInt16](repeating: 0, count: n), dg16 = out16, du16 = out16
            swiglu_forward(&out16, g.p, u.p, n)
            swiglu_backward(&dg16, &du16, dout.p, g.p, u.p, n)
            for (want, got) in [(out, out16), (dg, dg16), (du, du16)] {
                var rounded = [UInt16](repeating: 0, count: n)
                to_bf16(want.p, into: &rounded, n)
                XCTAssertEqual(got, rounded, "\(threads) thread(s)")
            }
        }
    }

    func testRouterScores() {
        for sig in [false, true] {
            var rng = SplitMix64(seed: 8)
            let T = 4, E = 6
            let l = Buf(randn(T * E, &rng)), s = Buf(zeros: T * E)
            let r = randn(T * E, &rng)
            let f = { () -> Double in router_scores_forward(s.p, l.p, T: T, E: E, sigmoid: sig); return dotD(s.p, r) }
            _ = f()
            if !sig { for t in 0..<T { XCTAssertEqual(s.a[t * E..<(t + 1) * E].reduce(0, +), 1, accuracy: 1e-5) } }
            let dl = Buf(zeros: T * E), ds = Buf(r)
            router_scores_backward(dl.p, ds.p, s.p, T: T, E: E, sigmoid: sig)
            checkGradient("router scores dlogits (sigmoid=\(sig))", x: l.p, n: l.n, grad: dl.a, eps: 3e-3, f: f)
        }
    }

    func testTopKSelectionTiesAndBias() {
        let T = 2, E = 5, K = 2
        let scores: [Float] = [0.1, 0.3, 0.3, 0.2, 0.1,
                               0.5, 0.1, 0.1, 0.1, 0.2]
        var idx = [Int32](repeating: -1, count: T * K)
        var gate = [Float](repeating: 0, count: T * K)
        scores.withUnsafeBufferPointer { s in
            topk_forward(&idx, &gate, s.baseAddress!, bias_E: nil, T: T, E: E, K: K, routeNorm: false, routeScale: 1)
        }
        XCTAssertEqual(idx, [1, 2, 0, 4])
        XCTAssertEqual(gate, [0.3, 0.3, 0.5, 0.2])
        // all equal: lowest indices win
        let flat = [Float](repeating: 0.2, count: E)
        var idx1 = [Int32](repeating: -1, count: 3), gate1 = [Float](repeating: 0, count: 3)
        flat.withUnsafeBufferPointer { topk_forward(&idx1, &gate1, $0.baseAddress!, bias_E: nil, T: 1, E: E, K: 3, routeNorm: true, routeScale: 2) }
        XCTAssertEqual(idx1, [0, 1, 2])
        for g in gate1 { XCTAssertEqual(g, 2.0 / 3.0, accuracy: 1e-6) }
        // bias changes the choice but not the gate values
        let bias: [Float] = [0, 0, 0, 1, 0]
        scores.withUnsafeBufferPointer { s in bias.withUnsafeBufferPointer { b in
            topk_forward(&idx, &gate, s.baseAddress!, bias_E: b.baseAddress!, T: T, E: E, K: K, routeNorm: false, routeScale: 1)
        } }
        XCTAssertEqual(idx, [3, 1, 3, 0])
        XCTAssertEqual(gate, [0.2, 0.3, 0.1, 0.5])
    }

    func testTopKGateGradients() {
        for (norm, scale) in [(true, Float(1)), (false, Float(1)), (true, Float(2.5))] {
            var rng = SplitMix64(seed: 9)
            let T = 4, E = 6, K = 3
            // well separated scores: a small perturbation never changes the selection
            var sv = [Float]()
            for _ in 0..<T {
                var row = (0..<E).map { Float($0) * 0.15 + 0.05 }
                for i in stride(from: E - 1, to: 0, by: -1) { row.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
                sv += row
            }
            let s = Buf(sv)
            var idx = [Int32](repeating: 0, count: T * K)
            let g = Buf(zeros: T * K)
            let r = randn(T * K, &rng)
            let f = { () -> Double in
                topk_forward(&idx, g.p, s.p, bias_E: nil, T: T, E: E, K: K, routeNorm: norm, routeScale: scale)
                return dotD(g.p, r)
            }
            _ = f()
            let ds = Buf(zeros: T * E), dg = Buf(r)
            topk_backward(ds.p, dg.p, s.p, idx, T: T, E: E, K: K, routeNorm: norm, routeScale: scale)
            checkGradient("topk gate dscores (norm=\(norm), scale=\(scale))", x: s.p, n: s.n, grad: ds.a, eps: 1e-3, f: f)
        }
    }

    func testCrossEntropy() {
        var rng = SplitMix64(seed: 10)
        let T = 5, V = 7
        let logits = Buf(randn(T * V, &rng, std: 2))
        let labels: [Int32] = [3, -100, 0, 6, 3]
        let scale: Float = 0.25
        let f = { () -> Double in
            labels.withUnsafeBufferPointer {
                crossentropy_forward_backward(dlogits_TV: nil, logits_TV: logits.p, labels_T: $0.baseAddress!, T: T, V: V, dlossScale: 1).lossSum
            } * Double(scale)
        }
        // reference loss
        var ref = 0.0
        for t in 0..<T where labels[t] >= 0 {
            let row = logits.a[t * V..<(t + 1) * V].map { Double($0) }
            let m = row.max()!
            ref += m + log(row.map { exp($0 - m) }.reduce(0, +)) - row[Int(labels[t])]
        }
        let d = Buf(zeros: T * V)
        let (sum, count) = labels.withUnsafeBufferPointer {
            crossentropy_forward_backward(dlogits_TV: d.p, logits_TV: logits.p, labels_T: $0.baseAddress!, T: T, V: V, dlossScale: scale)
        }
        XCTAssertEqual(count, 4)
        XCTAssertEqual(sum, ref, accuracy: 1e-5)
        XCTAssertEqual(Array(d.a[V..<2 * V]), [Float](repeating: 0, count: V))
        checkGradient("cross-entropy dlogits", x: logits.p, n: logits.n, grad: d.a, eps: 3e-3, f: f)
        // in place (dlogits aliases logits)
        let inplace = Buf(logits.a)
        let (sum2, _) = labels.withUnsafeBufferPointer {
            crossentropy_forward_backward(dlogits_TV: inplace.p, logits_TV: inplace.p, labels_T: $0.baseAddress!, T: T, V: V, dlossScale: scale)
        }
        XCTAssertEqual(sum2, sum)
        XCTAssertEqual(inplace.a, d.a)
    }
}
