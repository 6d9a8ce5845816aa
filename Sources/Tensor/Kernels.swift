// Element-wise and normalisation kernels, forward and backward.
// Conventions: shape-suffixed names; backward kernels ACCUMULATE (+=) into gradient buffers.

import CKernels
import Runtime

// MARK: - vector helpers

/// y_N = 0, split over the kernel threads when large.
public func zero_N(_ y_N: UnsafeMutablePointer<Float>, _ n: Int) {
    parallelFor(n) { r in (y_N + r.lowerBound).update(repeating: 0, count: r.count) }
}

/// y_N = x_N, split over the kernel threads when large.
public func copy_N(_ y_N: UnsafeMutablePointer<Float>, _ x_N: UnsafePointer<Float>, _ n: Int) {
    parallelFor(n, costPerItem: 2) { r in (y_N + r.lowerBound).update(from: x_N + r.lowerBound, count: r.count) }
}

/// y_N += x_N
@inline(__always)
public func add_inplace(_ y_N: UnsafeMutablePointer<Float>, _ x_N: UnsafePointer<Float>, _ n: Int) {
    for i in 0..<n { y_N[i] += x_N[i] }
}

/// y_N += a · x_N
@inline(__always)
public func axpy(_ y_N: UnsafeMutablePointer<Float>, _ a: Float, _ x_N: UnsafePointer<Float>, _ n: Int) {
    for i in 0..<n { y_N[i] += a * x_N[i] }
}

/// Σ a_N·b_N with Float accumulation in 8 lanes (deterministic order).
@inline(__always)
public func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n {
        let va = UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self)
        let vb = UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self)
        acc += va * vb
        i += 8
    }
    var s = acc.sum()
    while i < n { s += a[i] * b[i]; i += 1 }
    return s
}

// MARK: - embedding

/// out_TD[t] = wte_VD[tokens_T[t]]
public func embedding_forward(_ out_TD: UnsafeMutablePointer<Float>, _ tokens_T: UnsafePointer<Int32>, _ wte_VD: UnsafePointer<Float>,
                              T: Int, D: Int, V: Int) {
    for t in 0..<T {
        let tok = Int(tokens_T[t])
        precondition(tok >= 0 && tok < V, "embedding: token id \(tok) at position \(t) outside the vocabulary [0, \(V))")
    }
    parallelFor(T, costPerItem: D) { r in
        for t in r { (out_TD + t * D).update(from: wte_VD + Int(tokens_T[t]) * D, count: D) }
    }
}

/// dwte_VD[tokens_T[t]] += dout_TD[t]  (scatter-add, in token order: deterministic)
public func embedding_backward(_ dwte_VD: UnsafeMutablePointer<Float>, _ dout_TD: UnsafePointer<Float>, _ tokens_T: UnsafePointer<Int32>,
                               T: Int, D: Int) {
    for t in 0..<T {
        add_inplace(dwte_VD + Int(tokens_T[t]) * D, dout_TD + t * D, D)
    }
}

// MARK: - RMSNorm

/// out_ND = x_ND · rsqrt(mean(x²) + eps) · w_D ; rstd_N saved for backward.
public func rmsnorm_forward(_ out_ND: UnsafeMutablePointer<Float>, _ rstd_N: UnsafeMutablePointer<Float>,
                            _ x_ND: UnsafePointer<Float>, _ w_D: UnsafePointer<Float>, N: Int, D: Int, eps: Float) {
    parallelFor(N, costPerItem: 2 * D) { rows in
        for n in rows {
            let x = x_ND + n * D
            let ms = dot(x, x, D) / Float(D)
            let r = 1 / (ms + eps).squareRoot()
            rstd_N[n] = r
            let o = out_ND + n * D
            for i in 0..<D { o[i] = (x[i] * r) * w_D[i] }
        }
    }
}

