import Tensor

/// The activations every decoder keeps for one (B, T), whatever its blocks: the residual stream at each layer boundary,
/// the final norm, the logits (overwritten in place by their gradient) and the backward's residual gradient.
final class DecoderActs {
    let B: Int, T: Int, N: Int
    let xs: [Tensor]              // [N, D] × (L + 1)
    let xnf: Tensor, rstdf: Tensor   // final norm output [N, D] / rstd [N]
    let logits: Tensor            // [N, V]
    let dres: Tensor, dxn: Tensor // [N, D]
    init(B: Int, T: Int, dim D: Int, vocab V: Int, layers L: Int) {
        self.B = B; self.T = T; N = B * T
        xs = (0...L).map { _ in Tensor(shape: [B * T, D]) }
        xnf = Tensor(shape: [N, D]); rstdf = Tensor(shape: [N])
        logits = Tensor(shape: [N, V])
        dres = Tensor(shape: [N, D]); dxn = Tensor(shape: [N, D])
    }
}

/// What Qwen3 and DeepSeek-V3 share around their blocks: token embedding → blocks → final RMSNorm → output projection
/// (the embedding's weight when tied) → cross-entropy, and the way back, each parameter group bracketed by the
/// `ModelHooks` in their documented order. A family gives its blocks as closures: `block(i, x_in, x_out)` returns the
/// layer's tokens per expert, `blockBackward(i, dres, x_in)` turns ∂L/∂x_out into ∂L/∂x_in in place.
///   tok_embeddings.weight [V, D] (HF model.embed_tokens), norm.weight [D] (HF model.norm), output.weight [V, D]
///   (HF lm_head; absent when enable_weight_tying)
struct DecoderStack {
    let tokEmbeddings: Parameter
    let norm: Parameter
    let output: Parameter?
    let dim: Int, vocab: Int, layers: Int, normEps: Float

    /// Declares tok_embeddings in its own parameter group (0), before the family declares its layers (groups 1...L).
    static func declareEmbedding(_ spec: ModelSpec, vocab V: Int, dim D: Int, initStd: Float) -> Parameter {
        spec.newGroup().parameter("tok_embeddings.weight", [V, D], init: .normal(std: initStd), hf: "model.embed_tokens.weight")
    }

    /// Declares the final norm and (unless tied) the output projection in the last group, after the layers.
    init(_ spec: ModelSpec, tokEmbeddings: Parameter, vocab V: Int, dim D: Int, layers L: Int, normEps: Float, initStd: Float, tied: Bool) {
        self.tokEmbeddings = tokEmbeddings
        let last = spec.newGroup()
        norm = last.parameter("norm.weight", [D], init: .ones, hf: "model.norm.weight")
        if tied {
            output = nil
            spec.hfTied["lm_head.weight"] = "model.embed_tokens.weight"   // HF may store the tied head: it must match
        } else {
            output = last.parameter("output.weight", [V, D], init: .normal(std: initStd), hf: "lm_head.weight", gemmOnly: true)
        }
        dim = D; vocab = V; layers = L; self.normEps = normEps
    }

    var outputWeight: Parameter { output ?? tokEmbeddings }

