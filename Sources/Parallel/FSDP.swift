import Foundation
import Collectives
import Model
import Runtime
import Tensor

/// This rank's slice of one parameter: what the optimizer, clipping and checkpointing touch. One object per
/// (parameter, rank) for the wrapper's life: the optimizer keys its state by it and the checkpointer saves it at
/// `offset`. `param` / `grad` point into the rank's flat shard storage; padding is never part of a shard.
public final class ParameterShard {
    public let parameter: Parameter
    public let param: UnsafeMutablePointer<Float>
    public let grad: UnsafeMutablePointer<Float>
    /// Elements in this slice.
    public let count: Int
    /// First element of the slice within the FULL (unsharded, all experts) parameter, row-major.
    public let offset: Int

    init(parameter: Parameter, param: UnsafeMutablePointer<Float>, grad: UnsafeMutablePointer<Float>, count: Int, offset: Int) {
        self.parameter = parameter; self.param = param; self.grad = grad; self.count = count; self.offset = offset
    }

    public var fqn: String { parameter.fqn }
}

/// Bytes per rank held by the sharded model (Float32).
public struct MemoryReport: Equatable, CustomStringConvertible {
    /// Parameter shard storage, including padding.
    public var paramBytes: Int
    /// Gradient shard storage, including padding.
    public var gradBytes: Int
    /// Largest parameter group when gathered (its unsharded parameters; its gradients take as much again in backward).
    public var largestUnshardedGroupBytes: Int
    /// Padding elements in this rank's shards, in bytes (included in paramBytes and gradBytes once each).
    public var paddingBytes: Int
    /// What this rank's parameters (its local, EP-narrowed tensors) take without FSDP.
    public var unshardedParamBytes: Int

    public var description: String {
        "params \(Self.mebibytes(paramBytes)), grads \(Self.mebibytes(gradBytes)), "
            + "largest gathered group \(Self.mebibytes(largestUnshardedGroupBytes)) (unsharded params \(Self.mebibytes(unshardedParamBytes)))"
    }

    public static func mebibytes(_ bytes: Int) -> String { String(format: "%.2f MiB", Double(bytes) / 1_048_576) }
}

/// One flat buffer: the parameters of one model group that shard over the same process group, concatenated in
/// group order, padded to a multiple of the group size; rank r owns elements [r·shardSize, (r+1)·shardSize).
final class FlatParam {
    let pg: ProcessGroup
    let params: [Parameter]
    let shapes: [[Int]]          // local shapes
    let offsets: [Int]           // offset of each parameter in the flat buffer
    let counts: [Int]            // local element counts
    let offsetsInFull: [Int]     // where the local tensor starts within the full parameter (EP slice)
    let numel: Int
    let padded: Int
    let shardSize: Int
    let shardOffset: Int
    /// Elements of the shard that are not padding.
    let validCount: Int
    let paramShard: Tensor
    let gradShard: Tensor

    /// One-member shard group without replicas: the shard IS the full buffer, so parameters and gradients point
    /// straight into the shard storage (no gather copy, no gradient scratch, no reduce-scatter). Set by the wrapper.
    var direct = false

    /// bfloat16 parameters: the parameters that are not `gemmOnly`, (index, offset in `gathered`), packed one after
    /// another; only these are widened to fp32 (`widenedCount` elements).
    let widened: [(k: Int, at: Int)]
    let widenedCount: Int

    // live state
    /// The gathered parameters: all of them in fp32 (`param` float32), or with `param` bfloat16 the `widened` ones
    /// (nil when there are none), the rest read from `gathered16`.
    var gathered: Tensor?
    /// bfloat16 parameters: all of them as gathered (or rounded, for a direct group), while the group is live.
    var gathered16: BFloat16Buffer?
    var gatherWork: Work?
    /// bfloat16 parameters: the cast shard while the all-gather into `gathered16` runs.
    var gatheringShard16: BFloat16Buffer?
    /// bfloat16 parameters of a direct group: its shard rounded to bfloat16 and the `widened` parameters of it, made
    /// once per step (`roundedIsCurrent`).
    var rounded: (full16: BFloat16Buffer, widened: Tensor?)?
    var roundedIsCurrent = false
    var fullGrad: Tensor?
    /// `fullGrad` holds the gradients of earlier micro-batches of this step (no gradient sync): the next backward adds
    /// to it.
    var fullGradKept = false
    /// The gradient shard holds zeros (set by `zeroGrad`): the next reduction writes into it instead of into a scratch
    /// shard that is then added to it.
    var gradShardIsZero = false