/// dx_ND += rstd·(w·dy − x̂·mean(w·dy·x̂)),  dw_D += Σ_n dy·x̂,  with x̂ = x·rstd. `overwriteDx` writes dx_ND
/// instead of adding to it (the same values as zeroing it first, without the zeroing pass).
public func rmsnorm_backward(_ dx_ND: UnsafeMutablePointer<Float>, _ dw_D: UnsafeMutablePointer<Float>?,
                             _ dout_ND: UnsafePointer<Float>, _ x_ND: UnsafePointer<Float>, _ w_D: UnsafePointer<Float>,
                             _ rstd_N: UnsafePointer<Float>, N: Int, D: Int, overwriteDx: Bool = false) {
    parallelFor(N, costPerItem: 3 * D) { rows in
        for n in rows {
            let x = x_ND + n * D, dy = dout_ND + n * D, dx = dx_ND + n * D
            let r = rstd_N[n]
            var s: Float = 0  // Σ w·dy·x̂
            for i in 0..<D { s += w_D[i] * dy[i] * (x[i] * r) }
            let m = s / Float(D)
            for i in 0..<D {
                let xh = x[i] * r
                dx[i] = (overwriteDx ? 0 : dx[i]) + r * (w_D[i] * dy[i] - xh * m)
            }
        }
    }
    // dw: split over columns, each column summed over rows in order
    if let dw = dw_D {
        parallelFor(D, costPerItem: 2 * N) { cols in
            for n in 0..<N {
                let x = x_ND + n * D, dy = dout_ND + n * D
                let r = rstd_N[n]
                for i in cols { dw[i] += dy[i] * (x[i] * r) }
            }
        }
    }
}

// MARK: - RoPE (rotate-half, HF Qwen3)

/// cos_TP / sin_TP, P = headDim/2: angle(t, i) = t · inv_freq_i, inv_freq_i = 1/theta^(2i/headDim), computed in Float as HF does.
public func rope_table(cos_TP: UnsafeMutablePointer<Float>, sin_TP: UnsafeMutablePointer<Float>, T: Int, headDim: Int, theta: Float) {
    let P = headDim / 2
    for i in 0..<P {
        let invFreq = 1 / _powf(theta, Float(2 * i) / Float(headDim))
        for t in 0..<T {
            let a = Float(t) * invFreq
            cos_TP[t * P + i] = _cosf(a)
            sin_TP[t * P + i] = _sinf(a)
        }
    }
}

/// x_BTHd: [B, T, H, hd] → out (may alias x): out = x·cos + rotate_half(x)·sin, rotate_half(x) = cat(−x2, x1).
public func rope_forward(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>,
                         cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int, H: Int, hd: Int) {
    let P = hd / 2
    parallelFor(B * T, costPerItem: 2 * H * hd) { rows in
        for bt in rows {
            let t = bt % T
            let c = cos_TP + t * P, s = sin_TP + t * P
            for h in 0..<H {
                let off = (bt * H + h) * hd
                let xi = x + off, o = out + off
                for i in 0..<P {
                    let x1 = xi[i], x2 = xi[i + P]
                    o[i] = x1 * c[i] - x2 * s[i]
                    o[i + P] = x2 * c[i] + x1 * s[i]
                }
            }
        }
    }
}

/// dx += Rᵀ·dout (RoPE is a rotation): dx1 += dy1·cos + dy2·sin, dx2 += dy2·cos − dy1·sin. dx must not alias dout.
/// `overwrite` writes dx instead of adding to it.
public func rope_backward(_ dx: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>,
                          cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int, H: Int, hd: Int,
                          overwrite: Bool = false) {
    let P = hd / 2
    parallelFor(B * T, costPerItem: 3 * H * hd) { rows in
        for bt in rows {
            let t = bt % T
            let c = cos_TP + t * P, s = sin_TP + t * P
            for h in 0..<H {
                let off = (bt * H + h) * hd
                let dy = dout + off, d = dx + off
                for i in 0..<P {
                    let dy1 = dy[i], dy2 = dy[i + P]
                    d[i] = (overwrite ? 0 : d[i]) + (dy1 * c[i] + dy2 * s[i])
                    d[i + P] = (overwrite ? 0 : d[i + P]) + (dy2 * c[i] - dy1 * s[i])
                }
            }
        }
    }
}

