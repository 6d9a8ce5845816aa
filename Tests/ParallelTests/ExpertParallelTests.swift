import Collectives
import Foundation
import Model
import Parallel
import Tensor
import XCTest

// Expert parallelism over real collectives: every rank is a thread of InProcessCluster talking over ZeroMQ inproc.
// Each rank builds the same tiny MoE model, takes its own slice of a global batch, and compares against a single-rank
// reference model (run on the same rank) of the same seed:
//  (a) loss / logits / tokens-per-expert equal the reference on the rank's local slice (float32 round-off);
//  (b) the local experts' grads equal the reference grads of the whole EP group's batch for those experts
//      (all tokens routed to an expert, from every EP rank, land on its owner); assembled by all-gather as well;
//  (c) router / attention / embedding grads equal the reference grads of the local slice (no FSDP here);
// plus: loop vs grouped experts give identical results under EP, a repeated step is bitwise identical, and
// dispatchBytes matches the rows that really crossed ranks.

private struct EPTestFailure: Error, CustomStringConvertible {
    let description: String
}

private func fail(_ rank: Int, _ s: String) -> EPTestFailure { EPTestFailure(description: "rank \(rank): \(s)") }

/// max |a - b| <= atol + rtol · max |b|.
private func checkClose(_ a: [Float], _ b: [Float], rtol: Float = 1e-5, atol: Float = 1e-7, rank: Int, _ what: String) throws {
    guard a.count == b.count else { throw fail(rank, "\(what): \(a.count) vs \(b.count) elements") }
    var maxRef: Float = 0, maxDiff: Float = 0
    for i in 0..<a.count {
        maxRef = max(maxRef, abs(b[i]))
        maxDiff = max(maxDiff, abs(a[i] - b[i]))
    }
    if !(maxDiff <= atol + rtol * maxRef) {
        throw fail(rank, "\(what): max |diff| \(maxDiff) exceeds tolerance (max |ref| \(maxRef))")
    }
}

private func checkTrue(_ c: Bool, rank: Int, _ what: @autoclosure () -> String) throws {
    if !c { throw fail(rank, what()) }
}

enum EPRouting {
    case natural
    /// Router gate weights zero: uniform scores, every token picks the same top-k experts.
    case uniformGate
    /// Load-balancing bias +100 on these experts: every token picks them (top_k must equal their count).
    case forced([Int])
}

struct EPScenario {
    var worldSize: Int
    var ep: Int
    var numExperts = 8
    var topK = 2
    var localBatch = 2
    var seqLen = 8
    var grouped = true
    var routing: EPRouting = .natural
    var sharedExperts = 0
    var denseEveryOther = false
    /// bfloat16: the trainer's mixed precision (bfloat16 matmuls, bfloat16 token rows on the wire); the reference then
    /// rounds its experts' outputs and input gradients as the wire does (`WireRoundedExperts`).
    var wire: Precision = .float32
    /// Simulated hosts of the ranks (empty: one host) and the collective algorithms.
    var hosts: [Int] = []
    var algorithm = CollectiveAlgorithm.auto
}

private func epArgs(_ s: EPScenario) -> Qwen3ModelArgs {
    var a = Qwen3ModelArgs()
    a.vocab_size = 32; a.dim = 16; a.n_layers = 2; a.n_heads = 2; a.n_kv_heads = 1; a.head_dim = 8
    a.hidden_dim = 24; a.norm_eps = 1e-6; a.rope_theta = 10000; a.max_seq_len = 64; a.init_std = 0.3
    a.moe_enabled = true; a.decoder_sparse_step = s.denseEveryOther ? 2 : 1
    a.moe.num_experts = s.numExperts; a.moe.top_k = s.topK; a.moe.hidden_dim = 12
    a.moe.num_shared_experts = s.sharedExperts
    a.moe.use_grouped_mm = s.grouped
    if case .forced = s.routing { a.moe.load_balance_coeff = 1e-3 }
    return a
}