    init(pg: ProcessGroup, params: [Parameter], offsetsInFull: [Int]) {
        self.pg = pg
        self.params = params
        self.offsetsInFull = offsetsInFull
        shapes = params.map { $0.value?.shape ?? $0.shape }   // no storage: the full parameter, initialised per shard
        counts = shapes.map { $0.reduce(1, *) }
        var o = 0
        var offs: [Int] = []
        for c in counts { offs.append(o); o += c }
        offsets = offs
        numel = o
        var w: [(k: Int, at: Int)] = [], at = 0
        for (k, p) in params.enumerated() where !p.gemmOnly { w.append((k, at)); at += counts[k] }
        widened = w
        widenedCount = at
        let n = pg.size
        padded = (numel + n - 1) / n * n
        shardSize = padded / n
        shardOffset = pg.rank * shardSize
        validCount = max(0, min(shardSize, numel - shardOffset))
        paramShard = Tensor(shape: [shardSize])
        gradShard = Tensor(shape: [shardSize])
    }

    /// Fills this rank's part of parameter k (which has no storage) with elements of its initial value.
    func initializeShard(_ k: Int, _ initialValues: (Range<Int>, UnsafeMutablePointer<Float>) throws -> Void) rethrows {
        let lo = max(offsets[k], shardOffset), hi = min(offsets[k] + counts[k], shardOffset + shardSize)
        guard hi > lo else { return }
        let first = offsetsInFull[k] + (lo - offsets[k])
        try initialValues(first..<(first + hi - lo), paramShard.data + (lo - shardOffset))
    }

    /// Gathered (or in flight) in either form.
    var isGathered: Bool { gathered != nil || gathered16 != nil }

    /// Widens the `widened` parameters of `full16` (the whole flat buffer in bfloat16) into `out`.
    func widen(_ full16: BFloat16Buffer, into out: Tensor) {
        for (k, at) in widened { BFloat16.widen(full16.data + offsets[k], into: out.data + at, count: counts[k]) }
    }

    /// Copies `local` (the parameter's local tensor, `counts[k]` elements) into this rank's shard.
    func scatterIntoShard(_ k: Int, from local: UnsafePointer<Float>) {
        let lo = max(offsets[k], shardOffset), hi = min(offsets[k] + counts[k], shardOffset + shardSize)
        guard hi > lo else { return }
        (paramShard.data + (lo - shardOffset)).update(from: local + (lo - offsets[k]), count: hi - lo)
    }
}

/// Grow-only pool of scratch tensors keyed by element count (gathered parameters, full gradients, reduce-scatter
/// outputs, and their bfloat16 payloads), so steady-state steps allocate nothing.
final class TensorPool {
    private var free: [Int: [Tensor]] = [:]
    private var free16: [Int: [BFloat16Buffer]] = [:]
    private(set) var allocatedBytes = 0

    func acquire16(_ count: Int) -> BFloat16Buffer {
        if var list = free16[count], let b = list.popLast() {
            free16[count] = list
            return b
        }
        allocatedBytes += count * MemoryLayout<BFloat16>.stride
        return BFloat16Buffer(count: count)
    }

    func release16(_ b: BFloat16Buffer) { free16[b.count, default: []].append(b) }

    func acquire(_ count: Int, zeroed: Bool) -> Tensor {
        if var list = free[count], let t = list.popLast() {
            free[count] = list
            if zeroed { t.zero() }
            return t
        }
        allocatedBytes += count * MemoryLayout<Float>.stride
        return Tensor(shape: [count])   // zero-filled
    }

    func release(_ t: Tensor) { free[t.count, default: []].append(t) }
}

/// A gradient reduction in flight: reduce-scatter (SUM) of a full gradient over the shard group, then (HSDP) an
/// all-reduce (SUM) of the result over the replicate group, then accumulation into the gradient shard. The payloads
/// are fp32, or bfloat16 with `MixedPrecisionPolicy.reduce` bfloat16.
final class PendingReduction {
    enum Payload {
        case float32(fullGrad: Tensor, output: Tensor)
        case bfloat16(fullGrad: BFloat16Buffer, output: BFloat16Buffer)
    }
    let flat: FlatParam
    let payload: Payload
    var work: Work?
    init(flat: FlatParam, payload: Payload, work: Work?) {
        self.flat = flat; self.payload = payload; self.work = work
    }
}

