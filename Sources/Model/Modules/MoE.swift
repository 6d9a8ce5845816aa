import Runtime
import Tensor

/// Mixture-of-experts options (torchtitan: MoEArgs).
public struct MoEArgs: Codable, Equatable, Sendable {
    public var num_experts: Int = 8
    public var top_k: Int = 2
    /// Hidden size of one routed expert (HF: moe_intermediate_size).
    public var hidden_dim: Int = 64
    public var score_func: ScoreFunction = .softmax
    /// Renormalize the top-k scores to sum to 1 (HF: norm_topk_prob).
    public var route_norm: Bool = true
    public var route_scale: Float = 1.0
    public var num_shared_experts: Int = 0
    /// Auxiliary-loss-free load balancing: expert bias step size; 0 disables it.
    public var load_balance_coeff: Float = 0
    /// Expert computation: grouped (experts run concurrently, whole experts per kernel thread) or a plain loop over
    /// experts with each GEMM split over the threads. The same bits either way with one kernel thread; with several the
    /// loop path's split GEMMs can differ in the last bits.
    public var use_grouped_mm: Bool = true
    public init() {}
}

public enum ScoreFunction: String, Codable, Sendable, CaseIterable {
    case softmax, sigmoid
}

final class MoEActs {
    let scores: Tensor            // [N, E]
    let idx: IntBuffer            // [N, K] selected experts
    let gate: Tensor              // [N, K] routing weights
    let pos: IntBuffer            // [N, K] position of pair (t, k) in the expert-sorted order
    let src: IntBuffer            // [N*K] token of sorted row s
    var counts: [Int]             // [E]
    let xs: Tensor, ys: Tensor    // [N*K, D] expert-sorted inputs / outputs
    let shared: FFNActs?
    init(N: Int, D: Int, E: Int, K: Int, sharedHidden: Int) {
        scores = Tensor(shape: [N, E]); idx = IntBuffer(N * K); gate = Tensor(shape: [N, K])
        pos = IntBuffer(N * K); src = IntBuffer(N * K); counts = [Int](repeating: 0, count: E)
        xs = Tensor(shape: [N * K, D]); ys = Tensor(shape: [N * K, D])
        shared = sharedHidden > 0 ? FFNActs(N: N, F: sharedHidden) : nil
    }
}

/// Qwen3-MoE sparse block with torchtitan options (HF Qwen3MoeSparseMoeBlock when softmax, route_norm, no shared experts,
/// no load balancing): router logits = x·gateᵀ, scores = softmax (or sigmoid) over all experts, top-k by scores + expert_bias,
/// gate weights from the unbiased scores (renormalised when route_norm, × route_scale), routed expert outputs multiplied by
/// their gate weights and summed, plus the ungated shared experts.
///   router.gate.weight [E, D] (HF mlp.gate.weight), experts.w1/w2/w3 (see GroupedExperts),
///   shared_experts.w1/w2/w3 [E_s·F, D] (no HF counterpart), expert_bias [E] (buffer, when load_balance_coeff > 0)
public final class MoE {
    public let args: MoEArgs
    public let dim: Int
    /// The module's FQN, e.g. "layers.3.moe".
    public let fqn: String
    public let gate: Parameter                 // router.gate.weight [E, D]
    public let w1: Parameter, w2: Parameter, w3: Parameter
    /// The routed-expert computation; replace it to distribute experts (expert parallelism).
    public var experts: MoEExperts
    /// The built-in local implementation over w1/w2/w3.
    public let localExperts: GroupedExperts
    public let shared: FeedForward?
    /// Load-balancing bias [E], added to the scores for top-k selection only. Used when load_balance_coeff > 0.
    public let expertBias: Tensor

    /// Group-limited routing (DeepSeek-V3's n_group / topk_group; 1 / 1: every expert competes).
    public let groups: Int, topkGroups: Int
    /// The bias is an HF buffer (DeepSeek-V3's e_score_correction_bias): always applied to the selection, imported
    /// and exported, and still updated by load balancing when load_balance_coeff > 0.
    let correctionBias: Bool

    /// `hf` names for what Qwen3-MoE lacks and DeepSeek-V3 has: `sharedExpertsHF` (e.g. "shared_experts.") and
    /// `correctionBiasHF` (e.g. "gate.e_score_correction_bias", which makes the bias always used).
    init(_ t: ParameterScope, args a: MoEArgs, dim D: Int, initStd: Float, groups: Int = 1, topkGroups: Int = 1,
         sharedExpertsHF: String? = nil, correctionBiasHF: String? = nil) {
        args = a; dim = D; fqn = t.fqn
        self.groups = groups; self.topkGroups = topkGroups
        correctionBias = correctionBiasHF != nil
        gate = t.parameter("router.gate.weight", [a.num_experts, D], init: .normal(std: initStd), hf: "gate.weight", gemmOnly: true)
        localExperts = GroupedExperts(t.scope("experts.", hf: "experts."), numExperts: a.num_experts, dim: D, hiddenDim: a.hidden_dim,
                                      initStd: initStd, useGroupedMM: a.use_grouped_mm)
        w1 = localExperts.w1; w2 = localExperts.w2; w3 = localExperts.w3
        experts = localExperts
        shared = a.num_shared_experts > 0
            ? FeedForward(t.scope("shared_experts.", hf: sharedExpertsHF), dim: D, hiddenDim: a.hidden_dim * a.num_shared_experts, initStd: initStd)
            : nil
        expertBias = Tensor(shape: [a.num_experts])
        if correctionBias || args.load_balance_coeff > 0 { t.buffer("expert_bias", expertBias, hf: correctionBiasHF) }
    }

    var usesBias: Bool { args.load_balance_coeff > 0 || correctionBias }

