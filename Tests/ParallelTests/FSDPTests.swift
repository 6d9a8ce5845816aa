import XCTest
import Foundation
import Collectives
import Model
import Parallel
import Tensor

// MARK: - helpers

private func fsdpTinyArgs(moe: Bool, tied: Bool = false, shared: Int = 0, lbCoeff: Float = 0) -> Qwen3ModelArgs {
    var a = Qwen3ModelArgs()
    // Deliberately awkward sizes: nothing divides evenly by 3 or 4.
    a.vocab_size = 29; a.dim = 14; a.n_layers = 2; a.n_heads = 2; a.n_kv_heads = 1; a.head_dim = 6
    a.hidden_dim = 19; a.norm_eps = 1e-6; a.rope_theta = 10000; a.max_seq_len = 32
    a.init_std = 0.2; a.enable_weight_tying = tied
    a.moe_enabled = moe; a.decoder_sparse_step = 1
    a.moe.num_experts = 4; a.moe.top_k = 2; a.moe.hidden_dim = 9
    a.moe.num_shared_experts = shared; a.moe.load_balance_coeff = lbCoeff
    return a
}

/// Global batch of step s: rows of T tokens (inputs, labels).
private func globalBatch(step: Int, rows: Int, T: Int, vocab: Int) -> (inputs: [Int32], labels: [Int32]) {
    var rng = SplitMix64(seed: 1000 &+ UInt64(step))
    let inputs = (0..<(rows * T)).map { _ in Int32(rng.next() % UInt64(vocab)) }
    var labels = (0..<(rows * T)).map { _ in Int32(rng.next() % UInt64(vocab)) }
    labels[3] = -100   // an ignored label
    return (inputs, labels)
}

private final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int: T] = [:]
    func set(_ rank: Int, _ v: T) { lock.lock(); values[rank] = v; lock.unlock() }
    func get(_ rank: Int) -> T? { lock.lock(); defer { lock.unlock() }; return values[rank] }
}

private struct RunConfig {
    var args: Qwen3ModelArgs
    var dims: ParallelDims
    var rows = 12          // global batch rows (divisible by the world)
    var T = 6
    var steps = 3
    var microBatches = 1
    var lr: Float = 0.5
    var maxNorm: Double = 0.5
    var reshardAfterForward = true
    var evalEachStep = true
    /// bfloat16 parameters also make the matmuls bfloat16 (`BLAS.matmulPrecision`, set by `withPrecision`).
    var mixedPrecision = MixedPrecisionPolicy()
}

/// Runs `body` with the matmuls in the precision of `c`'s parameters, as the trainer sets them.
private func withPrecision<T>(_ c: RunConfig, _ body: () throws -> T) rethrows -> T {
    let before = BLAS.matmulPrecision
    BLAS.matmulPrecision = c.mixedPrecision.param
    defer { BLAS.matmulPrecision = before }
    return try body()
}

private struct RunResult {
    var firstGrads: StateDict = [:]
    var firstNormSq = 0.0
    var losses: [Double] = []           // global loss sum per step
    var evalLosses: [Double] = []       // global eval loss sum per step (after the update)
    var final: StateDict = [:]
    var memory: MemoryReport?
    var parameterShardCount = 0
    var shardElements = 0               // elements in this rank's parameter shards
    var scratchBytes: [Int] = []        // pool bytes after each step (must not grow after step 1)
    var stepTraffic: [Traffic] = []     // what rank 0 sent and received in each step's forward, backward and reductions
}

private func tokensOfBatch(_ labels: [Int32]) -> Int { labels.filter { $0 >= 0 }.count }

/// Reference: one model, no hooks, the whole global batch. With bfloat16 parameters the fp32 masters are kept aside
/// and the model computes with them rounded to bfloat16 (FSDP2's param_dtype, done here by hand).
private func runSingle(_ c: RunConfig) throws -> RunResult {
    let model = try Qwen3Model(args: c.args, seed: 7)
    var r = RunResult()
    let bf16 = c.mixedPrecision.param == .bfloat16
    if bf16 && c.dims.ep > 1 {
        for moe in model.moeModules { moe.experts = WireRoundedExperts(moe.experts, dim: c.args.dim) }
    }
    func roundedForCompute(_ body: () -> Void) {
        guard bf16 else { return body() }
        let masters = model.parameters.map { $0.value.clone() }
        for p in model.parameters { round_bf16(p.value.ptr, into: p.value.data, p.count) }
        body()
        for (p, m) in zip(model.parameters, masters) { p.value.copy(from: m) }
    }
    for step in 1...c.steps {
        let (inp, lab) = globalBatch(step: step, rows: c.rows, T: c.T, vocab: c.args.vocab_size)
        let scale = 1 / Float(tokensOfBatch(lab))
        model.zeroGrad()
        var res: StepResult!
        roundedForCompute { res = model.forwardBackward(inputs: inp, labels: lab, B: c.rows, T: c.T, lossScale: scale) }
        r.losses.append(res.lossSum)
        var normSq = 0.0
        for p in model.parameters { normSq += p.grad.sumOfSquares() }
        if step == 1 {
            r.firstNormSq = normSq
            for p in model.parameters { r.firstGrads[p.fqn] = HostTensor(shape: p.shape, values: p.grad.toArray()) }
        }
        let clip = Float(min(1, c.maxNorm / (normSq.squareRoot() + 1e-6)))
        for p in model.parameters {
            for i in 0..<p.count { p.value.data[i] -= c.lr * clip * p.grad.data[i] }
        }
        if c.evalEachStep {
            let (ei, el) = globalBatch(step: 100 + step, rows: c.rows, T: c.T, vocab: c.args.vocab_size)
            roundedForCompute { r.evalLosses.append(model.evaluate(inputs: ei, labels: el, B: c.rows, T: c.T).lossSum) }
        }
    }
    r.final = model.stateDict()
    return r
}