// MARK: - SwiGLU

@inline(__always) func sigmoidf(_ x: Float) -> Float { 1 / (1 + _expf(-x)) }

/// σ(g) in 8 lanes and for one value (the same exponential, so any split of a loop gives the same bits).
@inline(__always) func sigmoid8(_ g: Float8) -> Float8 { 1 / (1 + vexp8(-g)) }
@inline(__always) func sigmoid1(_ g: Float) -> Float { 1 / (1 + vexp1(-g)) }

@inline(__always) func load8(_ p: UnsafePointer<Float>) -> Float8 { UnsafeRawPointer(p).loadUnaligned(as: Float8.self) }
@inline(__always) func store8(_ p: UnsafeMutablePointer<Float>, _ v: Float8) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: Float8.self) }

/// out_N = silu(gate_N) · up_N, silu(g) = g·σ(g).
public func swiglu_forward(_ out_N: UnsafeMutablePointer<Float>, _ gate_N: UnsafePointer<Float>, _ up_N: UnsafePointer<Float>, _ n: Int) {
    parallelFor(n, costPerItem: 8) { r in swiglu_forward(out_N, gate_N, up_N, r) }
}

/// `swiglu_forward` WRITING bf16(out_N) (bits; for the GEMM that reads it under mixed precision): the same fp32 values
/// (chunks of a multiple of 8 from r's start: every value takes the vector or scalar path it takes in fp32), rounded to
/// nearest even.
public func swiglu_forward(_ out_N: UnsafeMutablePointer<UInt16>, _ gate_N: UnsafePointer<Float>, _ up_N: UnsafePointer<Float>, _ n: Int) {
    parallelFor(n, costPerItem: 8) { r in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: bf16Chunk) { tmp in
            for c in stride(from: r.lowerBound, to: r.upperBound, by: bf16Chunk) {
                let m = min(bf16Chunk, r.upperBound - c)
                swiglu_forward(tmp.baseAddress!, gate_N + c, up_N + c, 0..<m)
                titan_f32_to_bf16(tmp.baseAddress!, out_N + c, Int64(m))
            }
        }
    }
}

/// Floats per chunk of the kernels that write bfloat16.
let bf16Chunk = 512

@inline(__always)
func swiglu_forward(_ out_N: UnsafeMutablePointer<Float>, _ gate_N: UnsafePointer<Float>, _ up_N: UnsafePointer<Float>, _ r: Range<Int>) {
    var i = r.lowerBound
    while i + 8 <= r.upperBound {
        let g = load8(gate_N + i)
        store8(out_N + i, g * sigmoid8(g) * load8(up_N + i))
        i += 8
    }
    while i < r.upperBound {
        let g = gate_N[i]
        out_N[i] = g * sigmoid1(g) * up_N[i]
        i += 1
    }
}

/// dgate += dout·up·σ(g)(1 + g(1−σ(g))),  dup += dout·silu(g)  (WRITTEN instead of accumulated when `overwrite`).
public func swiglu_backward(_ dgate_N: UnsafeMutablePointer<Float>, _ dup_N: UnsafeMutablePointer<Float>, _ dout_N: UnsafePointer<Float>,
                            _ gate_N: UnsafePointer<Float>, _ up_N: UnsafePointer<Float>, _ n: Int, overwrite: Bool = false) {
    parallelFor(n, costPerItem: 12) { r in swiglu_backward(dgate_N, dup_N, dout_N, gate_N, up_N, r, overwrite: overwrite) }
}