    /// The routed experts' weights, whose leading dimension indexes the experts: w1 [E, F, D], w2 [E, D, F], w3 [E, F, D].
    public var routedExpertParameters: [Parameter] { [w1, w2, w3] }

    /// out_ND += MoE(xn_ND). Returns tokens per expert [E].
    @discardableResult
    func forward(_ xn_ND: UnsafePointer<Float>, accumulateInto out_ND: UnsafeMutablePointer<Float>, acts a: MoEActs, ws: Workspace, N: Int) -> [Int] {
        let D = dim, E = args.num_experts, K = args.top_k
        let logits = ws.logits.get(N * E)
        matmul_forward(logits, xn_ND, gate.gemmInput, T: N, D: D, N: E)
        router_scores_forward(a.scores.data, logits, T: N, E: E, sigmoid: args.score_func == .sigmoid)
        topk_forward(a.idx.data, a.gate.data, a.scores.data, bias_E: usesBias ? UnsafePointer(expertBias.data) : nil,
                     T: N, E: E, K: K, routeNorm: args.route_norm, routeScale: args.route_scale, groups: groups, topkGroups: topkGroups)
        // stable counting sort of the (token, k) pairs by expert
        var counts = [Int](repeating: 0, count: E)
        for p in 0..<(N * K) { counts[Int(a.idx.data[p])] += 1 }
        var next = [Int](repeating: 0, count: E)
        var o = 0
        for e in 0..<E { next[e] = o; o += counts[e] }
        for p in 0..<(N * K) {
            let e = Int(a.idx.data[p])
            let s = next[e]
            next[e] += 1
            a.pos.data[p] = Int32(s)
            a.src.data[s] = Int32(p / K)
        }
        a.counts = counts
        parallelFor(N * K, costPerItem: D) { rows in
            for s in rows { (a.xs.data + s * D).update(from: xn_ND + Int(a.src.data[s]) * D, count: D) }
        }
        experts.forward(x_SD: a.xs.ptr, token_S: a.src.data, counts_E: counts, y_SD: a.ys.data)
        // combine: out[t] += Σ_k gate[t,k] · y[pos[t,k]]
        parallelFor(N, costPerItem: K * D) { rows in
            for t in rows {
                let out = out_ND + t * D
                for k in 0..<K {
                    let p = t * K + k
                    axpy(out, a.gate.data[p], a.ys.data + Int(a.pos.data[p]) * D, D)
                }
            }
        }
        if let sh = shared { sh.forward(xn_ND, accumulateInto: out_ND, acts: a.shared!, N: N) }
        return counts
    }

    /// dxn_ND = ∂/∂xn (through experts, router weights and shared experts; written: no zeroing pass first); parameter
    /// grads accumulated.
    func backward(_ dout_ND: UnsafePointer<Float>, dxn_ND: UnsafeMutablePointer<Float>, xn_ND: UnsafePointer<Float>, acts a: MoEActs,
                  ws: Workspace, N: Int) {
        let D = dim, E = args.num_experts, K = args.top_k, S = N * K
        let dgate = ws.dgate.get(S), dys = ws.dys.get(S * D), dxs = ws.dxs.get(S * D)
        parallelFor(N, costPerItem: 3 * K * D) { rows in
            for t in rows {
                let dout = dout_ND + t * D
                for k in 0..<K {
                    let p = t * K + k
                    let s = Int(a.pos.data[p])
                    dgate[p] = dot(dout, a.ys.data + s * D, D)
                    let g = a.gate.data[p]
                    let dy = dys + s * D
                    for i in 0..<D { dy[i] = g * dout[i] }
                }
            }
        }
        experts.backward(x_SD: a.xs.ptr, dy_SD: dys, counts_E: a.counts, dx_SD: dxs)
        parallelFor(N, costPerItem: 2 * K * D) { rows in
            for t in rows {
                let dxn = dxn_ND + t * D
                dxn.update(from: dxs + Int(a.pos.data[t * K]) * D, count: D)
                for k in 1..<K { add_inplace(dxn, dxs + Int(a.pos.data[t * K + k]) * D, D) }
            }
        }
        let dscores = ws.dscores.get(N * E), dlogits = ws.dlogits.get(N * E)
        dscores.update(repeating: 0, count: N * E)
        dlogits.update(repeating: 0, count: N * E)
        topk_backward(dscores, dgate, a.scores.data, a.idx.data, T: N, E: E, K: K, routeNorm: args.route_norm, routeScale: args.route_scale)
        router_scores_backward(dlogits, dscores, a.scores.data, T: N, E: E, sigmoid: args.score_func == .sigmoid)
        matmul_backward(dx_TD: dxn_ND, dw_ND: gate.g, dout_TN: dlogits, x_TD: xn_ND, w_ND: gate.gemmInput, T: N, D: D, N: E)
        if let sh = shared { sh.backward(dout_ND, dx_ND: dxn_ND, x_ND: xn_ND, acts: a.shared!, ws: ws, N: N) }
    }

    /// torchtitan's auxiliary-loss-free update from (globally summed) tokens per expert:
    ///   delta = coeff · sign(mean(tpe) − tpe);  delta −= mean(delta);  expert_bias += delta.
    public static func expertBiasDelta(tokensPerExpert tpe: [Double], coeff: Float) -> [Float] {
        let E = tpe.count
        guard E > 0 else { return [] }
        let tf = tpe.map { Float($0) }
        var mean: Float = 0
        for v in tf { mean += v }
        mean /= Float(E)
        var delta = tf.map { v -> Float in
            let d = mean - v
            return coeff * (d > 0 ? 1 : (d < 0 ? -1 : 0))
        }
        var dm: Float = 0
        for v in delta { dm += v }
        dm /= Float(E)
        for i in 0..<E { delta[i] -= dm }
        return delta
    }
}