private func makeModel(_ s: EPScenario) throws -> Qwen3Model {
    let m = try Qwen3Model(args: epArgs(s), seed: 11)
    for layer in m.layers {
        guard let moe = layer.moe else { continue }
        switch s.routing {
        case .natural: break
        case .uniformGate: moe.gate.value.zero()
        case .forced(let experts): for e in experts { moe.expertBias[e] = 100 }
        }
    }
    return m
}

private func tokens(_ n: Int, vocab: Int, seed: UInt64) -> [Int32] {
    var rng = SplitMix64(seed: seed)
    return (0..<n).map { _ in Int32(rng.next() % UInt64(vocab)) }
}

private func isRoutedExpertWeight(_ fqn: String) -> Bool {
    fqn.hasSuffix("moe.experts.w1") || fqn.hasSuffix("moe.experts.w2") || fqn.hasSuffix("moe.experts.w3")
}

/// What a rank reports back to the test thread.
struct EPRankReport {
    var lossSum: Double = 0
    var tokensPerExpert: [[Int]] = []
    var receivedRows: [[Int]] = []      // per MoE layer: rows per local expert
    var gradBits: [UInt32] = []        // all grads, for run-to-run bitwise comparison
    var dispatchBytes = 0
    var interHostBytes = 0             // all-to-all payload this rank sent to other hosts in one forward-backward
}

final class EPReports: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int: EPRankReport] = [:]
    func set(_ r: Int, _ v: EPRankReport) { lock.lock(); values[r] = v; lock.unlock() }
    subscript(r: Int) -> EPRankReport? { lock.lock(); defer { lock.unlock() }; return values[r] }
}

