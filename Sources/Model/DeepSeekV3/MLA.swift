import Tensor

/// Saved activations of one MLA layer for one (B, T). Suffixes: N tokens (B·T), H heads, Q = qk_head_dim (nope | rope
/// per head), R = q_lora_rank, L = kv_lora_rank (the latent), P = qk_rope_head_dim, C = L + P (kv_a's output),
/// X = qk_nope_head_dim + v_head_dim (kv_b's output per head), V = v_head_dim.
final class MLAActs {
    let qa_NR: Tensor?, qaRstd_N: Tensor?, qan_NR: Tensor?   // q_a(x), its rstd, q_norm of it   (q_lora_rank > 0)
    let qRaw_NHQ: Tensor             // q before rope
    let kva_NC: Tensor               // kv_a(x): compressed kv | raw rope key
    let kvc_NL: Tensor, kvRstd_N: Tensor, kvn_NL: Tensor   // compressed kv (a contiguous copy for the norm), rstd, normed
    let kv_NHX: Tensor               // kv_b(kvn): per head k_nope | v
    let kpe_NP: Tensor               // the rope key after rotation, shared by every head
    let q_NHQ: Tensor, k_NHQ: Tensor // attention inputs: [q_nope | rotated q_pe], [k_nope | k_pe]
    let v_NHV: Tensor
    let att_BHTT: Tensor             // softmax probabilities
    let ao_NHV: Tensor               // attention output, o_proj's input
    init(args a: DeepSeekV3ModelArgs, B: Int, T: Int) {
        let N = B * T, H = a.n_heads, Q = a.qkHeadDim, Rq = a.q_lora_rank, Rkv = a.kv_lora_rank
        if Rq > 0 {
            qa_NR = Tensor(shape: [N, Rq]); qaRstd_N = Tensor(shape: [N]); qan_NR = Tensor(shape: [N, Rq])
        } else {
            qa_NR = nil; qaRstd_N = nil; qan_NR = nil
        }
        qRaw_NHQ = Tensor(shape: [N, H * Q])
        kva_NC = Tensor(shape: [N, Rkv + a.qk_rope_head_dim])
        kvc_NL = Tensor(shape: [N, Rkv]); kvRstd_N = Tensor(shape: [N]); kvn_NL = Tensor(shape: [N, Rkv])
        kv_NHX = Tensor(shape: [N, H * (a.qk_nope_head_dim + a.v_head_dim)])
        kpe_NP = Tensor(shape: [N, a.qk_rope_head_dim])
        q_NHQ = Tensor(shape: [N, H * Q]); k_NHQ = Tensor(shape: [N, H * Q]); v_NHV = Tensor(shape: [N, H * a.v_head_dim])
        att_BHTT = Tensor(shape: [B, H, T, T])
        ao_NHV = Tensor(shape: [N, H * a.v_head_dim])
    }
}

/// Backward scratch of MLA, shared by the layers (one layer's backward at a time).
final class MLAWorkspace {
    let dao = GrowBuffer(), dq = GrowBuffer(), dk = GrowBuffer(), dv = GrowBuffer(), dTT = GrowBuffer()
    let dqRaw = GrowBuffer(), dqan = GrowBuffer(), dqa = GrowBuffer()
    let dkv = GrowBuffer(), dkpe = GrowBuffer(), dkvn = GrowBuffer(), dkva = GrowBuffer(), dkvc = GrowBuffer()
}

