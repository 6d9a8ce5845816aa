import Runtime
import Tensor

/// Routed-expert computation, replaceable from outside (expert parallelism swaps in a dispatcher).
///
/// The MoE layer hands over the routed token rows already SORTED BY EXPERT: rows 0..<counts_E[0] go to expert 0,
/// the next counts_E[1] rows to expert 1, and so on (S = Σ counts_E rows of `dim` floats). The experts object returns
/// the expert outputs in the same order. Routing weights are applied by the MoE layer afterwards.
public protocol MoEExperts: AnyObject {
    /// y_SD[s] = expert_e(x_SD[s]) for the rows s of expert e.
    func forward(x_SD: UnsafePointer<Float>, counts_E: [Int], y_SD: UnsafeMutablePointer<Float>)
    /// `forward` told each row's token (`token_S[s]`; rows of one token hold the same values): a dispatcher may then
    /// ship such rows once per host. The default ignores the tokens.
    func forward(x_SD: UnsafePointer<Float>, token_S: UnsafePointer<Int32>, counts_E: [Int], y_SD: UnsafeMutablePointer<Float>)
    /// Called once after `forward` with the same x_SD and counts. WRITES dx_SD (not accumulated) and ACCUMULATES the
    /// expert weight gradients.
    func backward(x_SD: UnsafePointer<Float>, dy_SD: UnsafePointer<Float>, counts_E: [Int], dx_SD: UnsafeMutablePointer<Float>)
}

extension MoEExperts {
    public func forward(x_SD: UnsafePointer<Float>, token_S: UnsafePointer<Int32>, counts_E: [Int], y_SD: UnsafeMutablePointer<Float>) {
        forward(x_SD: x_SD, counts_E: counts_E, y_SD: y_SD)
    }
}

/// Local SwiGLU experts: y = (silu(x·W1_eᵀ) ⊙ (x·W3_eᵀ)) · W2_eᵀ, weights w1_EFD [E, F, D], w2_EDF [E, D, F], w3_EFD [E, F, D].
/// Expert e's weights are read at offset e·F·D of the parameters' current `value` (a wrapper may point the parameters at
/// a local shard of experts; the number of experts is taken from `counts_E.count`).
///
/// Each expert runs its whole chain (gate and up projections, SwiGLU, down projection) on its variable-size token
/// group; experts with zero tokens are skipped, nothing is padded. `useGroupedMM` (torchtitan's grouped GEMM) runs the
/// experts concurrently, whole experts per kernel thread, balanced by token count; otherwise a plain loop over experts
/// runs them one after another, each GEMM split over the threads. Both give bit-identical results with one kernel
/// thread; with several, the loop path's split GEMMs can differ in the last bits.
public final class GroupedExperts: MoEExperts {
    public let w1: Parameter, w2: Parameter, w3: Parameter
    public let dim: Int, hiddenDim: Int
    public var useGroupedMM: Bool
    // saved activations, [S, F] (h, and xb [S, D]: bfloat16 under mixed precision, where only GEMMs read them)
    private let h1 = GrowBuffer(), h3 = GrowBuffer(), h = GrowBuffer(), xb = GrowBuffer()
    // backward scratch
    private let dh = GrowBuffer(), dh1 = GrowBuffer(), dh3 = GrowBuffer()

    /// Declares w1 [E, F, D], w2 [E, D, F], w3 [E, F, D] (HF: experts.{e}.gate_proj / down_proj / up_proj).
    public init(_ t: ParameterScope, numExperts E: Int, dim D: Int, hiddenDim F: Int, initStd: Float, useGroupedMM: Bool) {
        let normal = ParameterInit.normal(std: initStd)
        w1 = t.experts("w1", [E, F, D], init: normal) { "\($0).gate_proj.weight" }
        w2 = t.experts("w2", [E, D, F], init: normal) { "\($0).down_proj.weight" }
        w3 = t.experts("w3", [E, F, D], init: normal) { "\($0).up_proj.weight" }
        dim = D; hiddenDim = F; self.useGroupedMM = useGroupedMM
    }

    /// Reserves the scratch for up to `rows` routed rows at once (see `GrowBuffer.reserve`).
    public func reserve(rows: Int) {
        for b in [h1, h3, h, dh, dh1, dh3] { b.reserve(rows * hiddenDim) }
        if BLAS.matmulPrecision == .bfloat16 { xb.reserve((rows * dim + 1) / 2) }
    }