/// `swiglu_backward` WRITING bf16(dgate_N) and bf16(dup_N) (bits; for the GEMMs that read them under mixed precision).
public func swiglu_backward(_ dgate_N: UnsafeMutablePointer<UInt16>, _ dup_N: UnsafeMutablePointer<UInt16>, _ dout_N: UnsafePointer<Float>,
                            _ gate_N: UnsafePointer<Float>, _ up_N: UnsafePointer<Float>, _ n: Int) {
    parallelFor(n, costPerItem: 12) { r in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * bf16Chunk) { tmp in
            for c in stride(from: r.lowerBound, to: r.upperBound, by: bf16Chunk) {
                let m = min(bf16Chunk, r.upperBound - c), dg = tmp.baseAddress!, du = dg + bf16Chunk
                swiglu_backward(dg, du, dout_N + c, gate_N + c, up_N + c, 0..<m, overwrite: true)
                titan_f32_to_bf16(dg, dgate_N + c, Int64(m))
                titan_f32_to_bf16(du, dup_N + c, Int64(m))
            }
        }
    }
}

@inline(__always)
func swiglu_backward(_ dgate_N: UnsafeMutablePointer<Float>, _ dup_N: UnsafeMutablePointer<Float>, _ dout_N: UnsafePointer<Float>,
                     _ gate_N: UnsafePointer<Float>, _ up_N: UnsafePointer<Float>, _ r: Range<Int>, overwrite: Bool) {
    var i = r.lowerBound
    while i + 8 <= r.upperBound {
        let g = load8(gate_N + i), s = sigmoid8(g), dy = load8(dout_N + i)
        let dg = dy * load8(up_N + i) * s * (1 + g * (1 - s))
        let du = dy * g * s
        if overwrite {
            store8(dgate_N + i, dg); store8(dup_N + i, du)
        } else {
            store8(dgate_N + i, load8(dgate_N + i) + dg); store8(dup_N + i, load8(dup_N + i) + du)
        }
        i += 8
    }
    while i < r.upperBound {
        let g = gate_N[i], s = sigmoid1(g), dy = dout_N[i]
        let dg = dy * up_N[i] * s * (1 + g * (1 - s))
        let du = dy * g * s
        if overwrite { dgate_N[i] = dg; dup_N[i] = du } else { dgate_N[i] += dg; dup_N[i] += du }
        i += 1
    }
}

// MARK: - cross-entropy

/// Cross-entropy over logits_TV with integer labels_T (label < 0: ignored).
/// Returns the SUM over labelled tokens of −log p(label) (accumulated in Double) and the number of labelled tokens.
/// If `dlogits_TV` is given it is WRITTEN (not accumulated) with (softmax − onehot)·dlossScale for labelled rows and 0 for
/// ignored rows; it may alias `logits_TV` (in place, llm.c style).
@discardableResult
public func crossentropy_forward_backward(dlogits_TV: UnsafeMutablePointer<Float>?, logits_TV: UnsafePointer<Float>,
                                          labels_T: UnsafePointer<Int32>, T: Int, V: Int, dlossScale: Float) -> (lossSum: Double, count: Int) {
    for t in 0..<T {
        let label = Int(labels_T[t])
        precondition(label < V, "cross-entropy: label \(label) at position \(t) outside the vocabulary [0, \(V))")
    }
    let rowLoss = UnsafeMutablePointer<Double>.allocate(capacity: max(T, 1))
    defer { rowLoss.deallocate() }
    parallelFor(T, costPerItem: 3 * V) { rows in
        for t in rows {
            let row = logits_TV + t * V
            let label = Int(labels_T[t])
            if label < 0 {
                if let d = dlogits_TV { (d + t * V).update(repeating: 0, count: V) }
                rowLoss[t] = 0
                continue
            }
            let xl = row[label]
            let mx = vmax(row, V)
            var sum = 0.0
            if let d = dlogits_TV {
                // one exp per logit: store e^(x - max) in place, then scale
                let dr = d + t * V
                sum = exp_shifted_double_sum(dr, row, V, minus: mx)
                vscale(dr, V, Float(1 / sum) * dlossScale)
                dr[label] -= dlossScale
            } else {
                // the same exponentials and summation order as the path above
                var v = 0
                let mv = Float8(repeating: mx)
                while v + 8 <= V {
                    let e = vexp8(UnsafeRawPointer(row + v).loadUnaligned(as: Float8.self) - mv)
                    for l in 0..<8 { sum += Double(e[l]) }
                    v += 8
                }
                while v < V { sum += Double(vexp1(row[v] - mx)); v += 1 }
            }
            rowLoss[t] = Double(mx) + _log(sum) - Double(xl)
        }
    }
    var total = 0.0
    var count = 0
    for t in 0..<T where labels_T[t] >= 0 { total += rowLoss[t]; count += 1 }
    return (total, count)
}

