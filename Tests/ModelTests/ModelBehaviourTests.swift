import Runtime
import XCTest
import Model
import Tensor

final class ExpertPathTests: XCTestCase {
    /// With two kernel threads and no size threshold, so the grouped path really runs experts concurrently.
    override func invokeTest() {
        let saved = (KernelThreads.count, KernelThreads.minWork)
        KernelThreads.count = 2
        KernelThreads.minWork = 0
        defer { KernelThreads.count = saved.0; KernelThreads.minWork = saved.1 }
        super.invokeTest()
    }

    func testLoopAndGroupedPathsAreIdentical() throws {
        for shared in [0, 1] {
            let a = tinyArgs(moe: true, shared: shared)
            let m = try Qwen3Model(args: a, seed: 11)
            let B = 3, T = 7
            let x = randomTokens(B * T, vocab: a.vocab_size, seed: 1), y = randomTokens(B * T, vocab: a.vocab_size, seed: 2)
            m.setUseGroupedMM(true)
            m.zeroGrad()
            let r1 = m.forwardBackward(inputs: x, labels: y, B: B, T: T, lossScale: 1 / Float(B * T))
            let g1 = m.parameters.map { $0.grad.toArray() }
            m.setUseGroupedMM(false)
            m.zeroGrad()
            let r2 = m.forwardBackward(inputs: x, labels: y, B: B, T: T, lossScale: 1 / Float(B * T))
            let g2 = m.parameters.map { $0.grad.toArray() }
            XCTAssertEqual(r1, r2)
            for (i, p) in m.parameters.enumerated() { XCTAssertEqual(g1[i], g2[i], "\(p.fqn) differs between grouped and loop paths") }
            XCTAssertGreaterThan(g1.flatMap { $0 }.map { abs($0) }.max()!, 0)
        }
    }

    /// Direct test of the experts object: zero-token experts, both paths against a naive per-row reference.
    func testGroupedExpertsWithEmptyExpertsAgainstReference() {
        let E = 5, D = 6, F = 7
        let counts = [3, 0, 4, 0, 1]
        let S = counts.reduce(0, +)
        var rng = SplitMix64(seed: 3)
        let experts = GroupedExperts(ModelSpec(materialize: true).newGroup(), numExperts: E, dim: D, hiddenDim: F, initStd: 0.5,
                                   useGroupedMM: true)
        let w1 = experts.w1, w2 = experts.w2, w3 = experts.w3
        for p in [w1, w2, w3] { rng.fillNormal(p.value.data, p.count, std: 0.5) }
        let x = Tensor(shape: [S, D]); rng.fillNormal(x.data, x.count)
        let dy = Tensor(shape: [S, D]); rng.fillNormal(dy.data, dy.count)
        var results: [[Float]] = []
        var grads: [[[Float]]] = []
        for grouped in [true, false] {
            for p in [w1, w2, w3] { p.grad.zero() }
            experts.useGroupedMM = grouped
            let y = Tensor(shape: [S, D]), dx = Tensor(shape: [S, D])
            experts.forward(x_SD: x.ptr, counts_E: counts, y_SD: y.data)
            experts.backward(x_SD: x.ptr, dy_SD: dy.ptr, counts_E: counts, dx_SD: dx.data)
            results.append(y.toArray() + dx.toArray())
            grads.append([w1.grad.toArray(), w2.grad.toArray(), w3.grad.toArray()])
            // reference forward
            var row = 0
            for e in 0..<E {
                for _ in 0..<counts[e] {
                    for o in 0..<D {
                        var acc = 0.0
                        for f in 0..<F {
                            var a = 0.0, b = 0.0
                            for d in 0..<D {
                                a += Double(w1.value[e * F * D + f * D + d]) * Double(x[row * D + d])
                                b += Double(w3.value[e * F * D + f * D + d]) * Double(x[row * D + d])
                            }
                            acc += a / (1 + exp(-a)) * b * Double(w2.value[e * D * F + o * F + f])
                        }
                        XCTAssertEqual(Double(y[row * D + o]), acc, accuracy: 1e-4)
                    }
                    row += 1
                }
            }
            // experts without tokens get exactly zero gradient
            for e in [1, 3] {
                for p in [w1, w2, w3] { XCTAssertTrue((0..<(F * D)).allSatisfy { p.grad[e * F * D + $0] == 0 }) }
            }
            XCTAssertTrue((0..<(F * D)).contains { w1.grad[$0] != 0 })
        }
        XCTAssertEqual(results[0], results[1])
        XCTAssertEqual(grads[0], grads[1])
        // zero tokens in total
        experts.useGroupedMM = true
        let none = Tensor(shape: [1, D])
        experts.forward(x_SD: none.ptr, counts_E: [0, 0, 0, 0, 0], y_SD: none.data)
        experts.backward(x_SD: none.ptr, dy_SD: none.ptr, counts_E: [0, 0, 0, 0, 0], dx_SD: none.data)
    }