/// torch FSDP2's MixedPrecisionPolicy: the format parameters are all-gathered and computed in (`param`), and the one
/// gradients are reduced in (`reduce`). The shards (master parameters), the gradient shards and the optimizer state
/// stay fp32 either way.
public struct MixedPrecisionPolicy: Equatable, Sendable {
    /// bfloat16: each shard is rounded to bfloat16 before the all-gather (half the bytes) and every parameter is used
    /// at bfloat16 values, on one rank as on many (a group that is not sharded is rounded once per step). The GEMMs
    /// read the gathered bfloat16 (`Parameter.value16`); only parameters that are not `gemmOnly` are widened to fp32.
    public var param: Precision
    /// bfloat16: full gradients are rounded to bfloat16 before the reduce-scatter (and the HSDP all-reduce), which
    /// sums in fp32 and rounds at each step, as NCCL does.
    public var reduce: Precision

    public init(param: Precision = .float32, reduce: Precision = .float32) {
        self.param = param; self.reduce = reduce
    }
}

/// The model hooks; a separate object so the model does not keep the wrapper alive (model → hooks ⇢ wrapper is weak).
final class FSDPHooks: ModelHooks {
    weak var owner: FullyShardedModel?
    init(owner: FullyShardedModel) { self.owner = owner }
    func willForward(group: Int) { owner?.willForward(group: group) }
    func didForward(group: Int) { owner?.didForward(group: group) }
    func willBackward(group: Int) { owner?.willBackward(group: group) }
    func didBackward(group: Int) { owner?.didBackward(group: group) }
}

/// FSDP2 / ZeRO-3 applied from outside the model (torchtitan's `fully_shard` per parameter group).
///
/// Each parameter group of the model's `parameterGroups` becomes one flat buffer per sharding process group: dense
/// parameters shard over `mesh.dpShard`; routed-expert parameters (the MoE modules' `routedExpertParameters`, already
/// narrowed to this rank's experts by expert parallelism when ep > 1) shard over `mesh.expertShard`. The flat buffer is padded to a
/// multiple of the group size and split evenly: each rank stores a contiguous slice of parameters and gradients.
///
/// Through `ModelHooks`: before a group runs forward its flat buffers are all-gathered (the next group's all-gather
/// is prefetched) and the parameters point into them; after forward they are freed (`reshardAfterForward`; the last
/// group, and the tied embedding inside it, stay gathered for the backward that follows at once, and so does the last
/// transformer block with `keepLastBlockGathered`, torchtitan's default: its backward comes right after the final
/// group's, so freeing it would only make backward all-gather it again at once). Before backward
/// the group is gathered again and gets zeroed full-size gradients; after backward the gradients are reduce-scattered
/// (SUM) asynchronously — all-reduced (SUM) over `dpReplicate` for HSDP — and ACCUMULATED into the gradient shards.
/// With tied weights the embedding's group is opened for backward by the output projection and stays gathered, with
/// its full gradient, through every block's backward (one gather and one reduction per step instead of two; the
/// cost is that group's parameters and gradient held for the whole backward). `finishBackward` waits for every
/// reduction. All collectives are issued in the same order on every rank, and the ring collectives are deterministic,
/// so the same topology reproduces bit for bit.
public final class FullyShardedModel {
    public let model: ParallelizableModel
    public let mesh: DeviceMesh
    public let reshardAfterForward: Bool
    public let mixedPrecision: MixedPrecisionPolicy
    /// With `reshardAfterForward`: the group before the last one (the last transformer block) is not freed either.
    public let keepLastBlockGathered: Bool
    /// torch FSDP2's set_requires_gradient_sync. Off during the micro-batches before the last one of a step (gradient
    /// accumulation): each group's full gradient stays and the next micro-batch's backward adds to it, instead of a
    /// reduce-scatter per micro-batch; the last micro-batch (sync on) reduces the sum once.
    public var requiresGradientSync = true
    /// This rank's parameter slices, in group and parameter order (padding excluded; empty slices omitted).
    public private(set) var shards: [ParameterShard] = []

    let groups: [[FlatParam]]
    private let pool = TensorPool()
    private var hooks: FSDPHooks!
    private let lastGroup: Int
    private var inLastGroup = false
    private var scattering: [PendingReduction] = []   // reduce-scatter in flight
    private var replicating: [PendingReduction] = []  // HSDP all-reduce in flight
    private var failure: Error?

