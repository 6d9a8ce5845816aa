import Tensor

// MARK: - attention

final class AttnActs {
    let qRaw: Tensor, qRstd: Tensor, q: Tensor   // [N, H*hd], [N*H], [N, H*hd] (normed + rotated)
    let kRaw: Tensor, kRstd: Tensor, k: Tensor   // [N, KV*hd], [N*KV], [N, KV*hd]
    let v: Tensor                                 // [N, KV*hd]
    let att: Tensor                               // [B, H, T, T]
    let ao: Tensor                                // [N, H*hd]
    init(B: Int, T: Int, H: Int, KV: Int, hd: Int) {
        let N = B * T
        qRaw = Tensor(shape: [N, H * hd]); qRstd = Tensor(shape: [N * H]); q = Tensor(shape: [N, H * hd])
        kRaw = Tensor(shape: [N, KV * hd]); kRstd = Tensor(shape: [N * KV]); k = Tensor(shape: [N, KV * hd])
        v = Tensor(shape: [N, KV * hd])
        att = Tensor(shape: [B, H, T, T])
        ao = Tensor(shape: [N, H * hd])
    }
}

/// Qwen3 attention: q/k/v projections (no bias), per-head RMSNorm on q and k, RoPE, causal GQA, o projection.
///   wq [H·hd, D], wk / wv [KV·hd, D], wo [D, H·hd], q_norm / k_norm [hd]   (HF self_attn.q_proj, ..., q_norm, k_norm)
public final class Attention {
    public let wq: Parameter, wk: Parameter, wv: Parameter, wo: Parameter, qNorm: Parameter, kNorm: Parameter
    let D: Int, H: Int, KV: Int, hd: Int, eps: Float

    init(_ t: ParameterScope, args a: Qwen3ModelArgs) {
        D = a.dim; H = a.n_heads; KV = a.n_kv_heads; hd = a.head_dim; eps = a.norm_eps
        let normal = ParameterInit.normal(std: a.init_std)
        wq = t.parameter("wq.weight", [H * hd, D], init: normal, hf: "q_proj.weight", gemmOnly: true)
        wk = t.parameter("wk.weight", [KV * hd, D], init: normal, hf: "k_proj.weight", gemmOnly: true)
        wv = t.parameter("wv.weight", [KV * hd, D], init: normal, hf: "v_proj.weight", gemmOnly: true)
        wo = t.parameter("wo.weight", [D, H * hd], init: normal, hf: "o_proj.weight", gemmOnly: true)
        qNorm = t.parameter("q_norm.weight", [hd], init: .ones, hf: "q_norm.weight")
        kNorm = t.parameter("k_norm.weight", [hd], init: .ones, hf: "k_norm.weight")
    }

    func forward(_ xn_ND: UnsafePointer<Float>, accumulateInto out_ND: UnsafeMutablePointer<Float>, acts a: AttnActs,
                 cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int) {
        let N = B * T
        matmul_forward(a.qRaw.data, xn_ND, wq.gemmInput, T: N, D: D, N: H * hd)
        matmul_forward(a.kRaw.data, xn_ND, wk.gemmInput, T: N, D: D, N: KV * hd)
        matmul_forward(a.v.data, xn_ND, wv.gemmInput, T: N, D: D, N: KV * hd)
        rmsnorm_forward(a.q.data, a.qRstd.data, a.qRaw.data, qNorm.v, N: N * H, D: hd, eps: eps)
        rmsnorm_forward(a.k.data, a.kRstd.data, a.kRaw.data, kNorm.v, N: N * KV, D: hd, eps: eps)
        rope_forward(a.q.data, a.q.data, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T, H: H, hd: hd)
        rope_forward(a.k.data, a.k.data, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T, H: KV, hd: hd)
        attention_forward(a.ao.data, a.att.data, a.q.data, a.k.data, a.v.data, B: B, T: T, H: H, KV: KV, hd: hd)
        matmul_forward(out_ND, a.ao.data, wo.gemmInput, T: N, D: H * hd, N: D, accumulate: true)
    }

    /// dxn_ND = ∂/∂xn (written: no zeroing pass first); weight grads accumulated.
    func backward(_ dout_ND: UnsafePointer<Float>, dxn_ND: UnsafeMutablePointer<Float>, xn_ND: UnsafePointer<Float>, acts a: AttnActs,
                  cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, ws: Workspace, B: Int, T: Int) {
        let N = B * T, QD = H * hd, KD = KV * hd
        let dao = ws.dao.get(N * QD), dq = ws.dq.get(N * QD), dqn = ws.dqn.get(N * QD)
        let dk = ws.dk.get(N * KD), dkn = ws.dkn.get(N * KD), dv = ws.dv.get(N * KD), dTT = ws.dTT.get(B * H * T * T)
        matmul_backward(dx_TD: dao, dw_ND: wo.g, dout_TN: dout_ND, x_TD: a.ao.data, w_ND: wo.gemmInput, T: N, D: QD, N: D, overwriteDx: true)
        attention_backward(dq_BTHd: dq, dk_BTKd: dk, dv_BTKd: dv, scratch_BHTT: dTT, dout_BTHd: dao, att_BHTT: a.att.data,
                           q_BTHd: a.q.data, k_BTKd: a.k.data, v_BTKd: a.v.data, B: B, T: T, H: H, KV: KV, hd: hd)
        // through RoPE, then the per-head norms; dq / dk are reused (overwritten) for the grads of the raw projections
        rope_backward(dqn, dq, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T, H: H, hd: hd, overwrite: true)
        rmsnorm_backward(dq, qNorm.g, dqn, a.qRaw.data, qNorm.v, a.qRstd.data, N: N * H, D: hd, overwriteDx: true)
        rope_backward(dkn, dk, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T, H: KV, hd: hd, overwrite: true)
        rmsnorm_backward(dk, kNorm.g, dkn, a.kRaw.data, kNorm.v, a.kRstd.data, N: N * KV, D: hd, overwriteDx: true)
        matmul_backward(dx_TD: dxn_ND, dw_ND: wq.g, dout_TN: dq, x_TD: xn_ND, w_ND: wq.gemmInput, T: N, D: D, N: QD, overwriteDx: true)
        matmul_backward(dx_TD: dxn_ND, dw_ND: wk.g, dout_TN: dk, x_TD: xn_ND, w_ND: wk.gemmInput, T: N, D: D, N: KD)
        matmul_backward(dx_TD: dxn_ND, dw_ND: wv.g, dout_TN: dv, x_TD: xn_ND, w_ND: wv.gemmInput, T: N, D: D, N: KD)
    }
}