    /// Mixed precision, the experts fed bfloat16 rows (expert parallelism's dispatched inputs and output gradients):
    /// backward with dy already in bfloat16 gives the bits of dy in fp32 rounded by the GEMMs' packing (dx and weight
    /// gradients), and forward matches the fp32 experts run on the same rounded inputs and weights up to the bfloat16
    /// rounding of the SwiGLU output.
    func testBFloat16RowsGiveTheSameBitsAsTheirFloat32Source() {
        let saved = BLAS.matmulPrecision
        defer { BLAS.matmulPrecision = saved }
        let E = 3, D = 32, F = 48
        let counts = [5, 0, 9]
        let S = counts.reduce(0, +)
        var rng = SplitMix64(seed: 21)
        let experts = GroupedExperts(ModelSpec(materialize: true).newGroup(), numExperts: E, dim: D, hiddenDim: F, initStd: 0.5,
                                     useGroupedMM: true)
        let weights = [experts.w1, experts.w2, experts.w3]
        for p in weights {
            rng.fillNormal(p.value.data, p.count, std: 0.5)
            round_bf16(p.value.data, into: p.value.data, p.count)   // so the fp32 reference multiplies the same values
        }
        let x = Tensor(shape: [S, D]); rng.fillNormal(x.data, x.count)
        let dy = Tensor(shape: [S, D]); rng.fillNormal(dy.data, dy.count)
        round_bf16(x.data, into: x.data, x.count)
        var x16 = [UInt16](repeating: 0, count: S * D), dy16 = [UInt16](repeating: 0, count: S * D)
        to_bf16(x.ptr, into: &x16, S * D)
        to_bf16(dy.ptr, into: &dy16, S * D)
        func grads() -> [[UInt32]] { weights.map { $0.grad.toArray().map(\.bitPattern) } }

        // fp32 reference forward on the rounded values
        BLAS.matmulPrecision = .float32
        let yRef = Tensor(shape: [S, D])
        experts.forward(x_SD: x.ptr, counts_E: counts, y_SD: yRef.data)

        BLAS.matmulPrecision = .bfloat16
        for p in weights { p.grad.zero() }
        let y32 = Tensor(shape: [S, D]), dx32 = Tensor(shape: [S, D])
        experts.forward(x_SD: x.ptr, counts_E: counts, y_SD: y32.data)
        experts.backward(x_SD: x.ptr, dy_SD: dy.ptr, counts_E: counts, dx_SD: dx32.data)
        let g32 = grads()
        for p in weights { p.grad.zero() }
        let y16 = Tensor(shape: [S, D]), dx16 = Tensor(shape: [S, D])
        x16.withUnsafeBufferPointer { x16 in
            dy16.withUnsafeBufferPointer { dy16 in
                experts.forward(x16_SD: x16.baseAddress!, counts_E: counts, y_SD: y16.data)
                experts.backward(x16_SD: x16.baseAddress!, dy_SD: .bf16(dy16.baseAddress!), counts_E: counts, dx_SD: dx16.data)
            }
        }
        let scale = yRef.toArray().map { abs($0) }.max()!
        XCTAssertGreaterThan(scale, 0)
        let worst = zip(y16.toArray(), yRef.toArray()).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst, 1e-2 * scale, "bfloat16-row experts differ from the fp32 ones on the same values by \(worst)")
        XCTAssertEqual(y16.toArray().map(\.bitPattern), y32.toArray().map(\.bitPattern))
        XCTAssertEqual(dx16.toArray().map(\.bitPattern), dx32.toArray().map(\.bitPattern))
        XCTAssertEqual(grads(), g32)
        XCTAssertTrue(dx32.toArray().contains { $0 != 0 } && g32[0].contains { $0 != 0 })
    }

    func testModelWithExpertsThatGetNoTokens() throws {
        var a = tinyArgs(moe: true, lbCoeff: 1e-3)
        a.moe.num_experts = 6; a.moe.top_k = 1
        let m = try Qwen3Model(args: a, seed: 12)
        // experts 3, 4, 5 are never selected (selection bias only; gate weights and gradients are unaffected)
        for l in m.layers { for e in 3..<6 { l.moe!.expertBias.data[e] = -100 } }
        let B = 2, T = 6
        m.zeroGrad()
        let r = m.forwardBackward(inputs: randomTokens(B * T, vocab: a.vocab_size, seed: 99),
                                  labels: randomTokens(B * T, vocab: a.vocab_size, seed: 100), B: B, T: T, lossScale: 1)
        for l in 0..<2 {
            XCTAssertEqual(r.tokensPerExpert[l].reduce(0, +), B * T)
            XCTAssertTrue(r.tokensPerExpert[l].contains(0), "expected idle experts, got \(r.tokensPerExpert[l])")
            let w1 = m.layers[l].moe!.w1
            let per = a.moe.hidden_dim * a.dim
            for e in 0..<6 where r.tokensPerExpert[l][e] == 0 {
                XCTAssertTrue((0..<per).allSatisfy { w1.grad[e * per + $0] == 0 })
            }
        }
        checkModelGradients(m, B: B, T: T)
    }
}