    /// Wraps `model` (installs `model.hooks`). Parameter values are moved into shards (a parameter without storage
    /// gets its shard from `model.initialValues`): afterwards `Parameter.value` and `grad` are nil except while a
    /// group is gathered (and `value` stays nil then too for `gemmOnly` parameters under `param` bfloat16).
    public init(model: ParallelizableModel, mesh: DeviceMesh, reshardAfterForward: Bool = true, keepLastBlockGathered: Bool = true,
                mixedPrecision: MixedPrecisionPolicy = MixedPrecisionPolicy()) throws {
        guard model.hooks is NoModelHooks else {
            throw ParallelError.invalidParameter(fqn: "", "the model already has hooks installed (apply FSDP once)")
        }
        self.model = model
        self.mesh = mesh
        let expertIDs = Set(model.moeModules.flatMap { $0.routedExpertParameters }.map(ObjectIdentifier.init))
        self.reshardAfterForward = reshardAfterForward
        self.keepLastBlockGathered = keepLastBlockGathered
        self.mixedPrecision = mixedPrecision
        lastGroup = model.parameterGroups.count - 1
        let ep = mesh.dims.ep
        var built: [[FlatParam]] = []
        for group in model.parameterGroups {
            var dense: [Parameter] = [], experts: [Parameter] = []
            var expertOffsets: [Int] = []
            for p in group {
                guard p.value != nil || p.awaitsInitialization else {
                    throw ParallelError.invalidParameter(fqn: p.fqn, "has no value (was FSDP applied twice?)")
                }
                let local = p.value?.count ?? p.count   // a parameter without storage is initialised shard by shard
                if expertIDs.contains(ObjectIdentifier(p)) {
                    guard local * ep == p.count else {
                        throw ParallelError.invalidParameter(fqn: p.fqn,
                            "holds \(local) of \(p.count) elements; with expert_parallel_degree \(ep) it must hold exactly "
                            + "1/\(ep) of the experts (apply expert parallelism before FSDP)")
                    }
                    experts.append(p)
                    expertOffsets.append(mesh.epRank * local)
                } else {
                    guard local == p.count else {
                        throw ParallelError.invalidParameter(fqn: p.fqn, "holds \(local) of \(p.count) elements; only expert parameters may be narrowed")
                    }
                    dense.append(p)
                }
            }
            var flats: [FlatParam] = []
            if mesh.expertShard === mesh.dpShard {
                // One process group: one flat buffer, in the model's parameter order.
                let all = group
                let offs = all.map { expertIDs.contains(ObjectIdentifier($0)) ? mesh.epRank * ($0.value?.count ?? $0.count) : 0 }
                flats.append(FlatParam(pg: mesh.dpShard, params: all, offsetsInFull: offs))
            } else {
                if !dense.isEmpty { flats.append(FlatParam(pg: mesh.dpShard, params: dense, offsetsInFull: dense.map { _ in 0 })) }
                if !experts.isEmpty { flats.append(FlatParam(pg: mesh.expertShard, params: experts, offsetsInFull: expertOffsets)) }
            }
            built.append(flats)
        }
        groups = built
        for flats in groups { for f in flats { f.direct = f.pg.size == 1 && mesh.dpReplicate == nil } }
        // Move the values into the shards and drop the full tensors (or initialise the shards of parameters that
        // have no storage).
        for flats in groups {
            for f in flats {
                for (k, p) in f.params.enumerated() {
                    if let v = p.value {
                        f.scatterIntoShard(k, from: v.ptr)
                    } else {
                        try f.initializeShard(k) { elements, out in try model.initialValues(of: p, elements: elements, into: out) }
                    }
                    p.value = nil
                    p.grad = nil
                    p.awaitsInitialization = false
                }
            }
        }
        shards = makeShards()
        hooks = FSDPHooks(owner: self)
        model.hooks = hooks
    }

    deinit {
        // Nothing may still write into our buffers.
        for r in scattering + replicating { try? r.work?.wait() }
        for flats in groups { for f in flats { try? f.gatherWork?.wait() } }
    }

    /// Detaches the wrapper from the model (hooks removed). The model's parameters are left without values; call
    /// `fullStateDict()` first and `model.load(stateDict:)` afterwards to get an unsharded model back.
    public func detach() {
        if model.hooks === hooks { model.hooks = NoModelHooks() }
    }

