import Collectives
import Foundation
import Model
import Tensor

// Expert parallelism (torchtitan's ExpertParallel, Megatron-Core's all-to-all token dispatcher), applied to a built
// model from outside: each MoE layer's routed experts are narrowed to this EP rank's contiguous slice, and the layer's
// `experts` is replaced by `ExpertParallelExperts`, which ships token rows to the experts' owners and back.

public enum ExpertParallel {
    /// The experts EP rank `epRank` owns: `epRank·E/ep ..< (epRank+1)·E/ep`.
    public static func localExpertRange(numExperts: Int, epDegree: Int, epRank: Int) -> Range<Int> {
        let el = numExperts / epDegree
        return (epRank * el)..<((epRank + 1) * el)
    }

    /// Replaces every MoE module's experts by an all-to-all dispatcher over `epGroup` (size ep must divide num_experts),
    /// and narrows each routed-expert Parameter (w1 [E,F,D], w2 [E,D,F], w3 [E,F,D]) to this rank's contiguous slice
    /// of E/ep experts: value AND grad become tensors of E/ep experts (copied from the full value, or initialised by the
    /// model when the parameter has no storage). EP rank j owns experts
    /// j*E/ep ..< (j+1)*E/ep. Must run before FSDP is applied (FSDP shards whatever `value` holds). `wire` bfloat16:
    /// token rows travel as bfloat16 (half the all-to-all bytes; see `ExpertParallelExperts.wire`).
    ///
    /// `Parameter.shape` / `count` keep the full logical shape [E, ...]; the local slice is `value.shape` and starts at
    /// expert `expertRange.lowerBound` of the dispatcher (see `dispatchers(in:)`).
    /// The dispatcher runs the module's own `localExperts` (a GroupedExperts over the same Parameter objects), so
    /// switching their loop / grouped path still applies.
    public static func apply(to model: ParallelizableModel, epGroup: ProcessGroup, wire: Precision = .float32) throws {
        let ep = epGroup.size
        let moes = model.moeModules
        try ParallelDims.validateExperts(ep: ep, numExperts: moes.first?.args.num_experts ?? 0)
        guard let first = moes.first else { return }
        guard model.hooks is NoModelHooks else {
            throw ParallelError.invalidParameter(fqn: first.w1.fqn, "the model already has hooks installed; apply expert parallelism before FSDP")
        }
        let E = first.args.num_experts
        let el = E / ep
        let range = localExpertRange(numExperts: E, epDegree: ep, epRank: epGroup.rank)
        // Check everything before changing anything.
        for moe in moes {
            if moe.experts is ExpertParallelExperts {
                throw ParallelError.invalidParameter(fqn: moe.w1.fqn, "\(moe.fqn) already has an expert-parallel dispatcher; apply expert parallelism once per model")
            }
            guard moe.args.num_experts == E else {
                throw ParallelError.invalidParameter(fqn: moe.w1.fqn, "\(moe.fqn) has \(moe.args.num_experts) experts, \(first.fqn) has \(E); expert parallelism needs one expert count")
            }
            for p in moe.routedExpertParameters {
                guard p.shape.first == E, p.value == nil ? p.awaitsInitialization : p.value.shape == p.shape else {
                    throw ParallelError.invalidParameter(fqn: p.fqn, "holds \(p.value?.shape.description ?? "nil"), expected the full \(p.shape) with \(E) experts first; apply expert parallelism before FSDP")
                }
            }
        }
        for moe in moes {
            for p in moe.routedExpertParameters {
                let per = p.count / E
                let shape = [el] + Array(p.shape.dropFirst())
                let value = Tensor(shape: shape, zeroed: false)
                let mine = (range.lowerBound * per)..<(range.upperBound * per)
                if let full = p.value {
                    value.data.update(from: full.data + mine.lowerBound, count: mine.count)
                } else {  // not materialized: initialise just this rank's experts
                    try model.initialValues(of: p, elements: mine, into: value.data)
                }
                let grad = Tensor(shape: shape)
                if let g = p.grad, g.count == p.count { grad.data.update(from: g.data + range.lowerBound * per, count: el * per) }
                p.value = value
                p.grad = grad
                p.awaitsInitialization = false
            }
            moe.experts = ExpertParallelExperts(group: epGroup, experts: moe.localExperts, numExperts: E, name: moe.fqn, wire: wire)
        }
    }

    /// The dispatchers of the model's MoE modules, in order (empty before `apply`).
    public static func dispatchers(in model: ParallelizableModel) -> [ExpertParallelExperts] {
        model.moeModules.compactMap { $0.experts as? ExpertParallelExperts }
    }