final class ModelStateTests: XCTestCase {
    func testDeterministicInitialisation() throws {
        let a = tinyArgs(moe: true, shared: 1)
        let m1 = try Qwen3Model(args: a, seed: 5), m2 = try Qwen3Model(args: a, seed: 5), m3 = try Qwen3Model(args: a, seed: 6)
        XCTAssertEqual(m1.stateDict(), m2.stateDict())
        XCTAssertNotEqual(m1.stateDict(), m3.stateDict())
        let sd = m1.stateDict()
        XCTAssertEqual(sd["layers.0.attention.q_norm.weight"]!.values, [Float](repeating: 1, count: a.head_dim))
        XCTAssertEqual(sd["norm.weight"]!.values, [Float](repeating: 1, count: a.dim))
        let w = sd["layers.1.moe.experts.w2"]!.values
        let mean = w.reduce(0, +) / Float(w.count)
        let std = (w.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(w.count)).squareRoot()
        XCTAssertEqual(mean, 0, accuracy: 0.02)
        XCTAssertEqual(std, a.init_std, accuracy: 0.02)
    }

    /// A model built without storage trains like the materialized one once a state dict is loaded into it.
    func testLoadIntoUnmaterializedModelTrains() throws {
        let a = tinyArgs(moe: true, shared: 1, lbCoeff: 1e-3)
        let ref = try Qwen3Model(args: a, seed: 6)
        let m = try Qwen3Model(args: a, seed: 99, materialize: false)
        XCTAssertTrue(m.parameters.allSatisfy { $0.value == nil && $0.grad == nil && $0.awaitsInitialization })
        try m.load(stateDict: ref.stateDict())
        XCTAssertTrue(m.parameters.allSatisfy { $0.value != nil && $0.grad != nil && !$0.awaitsInitialization })
        let B = 2, T = 5
        let x = randomTokens(B * T, vocab: a.vocab_size, seed: 1), y = randomTokens(B * T, vocab: a.vocab_size, seed: 2)
        ref.zeroGrad(); m.zeroGrad()
        XCTAssertEqual(m.forwardBackward(inputs: x, labels: y, B: B, T: T, lossScale: 0.1),
                       ref.forwardBackward(inputs: x, labels: y, B: B, T: T, lossScale: 0.1))
        XCTAssertEqual(m.parameters.map { $0.grad.toArray() }, ref.parameters.map { $0.grad.toArray() })
    }