    private func makeShards() -> [ParameterShard] {
        var r: [ParameterShard] = []
        for flats in groups {
            for f in flats {
                for (k, p) in f.params.enumerated() {
                    let lo = max(f.offsets[k], f.shardOffset), hi = min(f.offsets[k] + f.counts[k], f.shardOffset + f.shardSize)
                    guard hi > lo else { continue }
                    r.append(ParameterShard(parameter: p, param: f.paramShard.data + (lo - f.shardOffset),
                                            grad: f.gradShard.data + (lo - f.shardOffset), count: hi - lo,
                                            offset: f.offsetsInFull[k] + lo - f.offsets[k]))
                }
            }
        }
        return r
    }

    // MARK: errors

    private func record(_ error: Error) {
        if failure == nil {
            failure = (error as? ParallelError) ?? ParallelError.collectiveFailed(rank: mesh.rank, String(describing: error))
        }
    }

    private func throwIfFailed() throws {
        if let failure { throw failure }
    }

    // MARK: gather / free

    private func startGather(_ g: Int) {
        let bf16 = mixedPrecision.param == .bfloat16
        for f in groups[g] where !f.isGathered {
            if f.direct {
                guard bf16 else { f.gathered = f.paramShard; continue }
                let rounded = f.rounded
                    ?? (full16: BFloat16Buffer(count: f.padded), widened: f.widenedCount > 0 ? Tensor(shape: [f.widenedCount]) : nil)
                if !f.roundedIsCurrent {
                    BFloat16.narrow(f.paramShard.ptr, into: rounded.full16.data, count: f.padded)
                    if let w = rounded.widened { f.widen(rounded.full16, into: w) }
                }
                f.rounded = rounded
                f.roundedIsCurrent = true
                f.gathered16 = rounded.full16
                f.gathered = rounded.widened
                continue
            }
            if bf16 {
                // Half the bytes on the wire; kept as gathered for the GEMMs, only the other parameters widened (exact).
                let shard16 = pool.acquire16(f.shardSize), full16 = pool.acquire16(f.padded)
                f.gathered16 = full16
                f.gathered = f.widenedCount > 0 ? pool.acquire(f.widenedCount, zeroed: false) : nil
                f.gatheringShard16 = shard16
                do {
                    BFloat16.narrow(f.paramShard.ptr, into: shard16.data, count: f.shardSize)
                    f.gatherWork = try f.pg.allGatherAsync(UnsafeBufferPointer(shard16.buffer(f.shardSize)), into: full16.buffer(f.padded))
                } catch {
                    record(error)
                    gatherFailed(f)
                }
                continue
            }
            let buf = pool.acquire(f.padded, zeroed: false)
            f.gathered = buf
            do {
                f.gatherWork = try f.pg.allGatherAsync(UnsafeBufferPointer(f.paramShard.buffer), into: buf.buffer)
            } catch {
                record(error)
                buf.zero()
            }
        }
    }

    /// Waits for `f`'s all-gather in flight, if any: `f.gathered` (and `gathered16`) then hold the full parameters
    /// (with `param` bfloat16: `gathered` the widened ones), or zeros after a failure (recorded).
    private func completeGather(_ f: FlatParam) {
        guard let w = f.gatherWork else { return }
        f.gatherWork = nil
        do {
            try w.wait()
            if let full16 = f.gathered16 {
                if let out = f.gathered { f.widen(full16, into: out) }
                releaseGatheringShard16(f)
            }
        } catch {
            record(error)
            if f.gathered16 != nil { gatherFailed(f) } else { f.gathered!.zero() }
        }
    }

    /// A bfloat16 all-gather of `f` failed: zeros in both forms, and the cast shard back to the pool.
    private func gatherFailed(_ f: FlatParam) {
        f.gathered16!.zero(f.padded)
        f.gathered?.zero()
        releaseGatheringShard16(f)
    }

    private func releaseGatheringShard16(_ f: FlatParam) {
        guard let shard16 = f.gatheringShard16 else { return }
        f.gatheringShard16 = nil
        pool.release16(shard16)
    }