/// FSDP run: every rank a thread over ZeroMQ inproc; rank d takes rows [d·rows/world, (d+1)·rows/world).
private func runDistributed(_ c: RunConfig, file: StaticString = #filePath, line: UInt = #line) throws -> RunResult {
    let world = c.dims.world
    precondition(c.rows % (world * c.microBatches) == 0)
    let results = Box<RunResult>()
    let failures = InProcessCluster.run(worldSize: world, timeoutSeconds: 60) { comm in
        let mesh = try DeviceMesh(comm: comm, dims: c.dims, numExperts: c.args.moe_enabled ? c.args.moe.num_experts : nil)
        let model = try Qwen3Model(args: c.args, seed: 7)
        if let epGroup = mesh.ep { try ExpertParallel.apply(to: model, epGroup: epGroup, wire: c.mixedPrecision.param) }   // EP first, then FSDP
        let fsdp = try FullyShardedModel(model: model, mesh: mesh, reshardAfterForward: c.reshardAfterForward,
                                         mixedPrecision: c.mixedPrecision)
        var r = RunResult()
        r.memory = fsdp.memoryReport
        r.parameterShardCount = fsdp.shards.count
        r.shardElements = fsdp.shards.reduce(0) { $0 + $1.count }
        let local = c.rows / world, micro = local / c.microBatches
        let d = mesh.dataParallelRank
        for step in 1...c.steps {
            let (inp, lab) = globalBatch(step: step, rows: c.rows, T: c.T, vocab: c.args.vocab_size)
            let scale = 1 / Float(tokensOfBatch(lab))
            let trafficBefore = comm.traffic
            fsdp.zeroGrad()
            var lossSum = 0.0
            for m in 0..<c.microBatches {
                let lo = (d * local + m * micro) * c.T, hi = lo + micro * c.T
                let res = model.forwardBackward(inputs: Array(inp[lo..<hi]), labels: Array(lab[lo..<hi]), B: micro, T: c.T, lossScale: scale)
                lossSum += res.lossSum
            }
            try fsdp.finishBackward()
            r.stepTraffic.append(comm.traffic - trafficBefore)
            r.losses.append(try comm.world.allReduce([lossSum])[0])
            let normSq = try fsdp.gradNormSquared()
            if step == 1 {
                r.firstNormSq = normSq
                r.firstGrads = try fsdp.fullGradDict()
            }
            let clip = Float(min(1, c.maxNorm / (normSq.squareRoot() + 1e-6)))
            for s in fsdp.shards {
                for i in 0..<s.count { s.param[i] -= c.lr * clip * s.grad[i] }
            }
            if c.evalEachStep {
                let (ei, el) = globalBatch(step: 100 + step, rows: c.rows, T: c.T, vocab: c.args.vocab_size)
                let lo = d * local * c.T, hi = lo + local * c.T
                let e = model.evaluate(inputs: Array(ei[lo..<hi]), labels: Array(el[lo..<hi]), B: local, T: c.T)
                r.evalLosses.append(try comm.world.allReduce([e.lossSum])[0])
            }
            r.scratchBytes.append(fsdp.scratchBytes)
        }
        r.final = try fsdp.fullStateDict()
        results.set(comm.rank, r)
    }
    for (rank, e) in failures.enumerated() { XCTAssertNil(e, "rank \(rank): \(String(describing: e))", file: file, line: line) }
    guard let r0 = results.get(0) else { throw ParallelError.stateDict("rank 0 produced no result") }
    // Every rank sees the same full state, norm and losses, bit for bit.
    for rank in 1..<world {
        guard let r = results.get(rank) else { XCTFail("rank \(rank) produced no result", file: file, line: line); continue }
        XCTAssertEqual(r.final, r0.final, "rank \(rank) final state differs from rank 0", file: file, line: line)
        XCTAssertEqual(r.firstGrads, r0.firstGrads, "rank \(rank) gradient differs from rank 0", file: file, line: line)
        XCTAssertEqual(r.firstNormSq, r0.firstNormSq, "rank \(rank) grad norm differs", file: file, line: line)
        XCTAssertEqual(r.losses, r0.losses, file: file, line: line)
    }
    return r0
}