    func testParameterGroupsAndNames() throws {
        let a = tinyArgs(moe: true, shared: 1, lbCoeff: 1e-3)
        let m = try Qwen3Model(args: a, seed: 1)
        XCTAssertEqual(m.parameterGroups.count, a.n_layers + 2)
        XCTAssertEqual(m.parameterGroups[0].map { $0.fqn }, ["tok_embeddings.weight"])
        XCTAssertEqual(m.parameterGroups.last!.map { $0.fqn }, ["norm.weight", "output.weight"])
        XCTAssertEqual(m.parameterGroups[1].map { $0.fqn }, [
            "layers.0.attention_norm.weight", "layers.0.attention.wq.weight", "layers.0.attention.wk.weight",
            "layers.0.attention.wv.weight", "layers.0.attention.wo.weight", "layers.0.attention.q_norm.weight",
            "layers.0.attention.k_norm.weight", "layers.0.ffn_norm.weight", "layers.0.moe.router.gate.weight",
            "layers.0.moe.experts.w1", "layers.0.moe.experts.w2", "layers.0.moe.experts.w3",
            "layers.0.moe.shared_experts.w1.weight", "layers.0.moe.shared_experts.w2.weight", "layers.0.moe.shared_experts.w3.weight",
        ])
        XCTAssertEqual(m.parameterGroups[1][9].shape, [4, 12, 16])
        XCTAssertEqual(m.parameterGroups[1][10].shape, [4, 16, 12])
        XCTAssertEqual(Set(m.stateDict().keys), Set(m.parameters.map { $0.fqn } + ["layers.0.moe.expert_bias", "layers.1.moe.expert_bias"]))
        let tied = try Qwen3Model(args: tinyArgs(moe: false, tied: true), seed: 1)
        XCTAssertEqual(tied.parameterGroups.last!.map { $0.fqn }, ["norm.weight"])
        XCTAssertNil(tied.stateDict()["output.weight"])
    }