/// Multi-head latent attention (DeepSeek-V2/V3; HF DeepseekV3Attention, eager, fp32):
///   q = q_b(q_norm(q_a(x)))  (or wq(x) when q_lora_rank = 0), per head [q_nope (Dn) | q_pe (Dr)]
///   [c_kv (Rkv) | k_pe (Dr)] = kv_a(x);  [k_nope | v] per head = kv_b(kv_norm(c_kv))
///   q_pe, k_pe rotated (interleaved pairs or rotate-half; k_pe is one head shared by all heads)
///   o = wo(softmax(scale · [q_nope | q_pe] · [k_nope | k_pe]ᵀ, causal) · v)
/// Parameters (HF self_attn.*):
///   wq_a [Rq, D] (q_a_proj), q_norm [Rq] (q_a_layernorm), wq_b [H·Q, Rq] (q_b_proj)  — or wq [H·Q, D] (q_proj)
///   wkv_a [Rkv + Dr, D] (kv_a_proj_with_mqa), kv_norm [Rkv] (kv_a_layernorm), wkv_b [H·(Dn + Dv), Rkv] (kv_b_proj)
///   wo [D, H·Dv] (o_proj)
/// The two latent norms use eps 1e-6 whatever rms_norm_eps is: HF builds them with DeepseekV3RMSNorm's default.
public final class MLA {
    public let wq: Parameter?, wqA: Parameter?, qNorm: Parameter?, wqB: Parameter?
    public let wkvA: Parameter, kvNorm: Parameter, wkvB: Parameter, wo: Parameter
    let D: Int, H: Int, Rq: Int, Rkv: Int, Dn: Int, Dr: Int, Dv: Int, Q: Int
    let interleaved: Bool, scale: Float
    static let latentNormEps: Float = 1e-6

    init(_ t: ParameterScope, args a: DeepSeekV3ModelArgs) {
        D = a.dim; H = a.n_heads; Rq = a.q_lora_rank; Rkv = a.kv_lora_rank
        Dn = a.qk_nope_head_dim; Dr = a.qk_rope_head_dim; Dv = a.v_head_dim; Q = Dn + Dr
        interleaved = a.rope_interleave; scale = a.softmaxScale
        let normal = ParameterInit.normal(std: a.init_std)
        if Rq > 0 {
            wq = nil
            wqA = t.parameter("wq_a.weight", [Rq, D], init: normal, hf: "q_a_proj.weight", gemmOnly: true)
            qNorm = t.parameter("q_norm.weight", [Rq], init: .ones, hf: "q_a_layernorm.weight")
            wqB = t.parameter("wq_b.weight", [H * Q, Rq], init: normal, hf: "q_b_proj.weight", gemmOnly: true)
        } else {
            wq = t.parameter("wq.weight", [H * Q, D], init: normal, hf: "q_proj.weight", gemmOnly: true)
            wqA = nil; qNorm = nil; wqB = nil
        }
        wkvA = t.parameter("wkv_a.weight", [Rkv + Dr, D], init: normal, hf: "kv_a_proj_with_mqa.weight", gemmOnly: true)
        kvNorm = t.parameter("kv_norm.weight", [Rkv], init: .ones, hf: "kv_a_layernorm.weight")
        wkvB = t.parameter("wkv_b.weight", [H * (Dn + Dv), Rkv], init: normal, hf: "kv_b_proj.weight", gemmOnly: true)
        wo = t.parameter("wo.weight", [D, H * Dv], init: normal, hf: "o_proj.weight", gemmOnly: true)
    }

    /// out_ND += MLA(xn_ND).
    func forward(_ xn_ND: UnsafePointer<Float>, accumulateInto out_ND: UnsafeMutablePointer<Float>, acts a: MLAActs,
                 cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int) {
        let N = B * T, KVB = Dn + Dv
        project(xn_ND, a, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T)
        // assemble q = [q_nope | q_pe], k = [k_nope | k_pe], v per head
        for n in 0..<N {
            for h in 0..<H {
                let row = n * H + h
                (a.q_NHQ.data + row * Q).update(from: a.qRaw_NHQ.data + row * Q, count: Dn)
                (a.k_NHQ.data + row * Q).update(from: a.kv_NHX.data + row * KVB, count: Dn)
                (a.k_NHQ.data + row * Q + Dn).update(from: a.kpe_NP.data + n * Dr, count: Dr)
                (a.v_NHV.data + row * Dv).update(from: a.kv_NHX.data + row * KVB + Dn, count: Dv)
            }
        }
        attention_forward(a.ao_NHV.data, a.att_BHTT.data, a.q_NHQ.data, a.k_NHQ.data, a.v_NHV.data, B: B, T: T, H: H, KV: H, hd: Q, vd: Dv, scale: scale)
        matmul_forward(out_ND, a.ao_NHV.data, wo.gemmInput, T: N, D: H * Dv, N: D, accumulate: true)
    }