    /// Throws the first collective failure recorded by a dispatcher of the model (when `failFast` is off).
    public static func throwIfFailed(_ model: ParallelizableModel) throws {
        for d in dispatchers(in: model) { if let f = d.failure { throw f } }
    }

    /// Sum of `dispatchBytes` over all layers since the last reset; resets them when `reset`.
    public static func dispatchBytes(of model: ParallelizableModel, reset: Bool = true) -> Int {
        var total = 0
        for d in dispatchers(in: model) {
            total += d.dispatchBytes
            if reset { d.dispatchBytes = 0 }
        }
        return total
    }
}

/// The all-to-all token dispatcher of one MoE layer (an `MoEExperts`).
///
/// Forward, on every EP rank (x_SD sorted by global expert, counts_E over all E experts):
///  1. all-to-all of Int64 counts: rank j receives from each rank i how many rows i sends to each of j's local experts;
///  2. all-to-all-v of the token rows (rank i's rows for rank j are contiguous, since j's experts are); told the rows'
///     tokens (the MoE layer does), the row all-to-all, which under the hierarchical algorithm sends a token to a remote
///     host once however many of its top-k experts live there, and delivers the same rows;
///  3. reorder the received rank-major rows (rank 0: local expert 0, 1, ...; rank 1: ...) into expert-major order;
///  4. run the local experts (the layer's GroupedExperts, loop or grouped path) with per-local-expert counts;
///  5. reverse the reorder; 6. all-to-all-v the outputs back: y_SD comes back in the caller's order.
/// Backward mirrors it with the same splits (dy out, local expert backward accumulating the local weight grads, dx back).
/// Every exchange runs on every rank even when it sends or receives nothing; no padding, no capacity drop.
public final class ExpertParallelExperts: MoEExperts {
    public let group: ProcessGroup
    /// The local experts (the MoE layer's `localExperts`, over the narrowed Parameters).
    public let localExperts: GroupedExperts
    public let numExperts: Int
    public let numLocalExperts: Int
    /// Global indices of the experts this rank owns.
    public let expertRange: Range<Int>
    public let dim: Int
    public let name: String
    /// The format token rows travel in. bfloat16 (mixed precision): every exchanged row is rounded to bfloat16, the
    /// rank's own rows too, so the result does not depend on where an expert lives. The dispatched inputs and output
    /// gradients change nothing (the experts' bfloat16 GEMMs round them anyway); the returned outputs and input
    /// gradients carry bfloat16 precision, as autocast's linear outputs do.
    public let wire: Precision
    /// Bytes of token rows this rank sent to and received from OTHER ranks (rows × dim × 2 or 4; forward and backward;
    /// the rank's own rows are a local copy and not counted, nor are the small count exchanges). Reset by the caller.
    public var dispatchBytes: Int = 0
    /// Rows of the last forward: sent to each EP rank, received from each EP rank, and per local expert.
    public private(set) var sendRows: [Int]
    public private(set) var receiveRows: [Int]
    public private(set) var localCounts: [Int]

    // counts exchange
    private var countSend: [Int64]
    private var countReceive: [Int64]
    private let countSplits: [Int]
    // float split sizes (rows × dim)
    private var sendSplits: [Int]
    private var receiveSplits: [Int]
    private var savedCounts: [Int] = []
    private var hasForward = false
    /// Copy blocks between rank-major and expert-major order: (rankMajorRow, expertMajorRow, rows) triples.
    private var blocks: [Int] = []
    private var emStart: [Int]
    private var receivedRows = 0
    private var reservedRows = 0

    private let received = GrowBuffer()   // [R, D] rank-major rows as received (x, then dy)
    private let xLocal = GrowBuffer()     // [R, D] expert-major inputs, kept for backward
    private let yLocal = GrowBuffer()     // [R, D] expert-major outputs (forward) / dy (backward)
    private let dxLocal = GrowBuffer()    // [R, D] expert-major dx (backward)
    private let outgoing = GrowBuffer()   // [R, D] rank-major outputs / dx to send back
    private let send16 = BFloat16Buffer(), receive16 = BFloat16Buffer()   // bfloat16 payloads
    private let xLocal16 = BFloat16Buffer()    // [R, D] expert-major inputs, kept for backward (`rowsStayBFloat16`)
    private let dyLocal16 = BFloat16Buffer()   // [R, D] expert-major output gradients (`rowsStayBFloat16`)

