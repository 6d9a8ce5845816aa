import XCTest
import Foundation
import Model
import Tensor

func tinyArgs(moe: Bool, scoreFunc: ScoreFunction = .softmax, routeNorm: Bool = true, routeScale: Float = 1,
              shared: Int = 0, lbCoeff: Float = 0, tied: Bool = false, grouped: Bool = true) -> Qwen3ModelArgs {
    var a = Qwen3ModelArgs()
    a.vocab_size = 24; a.dim = 16; a.n_layers = 2; a.n_heads = 4; a.n_kv_heads = 2; a.head_dim = 8
    a.hidden_dim = 20; a.norm_eps = 1e-6; a.rope_theta = 10000; a.max_seq_len = 64
    a.init_std = 0.2; a.enable_weight_tying = tied
    a.moe_enabled = moe; a.decoder_sparse_step = 1
    a.moe.num_experts = 4; a.moe.top_k = 2; a.moe.hidden_dim = 12
    a.moe.score_func = scoreFunc; a.moe.route_norm = routeNorm; a.moe.route_scale = routeScale
    a.moe.num_shared_experts = shared; a.moe.load_balance_coeff = lbCoeff; a.moe.use_grouped_mm = grouped
    return a
}

func randomTokens(_ n: Int, vocab: Int, seed: UInt64) -> [Int32] {
    var rng = SplitMix64(seed: seed)
    return (0..<n).map { _ in Int32(rng.next() % UInt64(vocab)) }
}

/// Directional finite-difference check of the whole model: for each parameter (and once for all parameters at once)
/// compares g·v with (L(θ+εv) − L(θ−εv)) / 2ε for a random unit direction v, L = mean loss.
func checkModelGradients(_ model: TrainableModel, B: Int, T: Int, seed: UInt64 = 99, eps: Float = 1e-2,
                         rtol: Double = 5e-3, atol: Double = 5e-5, file: StaticString = #filePath, line: UInt = #line) {
    let N = B * T
    let vocab = model.parameters.first { $0.fqn == "tok_embeddings.weight" }!.shape[0]
    let inputs = randomTokens(N, vocab: vocab, seed: seed)
    var labels = randomTokens(N, vocab: vocab, seed: seed + 1)
    labels[1] = -100  // an ignored position
    model.zeroGrad()
    let res = model.forwardBackward(inputs: inputs, labels: labels, B: B, T: T, lossScale: 1 / Float(N - 1))
    XCTAssertEqual(res.tokenCount, N - 1, file: file, line: line)
    let grads = model.parameters.map { $0.grad.toArray() }
    let params = model.parameters
    var rng = SplitMix64(seed: seed + 2)
    func loss() -> (Double, [[Int]]) {
        let r = model.evaluate(inputs: inputs, labels: labels, B: B, T: T)
        return (r.lossSum / Double(r.tokenCount), r.tokensPerExpert)
    }
    let (l0, tpe0) = loss()
    XCTAssertEqual(l0, res.meanLoss, accuracy: 1e-6, "evaluate and forwardBackward disagree", file: file, line: line)
    XCTAssertEqual(tpe0, res.tokensPerExpert, file: file, line: line)

    // one direction per parameter tensor, plus one over all parameters
    var cases: [[Int]] = params.indices.map { [$0] }
    cases.append(Array(params.indices))
    var checked = 0
    for sel in cases {
        var dirs: [Int: [Float]] = [:]
        var norm2 = 0.0
        for i in sel {
            let v = (0..<params[i].count).map { _ in rng.nextNormal() }
            norm2 += v.reduce(0.0) { $0 + Double($1) * Double($1) }
            dirs[i] = v
        }
        let inv = Float(1 / norm2.squareRoot())
        var analytic = 0.0
        var saved: [Int: [Float]] = [:]
        for i in sel {
            dirs[i] = dirs[i]!.map { $0 * inv }
            for j in 0..<params[i].count { analytic += Double(grads[i][j]) * Double(dirs[i]![j]) }
            saved[i] = params[i].value.toArray()
        }
        func setAll(_ s: Float) {
            for i in sel { for j in 0..<params[i].count { params[i].value.data[j] = saved[i]![j] + s * dirs[i]![j] } }
        }
        setAll(eps); let (lp, tp) = loss()
        setAll(-eps); let (lm, tm) = loss()
        setAll(0)
        let name = sel.count == 1 ? params[sel[0]].fqn : "all parameters"
        if tp != tpe0 || tm != tpe0 {
            XCTFail("\(name): routing changed under the perturbation; choose a smaller eps", file: file, line: line)
            continue
        }
        let fd = (lp - lm) / Double(2 * eps)
        let tol = atol + rtol * max(abs(fd), abs(analytic))
        if ProcessInfo.processInfo.environment["GRADCHECK_VERBOSE"] != nil {
            print(String(format: "gradcheck %@: analytic %.6e fd %.6e ratio %.3f", name, analytic, fd, abs(fd - analytic) / tol))
        }
        XCTAssertLessThanOrEqual(abs(fd - analytic), tol, "\(name): analytic \(analytic) vs finite difference \(fd)", file: file, line: line)
        checked += 1
    }
    XCTAssertEqual(checked, cases.count, file: file, line: line)
    // gradients must not be trivially zero
    let total = grads.reduce(0.0) { acc, g in acc + g.reduce(0.0) { $0 + Double($1) * Double($1) } }
    XCTAssertGreaterThan(total, 1e-8, file: file, line: line)
}

/// A tiny DeepSeek-V3: 3 layers (the first dense), MLA, 8 experts in 4 groups of which 2 are kept, top-3, one shared
/// expert; q low-rank path, interleaved rope and YaRN unless told otherwise.
func tinyDeepSeekArgs(qLoraRank: Int = 6, interleave: Bool = true, yarn: Bool = true, groups: Int = 4, keep: Int = 2,
                      grouped: Bool = true) -> DeepSeekV3ModelArgs {
    var a = DeepSeekV3ModelArgs()
    a.vocab_size = 24; a.dim = 16; a.n_layers = 3; a.n_dense_layers = 1; a.n_heads = 2; a.hidden_dim = 20
    a.norm_eps = 1e-6; a.max_seq_len = 64; a.init_std = 0.2
    a.q_lora_rank = qLoraRank; a.kv_lora_rank = 10; a.qk_nope_head_dim = 6; a.qk_rope_head_dim = 4; a.v_head_dim = 5
    a.rope_theta = 10000; a.rope_interleave = interleave
    if yarn {
        a.rope_scaling = .yarn; a.rope_factor = 8; a.original_seq_len = 16; a.mscale = 0.8; a.mscale_all_dim = 1
    }
    a.moe.num_experts = 8; a.moe.top_k = 3; a.moe.hidden_dim = 12; a.moe.num_shared_experts = 1
    a.moe.score_func = .sigmoid; a.moe.route_norm = true; a.moe.route_scale = 2.5; a.moe.use_grouped_mm = grouped
    a.n_expert_groups = groups; a.n_limited_groups = keep
    return a
}