    private func check(_ counts: [Int]) -> Int {
        let per = hiddenDim * dim
        precondition(w1.heldCount >= counts.count * per && w2.heldCount >= counts.count * per && w3.heldCount >= counts.count * per,
                     "GroupedExperts: \(counts.count) experts but weights hold \(w1.heldCount / per)")
        return counts.reduce(0, +)
    }

    public func forward(x_SD: UnsafePointer<Float>, counts_E: [Int], y_SD: UnsafeMutablePointer<Float>) {
        let S = check(counts_E)
        let D = dim, F = hiddenDim
        if BLAS.matmulPrecision == .bfloat16 {
            // Under mixed precision x feeds GEMMs only (forward and weight gradients): rounded once here, in place of
            // once per GEMM that packs it, and kept for backward.
            let Xb = xb.getBF16(S * D)
            to_bf16(x_SD, into: Xb, S * D)
            forward(x16_SD: Xb, counts_E: counts_E, y_SD: y_SD)
            return
        }
        let H1 = h1.get(S * F), H3 = h3.get(S * F), Hh = h.get(S * F)
        let W1 = w1.gemmInput, W2 = w2.gemmInput, W3 = w3.gemmInput
        forEachExpert(counts_E) { e, o, n in
            let x = x_SD + o * D, a = H1 + o * F, b = H3 + o * F, hh = Hh + o * F
            matmul_forward(a, x, W1 + e * F * D, T: n, D: D, N: F)
            matmul_forward(b, x, W3 + e * F * D, T: n, D: D, N: F)
            swiglu_forward(hh, a, b, n * F)
            matmul_forward(y_SD + o * D, hh, W2 + e * D * F, T: n, D: F, N: D)
        }
    }

    /// Mixed precision: `forward` on rows already in bfloat16 (expert parallelism's dispatched rows arrive so). The
    /// caller keeps x16_SD unchanged until `backward(x16_SD:...)`, which takes the same rows.
    public func forward(x16_SD: UnsafePointer<UInt16>, counts_E: [Int], y_SD: UnsafeMutablePointer<Float>) {
        precondition(BLAS.matmulPrecision == .bfloat16, "GroupedExperts: bfloat16 rows need bfloat16 matmuls")
        let S = check(counts_E)
        let D = dim, F = hiddenDim
        // h feeds GEMMs only (the down projection and its weight gradient): written as bfloat16 by the SwiGLU.
        let H1 = h1.get(S * F), H3 = h3.get(S * F), Hb = h.getBF16(S * F)
        let W1 = w1.gemmInput, W2 = w2.gemmInput, W3 = w3.gemmInput
        forEachExpert(counts_E) { e, o, n in
            let x = GEMMInput.bf16(x16_SD + o * D), a = H1 + o * F, b = H3 + o * F, hh = Hb + o * F
            matmul_forward(a, x, W1 + e * F * D, T: n, D: D, N: F)
            matmul_forward(b, x, W3 + e * F * D, T: n, D: D, N: F)
            swiglu_forward(hh, a, b, n * F)
            matmul_forward(y_SD + o * D, .bf16(hh), W2 + e * D * F, T: n, D: F, N: D)
        }
    }