    /// The spec is the one table: every parameter's group, initialisation and HF layout as the modules declared them,
    /// and for `Qwen3Model.spec` no storage at all.
    func testSpecDeclaresGroupsInitAndHFLayouts() throws {
        let a = tinyArgs(moe: true, shared: 1, lbCoeff: 1e-3)
        let spec = try Qwen3Model.spec(a)
        XCTAssertTrue(spec.parameters.allSatisfy { $0.value == nil && $0.awaitsInitialization })
        for (g, group) in spec.groups.enumerated() { XCTAssertTrue(group.allSatisfy { $0.group == g }) }
        let p = Dictionary(uniqueKeysWithValues: spec.parameters.map { ($0.fqn, $0) })
        XCTAssertEqual(p["layers.1.attention.wq.weight"]?.hf, .tensor("model.layers.1.self_attn.q_proj.weight"))
        XCTAssertEqual(p["layers.0.ffn_norm.weight"]?.hf, .tensor("model.layers.0.post_attention_layernorm.weight"))
        XCTAssertEqual(p["layers.0.moe.router.gate.weight"]?.hf, .tensor("model.layers.0.mlp.gate.weight"))
        XCTAssertEqual(p["layers.0.moe.experts.w2"]?.hf, .perExpert((0..<4).map { "model.layers.0.mlp.experts.\($0).down_proj.weight" }))
        XCTAssertEqual(p["layers.0.moe.shared_experts.w1.weight"]?.hf, HFLayout.none, "Qwen3-MoE has no shared experts in HF")
        XCTAssertEqual(p["output.weight"]?.hf, .tensor("lm_head.weight"))
        XCTAssertEqual(p["layers.0.attention.q_norm.weight"]?.initialization, .ones)
        XCTAssertEqual(p["norm.weight"]?.initialization, .ones)
        XCTAssertEqual(p["layers.0.moe.experts.w1"]?.initialization, .normal(std: a.init_std))
        XCTAssertEqual(spec.buffers.map(\.fqn), ["layers.0.moe.expert_bias", "layers.1.moe.expert_bias"])
        XCTAssertTrue(spec.buffers.allSatisfy { $0.hf == nil })
        XCTAssertEqual(spec.hfArchitecture, "Qwen3MoeForCausalLM")
        let tied = try Qwen3Model.spec(tinyArgs(moe: false, tied: true))
        XCTAssertEqual(tied.hfTied, ["lm_head.weight": "model.embed_tokens.weight"])
        XCTAssertEqual(tied.hfArchitecture, "Qwen3ForCausalLM")
        XCTAssertNil(tied.parameterShapes["output.weight"])
        XCTAssertEqual(tied.parameterShapes["layers.0.feed_forward.w2.weight"], [a.dim, a.hidden_dim])
    }

    func testStateDictRoundTripAndErrors() throws {
        let a = tinyArgs(moe: true, shared: 1, lbCoeff: 1e-3)
        let src = try Qwen3Model(args: a, seed: 1)
        for l in src.layers { l.moe!.expertBias.data[2] = 0.5 }
        let dst = try Qwen3Model(args: a, seed: 2)
        let x = randomTokens(12, vocab: a.vocab_size, seed: 1)
        XCTAssertNotEqual(src.logits(inputs: x, B: 2, T: 6), dst.logits(inputs: x, B: 2, T: 6))
        let sd = src.stateDict()
        try dst.load(stateDict: sd)
        XCTAssertEqual(dst.stateDict(), sd)
        XCTAssertEqual(src.logits(inputs: x, B: 2, T: 6), dst.logits(inputs: x, B: 2, T: 6))

        var missing = sd; missing["layers.1.attention.wq.weight"] = nil
        XCTAssertThrowsError(try dst.load(stateDict: missing)) {
            XCTAssertEqual($0 as? ModelError, .missingKeys(["layers.1.attention.wq.weight"]))
        }
        var extra = sd; extra["layers.9.attention.wq.weight"] = HostTensor(shape: [1], values: [0])
        XCTAssertThrowsError(try dst.load(stateDict: extra)) {
            XCTAssertEqual($0 as? ModelError, .unexpectedKeys(["layers.9.attention.wq.weight"]))
        }
        var bad = sd; bad["norm.weight"] = HostTensor(shape: [a.dim + 1], values: [Float](repeating: 1, count: a.dim + 1))
        XCTAssertThrowsError(try dst.load(stateDict: bad)) {
            XCTAssertEqual($0 as? ModelError, .shapeMismatch(fqn: "norm.weight", expected: [a.dim], got: [a.dim + 1]))
            XCTAssertTrue("\($0)".contains("norm.weight"))
        }
        var noBias = sd; noBias["layers.0.moe.expert_bias"] = nil; noBias["layers.1.moe.expert_bias"] = nil
        XCTAssertThrowsError(try dst.load(stateDict: noBias))
        try dst.load(stateDict: noBias, allowMissingBuffers: true)
        XCTAssertEqual(dst.layers[0].moe!.expertBias.toArray(), [0, 0, 0, 0])
    }

