import Tensor

final class LayerActs {
    let xn1: Tensor, rstd1: Tensor    // attention_norm output / rstd
    let attn: AttnActs
    let xMid: Tensor                  // residual after attention
    let xn2: Tensor, rstd2: Tensor    // ffn_norm output / rstd
    let ffn: FFNActs?
    let moe: MoEActs?
    init(args a: Qwen3ModelArgs, layer: Int, B: Int, T: Int) {
        let N = B * T, D = a.dim
        xn1 = Tensor(shape: [N, D]); rstd1 = Tensor(shape: [N])
        attn = AttnActs(B: B, T: T, H: a.n_heads, KV: a.n_kv_heads, hd: a.head_dim)
        xMid = Tensor(shape: [N, D])
        xn2 = Tensor(shape: [N, D]); rstd2 = Tensor(shape: [N])
        if a.isMoELayer(layer) {
            moe = MoEActs(N: N, D: D, E: a.moe.num_experts, K: a.moe.top_k, sharedHidden: a.moe.hidden_dim * a.moe.num_shared_experts)
            ffn = nil
        } else {
            ffn = FFNActs(N: N, F: a.hidden_dim)
            moe = nil
        }
    }
}

/// x += attn(attention_norm(x)); x += ffn_or_moe(ffn_norm(x)).
///   attention_norm.weight, ffn_norm.weight [D] (HF input_layernorm, post_attention_layernorm); attention.*;
///   feed_forward.* (dense layer, HF mlp.*) or moe.* (MoE layer, HF mlp.*)
public final class TransformerBlock {
    public let index: Int
    public let attentionNorm: Parameter, ffnNorm: Parameter
    public let attention: Attention
    public let feedForward: FeedForward?
    public let moe: MoE?
    let D: Int, eps: Float

    /// Declares the block's parameters in `t` (one parameter group), in this order: the FSDP buffer's layout.
    init(_ t: ParameterScope, index i: Int, args a: Qwen3ModelArgs) {
        index = i
        D = a.dim; eps = a.norm_eps
        attentionNorm = t.parameter("attention_norm.weight", [D], init: .ones, hf: "input_layernorm.weight")
        attention = Attention(t.scope("attention.", hf: "self_attn."), args: a)
        ffnNorm = t.parameter("ffn_norm.weight", [D], init: .ones, hf: "post_attention_layernorm.weight")
        if a.isMoELayer(i) {
            moe = MoE(t.scope("moe.", hf: "mlp."), args: a.moe, dim: D, initStd: a.init_std)
            feedForward = nil
        } else {
            feedForward = FeedForward(t.scope("feed_forward.", hf: "mlp."), dim: D, hiddenDim: a.hidden_dim, initStd: a.init_std)
            moe = nil
        }
    }

    /// x_out = block(x_in). Returns tokens per expert (empty for a dense block).
    func forward(_ xIn: UnsafePointer<Float>, _ xOut: UnsafeMutablePointer<Float>, acts a: LayerActs, ws: Workspace,
                 cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int) -> [Int] {
        let N = B * T
        rmsnorm_forward(a.xn1.data, a.rstd1.data, xIn, attentionNorm.v, N: N, D: D, eps: eps)
        copy_N(a.xMid.data, xIn, N * D)
        attention.forward(a.xn1.ptr, accumulateInto: a.xMid.data, acts: a.attn, cos_TP: cos_TP, sin_TP: sin_TP, B: B, T: T)
        rmsnorm_forward(a.xn2.data, a.rstd2.data, a.xMid.data, ffnNorm.v, N: N, D: D, eps: eps)
        copy_N(xOut, a.xMid.data, N * D)
        if let m = moe {
            return m.forward(a.xn2.ptr, accumulateInto: xOut, acts: a.moe!, ws: ws, N: N)
        }
        feedForward!.forward(a.xn2.ptr, accumulateInto: xOut, acts: a.ffn!, N: N)
        return []
    }

    /// On entry dres_ND = ∂L/∂x_out; on exit ∂L/∂x_in (updated in place).
    func backward(_ dres_ND: UnsafeMutablePointer<Float>, xIn: UnsafePointer<Float>, acts a: LayerActs, ws: Workspace,
                  cos_TP: UnsafePointer<Float>, sin_TP: UnsafePointer<Float>, B: Int, T: Int) {
        let N = B * T
        let dxn = ws.dxn.get(N * D)   // written by each sub-layer's backward
        if let m = moe {
            m.backward(dres_ND, dxn_ND: dxn, xn_ND: a.xn2.ptr, acts: a.moe!, ws: ws, N: N)
        } else {
            feedForward!.backward(dres_ND, dx_ND: dxn, x_ND: a.xn2.ptr, acts: a.ffn!, ws: ws, N: N, overwriteDx: true)
        }
        rmsnorm_backward(dres_ND, ffnNorm.g, dxn, a.xMid.data, ffnNorm.v, a.rstd2.data, N: N, D: D)
        attention.backward(dres_ND, dxn_ND: dxn, xn_ND: a.xn1.ptr, acts: a.attn, cos_TP: cos_TP, sin_TP: sin_TP, ws: ws, B: B, T: T)
        rmsnorm_backward(dres_ND, attentionNorm.g, dxn, xIn, attentionNorm.v, a.rstd1.data, N: N, D: D)
    }
}