/// max |a − b| / max(max |b|, floor), per tensor.
private func assertClose(_ a: StateDict, _ b: StateDict, rtol: Float, what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(Set(a.keys), Set(b.keys), "\(what): different names", file: file, line: line)
    var worst: (String, Float) = ("", 0)
    for (name, tb) in b {
        guard let ta = a[name] else { continue }
        XCTAssertEqual(ta.shape, tb.shape, "\(what) \(name)", file: file, line: line)
        guard ta.values.count == tb.values.count else { continue }
        var scale: Float = 1e-6
        for v in tb.values { scale = max(scale, abs(v)) }
        var err: Float = 0
        for i in 0..<tb.values.count { err = max(err, abs(ta.values[i] - tb.values[i])) }
        if err / scale > worst.1 { worst = (name, err / scale) }
    }
    XCTAssertLessThan(worst.1, rtol, "\(what): worst relative error in \(worst.0)", file: file, line: line)
}

private func relErr(_ a: Double, _ b: Double) -> Double { abs(a - b) / max(abs(b), 1e-30) }

// MARK: - tests

final class FSDPTests: XCTestCase {
    private func checkMatchesSingleRank(_ c: RunConfig, file: StaticString = #filePath, line: UInt = #line) throws {
        let ref = try runSingle(c)
        let got = try runDistributed(c, file: file, line: line)
        assertClose(got.firstGrads, ref.firstGrads, rtol: 1e-5, what: "gradient \(c.dims)", file: file, line: line)
        XCTAssertLessThan(relErr(got.firstNormSq, ref.firstNormSq), 1e-5, "grad norm² \(got.firstNormSq) vs \(ref.firstNormSq)", file: file, line: line)
        for (a, b) in zip(got.losses, ref.losses) { XCTAssertLessThan(relErr(a, b), 1e-5, "loss \(a) vs \(b)", file: file, line: line) }
        for (a, b) in zip(got.evalLosses, ref.evalLosses) { XCTAssertLessThan(relErr(a, b), 1e-5, "eval loss \(a) vs \(b)", file: file, line: line) }
        XCTAssertEqual(Set(got.scratchBytes).count, 1, "gather/grad scratch must be reused from step to step: \(got.scratchBytes)", file: file, line: line)
        assertClose(got.final, ref.final, rtol: 1e-5, what: "parameters after \(c.steps) steps \(c.dims)", file: file, line: line)
    }