    func testFlavors() throws {
        XCTAssertTrue(Set(["debugmodel", "debugmodel_moe", "bench_moe"]).isSubset(of: Set(Qwen3Flavors.all.keys)))
        let b = try XCTUnwrap(Qwen3Flavors.all["bench_moe"])
        XCTAssertEqual([b.vocab_size, b.dim, b.n_layers, b.n_heads, b.n_kv_heads, b.head_dim, b.hidden_dim], [2048, 256, 4, 8, 4, 32, 1024])
        XCTAssertEqual([b.moe.num_experts, b.moe.top_k, b.moe.hidden_dim], [16, 2, 512])
        XCTAssertTrue((0..<4).allSatisfy { b.isMoELayer($0) })
        for (n, a) in Qwen3Flavors.all { XCTAssertNoThrow(try a.validate(), n) }
        var bad = Qwen3ModelArgs(); bad.n_kv_heads = 3
        XCTAssertThrowsError(try Qwen3Model(args: bad)) { XCTAssertTrue("\($0)".contains("n_kv_heads")) }
    }

    func testDebugMoEInitialLossAndTrainingReducesLoss() throws {
        let m = try Qwen3Model(args: Qwen3Flavors.all["debugmodel_moe"]!, seed: 0)
        let B = 2, T = 32, V = m.args.vocab_size
        // a learnable stream: token i+1 follows token i
        let stream = (0..<(B * (T + 1))).map { Int32(($0 * 7) % 97) }
        var x: [Int32] = [], y: [Int32] = []
        for b in 0..<B { x += stream[b * (T + 1)..<(b * (T + 1) + T)]; y += stream[(b * (T + 1) + 1)...(b * (T + 1) + T)] }
        let first = m.evaluate(inputs: x, labels: y, B: B, T: T).meanLoss
        XCTAssertEqual(first, log(Double(V)), accuracy: 0.1)
        var last = first
        for _ in 0..<8 {
            m.zeroGrad()
            let r = m.forwardBackward(inputs: x, labels: y, B: B, T: T, lossScale: 1 / Float(B * T))
            XCTAssertEqual(r.tokensPerExpert[0].reduce(0, +), B * T * 2)
            for p in m.parameters { axpy(p.value.data, -1.0, p.grad.ptr, p.count) }  // plain SGD, lr 1
            last = r.meanLoss
        }
        let after = m.evaluate(inputs: x, labels: y, B: B, T: T).meanLoss
        XCTAssertLessThan(after, first - 0.5, "loss \(first) → \(last) → \(after)")
    }
}

final class LoadBalancingTests: XCTestCase {
    func testExpertBiasDeltaMatchesTorchtitanFormula() {
        let d = MoE.expertBiasDelta(tokensPerExpert: [10, 0, 5, 5], coeff: 0.1)
        // mean 5: sign(mean - tpe) = [-1, 1, 0, 0] * 0.1, minus its mean (0)
        XCTAssertEqual(d, [-0.1, 0.1, 0, 0])
        let d2 = MoE.expertBiasDelta(tokensPerExpert: [1, 2, 3], coeff: 1)
        // sign = [1, 0, -1], mean 0
        XCTAssertEqual(d2, [1, 0, -1])
        let d3 = MoE.expertBiasDelta(tokensPerExpert: [0, 0, 9], coeff: 1)
        // sign = [1, 1, -1], mean 1/3
        XCTAssertEqual(d3[0], 2.0 / 3.0, accuracy: 1e-6); XCTAssertEqual(d3[2], -4.0 / 3.0, accuracy: 1e-6)
    }