/// Runs one scenario on `worldSize` ranks (EP groups: consecutive blocks of `ep` ranks); throws on the first mismatch.
private func runScenario(_ s: EPScenario, reports: EPReports? = nil) throws {
    let W = s.worldSize, ep = s.ep, B = s.localBatch, T = s.seqLen
    precondition(W % ep == 0)
    let args = epArgs(s)
    let globalInputs = tokens(W * B * T, vocab: args.vocab_size, seed: 1234)
    let globalLabels = tokens(W * B * T, vocab: args.vocab_size, seed: 5678)
    let lossScale = 1 / Float(W * B * T)
    let bf16 = s.wire == .bfloat16
    // bfloat16: an activation one fp32 ulp apart between the two runs may round to the neighbouring bfloat16 value
    // (2^-8 apart), so the comparisons allow half of that.
    let rtol: Float = bf16 ? 2e-3 : 1e-5
    let matmulPrecision = BLAS.matmulPrecision
    BLAS.matmulPrecision = s.wire
    defer { BLAS.matmulPrecision = matmulPrecision }
    let errors = InProcessCluster.run(worldSize: W, timeoutSeconds: 60, hostIndexOfRank: s.hosts) { comm in
        comm.setAlgorithm(s.algorithm)
        let rank = comm.rank
        let epGroup: ProcessGroup = ep == W ? comm.world
            : try comm.splitGroups(stride(from: 0, to: W, by: ep).map { Array($0..<($0 + ep)) })
        let groupIndex = rank / ep
        let local = (rank * B * T)..<((rank + 1) * B * T)
        let groupSlice = (groupIndex * ep * B * T)..<((groupIndex + 1) * ep * B * T)
        let inputs = Array(globalInputs[local]), labels = Array(globalLabels[local])

        // single-rank reference: local slice, then the EP group's whole batch
        let ref = try makeModel(s)
        if bf16 { for moe in ref.moeModules { moe.experts = WireRoundedExperts(moe.experts, dim: args.dim) } }
        ref.zeroGrad()
        let refLocal = ref.forwardBackward(inputs: inputs, labels: labels, B: B, T: T, lossScale: lossScale)
        let refLocalGrads = Dictionary(uniqueKeysWithValues: ref.parameters.map { ($0.fqn, $0.grad.toArray()) })
        let refLogits = ref.logits(inputs: inputs, B: B, T: T)
        ref.zeroGrad()
        _ = ref.forwardBackward(inputs: Array(globalInputs[groupSlice]), labels: Array(globalLabels[groupSlice]),
                                B: B * ep, T: T, lossScale: lossScale)
        let refGroupGrads = Dictionary(uniqueKeysWithValues: ref.parameters.map { ($0.fqn, $0.grad.toArray()) })

        // the same model with expert parallelism
        let m = try makeModel(s)
        try ExpertParallel.apply(to: m, epGroup: epGroup, wire: s.wire)
        let dispatchers = ExpertParallel.dispatchers(in: m)
        try checkTrue(dispatchers.count == m.layers.filter { $0.moe != nil }.count, rank: rank, "one dispatcher per MoE layer")
        let E = s.numExperts, el = E / ep
        let range = ExpertParallel.localExpertRange(numExperts: E, epDegree: ep, epRank: epGroup.rank)
        for d in dispatchers { try checkTrue(d.expertRange == range && d.numLocalExperts == el, rank: rank, "expert range") }
        for p in m.parameters where isRoutedExpertWeight(p.fqn) {
            try checkTrue(p.value.shape == [el] + Array(p.shape.dropFirst()) && p.grad.shape == p.value.shape, rank: rank,
                          "\(p.fqn) narrowed to \(p.value.shape)")
            let per = p.count / E
            let full = ref.parameters.first { $0.fqn == p.fqn }!.value.toArray()
            try checkTrue(p.value.toArray() == Array(full[(range.lowerBound * per)..<(range.upperBound * per)]), rank: rank,
                          "\(p.fqn) holds this rank's experts")
        }

        m.zeroGrad()
        _ = ExpertParallel.dispatchBytes(of: m, reset: true)
        let trafficBefore = comm.traffic
        let res = m.forwardBackward(inputs: inputs, labels: labels, B: B, T: T, lossScale: lossScale)
        let interHostBytes = (comm.traffic - trafficBefore).sentInterHost(.allToAll).bytes
        let bytes = ExpertParallel.dispatchBytes(of: m, reset: true)

        // (a) loss, routing, logits
        try checkTrue(res.tokensPerExpert == refLocal.tokensPerExpert, rank: rank,
                      "tokens per expert \(res.tokensPerExpert) vs reference \(refLocal.tokensPerExpert)")
        try checkTrue(res.tokenCount == refLocal.tokenCount, rank: rank, "token count")
        try checkTrue(abs(res.lossSum - refLocal.lossSum) <= Double(rtol) * abs(refLocal.lossSum), rank: rank,
                      "loss \(res.lossSum) vs reference \(refLocal.lossSum)")
        let grads = Dictionary(uniqueKeysWithValues: m.parameters.map { ($0.fqn, $0.grad.toArray()) })

        // (b) expert grads: local experts vs the group-batch reference; all-gathered vs the full reference
        for p in m.parameters where isRoutedExpertWeight(p.fqn) {
            let per = p.count / E
            let refG = refGroupGrads[p.fqn]!
            try checkClose(grads[p.fqn]!, Array(refG[(range.lowerBound * per)..<(range.upperBound * per)]), rtol: rtol, rank: rank,
                           "\(p.fqn) grad (local experts)")
            let assembled = try epGroup.allGather(grads[p.fqn]!)
            try checkClose(assembled, refG, rtol: rtol, rank: rank, "\(p.fqn) grad (all-gathered over EP)")
        }
        // (c) everything else vs the local-slice reference
        for p in m.parameters where !isRoutedExpertWeight(p.fqn) {
            try checkClose(grads[p.fqn]!, refLocalGrads[p.fqn]!, rtol: rtol, rank: rank, "\(p.fqn) grad")
        }

        // dispatch bytes: rows that crossed ranks, forward and backward
        let allTPE = try epGroup.allGatherVariable(res.tokensPerExpert.flatMap { $0.map(Int64.init) })
        var expected = 0
        var moeIndex = 0
        var received: [[Int]] = []
        for (li, layerCounts) in res.tokensPerExpert.enumerated() where !layerCounts.isEmpty {
            var offset = 0
            for l in 0..<li { offset += res.tokensPerExpert[l].count }
            var rows = 0
            for e in 0..<E where !range.contains(e) { rows += layerCounts[e] }               // sent
            for i in 0..<ep where i != epGroup.rank {                                          // received
                for e in range { rows += Int(allTPE[i][offset + e]) }
            }
            // two exchanges (dispatch + combine) per pass, forward + backward; 4 or 2 bytes an element
            expected += 4 * rows * args.dim * (bf16 ? 2 : 4)
            var perLocal = [Int](repeating: 0, count: el)
            for i in 0..<ep { for (l, e) in range.enumerated() { perLocal[l] += Int(allTPE[i][offset + e]) } }
            try checkTrue(dispatchers[moeIndex].localCounts == perLocal, rank: rank,
                          "layer \(li): local expert counts \(dispatchers[moeIndex].localCounts) vs \(perLocal)")
            received.append(perLocal)
            moeIndex += 1
        }
        try checkTrue(bytes == expected, rank: rank, "dispatchBytes \(bytes), expected \(expected)")

        // a repeated step is bitwise identical
        m.zeroGrad()
        let res2 = m.forwardBackward(inputs: inputs, labels: labels, B: B, T: T, lossScale: lossScale)
        try checkTrue(res2.lossSum.bitPattern == res.lossSum.bitPattern, rank: rank, "repeat: loss not bitwise equal")
        for p in m.parameters {
            try checkTrue(p.grad.toArray().map(\.bitPattern) == grads[p.fqn]!.map(\.bitPattern), rank: rank,
                          "repeat: \(p.fqn) grad not bitwise equal")
        }

        // the other expert path (loop vs grouped) gives identical results under EP
        m.setUseGroupedMM(!s.grouped)
        m.zeroGrad()
        let res3 = m.forwardBackward(inputs: inputs, labels: labels, B: B, T: T, lossScale: lossScale)
        try checkTrue(res3.lossSum.bitPattern == res.lossSum.bitPattern, rank: rank,
                      "loop vs grouped: loss \(res3.lossSum) vs \(res.lossSum)")
        for p in m.parameters {
            try checkTrue(p.grad.toArray().map(\.bitPattern) == grads[p.fqn]!.map(\.bitPattern), rank: rank,
                          "loop vs grouped: \(p.fqn) grad differs")
        }
        m.setUseGroupedMM(s.grouped)

        // logits (forward only) agree too
        try checkClose(m.logits(inputs: inputs, B: B, T: T), refLogits, rtol: rtol, rank: rank, "logits")

        reports?.set(rank, EPRankReport(lossSum: res.lossSum, tokensPerExpert: res.tokensPerExpert, receivedRows: received,
                                        gradBits: m.parameters.flatMap { grads[$0.fqn]!.map(\.bitPattern) },
                                        dispatchBytes: bytes, interHostBytes: interHostBytes))
    }
    let failures = errors.enumerated().compactMap { r, e in e.map { "rank \(r): \($0)" } }
    if !failures.isEmpty { throw EPTestFailure(description: failures.joined(separator: "\n")) }
}