    public init(group: ProcessGroup, experts: GroupedExperts, numExperts: Int, name: String = "moe", wire: Precision = .float32) {
        precondition(numExperts % group.size == 0, "\(name): \(group.size) EP ranks do not divide \(numExperts) experts")
        self.group = group
        self.localExperts = experts
        self.numExperts = numExperts
        let ep = group.size, el = numExperts / ep
        numLocalExperts = el
        expertRange = ExpertParallel.localExpertRange(numExperts: numExperts, epDegree: ep, epRank: group.rank)
        dim = experts.dim
        self.name = name
        self.wire = wire
        sendRows = Array(repeating: 0, count: ep)
        receiveRows = Array(repeating: 0, count: ep)
        localCounts = Array(repeating: 0, count: el)
        emStart = Array(repeating: 0, count: el)
        countSend = Array(repeating: 0, count: numExperts)
        countReceive = Array(repeating: 0, count: numExperts)
        countSplits = Array(repeating: el, count: ep)
        sendSplits = Array(repeating: 0, count: ep)
        receiveSplits = Array(repeating: 0, count: ep)
        blocks.reserveCapacity(3 * numExperts)
    }

    /// A collective failure inside forward/backward (which cannot throw). With `failFast` (the default) the process
    /// stops with the message; otherwise the error is kept here (see `ExpertParallel.throwIfFailed`), the outputs of
    /// this and every later call are zeros, and no further collective is issued on the broken group.
    public private(set) var failure: ParallelError?
    /// Stop the process at once on a collective failure (true) or record it for `ExpertParallel.throwIfFailed` (false).
    public var failFast = true

    private func fail(_ what: String, _ error: Error) {
        let message = "expert parallel \(name), EP rank \(group.rank) of \(group.size) (\(group.description)): \(what) failed: \(error). "
            + "The EP group is broken; every rank of it must run the same MoE layers in the same order."
        if failFast { fatalError(message) }
        if failure == nil { failure = .collectiveFailed(rank: group.members[group.rank], message) }
    }

    /// With the wire and the experts' GEMMs both in bfloat16 (mixed precision), the dispatched rows (inputs forward,
    /// output gradients backward) reach the experts in the bfloat16 they travelled in: widening them only for the
    /// GEMMs to round them again would change no bit.
    private var rowsStayBFloat16: Bool { wire == .bfloat16 && BLAS.matmulPrecision == .bfloat16 }

    /// All-to-all-v of rows: `sendSplits` floats to each rank out of `src`, `receiveSplits` floats from each into `dst`
    /// (as bfloat16 on the wire with `wire` bfloat16). With `token_S` (each sent row's token: rows of one token are
    /// equal), the row all-to-all: under the hierarchical algorithm a token's row crosses to a remote host once, however
    /// many of its experts live there; the rows each rank receives are the same. Zeros arrive from a broken group.
    private func exchange(_ src: UnsafePointer<Float>, _ srcCount: Int, sendSplits s: [Int],
                          _ dst: UnsafeMutablePointer<Float>, _ dstCount: Int, receiveSplits r: [Int], _ what: String,
                          token_S: UnsafePointer<Int32>? = nil) {
        if wire == .bfloat16 {
            let rows16 = exchange16(src, srcCount, sendSplits: s, dstCount, receiveSplits: r, what, token_S: token_S)
            BFloat16.widen(rows16, into: dst, count: dstCount)
            return
        }
        if failure != nil { dst.update(repeating: 0, count: dstCount); return }
        do {
            try allToAll(src, srcCount, sendSplits: s, dst, dstCount, receiveSplits: r, token_S: token_S)
        } catch {
            fail(what, error)
            dst.update(repeating: 0, count: dstCount)
            return
        }
        countDispatched(srcCount, sendSplits: s, dstCount, receiveSplits: r, bytesPerElement: 4)
    }

    /// `exchange` over the bfloat16 wire, leaving the received rows in bfloat16 (in `receive16`, valid until the next
    /// exchange).
    private func exchange16(_ src: UnsafePointer<Float>, _ srcCount: Int, sendSplits s: [Int], _ dstCount: Int,
                            receiveSplits r: [Int], _ what: String, token_S: UnsafePointer<Int32>? = nil) -> UnsafeMutablePointer<BFloat16> {
        let rows16 = receive16.get(dstCount)
        if failure != nil { receive16.zero(dstCount); return rows16 }
        let out = send16.get(srcCount)
        BFloat16.narrow(src, into: out, count: srcCount)
        do {
            try allToAll(out, srcCount, sendSplits: s, rows16, dstCount, receiveSplits: r, token_S: token_S)
        } catch {
            fail(what, error)
            receive16.zero(dstCount)
            return rows16
        }
        countDispatched(srcCount, sendSplits: s, dstCount, receiveSplits: r, bytesPerElement: 2)
        return rows16
    }