    /// Embedding, blocks, final norm, logits. Returns tokens per expert by layer.
    func forward(_ inputs: UnsafePointer<Int32>, acts a: DecoderActs, hooks: ModelHooks,
                 block: (Int, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> [Int]) -> [[Int]] {
        let N = a.N, D = dim, V = vocab, L = layers
        hooks.willForward(group: 0)
        embedding_forward(a.xs[0].data, inputs, tokEmbeddings.v, T: N, D: D, V: V)
        hooks.didForward(group: 0)
        var tpe: [[Int]] = []
        for i in 0..<L {
            hooks.willForward(group: i + 1)
            tpe.append(block(i, a.xs[i].ptr, a.xs[i + 1].data))
            hooks.didForward(group: i + 1)
        }
        hooks.willForward(group: L + 1)
        rmsnorm_forward(a.xnf.data, a.rstdf.data, a.xs[L].ptr, norm.v, N: N, D: D, eps: normEps)
        if output == nil { hooks.willForward(group: 0) }
        matmul_forward(a.logits.data, a.xnf.ptr, outputWeight.gemmInput, T: N, D: D, N: V)
        if output == nil { hooks.didForward(group: 0) }
        hooks.didForward(group: L + 1)
        return tpe
    }

    /// Forward + backward: gradients ACCUMULATED into the parameters' grads, dloss/dlogit scaled by `lossScale`;
    /// labels < 0 ignored.
    func forwardBackward(inputs: [Int32], labels: [Int32], acts a: DecoderActs, lossScale: Float, hooks: ModelHooks,
                         block: (Int, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> [Int],
                         blockBackward: (Int, UnsafeMutablePointer<Float>, UnsafePointer<Float>) -> Void) -> StepResult {
        let N = a.N, D = dim, V = vocab, L = layers
        return inputs.withUnsafeBufferPointer { inp in
            labels.withUnsafeBufferPointer { lab in
                let tpe = forward(inp.baseAddress!, acts: a, hooks: hooks, block: block)
                let (lossSum, count) = crossentropy_forward_backward(dlogits_TV: a.logits.data, logits_TV: a.logits.ptr,
                                                                     labels_T: lab.baseAddress!, T: N, V: V, dlossScale: lossScale)
                hooks.willBackward(group: L + 1)
                // Tied weights: the output projection's gradient belongs to group 0, whose backward opens here and
                // stays open until the embedding's backward has added its part (one gather, one reduction per step).
                if output == nil { hooks.willBackward(group: 0) }
                let ow = outputWeight
                matmul_backward(dx_TD: a.dxn.data, dw_ND: ow.g, dout_TN: a.logits.ptr, x_TD: a.xnf.ptr, w_ND: ow.gemmInput, T: N, D: D, N: V,
                                overwriteDx: true)
                rmsnorm_backward(a.dres.data, norm.g, a.dxn.ptr, a.xs[L].ptr, norm.v, a.rstdf.ptr, N: N, D: D, overwriteDx: true)
                hooks.didBackward(group: L + 1)
                for i in stride(from: L - 1, through: 0, by: -1) {
                    hooks.willBackward(group: i + 1)
                    blockBackward(i, a.dres.data, a.xs[i].ptr)
                    hooks.didBackward(group: i + 1)
                }
                if output != nil { hooks.willBackward(group: 0) }
                embedding_backward(tokEmbeddings.g, a.dres.ptr, inp.baseAddress!, T: N, D: D)
                hooks.didBackward(group: 0)
                return StepResult(lossSum: lossSum, tokenCount: count, tokensPerExpert: tpe)
            }
        }
    }

    /// Forward only: summed loss over labelled tokens. Calls only the forward hooks.
    func evaluate(inputs: [Int32], labels: [Int32], acts a: DecoderActs, hooks: ModelHooks,
                  block: (Int, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> [Int]) -> StepResult {
        inputs.withUnsafeBufferPointer { inp in
            labels.withUnsafeBufferPointer { lab in
                let tpe = forward(inp.baseAddress!, acts: a, hooks: hooks, block: block)
                let (s, c) = crossentropy_forward_backward(dlogits_TV: nil, logits_TV: a.logits.ptr, labels_T: lab.baseAddress!,
                                                           T: a.N, V: vocab, dlossScale: 0)
                return StepResult(lossSum: s, tokenCount: c, tokensPerExpert: tpe)
            }
        }
    }

    /// Forward only: logits [B·T, V] row-major.
    func logits(inputs: [Int32], acts a: DecoderActs, hooks: ModelHooks,
                block: (Int, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> [Int]) -> [Float] {
        inputs.withUnsafeBufferPointer { _ = forward($0.baseAddress!, acts: a, hooks: hooks, block: block) }
        return a.logits.toArray()
    }

    static func checkInputs(_ inputs: [Int32], _ labels: [Int32]?, B: Int, T: Int) {
        precondition(inputs.count == B * T, "inputs has \(inputs.count) tokens, expected B*T = \(B * T)")
        if let l = labels { precondition(l.count == B * T, "labels has \(l.count) tokens, expected B*T = \(B * T)") }
    }

    /// Auxiliary-loss-free load balancing (torchtitan): for each MoE layer, expert_bias += delta with
    /// delta = coeff·sign(mean(tpe) − tpe), delta −= mean(delta). `tokensPerExpert` is indexed by layer (entries of dense
    /// layers ignored), summed over micro-batches and data-parallel ranks. No-op when coeff == 0.
    static func updateExpertBias(_ moeByLayer: [MoE?], tokensPerExpert: [[Int]], coeff: Float) {
        guard coeff > 0 else { return }
        precondition(tokensPerExpert.count == moeByLayer.count, "updateExpertBias: \(tokensPerExpert.count) layers, model has \(moeByLayer.count)")
        for (i, moe) in moeByLayer.enumerated() {
            guard let m = moe else { continue }
            let tpe = tokensPerExpert[i]
            precondition(tpe.count == m.args.num_experts, "updateExpertBias: layer \(i) has \(tpe.count) counts for \(m.args.num_experts) experts")
            let delta = MoE.expertBiasDelta(tokensPerExpert: tpe.map { Double($0) }, coeff: coeff)
            for e in 0..<delta.count { m.expertBias.data[e] += delta[e] }
        }
    }
}