    private func ensureGathered(_ g: Int) {
        startGather(g)
        for f in groups[g] {
            completeGather(f)
            guard let full16 = f.gathered16 else {
                let buf = f.gathered!
                for (k, p) in f.params.enumerated() where p.value == nil || p.value.data != buf.data + f.offsets[k] {
                    p.value = Tensor(viewOf: buf, offset: f.offsets[k], shape: f.shapes[k])
                }
                continue
            }
            // bfloat16: every parameter as gathered for the GEMMs; the widened ones also as fp32 `value`.
            let bits = UnsafeRawPointer(full16.data).assumingMemoryBound(to: UInt16.self)
            for (k, p) in f.params.enumerated() { p.value16 = UnsafeBufferPointer(start: bits + f.offsets[k], count: f.counts[k]) }
            for (k, at) in f.widened {
                let p = f.params[k], buf = f.gathered!
                if p.value == nil || p.value.data != buf.data + at { p.value = Tensor(viewOf: buf, offset: at, shape: f.shapes[k]) }
            }
        }
    }

    private func free(_ g: Int) {
        for f in groups[g] {
            completeGather(f)
            for p in f.params { p.value = nil; p.value16 = nil }
            let buf = f.gathered, buf16 = f.gathered16
            f.gathered = nil
            f.gathered16 = nil
            guard !f.direct else { continue }
            if let buf { pool.release(buf) }
            if let buf16 { pool.release16(buf16) }
        }
    }

    private func isGathered(_ g: Int) -> Bool { groups[g].contains { $0.isGathered } }

    /// Frees every gathered group (e.g. after an evaluation pass left the last group gathered).
    public func reshard() {
        for g in groups.indices where isGathered(g) { free(g) }
    }

    // MARK: hooks

    func willForward(group g: Int) {
        if g == 0 && !inLastGroup {
            // A new forward pass: shards may have changed (optimizer step, load) since anything was gathered.
            reshard()
            for flats in groups { for f in flats { f.roundedIsCurrent = false } }
        }
        if g == lastGroup { inLastGroup = true }
        ensureGathered(g)
        if g < lastGroup && !(g == 0 && inLastGroup) { startGather(g + 1) }   // prefetch the next group
    }

    func didForward(group g: Int) {
        // Backward needs them right away (the last block's backward follows the final group's at once).
        let keep = g == lastGroup || (g == 0 && inLastGroup) || (keepLastBlockGathered && g == lastGroup - 1)
        if g == lastGroup { inLastGroup = false }
        if reshardAfterForward && !keep { free(g) }
    }

    func willBackward(group g: Int) {
        if g == lastGroup { inLastGroup = true }
        ensureGathered(g)
        if g >= 1 { startGather(g - 1) }   // prefetch the group whose backward comes next
        for f in groups[g] {
            precondition(f.fullGrad == nil || f.fullGradKept, "FSDP: willBackward(\(g)) while its gradients are live")
            // direct: the kernels accumulate straight into the gradient shard (what the reduction would add to it)
            let grad = f.fullGrad ?? (f.direct ? f.gradShard : pool.acquire(f.padded, zeroed: true))
            f.fullGrad = grad
            f.fullGradKept = false
            for (k, p) in f.params.enumerated() { p.grad = Tensor(viewOf: grad, offset: f.offsets[k], shape: f.shapes[k]) }
        }
    }

    func didBackward(group g: Int) {
        if g == lastGroup { inLastGroup = false }
        for f in groups[g] {
            guard let grad = f.fullGrad else { continue }
            for p in f.params { p.grad = nil }
            if !requiresGradientSync && !f.direct {
                f.fullGradKept = true   // the next micro-batch adds to it; the last one reduces the sum
                continue
            }
            f.fullGrad = nil
            if f.direct { continue }
            scattering.append(startReduction(f, fullGrad: grad))
        }
        free(g)
        advance(keepInFlight: groups[g].count)
    }

    // MARK: gradient reductions

    /// Starts the reduce-scatter of `fullGrad` (fp32, or rounded to bfloat16 first with `reduce` bfloat16).
    private func startReduction(_ f: FlatParam, fullGrad grad: Tensor) -> PendingReduction {
        let payload: PendingReduction.Payload
        var work: Work?
        if mixedPrecision.reduce == .bfloat16 {
            let grad16 = pool.acquire16(f.padded), out16 = pool.acquire16(f.shardSize)
            BFloat16.narrow(grad.ptr, into: grad16.data, count: f.padded)
            pool.release(grad)   // only the bfloat16 copy travels
            payload = .bfloat16(fullGrad: grad16, output: out16)
            do {
                work = try f.pg.reduceScatterAsync(UnsafeBufferPointer(grad16.buffer(f.padded)), into: out16.buffer(f.shardSize), op: .sum)
            } catch {
                record(error)
                out16.zero(f.shardSize)
            }
        } else {
            let out = f.gradShardIsZero ? f.gradShard : pool.acquire(f.shardSize, zeroed: false)
            f.gradShardIsZero = false
            payload = .float32(fullGrad: grad, output: out)
            do {
                work = try f.pg.reduceScatterAsync(UnsafeBufferPointer(grad.buffer), into: out.buffer, op: .sum)
            } catch {
                record(error)
                out.zero()
            }
        }
        return PendingReduction(flat: f, payload: payload, work: work)
    }