    func testDenseWorld2MatchesSingleRank() throws {
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: false), dims: ParallelDims(replicate: 1, shard: 2, ep: 1)))
    }

    func testDenseWorld4MatchesSingleRank() throws {
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: false), dims: ParallelDims(replicate: 1, shard: 4, ep: 1)))
    }

    func testMoEWorld2TiedWithMicroBatchesMatchesSingleRank() throws {
        var c = RunConfig(args: fsdpTinyArgs(moe: true, tied: true, shared: 1), dims: ParallelDims(replicate: 1, shard: 2, ep: 1))
        c.microBatches = 2
        try checkMatchesSingleRank(c)
    }

    func testMoEWorld4MatchesSingleRank() throws {
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: true), dims: ParallelDims(replicate: 1, shard: 4, ep: 1)))
    }

    func testHSDP2x2MatchesSingleRank() throws {
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: true, tied: true), dims: ParallelDims(replicate: 2, shard: 2, ep: 1)))
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: false), dims: ParallelDims(replicate: 2, shard: 2, ep: 1)))
    }

    func testUnevenWorld3MatchesSingleRank() throws {
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: false, tied: true), dims: ParallelDims(replicate: 1, shard: 3, ep: 1)))
        var c = RunConfig(args: fsdpTinyArgs(moe: true), dims: ParallelDims(replicate: 1, shard: 3, ep: 1))
        c.reshardAfterForward = false
        try checkMatchesSingleRank(c)
    }

    /// Composition with expert parallelism: EP narrows the experts, FSDP shards experts over expertShard and the
    /// rest over dpShard; the training still matches the single rank.
    func testExpertParallelWithFSDPMatchesSingleRank() throws {
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: true), dims: ParallelDims(replicate: 1, shard: 2, ep: 2)))
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: true, tied: true, shared: 1), dims: ParallelDims(replicate: 1, shard: 4, ep: 2)))
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: true), dims: ParallelDims(replicate: 2, shard: 2, ep: 2)))
    }

    func testWorldOfOneMatchesSingleRank() throws {
        try checkMatchesSingleRank(RunConfig(args: fsdpTinyArgs(moe: true, tied: true), dims: ParallelDims(replicate: 1, shard: 1, ep: 1)))
    }

    // MARK: mixed precision

    /// bfloat16 parameters and matmuls: every topology (one rank, FSDP, HSDP, FSDP with bfloat16 expert-parallel
    /// dispatch) trains like one model computing with its fp32 masters rounded to bfloat16. Not to fp32 round-off as
    /// fp32 runs do: an activation or master weight one fp32 ulp apart can round to neighbouring bfloat16 values
    /// (2^-8 apart), so a few elements differ by up to 2^-8 relative; 2e-3 is half of that.
    func testBFloat16ParametersMatchSingleRankOnRoundedWeights() throws {
        var cases: [RunConfig] = []
        for (moe, dims) in [(true, ParallelDims(shard: 1)), (false, ParallelDims(shard: 3)), (true, ParallelDims(shard: 4)),
                            (true, ParallelDims(replicate: 2, shard: 2)), (true, ParallelDims(shard: 4, ep: 2))] {
            var c = RunConfig(args: fsdpTinyArgs(moe: moe, tied: dims.world == 3), dims: dims)
            c.mixedPrecision = MixedPrecisionPolicy(param: .bfloat16)
            cases.append(c)
        }
        for c in cases {
            try withPrecision(c) {
                let ref = try runSingle(c), got = try runDistributed(c)
                assertClose(got.firstGrads, ref.firstGrads, rtol: 2e-3, what: "bf16 gradient \(c.dims)")
                for (a, b) in zip(got.losses, ref.losses) { XCTAssertLessThan(relErr(a, b), 2e-3, "bf16 \(c.dims) loss \(a) vs \(b)") }
                assertClose(got.final, ref.final, rtol: 2e-3, what: "bf16 parameters after \(c.steps) steps \(c.dims)")
            }
        }
    }

    /// bfloat16 parameters are really rounded (the run differs from fp32 by bfloat16's, not fp32's, precision), and
    /// a bfloat16 gradient reduction stays within bfloat16 precision of the fp32 one.
    func testBFloat16DiffersFromFloat32ByBFloat16Precision() throws {
        var c = RunConfig(args: fsdpTinyArgs(moe: true), dims: ParallelDims(shard: 4))
        c.steps = 1; c.evalEachStep = false
        let fp32 = try runDistributed(c)
        c.mixedPrecision = MixedPrecisionPolicy(param: .bfloat16)
        let bf16 = try withPrecision(c) { try runDistributed(c) }
        c.mixedPrecision = MixedPrecisionPolicy(param: .bfloat16, reduce: .bfloat16)
        let bf16Reduce = try withPrecision(c) { try runDistributed(c) }
        XCTAssertGreaterThan(relErr(bf16.losses[0], fp32.losses[0]), 1e-6, "bfloat16 parameters changed nothing")
        XCTAssertLessThan(relErr(bf16.losses[0], fp32.losses[0]), 1e-2)
        assertClose(bf16Reduce.firstGrads, bf16.firstGrads, rtol: 8e-3, what: "gradients reduced in bfloat16")
        XCTAssertNotEqual(bf16Reduce.firstGrads, bf16.firstGrads, "the reduction did not round")
    }

    /// What a gathered group hands the model: with bfloat16 parameters the GEMM-only ones (linear, router, expert and
    /// output weights) only as bfloat16, exactly the full parameter rounded (no fp32 `value`), the others (norms, the
    /// embedding) also widened to fp32; with fp32 parameters every one as its fp32 `value`, which the GEMMs read. On
    /// one rank (a direct group, rounded in place of gathered) and on two (all-gathered).
    func testGatheredGroupsHandGEMMOnlyParametersOverInBFloat16() throws {
        let args = fsdpTinyArgs(moe: true)
        @Sendable func makeModel() throws -> Qwen3Model {
            let m = try Qwen3Model(args: args, seed: 7)
            // norms away from their all-ones init, so that rounding them shows
            for p in m.parameters where !p.gemmOnly { for i in 0..<p.count { p.value.data[i] += 0.01 * Float(i % 7) + 1e-4 } }
            return m
        }
        let ref = try makeModel().stateDict()
        for world in [1, 2] {
            for precision in [Precision.bfloat16, .float32] {
                let failures = InProcessCluster.run(worldSize: world, timeoutSeconds: 60) { comm in
                    let model = try makeModel()
                    let mesh = try DeviceMesh(comm: comm, dims: ParallelDims(shard: world), numExperts: args.moe.num_experts)
                    let fsdp = try FullyShardedModel(model: model, mesh: mesh, mixedPrecision: MixedPrecisionPolicy(param: precision))
                    let what = "world \(world) \(precision)"
                    var gemmOnly = 0, widened = 0
                    for (g, params) in model.parameterGroups.enumerated() {
                        model.hooks.willForward(group: g)
                        for p in params {
                            let want = ref[p.fqn]!.values
                            XCTAssertEqual(p.gemmOnly, !(p.fqn.hasSuffix("norm.weight") || p.fqn == "tok_embeddings.weight"), p.fqn)
                            guard precision == .bfloat16 else {
                                XCTAssertNil(p.value16, "\(what) \(p.fqn)")
                                guard case .f32(let w) = p.gemmInput else { XCTFail("\(what) \(p.fqn): not fp32"); continue }
                                XCTAssertEqual(w, UnsafePointer(p.value.data), "\(what) \(p.fqn)")
                                XCTAssertEqual(p.value.toArray(), want, "\(what) \(p.fqn)")
                                continue
                            }
                            let bits = try XCTUnwrap(p.value16, "\(what) \(p.fqn)")
                            XCTAssertEqual(Array(bits), want.map { BFloat16($0).bits }, "\(what) \(p.fqn): not the parameter rounded")
                            guard case .bf16(let w) = p.gemmInput else { XCTFail("\(what) \(p.fqn): not bfloat16"); continue }
                            XCTAssertEqual(w, bits.baseAddress, "\(what) \(p.fqn)")
                            if p.gemmOnly {
                                XCTAssertNil(p.value, "\(what) \(p.fqn): widened")
                                gemmOnly += 1
                            } else {
                                let v = try XCTUnwrap(p.value, "\(what) \(p.fqn)").toArray()
                                XCTAssertEqual(v, want.map { BFloat16($0).float }, "\(what) \(p.fqn): not widened from bfloat16")
                                XCTAssertNotEqual(v, want, "\(what) \(p.fqn): nothing rounded")
                                widened += 1
                            }
                        }
                        model.hooks.didForward(group: g)
                    }
                    fsdp.reshard()
                    XCTAssertTrue(model.parameters.allSatisfy { $0.value == nil && $0.value16 == nil }, "\(what): left gathered")
                    if precision == .bfloat16 { XCTAssertEqual([gemmOnly, widened], [17, 10], what) }
                }
                for (rank, e) in failures.enumerated() { XCTAssertNil(e, "world \(world) \(precision) rank \(rank): \(String(describing: e))") }
            }
        }
    }

    func testRunsAreBitwiseRepeatable() throws {
        var bf16 = RunConfig(args: fsdpTinyArgs(moe: true, tied: true), dims: ParallelDims(shard: 4, ep: 2))
        bf16.mixedPrecision = MixedPrecisionPolicy(param: .bfloat16, reduce: .bfloat16)
        for c in [RunConfig(args: fsdpTinyArgs(moe: true, tied: true), dims: ParallelDims(replicate: 1, shard: 3, ep: 1)),
                  RunConfig(args: fsdpTinyArgs(moe: true, tied: true), dims: ParallelDims(replicate: 2, shard: 2, ep: 1)), bf16] {
            let dims = c.dims
            let (a, b) = try withPrecision(c) { (try runDistributed(c), try runDistributed(c)) }
            XCTAssertEqual(a.final, b.final, "\(dims): final parameters differ between two identical runs")
            XCTAssertEqual(a.firstGrads, b.firstGrads)
            XCTAssertEqual(a.losses, b.losses)
            XCTAssertEqual(a.firstNormSq, b.firstNormSq)
        }
    }

    /// Every step sends exactly what the sharding plan moves, worked out here from the model's parameter groups (not
    /// through FSDP): per flat buffer of n padded shards, a ring all-gather sends n-1 shards and a ring reduce-scatter
    /// n-1 gradient shards. A group is gathered again for backward when forward freed it, which torchtitan's default
    /// does to every group but the last block and the final one, and `never` to none. Expert parameters (this rank's
    /// experts after EP) form their own buffer over the expert-shard group (shard / ep ranks).
    func testStepTrafficIsTheShardingPlan() throws {
        let fp32 = MixedPrecisionPolicy(), bf16 = MixedPrecisionPolicy(param: .bfloat16), bf16Both = MixedPrecisionPolicy(param: .bfloat16, reduce: .bfloat16)
        for (dims, moe, reshard, precision) in [(ParallelDims(shard: 4), false, true, fp32), (ParallelDims(shard: 4), false, false, fp32),
                                                (ParallelDims(shard: 4, ep: 2), true, true, fp32), (ParallelDims(shard: 3), true, true, fp32),
                                                (ParallelDims(shard: 4, ep: 2), true, true, bf16), (ParallelDims(shard: 3), true, true, bf16Both)] {
            var c = RunConfig(args: fsdpTinyArgs(moe: moe), dims: dims)
            c.rows = 12; c.steps = 2; c.reshardAfterForward = reshard; c.evalEachStep = false
            c.mixedPrecision = precision
            let got = try withPrecision(c) { try runDistributed(c) }
            // bfloat16 payloads: 2 bytes an element instead of 4
            let gatherElementBytes = precision.param == .bfloat16 ? 2 : 4, reduceElementBytes = precision.reduce == .bfloat16 ? 2 : 4

            let model = try Qwen3Model(args: c.args, seed: 7)
            let experts = Set(model.moeModules.flatMap { $0.routedExpertParameters }.map(ObjectIdentifier.init))
            let groups = model.parameterGroups
            var allGather = 0, reduceScatter = 0
            for (g, params) in groups.enumerated() {
                let gathers = reshard && g < groups.count - 2 ? 2 : 1
                var buffers: [(elements: Int, ranks: Int)] = []
                if dims.ep > 1 {
                    let dense = params.filter { !experts.contains(ObjectIdentifier($0)) }.reduce(0) { $0 + $1.count }
                    let local = params.filter { experts.contains(ObjectIdentifier($0)) }.reduce(0) { $0 + $1.count / dims.ep }
                    buffers = [(dense, dims.shard), (local, dims.shard / dims.ep)]
                } else {
                    buffers = [(params.reduce(0) { $0 + $1.count }, dims.shard)]
                }
                for (elements, n) in buffers where elements > 0 {
                    let shardElements = (elements + n - 1) / n
                    allGather += gathers * (n - 1) * shardElements * gatherElementBytes
                    reduceScatter += (n - 1) * shardElements * reduceElementBytes
                }
            }
            for (step, t) in got.stepTraffic.enumerated() {
                let what = "\(dims) reshard \(reshard) \(precision), step \(step + 1)"
                XCTAssertEqual(t.sent(.allGather).bytes, allGather, "all-gather bytes sent, \(what)")
                XCTAssertEqual(t.received(.allGather).bytes, allGather, "all-gather bytes received, \(what)")
                XCTAssertEqual(t.sent(.reduceScatter).bytes, reduceScatter, "reduce-scatter bytes sent, \(what)")
                XCTAssertEqual(t.received(.reduceScatter).bytes, reduceScatter, "reduce-scatter bytes received, \(what)")
                XCTAssertEqual(t.sent(.allToAll).bytes > 0, dims.ep > 1, "all-to-all only with EP, \(what)")
            }
        }
    }

    func testMemoryIsOneNthPlusPadding() throws {
        for (moe, n) in [(false, 4), (true, 3)] {
            var c = RunConfig(args: fsdpTinyArgs(moe: moe), dims: ParallelDims(replicate: 1, shard: n, ep: 1))
            c.steps = 1; c.evalEachStep = false
            let single = try Qwen3Model(args: c.args, seed: 0)
            let fullBytes = single.parameterCount * 4
            let groups = single.parameterGroups.count       // one flat buffer per group (ep == 1)
            let largest = single.parameterGroups.map { g in g.reduce(0) { $0 + $1.count } }.max()!
            let r = try runDistributed(c)
            let m = try XCTUnwrap(r.memory)
            XCTAssertGreaterThanOrEqual(m.paramBytes * n, fullBytes)
            XCTAssertLessThanOrEqual(m.paramBytes * n, fullBytes + groups * (n - 1) * 4, "padding is < n elements per group")
            XCTAssertLessThanOrEqual(m.paramBytes, fullBytes / n + groups * 4)
            XCTAssertEqual(m.gradBytes, m.paramBytes)
            XCTAssertLessThanOrEqual(r.shardElements * 4, m.paramBytes, "the parameter shards are the storage without its padding")
            XCTAssertGreaterThan(r.shardElements * 4, m.paramBytes - groups * n * 4)
            XCTAssertEqual(m.unshardedParamBytes, fullBytes)
            XCTAssertGreaterThanOrEqual(m.largestUnshardedGroupBytes, largest * 4)
            XCTAssertLessThan(m.largestUnshardedGroupBytes, largest * 4 + n * 4)
        }
    }

    func testShardsCoverEveryElementOnce() throws {
        let args = fsdpTinyArgs(moe: true, tied: true)
        let single = try Qwen3Model(args: args, seed: 0)
        let counts = Box<[String: [Int]]>()   // fqn → coverage count per element, per rank
        let failures = InProcessCluster.run(worldSize: 3, timeoutSeconds: 60) { comm in
            let mesh = try DeviceMesh(comm: comm, dims: ParallelDims(replicate: 1, shard: 3, ep: 1))
            let fsdp = try FullyShardedModel(model: try Qwen3Model(args: args, seed: 0), mesh: mesh)
            var cover: [String: [Int]] = [:]
            for s in fsdp.shards {
                var c = cover[s.fqn] ?? [Int](repeating: 0, count: s.parameter.count)
                for i in 0..<s.count { c[s.offset + i] += 1 }
                cover[s.fqn] = c
            }
            counts.set(comm.rank, cover)
        }
        for e in failures { XCTAssertNil(e) }
        for p in single.parameters {
            var total = [Int](repeating: 0, count: p.count)
            for rank in 0..<3 { if let c = counts.get(rank)?[p.fqn] { for i in 0..<p.count { total[i] += c[i] } } }
            XCTAssertEqual(Set(total), [1], "\(p.fqn): every element must be owned by exactly one rank")
        }
    }

    /// Expert parameters narrowed by EP (simulated here: each rank keeps experts epRank·E/ep ..< (epRank+1)·E/ep)
    /// are sharded over the expert-shard group; the full state dict gathers them back, and loading a full state dict
    /// keeps exactly this rank's slices.
    func testExpertShardingRoundTripsStateDict() throws {
        let args = fsdpTinyArgs(moe: true, lbCoeff: 1e-3)
        let ref = try Qwen3Model(args: args, seed: 3)
        let refSD = ref.stateDict()
        let other = try Qwen3Model(args: args, seed: 11)
        let otherSD: StateDict = {
            var sd = other.stateDict()
            for (n, t) in sd where n.hasSuffix("expert_bias") {
                sd[n] = HostTensor(shape: t.shape, values: t.values.indices.map { Float($0) * 0.25 })
            }
            return sd
        }()
        let results = Box<(StateDict, StateDict, MemoryReport)>()
        for dims in [ParallelDims(replicate: 1, shard: 4, ep: 2), ParallelDims(replicate: 2, shard: 2, ep: 2)] {
            let failures = InProcessCluster.run(worldSize: 4, timeoutSeconds: 60) { comm in
                let mesh = try DeviceMesh(comm: comm, dims: dims, numExperts: args.moe.num_experts)
                XCTAssertEqual(mesh.expertShard.size, dims.shard / dims.ep)
                XCTAssertEqual(mesh.ep?.size, dims.ep)
                let model = try Qwen3Model(args: args, seed: 3)
                for p in model.moeModules.flatMap(\.routedExpertParameters) {
                    let per = p.count / dims.ep
                    let local = Array(UnsafeBufferPointer(start: p.value.data + mesh.epRank * per, count: per))
                    var shape = p.shape; shape[0] /= dims.ep
                    p.value = Tensor(shape: shape, values: local)
                    p.grad = Tensor(shape: shape)
                }
                let fsdp = try FullyShardedModel(model: model, mesh: mesh)
                let gathered = try fsdp.fullStateDict()
                try fsdp.loadFullStateDict(otherSD)
                let reloaded = try fsdp.fullStateDict()
                results.set(comm.rank, (gathered, reloaded, fsdp.memoryReport))
            }
            for (rank, e) in failures.enumerated() { XCTAssertNil(e, "\(dims) rank \(rank): \(String(describing: e))") }
            for rank in 0..<4 {
                guard let (g, r, m) = results.get(rank) else { XCTFail("rank \(rank) produced no result"); continue }
                XCTAssertEqual(g, refSD, "\(dims) rank \(rank): gathered state differs from the unsharded model")
                XCTAssertEqual(r, otherSD, "\(dims) rank \(rank): reloaded state differs")
                // Experts are split over ep × expertShard = shard ranks: the shards are still ~1/shard of the model.
                XCTAssertLessThanOrEqual(m.paramBytes * dims.shard, ref.parameterCount * 4 + 2 * ref.parameterGroups.count * dims.shard * 4)
            }
        }
    }

    /// A model built without parameter storage (meta init) and wrapped by expert parallelism and FSDP holds exactly
    /// the shards a materialized model would: each rank initialises only its own elements.
    /// The same with initial weights (an imported checkpoint): the shards are copied from them.
    func testUnmaterializedModelShardsMatchMaterialized() throws {
        let args = fsdpTinyArgs(moe: true, tied: true, shared: 1, lbCoeff: 1e-3)
        let refSD = try Qwen3Model(args: args, seed: 5).stateDict()
        let weights: StateDict = {
            var sd = try! Qwen3Model(args: args, seed: 77).stateDict()
            for (n, t) in sd where n.hasSuffix("expert_bias") { sd[n] = HostTensor(shape: t.shape, values: t.values.indices.map { Float($0) }) }
            return sd
        }()
        for dims in [ParallelDims(replicate: 1, shard: 3, ep: 1), ParallelDims(replicate: 1, shard: 4, ep: 2),
                     ParallelDims(replicate: 2, shard: 2, ep: 2), ParallelDims(replicate: 1, shard: 1, ep: 1)] {
            for fromWeights in [false, true] {
                let world = dims.replicate * dims.shard
                let results = Box<StateDict>()
                let failures = InProcessCluster.run(worldSize: world, timeoutSeconds: 60) { comm in
                    let mesh = try DeviceMesh(comm: comm, dims: dims, numExperts: args.moe.num_experts)
                    let model = try Qwen3Model(args: args, seed: 5, materialize: false)
                    XCTAssertTrue(model.parameters.allSatisfy { $0.value == nil && $0.grad == nil })
                    if fromWeights { try model.setInitialWeights(weights) }
                    if let ep = mesh.ep { try ExpertParallel.apply(to: model, epGroup: ep) }
                    let fsdp = try FullyShardedModel(model: model, mesh: mesh)
                    model.clearInitialWeights()
                    let full = try fsdp.fullStateDict()
                    // Gathered to the last rank only: the same there, nothing elsewhere.
                    let rooted = try fsdp.fullStateDict(root: world - 1)
                    XCTAssertEqual(rooted, comm.rank == world - 1 ? full : [:], "\(dims) rank \(comm.rank)")
                    results.set(comm.rank, full)
                }
                for (rank, e) in failures.enumerated() { XCTAssertNil(e, "\(dims) rank \(rank): \(String(describing: e))") }
                for rank in 0..<world {
                    XCTAssertEqual(results.get(rank), fromWeights ? weights : refSD, "\(dims) weights \(fromWeights) rank \(rank)")
                }
            }
        }
    }

    func testRejectsUnnarrowedExpertsWithEP() throws {
        let args = fsdpTinyArgs(moe: true)
        let errors = Box<Error>()
        let failures = InProcessCluster.run(worldSize: 2, timeoutSeconds: 60) { comm in
            let mesh = try DeviceMesh(comm: comm, dims: ParallelDims(replicate: 1, shard: 2, ep: 2), numExperts: 4)
            do { _ = try FullyShardedModel(model: try Qwen3Model(args: args, seed: 0), mesh: mesh) }
            catch { errors.set(comm.rank, error) }
        }
        for e in failures { XCTAssertNil(e) }
        let e = try XCTUnwrap(errors.get(0))
        XCTAssertTrue("\(e)".contains("moe.experts"), "\(e)")
    }

    /// Wrappers applied in the wrong order or twice are errors, for models built with or without storage: expert
    /// parallelism after FSDP, FSDP again after detach (the trained shards would be re-initialised), and FSDP with
    /// ep > 1 over experts that expert parallelism never narrowed.
    func testMisorderedWrappersAreErrors() throws {
        let args = fsdpTinyArgs(moe: true)
        let messages = Box<[String]>()
        let failures = InProcessCluster.run(worldSize: 2, timeoutSeconds: 60) { comm in
            let dims = ParallelDims(replicate: 1, shard: 2, ep: 2)
            let mesh = try DeviceMesh(comm: comm, dims: dims, numExperts: 4)
            var found: [String] = []
            for materialize in [true, false] {
                let model = try Qwen3Model(args: args, seed: 0, materialize: materialize)
                try ExpertParallel.apply(to: model, epGroup: mesh.ep!)
                let fsdp = try FullyShardedModel(model: model, mesh: mesh)
                do { try ExpertParallel.apply(to: model, epGroup: mesh.ep!); found.append("no error") } catch { found.append("\(error)") }
                fsdp.detach()
                do { _ = try FullyShardedModel(model: model, mesh: mesh); found.append("no error") } catch { found.append("\(error)") }
                do {
                    _ = try FullyShardedModel(model: try Qwen3Model(args: args, seed: 0, materialize: materialize), mesh: mesh)
                    found.append("no error")
                } catch { found.append("\(error)") }
            }
            messages.set(comm.rank, found)
        }
        for e in failures { XCTAssertNil(e) }
        for rank in 0..<2 {
            let m = try XCTUnwrap(messages.get(rank))
            XCTAssertEqual(m.count, 6)
            for i in [0, 3] { XCTAssertTrue(m[i].contains("apply expert parallelism before FSDP"), m[i]) }
            for i in [1, 4] { XCTAssertTrue(m[i].contains("was FSDP applied twice"), m[i]) }
            for i in [2, 5] { XCTAssertTrue(m[i].contains("expert_parallel_degree 2") && m[i].contains("moe.experts"), m[i]) }
        }
    }

    func testParallelDimsValidation() {
        XCTAssertNoThrow(try ParallelDims(replicate: 2, shard: 4, ep: 2).validate(worldSize: 8, numExperts: 8))
        XCTAssertNoThrow(try ParallelDims(replicate: 1, shard: 3, ep: 1).validate(worldSize: 3, numExperts: nil))
        func message(_ d: ParallelDims, world: Int, experts: Int?) -> String {
            do { try d.validate(worldSize: world, numExperts: experts); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(message(ParallelDims(replicate: 1, shard: 3, ep: 1), world: 4, experts: nil).contains("parallelism.data_parallel_shard_degree"))
        XCTAssertTrue(message(ParallelDims(replicate: 1, shard: 4, ep: 3), world: 4, experts: 6).contains("parallelism.expert_parallel_degree"))
        XCTAssertTrue(message(ParallelDims(replicate: 1, shard: 4, ep: 4), world: 4, experts: 6).contains("number of experts"))
        XCTAssertTrue(message(ParallelDims(replicate: 1, shard: 2, ep: 2), world: 2, experts: 0).contains("no routed experts"))
        XCTAssertEqual(message(ParallelDims(replicate: 1, shard: 2, ep: 2), world: 2, experts: nil), "", "experts not known yet: not checked")
        XCTAssertTrue(message(ParallelDims(replicate: 0, shard: 2, ep: 1), world: 2, experts: nil).contains("parallelism.data_parallel_replicate_degree"))
        XCTAssertEqual(ParallelDims(replicate: 2, shard: 3, ep: 1).world, 6)
    }

    func testMeshGroups() throws {
        let box = Box<[[Int]]>()
        let dims = ParallelDims(replicate: 2, shard: 4, ep: 2)
        let failures = InProcessCluster.run(worldSize: 8, timeoutSeconds: 60) { comm in
            let mesh = try DeviceMesh(comm: comm, dims: dims, numExperts: 4)
            box.set(comm.rank, [mesh.dpShard.members, mesh.dpReplicate!.members, mesh.ep!.members, mesh.expertShard.members,
                                [mesh.dataParallelRank, mesh.dataParallelDegree]])
        }
        for e in failures { XCTAssertNil(e) }
        XCTAssertEqual(box.get(0)!, [[0, 1, 2, 3], [0, 4], [0, 1], [0, 2], [0, 8]])
        XCTAssertEqual(box.get(5)!, [[4, 5, 6, 7], [1, 5], [4, 5], [5, 7], [5, 8]])
        XCTAssertEqual(box.get(6)!, [[4, 5, 6, 7], [2, 6], [6, 7], [4, 6], [6, 8]])
    }
}