final class ExpertParallelTests: XCTestCase {
    private func run(_ s: EPScenario, reports: EPReports? = nil, file: StaticString = #filePath, line: UInt = #line) {
        do { try runScenario(s, reports: reports) } catch { XCTFail("\(error)", file: file, line: line) }
    }

    func testEP1SingleRank() {
        run(EPScenario(worldSize: 1, ep: 1))
    }

    func testEP2() {
        let reports = EPReports()
        run(EPScenario(worldSize: 2, ep: 2), reports: reports)
        // natural routing: both ranks really exchange rows
        XCTAssertGreaterThan(reports[0]?.dispatchBytes ?? 0, 0)
        XCTAssertGreaterThan(reports[1]?.dispatchBytes ?? 0, 0)
    }

    /// bfloat16 dispatch (mixed precision): the reference rounded where the wire rounds, half the bytes.
    func testEP4BFloat16Dispatch() {
        run(EPScenario(worldSize: 4, ep: 4, wire: .bfloat16))
        run(EPScenario(worldSize: 4, ep: 2, grouped: false, wire: .bfloat16))
    }

    func testEP4LoopPath() {
        run(EPScenario(worldSize: 4, ep: 4, grouped: false))
    }

    func testEP4SharedExpertsAndDenseLayer() {
        run(EPScenario(worldSize: 4, ep: 4, sharedExperts: 1, denseEveryOther: true))
    }