    /// Completes reductions, oldest first, until at most `keep` reduce-scatters (and as many all-reduces) are in flight.
    private func advance(keepInFlight keep: Int) {
        while scattering.count > keep { finishScatter(scattering.removeFirst()) }
        while replicating.count > keep { finishReplicate(replicating.removeFirst()) }
    }

    /// Waits for `r`'s collective; on failure records it and zeroes the output.
    private func waitForReduction(_ r: PendingReduction) {
        guard let w = r.work else { return }
        r.work = nil
        do { try w.wait() } catch {
            record(error)
            switch r.payload {
            case .float32(_, let output): output.zero()
            case .bfloat16(_, let output): output.zero(r.flat.shardSize)
            }
        }
    }

    private func finishScatter(_ r: PendingReduction) {
        waitForReduction(r)
        switch r.payload {
        case .float32(let fullGrad, _): pool.release(fullGrad)
        case .bfloat16(let fullGrad, _): pool.release16(fullGrad)
        }
        if let rep = mesh.dpReplicate {
            do {
                switch r.payload {
                case .float32(_, let output): r.work = try rep.allReduceAsync(output.buffer, op: .sum)
                case .bfloat16(_, let output): r.work = try rep.allReduceAsync(output.buffer(r.flat.shardSize), op: .sum)
                }
            } catch {
                record(error)
            }
            replicating.append(r)
        } else {
            accumulate(r)
        }
    }

    private func finishReplicate(_ r: PendingReduction) {
        waitForReduction(r)
        accumulate(r)
    }

    private func accumulate(_ r: PendingReduction) {
        let dst = r.flat.gradShard.data
        switch r.payload {
        case .float32(_, let output):
            if output === r.flat.gradShard { return }   // reduced in place onto zeros
            let src = output.data
            parallelFor(r.flat.shardSize, costPerItem: 3) { rows in for i in rows { dst[i] += src[i] } }
            pool.release(output)
        case .bfloat16(_, let output):
            let src = output.data
            parallelFor(r.flat.shardSize, costPerItem: 3) { rows in for i in rows { dst[i] += src[i].float } }
            pool.release16(output)
        }
    }

    /// Waits for every outstanding reduce-scatter / all-reduce; afterwards the gradient shards hold the SUM over all
    /// data-parallel ranks (accumulated onto what they held after `zeroGrad`). Rethrows a collective failure.
    public func finishBackward() throws {
        advance(keepInFlight: 0)
        for flats in groups {
            for f in flats { completeGather(f) }
        }
        try throwIfFailed()
    }

    /// Zeroes the gradient shards (and frees anything still gathered).
    public func zeroGrad() {
        advance(keepInFlight: 0)
        reshard()
        for flats in groups {
            for f in flats {
                if let left = f.fullGrad, !f.direct { pool.release(left) }   // an unfinished accumulation
                f.fullGrad = nil
                f.fullGradKept = false
                f.gradShard.zero()
                f.gradShardIsZero = true
            }
        }
    }

    // MARK: norms

    /// Σ grad² over ALL parameters of the model (each element counted once, padding excluded), the same on every rank.
    static let normBlock = 1 << 16

    public func gradNormSquared() throws -> Double {
        try finishBackward()
        // Fixed blocks of `normBlock` elements, each summed in order, block sums added in order: the same value for any
        // number of kernel threads (the blocks run concurrently).
        var local = 0.0
        for flats in groups {
            for f in flats {
                let g = f.gradShard.data, n = f.validCount
                let blocks = (n + Self.normBlock - 1) / Self.normBlock
                guard blocks > 0 else { continue }
                let partial = UnsafeMutablePointer<Double>.allocate(capacity: blocks)
                defer { partial.deallocate() }
                parallelFor(blocks, costPerItem: Self.normBlock) { r in
                    for b in r {
                        // 4 Double lanes, then across lanes, then the tail: a fixed order
                        var i = b * Self.normBlock
                        let end = min(n, (b + 1) * Self.normBlock)
                        var acc = SIMD4<Double>(repeating: 0)
                        while i + 4 <= end {
                            let v = SIMD4<Double>(Double(g[i]), Double(g[i + 1]), Double(g[i + 2]), Double(g[i + 3]))
                            acc += v * v
                            i += 4
                        }
                        var s = (acc[0] + acc[1]) + (acc[2] + acc[3])
                        while i < end { let v = Double(g[i]); s += v * v; i += 1 }
                        partial[b] = s
                    }
                }
                for b in 0..<blocks { local += partial[b] }
            }
        }
        // dpShard holds every dense element once and (EP groups × expert shards) every expert element once;
        // replicas hold identical gradients after the HSDP all-reduce.
        return try mesh.dpShard.allReduce([local], op: .sum)[0]
    }

