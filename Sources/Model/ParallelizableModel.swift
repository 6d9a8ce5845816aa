import Tensor

/// What the parallelism wrappers (FSDP, expert parallelism) need from a model. They are applied to any model that
/// provides it, from outside, and never name a model class: torchtitan's `parallelize_fn` likewise sees modules.
public protocol ParallelizableModel: AnyObject {
    /// The units FSDP shards and gathers, in execution order; `hooks` brackets each group's forward and backward
    /// (see `ModelHooks` for the order).
    var parameterGroups: [[Parameter]] { get }
    var hooks: ModelHooks { get set }
    /// Non-trainable state-dict entries, saved and loaded with the parameters but never sharded.
    var buffers: [(fqn: String, tensor: Tensor)] { get }
    /// The MoE modules, in execution order (empty for a dense model). Their routed-expert parameters are the ones
    /// expert parallelism narrows and FSDP shards over the expert-shard group; their `experts` can be replaced.
    var moeModules: [MoE] { get }
    /// Checks a full state dict against the model's parameters and buffers (names, shapes) without loading it.
    func validate(stateDict: StateDict, allowMissingBuffers: Bool) throws
    /// Elements `elements` (flat, of the full shape) of `p`'s initial value: how a wrapper initialises the slices it
    /// keeps of a parameter that has no storage (a model built without materializing its parameters).
    func initialValues(of p: Parameter, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) throws
}

public extension ParallelizableModel {
    /// All parameters, flattened in group order.
    var parameters: [Parameter] { parameterGroups.flatMap { $0 } }
}

extension Qwen3Model: ParallelizableModel {}