    func testEP8OneExpertPerRank() {
        run(EPScenario(worldSize: 8, ep: 8, localBatch: 1))
    }

    /// Two EP groups of 2 inside a world of 4 (EP as a sub-dimension of the mesh).
    func testEP2GroupsInWorld4() {
        run(EPScenario(worldSize: 4, ep: 2))
    }

    /// Uniform router scores: every token picks the same top-2 experts, so a single EP rank receives everything,
    /// the other ranks receive no rows at all (but still take part in every exchange), most experts are never chosen.
    func testUniformRoutingAllTokensToOneRank() {
        let reports = EPReports()
        run(EPScenario(worldSize: 4, ep: 4, routing: .uniformGate), reports: reports)
        var receiving = 0
        for r in 0..<4 {
            guard let rep = reports[r] else { return XCTFail("rank \(r) did not report") }
            for tpe in rep.tokensPerExpert { XCTAssertEqual(tpe.filter { $0 > 0 }.count, 2, "every token picks the same 2 experts") }
            if rep.receivedRows.contains(where: { $0.reduce(0, +) > 0 }) { receiving += 1 }
        }
        XCTAssertEqual(receiving, 1, "exactly one EP rank owns the chosen experts")
    }

    /// Top-1 with a huge load-balancing bias on expert 5: every token of every rank goes to expert 5 (owned by EP
    /// rank 2 of 4); rank 2 sends nothing to its peers, the others receive nothing.
    func testForcedSingleExpert() {
        let reports = EPReports()
        run(EPScenario(worldSize: 4, ep: 4, topK: 1, routing: .forced([5])), reports: reports)
        for r in 0..<4 {
            guard let rep = reports[r] else { return XCTFail("rank \(r) did not report") }
            for tpe in rep.tokensPerExpert { XCTAssertEqual(tpe, (0..<8).map { $0 == 5 ? 2 * 8 : 0 }) }
            for rows in rep.receivedRows { XCTAssertEqual(rows, r == 2 ? [0, 4 * 2 * 8] : [0, 0]) }
        }
    }

    /// Forced routing to experts on two different ranks, with one expert per rank (ep 8): six ranks own idle experts.
    func testForcedTwoExpertsEP8() {
        run(EPScenario(worldSize: 8, ep: 8, localBatch: 1, grouped: false, routing: .forced([1, 6])))
    }

    func testTwoRunsBitwiseIdentical() {
        let a = EPReports(), b = EPReports()
        run(EPScenario(worldSize: 4, ep: 4), reports: a)
        run(EPScenario(worldSize: 4, ep: 4), reports: b)
        for r in 0..<4 {
            XCTAssertEqual(a[r]?.lossSum.bitPattern, b[r]?.lossSum.bitPattern, "rank \(r) loss")
            XCTAssertEqual(a[r]?.gradBits, b[r]?.gradBits, "rank \(r) grads")
        }
    }