    /// MLA's projections of N = B·T tokens into `a`: q (low-rank path with its norm, or one projection), the compressed
    /// kv latent normed and expanded per head (kv_NHX), q_pe rotated into q_NHQ's rope slots, the shared k_pe rotated
    /// (kpe_NP). `cos_TP` / `sin_TP`: the rows of the tokens' positions. (`linear`: a matrix-vector product for one token.)
    func project(_ xn_ND: UnsafePointer<Float>, _ a: MLAActs, cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int) {
        let N = B * T, KVA = Rkv + Dr, KVB = Dn + Dv
        if let wqA, let wqB, let qNorm {
            linear(a.qa_NR!.data, xn_ND, wqA.gemmInput, T: N, D: D, N: Rq)
            rmsnorm_forward(a.qan_NR!.data, a.qaRstd_N!.data, a.qa_NR!.data, qNorm.v, N: N, D: Rq, eps: Self.latentNormEps)
            linear(a.qRaw_NHQ.data, a.qan_NR!.data, wqB.gemmInput, T: N, D: Rq, N: H * Q)
        } else {
            linear(a.qRaw_NHQ.data, xn_ND, wq!.gemmInput, T: N, D: D, N: H * Q)
        }
        // keys / values: one compressed latent per token (+ the rope key), normed, expanded per head
        linear(a.kva_NC.data, xn_ND, wkvA.gemmInput, T: N, D: D, N: KVA)
        for n in 0..<N { (a.kvc_NL.data + n * Rkv).update(from: a.kva_NC.data + n * KVA, count: Rkv) }
        rmsnorm_forward(a.kvn_NL.data, a.kvRstd_N.data, a.kvc_NL.data, kvNorm.v, N: N, D: Rkv, eps: Self.latentNormEps)
        linear(a.kv_NHX.data, a.kvn_NL.data, wkvB.gemmInput, T: N, D: Rkv, N: H * KVB)
        // rope: q_pe per head (into q's rope slots), k_pe once (shared)
        rope_slice_forward(a.q_NHQ.data + Dn, outStride: Q, a.qRaw_NHQ.data + Dn, xStride: Q, cos_TP: cos_TP, sin_TP: sin_TP,
                           B: B, T: T, H: H, rd: Dr, interleaved: interleaved)
        rope_slice_forward(a.kpe_NP.data, outStride: Dr, a.kva_NC.data + Rkv, xStride: KVA, cos_TP: cos_TP, sin_TP: sin_TP,
                           B: B, T: T, H: 1, rd: Dr, interleaved: interleaved)
    }