    func testBiasSteersSelectionOnlyAndUpdates() throws {
        let a = tinyArgs(moe: true, lbCoeff: 0.01)
        let m = try Qwen3Model(args: a, seed: 21)
        let B = 2, T = 6
        let x = randomTokens(B * T, vocab: a.vocab_size, seed: 5), y = randomTokens(B * T, vocab: a.vocab_size, seed: 6)
        let r0 = m.evaluate(inputs: x, labels: y, B: B, T: T)
        // a large bias on expert 3 makes every token pick it
        m.layers[0].moe!.expertBias.data[3] = 100
        let r1 = m.evaluate(inputs: x, labels: y, B: B, T: T)
        XCTAssertEqual(r1.tokensPerExpert[0][3], B * T)
        XCTAssertNotEqual(r1.lossSum, r0.lossSum)
        // the update pushes the overloaded expert down
        m.layers[0].moe!.expertBias.zero()
        m.updateExpertBias(tokensPerExpert: [[10, 2, 2, 10], [6, 6, 6, 6]])
        XCTAssertEqual(m.layers[0].moe!.expertBias.toArray(), [-0.01, 0.01, 0.01, -0.01])
        XCTAssertEqual(m.layers[1].moe!.expertBias.toArray(), [0, 0, 0, 0])
        // disabled when coeff == 0
        let m0 = try Qwen3Model(args: tinyArgs(moe: true), seed: 21)
        m0.updateExpertBias(tokensPerExpert: [[10, 2, 2, 10], [6, 6, 6, 6]])
        XCTAssertEqual(m0.layers[0].moe!.expertBias.toArray(), [0, 0, 0, 0])
        XCTAssertTrue(m0.buffers.isEmpty)
    }
}

/// Records the hook sequence; optionally emulates FSDP by swapping in values/grads per group.
final class RecordingHooks: ModelHooks {
    var events: [String] = []
    let model: Qwen3Model?
    var shards: [String: (value: [Float], grad: [Float])] = [:]
    init(fsdpLike model: Qwen3Model? = nil) {
        self.model = model
        if let m = model {
            for p in m.parameters {
                shards[p.fqn] = (p.value.toArray(), [Float](repeating: 0, count: p.count))
                p.value = nil; p.grad = nil
            }
        }
    }
    private func gather(_ g: Int, withGrad: Bool) {
        guard let m = model else { return }
        for p in m.parameterGroups[g] {
            p.value = Tensor(shape: p.shape, values: shards[p.fqn]!.value)
            if withGrad { p.grad = Tensor(shape: p.shape) }
        }
    }
    private func free(_ g: Int, reduce: Bool) {
        guard let m = model else { return }
        for p in m.parameterGroups[g] {
            if reduce {
                let g = p.grad.toArray()
                shards[p.fqn]!.grad = zip(shards[p.fqn]!.grad, g).map { $0 + $1 }
            }
            p.value = nil; p.grad = nil
        }
    }
    func willForward(group: Int) { events.append("F\(group)<"); gather(group, withGrad: false) }
    func didForward(group: Int) { events.append("F\(group)>"); free(group, reduce: false) }
    func willBackward(group: Int) { events.append("B\(group)<"); gather(group, withGrad: true) }
    func didBackward(group: Int) { events.append("B\(group)>"); free(group, reduce: true) }
}

final class HookTests: XCTestCase {
    func testHookOrder() throws {
        let m = try Qwen3Model(args: tinyArgs(moe: true), seed: 1)
        let h = RecordingHooks()
        m.hooks = h
        _ = m.forwardBackward(inputs: [1, 2, 3], labels: [2, 3, 4], B: 1, T: 3, lossScale: 1)
        XCTAssertEqual(h.events, ["F0<", "F0>", "F1<", "F1>", "F2<", "F2>", "F3<", "F3>",
                                  "B3<", "B3>", "B2<", "B2>", "B1<", "B1>", "B0<", "B0>"])
        h.events = []
        _ = m.evaluate(inputs: [1, 2, 3], labels: [2, 3, 4], B: 1, T: 3)
        XCTAssertEqual(h.events, ["F0<", "F0>", "F1<", "F1>", "F2<", "F2>", "F3<", "F3>"])
    }