    // MARK: state dicts

    /// Every parameter (full tensors, all experts) and buffer, on every rank, or only on `root` (the other ranks get
    /// an empty dict and hold one group at a time: an export of a large model does not hold it everywhere).
    /// Collective over the whole mesh.
    public func fullStateDict(root: Int? = nil) throws -> StateDict {
        var sd = try gatherFull(grads: false, keep: root.map { $0 == mesh.rank } ?? true)
        if root.map({ $0 == mesh.rank }) ?? true {
            for b in model.buffers { sd[b.fqn] = HostTensor(shape: b.tensor.shape, values: b.tensor.toArray()) }
        }
        return sd
    }

    /// Every parameter's full gradient (as reduced so far), on every rank: for tests and debugging.
    public func fullGradDict() throws -> StateDict {
        try finishBackward()
        return try gatherFull(grads: true)
    }

    private func gatherFull(grads: Bool, keep: Bool = true) throws -> StateDict {
        try throwIfFailed()
        var sd: StateDict = [:]
        for flats in groups {
            for f in flats {
                let full = Tensor(shape: [f.padded])
                let src = grads ? f.gradShard : f.paramShard
                try f.pg.allGather(UnsafeBufferPointer(src.buffer), into: full.buffer)
                for (k, p) in f.params.enumerated() {
                    var values = Array(UnsafeBufferPointer(start: full.data + f.offsets[k], count: f.counts[k]))
                    if f.counts[k] != p.count {
                        // Expert slice: gather the EP group's slices (EP rank j holds experts j·E/ep ..< (j+1)·E/ep).
                        guard let epg = mesh.ep else {
                            throw ParallelError.invalidParameter(fqn: p.fqn, "is narrowed but the mesh has no EP group")
                        }
                        values = try epg.allGather(values)
                    }
                    if keep { sd[p.fqn] = HostTensor(shape: p.shape, values: values) }
                }
            }
        }
        return sd
    }

    /// Loads a full state dict (as the model's `stateDict()` / `fullStateDict()` produce): keeps this rank's shards,
    /// loads the buffers. Throws before changing anything on missing / unexpected names or shape mismatches.
    /// Local: no collective (every rank must pass the same state dict).
    public func loadFullStateDict(_ sd: StateDict, allowMissingBuffers: Bool = false) throws {
        try model.validate(stateDict: sd, allowMissingBuffers: allowMissingBuffers)
        advance(keepInFlight: 0)
        reshard()
        for flats in groups {
            for f in flats {
                f.paramShard.zero()
                for (k, p) in f.params.enumerated() {
                    let t = sd[p.fqn]!
                    t.values.withUnsafeBufferPointer { f.scatterIntoShard(k, from: $0.baseAddress! + f.offsetsInFull[k]) }
                }
            }
        }
        model.spec.loadBuffers { sd[$0] }
    }

    // MARK: memory

    public var memoryReport: MemoryReport {
        let fl = MemoryLayout<Float>.stride
        var shardFloats = 0, padding = 0, largest = 0, local = 0
        for flats in groups {
            var g = 0
            for f in flats {
                shardFloats += f.shardSize
                padding += f.shardSize - f.validCount
                g += f.padded
                local += f.numel
            }
            largest = max(largest, g)
        }
        return MemoryReport(paramBytes: shardFloats * fl, gradBytes: shardFloats * fl,
                            largestUnshardedGroupBytes: largest * fl, paddingBytes: padding * fl, unshardedParamBytes: local * fl)
    }

    /// Bytes of gather / gradient / reduction scratch currently owned by the buffer pool.
    public var scratchBytes: Int { pool.allocatedBytes }
}
