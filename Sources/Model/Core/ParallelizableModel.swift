import Tensor

/// What the parallelism wrappers (FSDP, expert parallelism), the trainer and the checkpointer need from a model.
/// They are applied to any model that provides it, from outside, and never name a model class: torchtitan's
/// `parallelize_fn` likewise sees modules. Everything about parameters comes from the model's `spec`.
public protocol ParallelizableModel: AnyObject {
    /// Every parameter (by group, the units FSDP shards and gathers, in execution order) and buffer.
    var spec: ModelSpec { get }
    /// Brackets each group's forward and backward (see `ModelHooks` for the order).
    var hooks: ModelHooks { get set }
    /// The MoE modules, in execution order (empty for a dense model). Their routed-expert parameters are the ones
    /// expert parallelism narrows and FSDP shards over the expert-shard group; their `experts` can be replaced.
    var moeModules: [MoE] { get }
    /// Model FLOPs per training token at `seqLen` (torchtitan's `get_num_flop_per_token`), for the metrics' MFU: each
    /// family counts its own architecture.
    func flopsPerToken(seqLen: Int) -> Double
}

public extension ParallelizableModel {
    var parameterGroups: [[Parameter]] { spec.groups }
    /// All parameters, flattened in group order.
    var parameters: [Parameter] { spec.parameters }
    var buffers: [ModelBuffer] { spec.buffers }
    var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

    // State dicts and initial values: the spec's (ModelState.swift).
    func initialValues(of p: Parameter, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) throws {
        try spec.initialValues(of: p, elements: elements, into: out)
    }
    func stateDict() -> StateDict { spec.stateDict() }
    func load(stateDict sd: StateDict, allowMissingBuffers: Bool = false) throws { try spec.load(stateDict: sd, allowMissingBuffers: allowMissingBuffers) }
    func validate(stateDict sd: StateDict, allowMissingBuffers: Bool = false) throws { try spec.validate(stateDict: sd, allowMissingBuffers: allowMissingBuffers) }
    func setInitialWeights(_ w: InitialWeights) throws { try spec.setInitialWeights(w) }
    func setInitialWeights(_ sd: StateDict, allowMissingBuffers: Bool = false) throws { try spec.setInitialWeights(sd, allowMissingBuffers: allowMissingBuffers) }
    func clearInitialWeights() { spec.clearInitialWeights() }

    /// Zeroes every gradient that is currently allocated.
    func zeroGrad() {
        for p in parameters { p.grad?.zero() }
    }
}