    /// Tied weights: the output projection uses group 0 inside group 3; group 0's backward opens there and closes
    /// after the embedding's backward, so it is gathered for backward and reduced once per step.
    func testHookOrderTied() throws {
        let m = try Qwen3Model(args: tinyArgs(moe: false, tied: true), seed: 1)
        let h = RecordingHooks()
        m.hooks = h
        _ = m.forwardBackward(inputs: [1, 2, 3], labels: [2, 3, 4], B: 1, T: 3, lossScale: 1)
        XCTAssertEqual(h.events, ["F0<", "F0>", "F1<", "F1>", "F2<", "F2>", "F3<", "F0<", "F0>", "F3>",
                                  "B3<", "B0<", "B3>", "B2<", "B2>", "B1<", "B1>", "B0>"])
        XCTAssertEqual(h.events.filter { $0 == "B0>" }.count, 1)
    }

    /// Parameters whose storage exists only between will*/did* hooks (as under FSDP) give the same loss and gradients.
    func testExternallyManagedParameterStorage() throws {
        for tied in [false, true] {
            let a = tinyArgs(moe: !tied, shared: tied ? 0 : 1, tied: tied)
            let ref = try Qwen3Model(args: a, seed: 8), m = try Qwen3Model(args: a, seed: 8)
            let B = 2, T = 5
            let x = randomTokens(B * T, vocab: a.vocab_size, seed: 1), y = randomTokens(B * T, vocab: a.vocab_size, seed: 2)
            ref.zeroGrad()
            let r0 = ref.forwardBackward(inputs: x, labels: y, B: B, T: T, lossScale: 0.1)
            let h = RecordingHooks(fsdpLike: m)
            m.hooks = h
            let r1 = m.forwardBackward(inputs: x, labels: y, B: B, T: T, lossScale: 0.1)
            XCTAssertEqual(r0, r1)
            for p in ref.parameters {
                XCTAssertNil(m.parameters.first { $0.fqn == p.fqn }!.value)
                let g = h.shards[p.fqn]!.grad
                let want = p.grad.toArray()
                for i in 0..<p.count { XCTAssertEqual(g[i], want[i], accuracy: 1e-6 * max(1, abs(want[i])), "\(p.fqn)[\(i)]") }
            }
        }
    }
}

final class ThreadingTests: XCTestCase {
    /// Kernel threading splits rows only: results are bit-identical for any thread count. (GEMMs are not split here:
    /// BLAS.splitThreads is 0 outside the trainer; split GEMMs are tested in ThreadsTests.)
    func testResultsIndependentOfKernelThreads() throws {
        let saved = (KernelThreads.count, KernelThreads.minWork)
        defer { KernelThreads.count = saved.0; KernelThreads.minWork = saved.1 }
        KernelThreads.minWork = 0
        var a = tinyArgs(moe: true, shared: 1)
        a.max_seq_len = 256
        let B = 2, T = 70  // more than one attention block
        let x = randomTokens(B * T, vocab: a.vocab_size, seed: 3), y = randomTokens(B * T, vocab: a.vocab_size, seed: 4)
        var ref: (StepResult, [[Float]])? = nil
        for threads in [1, 2, 3] {
            KernelThreads.count = threads
            let m = try Qwen3Model(args: a, seed: 9)
            let r = m.forwardBackward(inputs: x, labels: y, B: B, T: T, lossScale: 1 / Float(B * T))
            let g = m.parameters.map { $0.grad.toArray() }
            if let (r0, g0) = ref {
                XCTAssertEqual(r, r0, "threads \(threads)")
                XCTAssertEqual(g, g0, "threads \(threads)")
            } else {
                ref = (r, g)
            }
        }
    }
}
