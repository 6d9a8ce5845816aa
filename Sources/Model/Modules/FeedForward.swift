import Runtime
import Tensor

// MARK: - dense SwiGLU feed-forward (also the shared experts)

final class FFNActs {
    let h1: Tensor, h3: Tensor, h: Tensor  // [N, F]
    /// x [N, D] as bfloat16 under mixed precision, where h holds bfloat16 too: only GEMMs read them.
    let xb = GrowBuffer()
    init(N: Int, F: Int) { h1 = Tensor(shape: [N, F]); h3 = Tensor(shape: [N, F]); h = Tensor(shape: [N, F]) }
}

/// out_ND += (silu(x·w1ᵀ) ⊙ x·w3ᵀ)·w2ᵀ ; w1_FD, w2_DF, w3_FD (HF: gate_proj, down_proj, up_proj).
public final class FeedForward {
    public let w1: Parameter, w2: Parameter, w3: Parameter
    public let dim: Int, hiddenDim: Int

    init(_ t: ParameterScope, dim D: Int, hiddenDim F: Int, initStd: Float) {
        w1 = t.parameter("w1.weight", [F, D], init: .normal(std: initStd), hf: "gate_proj.weight", gemmOnly: true)
        w2 = t.parameter("w2.weight", [D, F], init: .normal(std: initStd), hf: "down_proj.weight", gemmOnly: true)
        w3 = t.parameter("w3.weight", [F, D], init: .normal(std: initStd), hf: "up_proj.weight", gemmOnly: true)
        dim = D; hiddenDim = F
    }

    func forward(_ x_ND: UnsafePointer<Float>, accumulateInto out_ND: UnsafeMutablePointer<Float>, acts a: FFNActs, N: Int) {
        let D = dim, F = hiddenDim
        if BLAS.matmulPrecision == .bfloat16 {
            // x and h rounded once here, in place of once per GEMM that packs them (forward and weight gradients).
            let xb = a.xb.getBF16(N * D), hb = UnsafeMutableRawPointer(a.h.data).assumingMemoryBound(to: UInt16.self)
            to_bf16(x_ND, into: xb, N * D)
            matmul_forward(a.h1.data, .bf16(xb), w1.gemmInput, T: N, D: D, N: F)
            matmul_forward(a.h3.data, .bf16(xb), w3.gemmInput, T: N, D: D, N: F)
            swiglu_forward(hb, a.h1.data, a.h3.data, N * F)
            matmul_forward(out_ND, .bf16(hb), w2.gemmInput, T: N, D: F, N: D, accumulate: true)
            return
        }
        matmul_forward(a.h1.data, x_ND, w1.gemmInput, T: N, D: D, N: F)
        matmul_forward(a.h3.data, x_ND, w3.gemmInput, T: N, D: D, N: F)
        swiglu_forward(a.h.data, a.h1.data, a.h3.data, N * F)
        matmul_forward(out_ND, a.h.data, w2.gemmInput, T: N, D: F, N: D, accumulate: true)
    }

    /// dx_ND += ∂/∂x (dx_ND = ∂/∂x when `overwriteDx`: no zeroing pass first); weight grads accumulated.
    func backward(_ dout_ND: UnsafePointer<Float>, dx_ND: UnsafeMutablePointer<Float>, x_ND: UnsafePointer<Float>, acts a: FFNActs,
                  ws: Workspace, N: Int, overwriteDx: Bool = false) {
        let D = dim, F = hiddenDim
        let dh = ws.dh.get(N * F)
        // scratch written by its first producer (no zeroing pass)
        if BLAS.matmulPrecision == .bfloat16 {
            // bfloat16 x and h from forward; dh1 and dh3 feed GEMMs only, so they are written as bfloat16 too.
            let xb = GEMMInput.bf16(a.xb.getBF16(N * D)), hb = UnsafeRawPointer(a.h.data).assumingMemoryBound(to: UInt16.self)
            let dh1 = ws.dh1.getBF16(N * F), dh3 = ws.dh3.getBF16(N * F)
            matmul_backward(dx_TD: dh, dw_ND: w2.g, dout_TN: .f32(dout_ND), x_TD: .bf16(hb), w_ND: w2.gemmInput, T: N, D: F, N: D,
                            overwriteDx: true)
            swiglu_backward(dh1, dh3, dh, a.h1.data, a.h3.data, N * F)
            matmul_backward(dx_TD: dx_ND, dw_ND: w1.g, dout_TN: .bf16(dh1), x_TD: xb, w_ND: w1.gemmInput, T: N, D: D, N: F,
                            overwriteDx: overwriteDx)
            matmul_backward(dx_TD: dx_ND, dw_ND: w3.g, dout_TN: .bf16(dh3), x_TD: xb, w_ND: w3.gemmInput, T: N, D: D, N: F)
            return
        }
        let dh1 = ws.dh1.get(N * F), dh3 = ws.dh3.get(N * F)
        matmul_backward(dx_TD: dh, dw_ND: w2.g, dout_TN: dout_ND, x_TD: a.h.data, w_ND: w2.gemmInput, T: N, D: F, N: D, overwriteDx: true)
        swiglu_backward(dh1, dh3, dh, a.h1.data, a.h3.data, N * F, overwrite: true)
        matmul_backward(dx_TD: dx_ND, dw_ND: w1.g, dout_TN: dh1, x_TD: x_ND, w_ND: w1.gemmInput, T: N, D: D, N: F, overwriteDx: overwriteDx)
        matmul_backward(dx_TD: dx_ND, dw_ND: w3.g, dout_TN: dh3, x_TD: x_ND, w_ND: w3.gemmInput, T: N, D: D, N: F)
    }
}