    public func backward(x_SD: UnsafePointer<Float>, dy_SD: UnsafePointer<Float>, counts_E: [Int], dx_SD: UnsafeMutablePointer<Float>) {
        let S = check(counts_E)
        let D = dim, F = hiddenDim
        if BLAS.matmulPrecision == .bfloat16 {
            // x as forward rounded it.
            backward(x16_SD: xb.getBF16(S * D), dy_SD: .f32(dy_SD), counts_E: counts_E, dx_SD: dx_SD)
            return
        }
        let H1 = h1.get(S * F), H3 = h3.get(S * F), Hh = h.get(S * F)
        let dH = dh.get(S * F), dH1 = dh1.get(S * F), dH3 = dh3.get(S * F)
        let W1 = w1.gemmInput, W2 = w2.gemmInput, W3 = w3.gemmInput
        let G1 = w1.g, G2 = w2.g, G3 = w3.g
        // Scratch is written, not accumulated (no zeroing pass): dH and dH1/dH3 by their first producer, dx_SD by the
        // W1 product, then the W3 product accumulates onto it. Rows of experts with no tokens are never touched.
        forEachExpert(counts_E) { e, o, n in
            let x = x_SD + o * D, dx = dx_SD + o * D
            matmul_backward(dx_TD: dH + o * F, dw_ND: G2 + e * D * F, dout_TN: dy_SD + o * D, x_TD: Hh + o * F,
                            w_ND: W2 + e * D * F, T: n, D: F, N: D, overwriteDx: true)
            swiglu_backward(dH1 + o * F, dH3 + o * F, dH + o * F, H1 + o * F, H3 + o * F, n * F, overwrite: true)
            matmul_backward(dx_TD: dx, dw_ND: G1 + e * F * D, dout_TN: dH1 + o * F, x_TD: x, w_ND: W1 + e * F * D,
                            T: n, D: D, N: F, overwriteDx: true)
            matmul_backward(dx_TD: dx, dw_ND: G3 + e * F * D, dout_TN: dH3 + o * F, x_TD: x, w_ND: W3 + e * F * D,
                            T: n, D: D, N: F)
        }
    }

    /// Mixed precision: `backward` after `forward(x16_SD:...)`, with the same rows; dy_SD fp32 or already bfloat16
    /// (expert parallelism's dispatched output gradients).
    public func backward(x16_SD: UnsafePointer<UInt16>, dy_SD: GEMMInput, counts_E: [Int], dx_SD: UnsafeMutablePointer<Float>) {
        precondition(BLAS.matmulPrecision == .bfloat16, "GroupedExperts: bfloat16 rows need bfloat16 matmuls")
        let S = check(counts_E)
        let D = dim, F = hiddenDim
        let H1 = h1.get(S * F), H3 = h3.get(S * F), Hb = h.getBF16(S * F)
        let W1 = w1.gemmInput, W2 = w2.gemmInput, W3 = w3.gemmInput
        let G1 = w1.g, G2 = w2.g, G3 = w3.g
        // dH1 and dH3 feed GEMMs only, so they too are written as bfloat16. Written, not accumulated, as above.
        let dH = dh.get(S * F), dH1 = dh1.getBF16(S * F), dH3 = dh3.getBF16(S * F)
        forEachExpert(counts_E) { e, o, n in
            let x = GEMMInput.bf16(x16_SD + o * D), dx = dx_SD + o * D
            matmul_backward(dx_TD: dH + o * F, dw_ND: G2 + e * D * F, dout_TN: dy_SD + o * D, x_TD: .bf16(Hb + o * F),
                            w_ND: W2 + e * D * F, T: n, D: F, N: D, overwriteDx: true)
            swiglu_backward(dH1 + o * F, dH3 + o * F, dH + o * F, H1 + o * F, H3 + o * F, n * F)
            matmul_backward(dx_TD: dx, dw_ND: G1 + e * F * D, dout_TN: .bf16(dH1 + o * F), x_TD: x, w_ND: W1 + e * F * D,
                            T: n, D: D, N: F, overwriteDx: true)
            matmul_backward(dx_TD: dx, dw_ND: G3 + e * F * D, dout_TN: .bf16(dH3 + o * F), x_TD: x, w_ND: W3 + e * F * D,
                            T: n, D: D, N: F)
        }
    }

    /// body(e, o, n) for every expert e with n > 0 rows starting at row o: concurrently when `useGroupedMM` (each
    /// expert writes only its own rows and its own weight-gradient slice), else in order.
    private func forEachExpert(_ counts_E: [Int], _ body: (_ e: Int, _ o: Int, _ n: Int) -> Void) {
        var offsets = [Int](repeating: 0, count: counts_E.count)
        for e in counts_E.indices.dropFirst() { offsets[e] = offsets[e - 1] + counts_E[e - 1] }
        if useGroupedMM {
            parallelForEach(costs: counts_E.map { $0 * (2 * dim + 3 * hiddenDim) }) { e in body(e, offsets[e], counts_E[e]) }
        } else {
            for e in counts_E.indices where counts_E[e] > 0 { body(e, offsets[e], counts_E[e]) }
        }
    }
}