    private func allToAll<T: CollectiveElement>(_ send: UnsafePointer<T>, _ srcCount: Int, sendSplits s: [Int],
                                                _ receive: UnsafeMutablePointer<T>, _ dstCount: Int, receiveSplits r: [Int],
                                                token_S: UnsafePointer<Int32>?) throws {
        let input = UnsafeBufferPointer(start: send, count: srcCount), output = UnsafeMutableBufferPointer(start: receive, count: dstCount)
        if let token_S {
            try group.allToAllRows(input, rowLength: dim, sendRows: s.map { $0 / dim },
                                   rowKeys: UnsafeBufferPointer(start: token_S, count: srcCount / max(dim, 1)),
                                   into: output, receiveRows: r.map { $0 / dim })
        } else {
            try group.allToAll(input, sendCounts: s, into: output, receiveCounts: r)
        }
    }

    /// Adds the rows that crossed to or from other ranks to `dispatchBytes`.
    private func countDispatched(_ srcCount: Int, sendSplits s: [Int], _ dstCount: Int, receiveSplits r: [Int], bytesPerElement: Int) {
        let me = group.rank
        dispatchBytes += (srcCount - s[me] + dstCount - r[me]) * bytesPerElement
    }

    /// Copies rows between the rank-major and the expert-major layouts.
    private func reorder<T>(_ src: UnsafePointer<T>, _ dst: UnsafeMutablePointer<T>, toExpertMajor: Bool) {
        let D = dim
        var b = 0
        while b < blocks.count {
            let rm = blocks[b], em = blocks[b + 1], n = blocks[b + 2]
            if toExpertMajor { (dst + em * D).update(from: src + rm * D, count: n * D) }
            else { (dst + rm * D).update(from: src + em * D, count: n * D) }
            b += 3
        }
    }

    public func forward(x_SD: UnsafePointer<Float>, counts_E: [Int], y_SD: UnsafeMutablePointer<Float>) {
        forward(x_SD: x_SD, token_S: nil, counts_E: counts_E, y_SD: y_SD)
    }

    public func forward(x_SD: UnsafePointer<Float>, token_S: UnsafePointer<Int32>, counts_E: [Int], y_SD: UnsafeMutablePointer<Float>) {
        forward(x_SD: x_SD, token_S: Optional(token_S), counts_E: counts_E, y_SD: y_SD)
    }