    /// Two hosts of 2, every token routed to experts 4 and 5 (both on rank 2, host 1): the hierarchical dispatch sends
    /// host 0's tokens across once instead of twice, and every rank gets the same rows, so losses and gradients are
    /// bitwise the flat dispatch's.
    func testHierarchicalDispatchSendsATokenOncePerHost() {
        let flat = EPReports(), hierarchical = EPReports()
        var s = EPScenario(worldSize: 4, ep: 4, routing: .forced([4, 5]))
        s.hosts = [0, 0, 1, 1]
        s.algorithm = .ring
        run(s, reports: flat)
        s.algorithm = .hierarchical
        run(s, reports: hierarchical)
        for r in 0..<4 {
            XCTAssertEqual(flat[r]?.lossSum.bitPattern, hierarchical[r]?.lossSum.bitPattern, "rank \(r) loss")
            XCTAssertEqual(flat[r]?.gradBits, hierarchical[r]?.gradBits, "rank \(r) grads")
            XCTAssertEqual(flat[r]?.dispatchBytes, hierarchical[r]?.dispatchBytes, "rank \(r): the same rows, counted as the flat dispatch's")
        }
        for r in 0..<2 {
            let f = flat[r]?.interHostBytes ?? 0, h = hierarchical[r]?.interHostBytes ?? 0
            XCTAssertLessThan(h, f, "rank \(r) (host 0): all-to-all bytes to host 1")
        }
    }

    func testApplyRejectsBadDegreeAndDoubleApply() {
        let errors = InProcessCluster.run(worldSize: 3, timeoutSeconds: 30) { comm in
            var s = EPScenario(worldSize: 3, ep: 3)
            let m = try makeModel(s)
            do {
                try ExpertParallel.apply(to: m, epGroup: comm.world)
                throw fail(comm.rank, "ep 3 with 8 experts was accepted")
            } catch let e as ParallelError {
                guard case .invalidDegrees(let key, _) = e, key == "parallelism.expert_parallel_degree" else { throw e }
            }
            // nothing was changed by the failed apply
            for p in m.parameters where isRoutedExpertWeight(p.fqn) { try checkTrue(p.value.shape == p.shape, rank: comm.rank, "untouched") }
            s.numExperts = 6
            let m6 = try makeModel(s)
            try ExpertParallel.apply(to: m6, epGroup: comm.world)
            do {
                try ExpertParallel.apply(to: m6, epGroup: comm.world)
                throw fail(comm.rank, "second apply was accepted")
            } catch let e as ParallelError {
                guard case .invalidParameter = e else { throw e }
            }
        }
        for (r, e) in errors.enumerated() { XCTAssertNil(e, "rank \(r): \(String(describing: e))") }
    }

    /// A peer that never joins the exchange: with failFast off, the dispatcher records a typed error after the
    /// group's timeout, returns zeros instead of hanging, and `throwIfFailed` reports it.
    func testMissingPeerIsReportedNotHung() {
        let errors = InProcessCluster.run(worldSize: 2, timeoutSeconds: 2) { comm in
            let s = EPScenario(worldSize: 2, ep: 2)
            let m = try makeModel(s)
            try ExpertParallel.apply(to: m, epGroup: comm.world)
            guard comm.rank == 0 else { return }   // rank 1 leaves without running a step
            for d in ExpertParallel.dispatchers(in: m) { d.failFast = false }
            let inputs = tokens(16, vocab: 32, seed: 1), labels = tokens(16, vocab: 32, seed: 2)
            _ = m.forwardBackward(inputs: inputs, labels: labels, B: 2, T: 8, lossScale: 1 / 16)
            do {
                try ExpertParallel.throwIfFailed(m)
                throw fail(0, "a missing peer was not reported")
            } catch let e as ParallelError {
                guard case .collectiveFailed(let rank, let message) = e, rank == 0, message.contains("layers.0.moe") else { throw e }
            }
        }
        for (r, e) in errors.enumerated() { XCTAssertNil(e, "rank \(r): \(String(describing: e))") }
    }
}