    /// dxn_ND = ∂/∂xn (written: no zeroing pass first); weight grads accumulated.
    func backward(_ dout_ND: UnsafePointer<Float>, dxn_ND: UnsafeMutablePointer<Float>, xn_ND: UnsafePointer<Float>, acts a: MLAActs,
                  cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, ws: MLAWorkspace, B: Int, T: Int) {
        let N = B * T, KVA = Rkv + Dr, KVB = Dn + Dv
        let dao_NHV = ws.dao.get(N * H * Dv), dq_NHQ = ws.dq.get(N * H * Q), dk_NHQ = ws.dk.get(N * H * Q), dv_NHV = ws.dv.get(N * H * Dv)
        let dTT_BHTT = ws.dTT.get(B * H * T * T)
        matmul_backward(dx_TD: dao_NHV, dw_ND: wo.g, dout_TN: dout_ND, x_TD: a.ao_NHV.data, w_ND: wo.gemmInput, T: N, D: H * Dv, N: D, overwriteDx: true)
        attention_backward(dq_BTHd: dq_NHQ, dk_BTKd: dk_NHQ, dv_BTKd: dv_NHV, scratch_BHTT: dTT_BHTT, dout_BTHd: dao_NHV, att_BHTT: a.att_BHTT.data,
                           q_BTHd: a.q_NHQ.data, k_BTKd: a.k_NHQ.data, v_BTKd: a.v_NHV.data, B: B, T: T, H: H, KV: H, hd: Q, vd: Dv, scale: scale)
        // split back: dq_nope as is, dq_pe through the rope; dk_nope and dv_NHV into kv_b's output layout; dk_pe summed over
        // the heads that share it (in head order), then through its rope
        let dqRaw_NHQ = ws.dqRaw.get(N * H * Q), dkv_NHX = ws.dkv.get(N * H * KVB), dkpe_NP = ws.dkpe.get(N * Dr)
        for n in 0..<N {
            let s = dkpe_NP + n * Dr
            s.update(repeating: 0, count: Dr)
            for h in 0..<H {
                let row = n * H + h
                (dqRaw_NHQ + row * Q).update(from: dq_NHQ + row * Q, count: Dn)
                (dkv_NHX + row * KVB).update(from: dk_NHQ + row * Q, count: Dn)
                (dkv_NHX + row * KVB + Dn).update(from: dv_NHV + row * Dv, count: Dv)
                add_inplace(s, dk_NHQ + row * Q + Dn, Dr)
            }
        }
        rope_slice_backward(dqRaw_NHQ + Dn, dxStride: Q, dq_NHQ + Dn, doutStride: Q, cos_TP: cos_TP, sin_TP: sin_TP,
                            B: B, T: T, H: H, rd: Dr, interleaved: interleaved)
        // kv path: kv_b, the latent norm, then kv_a's output gradient = [d c_kv | d k_pe_raw]
        let dkvn_NL = ws.dkvn.get(N * Rkv), dkvc_NL = ws.dkvc.get(N * Rkv), dkva_NC = ws.dkva.get(N * KVA)
        matmul_backward(dx_TD: dkvn_NL, dw_ND: wkvB.g, dout_TN: dkv_NHX, x_TD: a.kvn_NL.data, w_ND: wkvB.gemmInput, T: N, D: Rkv, N: H * KVB, overwriteDx: true)
        rmsnorm_backward(dkvc_NL, kvNorm.g, dkvn_NL, a.kvc_NL.data, kvNorm.v, a.kvRstd_N.data, N: N, D: Rkv, overwriteDx: true)
        for n in 0..<N { (dkva_NC + n * KVA).update(from: dkvc_NL + n * Rkv, count: Rkv) }
        rope_slice_backward(dkva_NC + Rkv, dxStride: KVA, dkpe_NP, doutStride: Dr, cos_TP: cos_TP, sin_TP: sin_TP,
                            B: B, T: T, H: 1, rd: Dr, interleaved: interleaved)
        matmul_backward(dx_TD: dxn_ND, dw_ND: wkvA.g, dout_TN: dkva_NC, x_TD: xn_ND, w_ND: wkvA.gemmInput, T: N, D: D, N: KVA, overwriteDx: true)
        // q path
        if let wqA, let wqB, let qNorm {
            let dqan_NR = ws.dqan.get(N * Rq), dqa_NR = ws.dqa.get(N * Rq)
            matmul_backward(dx_TD: dqan_NR, dw_ND: wqB.g, dout_TN: dqRaw_NHQ, x_TD: a.qan_NR!.data, w_ND: wqB.gemmInput, T: N, D: Rq, N: H * Q, overwriteDx: true)
            rmsnorm_backward(dqa_NR, qNorm.g, dqan_NR, a.qa_NR!.data, qNorm.v, a.qaRstd_N!.data, N: N, D: Rq, overwriteDx: true)
            matmul_backward(dx_TD: dxn_ND, dw_ND: wqA.g, dout_TN: dqa_NR, x_TD: xn_ND, w_ND: wqA.gemmInput, T: N, D: D, N: Rq)
        } else {
            matmul_backward(dx_TD: dxn_ND, dw_ND: wq!.g, dout_TN: dqRaw_NHQ, x_TD: xn_ND, w_ND: wq!.gemmInput, T: N, D: D, N: H * Q)
        }
    }
}