    /// The dispatch; with `token_S`, the token rows travel through the row all-to-all (once per remote host).
    private func forward(x_SD: UnsafePointer<Float>, token_S: UnsafePointer<Int32>?, counts_E: [Int], y_SD: UnsafeMutablePointer<Float>) {
        let E = numExperts, el = numLocalExperts, ep = group.size, D = dim
        precondition(counts_E.count == E, "\(name): counts_E has \(counts_E.count) entries for \(E) experts")
        // 1. per-expert counts: rank j gets, from every rank i, i's counts of j's local experts.
        for e in 0..<E { countSend[e] = Int64(counts_E[e]) }
        if failure == nil { do {
            try countSend.withUnsafeBufferPointer { s in
                try countReceive.withUnsafeMutableBufferPointer { r in
                    try group.allToAll(s, sendCounts: countSplits, into: r, receiveCounts: countSplits)
                }
            }
        } catch { fail("count exchange (all-to-all of \(E) Int64)", error) } }
        if failure != nil { for i in 0..<E { countReceive[i] = 0 } }   // nothing arrives from a broken group
        var S = 0, R = 0
        for j in 0..<ep {
            var s = 0, r = 0
            for l in 0..<el { s += counts_E[j * el + l]; r += Int(countReceive[j * el + l]) }
            sendRows[j] = s; receiveRows[j] = r
            sendSplits[j] = s * D; receiveSplits[j] = r * D
            S += s; R += r
        }
        // expert-major offsets, and the copy blocks
        for l in 0..<el {
            var n = 0
            for i in 0..<ep { n += Int(countReceive[i * el + l]) }
            localCounts[l] = n
        }
        blocks.removeAll(keepingCapacity: true)
        var acc = 0
        for l in 0..<el { emStart[l] = acc; acc += localCounts[l] }
        var rm = 0
        for i in 0..<ep {
            for l in 0..<el {
                let n = Int(countReceive[i * el + l])
                if n > 0 {
                    let c = blocks.count
                    if c >= 3, blocks[c - 3] + blocks[c - 1] == rm, blocks[c - 2] + blocks[c - 1] == emStart[l] {
                        blocks[c - 1] += n   // contiguous in both layouts (always so when ep == 1 or one expert per rank)
                    } else {
                        blocks.append(rm); blocks.append(emStart[l]); blocks.append(n)
                    }
                }
                emStart[l] += n
                rm += n
            }
        }
        // Every rank routes the same number of rows (local batch × top-k), so no rank receives more than ep × S: the
        // scratch is reserved for that once, instead of growing (reallocating, page-faulting) with the drifting
        // expert loads for many steps. Larger R (ranks with other batch sizes) still just grows the buffers.
        if ep * S > reservedRows {
            reservedRows = ep * S
            for b in rowsStayBFloat16 ? [yLocal, dxLocal, outgoing] : [received, xLocal, yLocal, dxLocal, outgoing] {
                b.reserve(reservedRows * D)
            }
            if rowsStayBFloat16 { for b in [xLocal16, dyLocal16] { _ = b.get(reservedRows * D) } }
            localExperts.reserve(rows: reservedRows)
        }
        savedCounts = counts_E
        receivedRows = R
        hasForward = true
        // 2. token rows to the experts' owners; 3.-5. local experts in expert-major order
        let yl = yLocal.get(R * D), out = outgoing.get(R * D)
        if rowsStayBFloat16 {
            let rows16 = exchange16(x_SD, S * D, sendSplits: sendSplits, R * D, receiveSplits: receiveSplits, "forward dispatch", token_S: token_S)
            let x16 = xLocal16.get(R * D)
            reorder(rows16, x16, toExpertMajor: true)
            x16.withMemoryRebound(to: UInt16.self, capacity: R * D) { localExperts.forward(x16_SD: $0, counts_E: localCounts, y_SD: yl) }
        } else {
            let recv = received.get(R * D), xl = xLocal.get(R * D)
            exchange(x_SD, S * D, sendSplits: sendSplits, recv, R * D, receiveSplits: receiveSplits, "forward dispatch", token_S: token_S)
            reorder(recv, xl, toExpertMajor: true)
            localExperts.forward(x_SD: xl, counts_E: localCounts, y_SD: yl)
        }
        reorder(yl, out, toExpertMajor: false)
        // 6. outputs back to the tokens' ranks
        exchange(out, R * D, sendSplits: receiveSplits, y_SD, S * D, receiveSplits: sendSplits, "forward combine")
    }

    public func backward(x_SD: UnsafePointer<Float>, dy_SD: UnsafePointer<Float>, counts_E: [Int], dx_SD: UnsafeMutablePointer<Float>) {
        precondition(hasForward && counts_E == savedCounts, "\(name): backward without a matching forward (counts differ)")
        let D = dim, R = receivedRows
        let S = sendRows.reduce(0, +)
        let dxl = dxLocal.get(R * D), out = outgoing.get(R * D)
        // dy rows travel to the experts' owners with the forward splits
        if rowsStayBFloat16 {
            let rows16 = exchange16(dy_SD, S * D, sendSplits: sendSplits, R * D, receiveSplits: receiveSplits, "backward dispatch")
            let dy16 = dyLocal16.get(R * D)
            reorder(rows16, dy16, toExpertMajor: true)
            xLocal16.data.withMemoryRebound(to: UInt16.self, capacity: R * D) { x16 in
                dy16.withMemoryRebound(to: UInt16.self, capacity: R * D) { dy16 in
                    localExperts.backward(x16_SD: x16, dy_SD: .bf16(dy16), counts_E: localCounts, dx_SD: dxl)
                }
            }
        } else {
            let recv = received.get(R * D), xl = xLocal.get(R * D), dyl = yLocal.get(R * D)
            exchange(dy_SD, S * D, sendSplits: sendSplits, recv, R * D, receiveSplits: receiveSplits, "backward dispatch")
            reorder(recv, dyl, toExpertMajor: true)
            localExperts.backward(x_SD: xl, dy_SD: dyl, counts_E: localCounts, dx_SD: dxl)
        }
        reorder(dxl, out, toExpertMajor: false)
        // dx rows travel back
        exchange(out, R * D, sendSplits: receiveSplits, dx_SD, S * D, receiveSplits: sendSplits, "backward combine")
    }
}
