import Tensor

/// How a parameter's initial value is drawn. Each parameter draws from its own stream (seed ^ fnv1a64(fqn)), so a
/// slice of it can be initialised alone with the values the whole tensor holds there.
public enum ParameterInit: Equatable, Sendable {
    case normal(std: Float)
    case ones
}

/// Where a parameter lives in an HF transformers checkpoint.
public enum HFLayout: Equatable, Sendable {
    /// One HF tensor of the same shape.
    case tensor(String)
    /// One HF tensor per expert (HF's nn.Linear per expert), stacked along our first dimension.
    case perExpert([String])
    /// The HF model has no such parameter: HF import and export refuse a model that has it.
    case none
}

/// A named trainable tensor, as a module declared it (`ParameterScope.parameter`). `value` and `grad` are replaceable
/// from outside: a sharding wrapper (FSDP) may set them to gathered full-size tensors before a group runs (see
/// `ModelHooks`) and clear them afterwards. The model reads `value` / `grad` only while the owning group's hooks say
/// it is live, and never caches their pointers across groups.
public final class Parameter {
    /// torchtitan fully-qualified name, e.g. "layers.0.attention.wq.weight".
    public let fqn: String
    /// Full (unsharded) logical shape.
    public let shape: [Int]
    public let count: Int
    /// The parameter group it belongs to (the unit FSDP gathers): 0 = embedding, 1 + i = layer i, last = final norm
    /// and output.
    public let group: Int
    public let initialization: ParameterInit
    public let hf: HFLayout
    /// Only GEMMs read the value, through `gemmInput` (linear, router, output and expert weights; not norm weights or
    /// embeddings). Under bfloat16 mixed precision FSDP hands such a parameter over as `value16` only, never widened:
    /// `value` stays nil, so any other read fails loudly.
    public let gemmOnly: Bool
    public var value: Tensor!
    /// The parameter in bfloat16 (its bits), where mixed precision holds it so (FSDP's gathered or rounded parameters):
    /// the GEMMs read it and pack half the bytes, rounding nothing.
    public var value16: UnsafeBufferPointer<UInt16>?
    public var grad: Tensor!
    /// Built without storage (meta init) and not yet given any: the wrapper that takes the parameter over (expert
    /// parallelism, FSDP) initialises its slices from the model's `initialValues` and clears this. A nil `value`
    /// without it means the parameter is already held elsewhere (sharded).
    public var awaitsInitialization: Bool

    init(fqn: String, shape: [Int], group: Int, initialization: ParameterInit, hf: HFLayout, gemmOnly: Bool, allocate: Bool) {
        self.fqn = fqn
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.group = group
        self.initialization = initialization
        self.hf = hf
        self.gemmOnly = gemmOnly
        awaitsInitialization = !allocate
        if allocate {
            value = Tensor(shape: shape)
            grad = Tensor(shape: shape)
        }
    }

    @inline(__always) var v: UnsafeMutablePointer<Float> {
        guard let t = value else {
            fatalError("parameter \(fqn): value is nil (a sharding wrapper must set it in willForward/willBackward)")
        }
        return t.data
    }

    /// The parameter as a GEMM input: `value16` where there is one, else `value`.
    @inline(__always) public var gemmInput: GEMMInput { value16.map { .bf16($0.baseAddress!) } ?? .f32(v) }

    /// Elements held now (the local tensor: a slice of the experts under expert parallelism), in either form.
    var heldCount: Int { value16?.count ?? value?.count ?? 0 }

    @inline(__always) var g: UnsafeMutablePointer<Float> {
        guard let t = grad else {
            fatalError("parameter \(fqn): grad is nil (a sharding wrapper must set it in willBackward)")
        }
        return t.data
    }

    /// Writes elements `elements` (flat, row-major) of the initial value for `seed` into out[0..<elements.count].
    func randomInitialValues(seed: UInt64, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        switch initialization {
        case .ones: out.update(repeating: 1, count: elements.count)
        case .normal(let std): SplitMix64.fillNormal(seed: seed ^ fnv1a64(fqn), elements: elements, into: out, std: std)
        }
    }
}

/// A non-trainable state-dict entry (e.g. an MoE layer's expert_bias): saved and loaded with the parameters, never
/// sharded, not updated by the optimizer.
public struct ModelBuffer {
    public let fqn: String
    public let tensor: Tensor
    /// Its HF name, or nil when HF has none (zero on import, dropped on export).
    public let hf: String?
}