// MARK: - RoPE on a slice of each head (DeepSeek-V3's decoupled rope dims)

/// YaRN-capable table for `rope_slice_forward`: cos_TP / sin_TP [T, P] = cos / sin(t · invFreq_P[i]) · attentionFactor,
/// computed in Float in the order HF does (angle = position · inv_freq; cos(angle) · attention_scaling).
public func rope_table(cos_TP: UnsafeMutablePointer<Float>, sin_TP: UnsafeMutablePointer<Float>, T: Int,
                       invFreq_P: [Float], attentionFactor: Float) {
    let P = invFreq_P.count
    for i in 0..<P {
        for t in 0..<T {
            let a = Float(t) * invFreq_P[i]
            cos_TP[t * P + i] = _cosf(a) * attentionFactor
            sin_TP[t * P + i] = _sinf(a) * attentionFactor
        }
    }
}

/// Rotates the `rd` rope dims of every (position, head): x row (b·T + t)·H + h starts at x + that · xStride, out likewise
/// with outStride (out must not alias x). Rotate-half (HF apply_rotary_pos_emb) or, when `interleaved`, HF's
/// apply_rotary_pos_emb_interleave: pairs (x[2i], x[2i+1]) rotate by angle i and the result is written de-interleaved,
///   out[i] = x[2i]·cos_i − x[2i+1]·sin_i,  out[P + i] = x[2i+1]·cos_i + x[2i]·sin_i   (P = rd / 2).
public func rope_slice_forward(_ out: UnsafeMutablePointer<Float>, outStride: Int, _ x: UnsafePointer<Float>, xStride: Int,
                               cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int, H: Int, rd: Int,
                               interleaved: Bool) {
    let P = rd / 2
    parallelFor(B * T, costPerItem: 2 * H * rd) { rows in
        for bt in rows {
            let t = bt % T
            let c = cos_TP + t * P, s = sin_TP + t * P
            for h in 0..<H {
                let xi = x + (bt * H + h) * xStride, o = out + (bt * H + h) * outStride
                for i in 0..<P {
                    let x1 = interleaved ? xi[2 * i] : xi[i], x2 = interleaved ? xi[2 * i + 1] : xi[i + P]
                    o[i] = x1 * c[i] - x2 * s[i]
                    o[i + P] = x2 * c[i] + x1 * s[i]
                }
            }
        }
    }
}

/// Backward of `rope_slice_forward` (the transpose of the rotation, re-interleaved when `interleaved`): WRITES dx's rope
/// dims, or adds to them when `accumulate`. dx must not alias dout.
public func rope_slice_backward(_ dx: UnsafeMutablePointer<Float>, dxStride: Int, _ dout: UnsafePointer<Float>, doutStride: Int,
                                cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int, H: Int, rd: Int,
                                interleaved: Bool, accumulate: Bool = false) {
    let P = rd / 2
    parallelFor(B * T, costPerItem: 3 * H * rd) { rows in
        for bt in rows {
            let t = bt % T
            let c = cos_TP + t * P, s = sin_TP + t * P
            for h in 0..<H {
                let dy = dout + (bt * H + h) * doutStride, d = dx + (bt * H + h) * dxStride
                for i in 0..<P {
                    let dy1 = dy[i], dy2 = dy[i + P]
                    let i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + P
                    d[i1] = (accumulate ? d[i1] : 0) + (dy1 * c[i] + dy2 * s[i])
                    d[i2] = (accumulate ? d[i2] : 0) + (dy2 * c[i] - dy1 * s[i])
                }
            }
        }
    }
}