/// Callbacks around each parameter group (see `Parameter.group`), for FSDP-style gather / free / reduce-scatter
/// from outside, and for observers (the trace). Group indices: 0 = embedding, 1 + i = layer i, n_layers + 1 = final
/// norm + output.
///
/// Order per `forwardBackward`: willForward(0) didForward(0), willForward(1) didForward(1), ..., willForward(L+1)
/// didForward(L+1), then willBackward(L+1) didBackward(L+1), willBackward(L) didBackward(L), ..., willBackward(0)
/// didBackward(0). With weight tying the output projection uses group 0's embedding weight: inside group L+1 the model
/// calls willForward(0)/didForward(0) around the projection, and willBackward(0) before the projection's backward;
/// group 0's backward then stays open (parameters and gradients live) through the blocks' backward until the
/// embedding's backward, and didBackward(0) closes it: willBackward(L+1) willBackward(0) didBackward(L+1)
/// willBackward(L) didBackward(L) ... didBackward(1) didBackward(0). Every group is reduced once per step.
/// In `willBackward` the grads of the group must be valid, zeroed-or-accumulating buffers (kernels add into them).
public protocol ModelHooks: AnyObject {
    func willForward(group: Int)
    func didForward(group: Int)
    func willBackward(group: Int)
    func didBackward(group: Int)
}

public extension ModelHooks {
    func willForward(group: Int) {}
    func didForward(group: Int) {}
    func willBackward(group: Int) {}
    func didBackward(group: Int) {}
}

/// The default: no hooks.
public final class NoModelHooks: ModelHooks {
    public init() {}
}

/// Several hooks as one: `will*` in order, `did*` in reverse order, so the first hooks wrap the others (a trace span
/// around FSDP's gather and free).
public final class ModelHookChain: ModelHooks {
    public let hooks: [ModelHooks]
    public init(_ hooks: [ModelHooks]) { self.hooks = hooks }
    public func willForward(group: Int) { for h in hooks { h.willForward(group: group) } }
    public func didForward(group: Int) { for h in hooks.reversed() { h.didForward(group: group) } }
    public func willBackward(group: Int) { for h in hooks { h.willBackward(group: group) } }
    public func didBackward(group: Int) { for h in hooks.reversed() { h.didBackward(group: group) } }
}

public enum ModelError: Error, CustomStringConvertible, Equatable {
    /// `field`: the args field at fault (config key "model." + field).
    case invalidArgs(field: String, String)
    case missingKeys([String])
    case unexpectedKeys([String])
    case shapeMismatch(fqn: String, expected: [Int], got: [Int])

    public var description: String {
        switch self {
        case let .invalidArgs(field, s): return "invalid model args: \(field) \(s)"
        case .missingKeys(let k): return "state dict is missing \(k.count) tensor(s): \(k.prefix(8).joined(separator: ", "))\(k.count > 8 ? ", ..." : "")"
        case .unexpectedKeys(let k): return "state dict has \(k.count) unexpected tensor(s): \(k.prefix(8).joined(separator: ", "))\(k.count > 8 ? ", ..." : "")"
        case .shapeMismatch(let f, let e, let g): return "state dict tensor '\(f)' has shape \(g), the model expects \(e)"
        }
    }

    /// Missing (unless `optional`), unexpected and misshapen names, in that order, each reported sorted.
    static func checkNamesAndShapes(expected: [String: [Int]], got: [String: [Int]], optional: Set<String> = []) throws {
        let missing = expected.keys.filter { got[$0] == nil && !optional.contains($0) }.sorted()
        if !missing.isEmpty { throw ModelError.missingKeys(missing) }
        let extra = got.keys.filter { expected[$0] == nil }.sorted()
        if !extra.isEmpty { throw ModelError.unexpectedKeys(extra) }
        for (name, shape) in expected.sorted(by: { $0.key < $1.key }) {
            if let g = got[name], g != shape { throw ModelError.shapeMismatch(fqn: name, expected: shape, got: g) }
        }
    }
}

/// A host-side named tensor: the neutral currency of state dicts (checkpoints, HF import/export).
public struct HostTensor: Equatable, Sendable {
    public var shape: [Int]
    public var values: [Float]
    public init(shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count, "HostTensor: shape \(shape) does not match \(values.count) values")
        self.shape = shape
        self.values = values
    }
}

/// Fully-qualified parameter (and buffer) name → tensor, with torchtitan FQNs.
public typealias StateDict = [String: HostTensor]
