import Tensor

/// What a model is made of: every parameter (FQN, shape, group, initialisation, HF layout) and buffer, in declaration
/// order. It is the one table that initialisation, the parallelism wrappers, the HF adapter and checkpoints read; a
/// model's modules fill it as they are built (through `ParameterScope`), so a family adds its modules and nothing
/// else. `Qwen3Model.spec(_:)` gives a family's table without allocating any parameter storage.
public final class ModelSpec {
    /// Parameters by group (the unit FSDP gathers), in declaration order within a group.
    public private(set) var groups: [[Parameter]] = []
    public private(set) var buffers: [ModelBuffer] = []
    /// The HF transformers class the family maps to (for messages), HF names that hold no parameter (ignored on
    /// import, by suffix) and HF names that, when present, must equal another HF tensor (a tied lm_head).
    public var hfArchitecture = ""
    public var hfIgnoredSuffixes: [String] = []
    public var hfTied: [String: String] = [:]
    /// HF decoder layers `model.layers.{i}.*` with i >= this hold nothing of ours and are skipped on import:
    /// DeepSeek-V3's multi-token-prediction layers (num_nextn_predict_layers) follow the decoder layers, and
    /// transformers ignores them likewise (_keys_to_ignore_on_load_unexpected). nil: no such layers are expected.
    public var hfIgnoredLayersFrom: Int?
    /// Whether declared parameters get storage (false: torchtitan's meta-device init).
    let materialize: Bool
    private var names = Set<String>()
    /// The seed random initial values are drawn for, and the weights that replace them (see ModelState.swift).
    var initSeed: UInt64 = 0
    var initialWeights: InitialWeights?

    public init(materialize: Bool) { self.materialize = materialize }

    /// Opens the next parameter group; its parameters are declared through the returned root scope.
    public func newGroup() -> ParameterScope {
        groups.append([])
        return ParameterScope(spec: self, group: groups.count - 1, prefix: "", hfPrefix: "")
    }

    public var parameters: [Parameter] { groups.flatMap { $0 } }

    /// FQN → full shape of every parameter.
    public var parameterShapes: [String: [Int]] {
        Dictionary(uniqueKeysWithValues: parameters.map { ($0.fqn, $0.shape) })
    }

    /// FQN → shape of every state-dict entry: parameters and buffers.
    public var stateDictShapes: [String: [Int]] {
        parameterShapes.merging(buffers.map { ($0.fqn, $0.tensor.shape) }) { a, _ in a }
    }

    fileprivate func add(_ p: Parameter) {
        precondition(names.insert(p.fqn).inserted, "ModelSpec: \(p.fqn) declared twice")
        groups[p.group].append(p)
    }

    fileprivate func add(_ b: ModelBuffer) { buffers.append(b) }
}

/// A module's place in the spec: the FQN prefix it declares under ("layers.0.attention."), the matching HF prefix
/// ("model.layers.0.self_attn.", or nil where HF has no counterpart) and the parameter group.
public struct ParameterScope {
    let spec: ModelSpec
    let group: Int
    let prefix: String
    let hfPrefix: String?

    /// A nested scope; `hf: nil` means HF has no counterpart for anything below it.
    public func scope(_ name: String, hf: String?) -> ParameterScope {
        ParameterScope(spec: spec, group: group, prefix: prefix + name, hfPrefix: hf.flatMap { h in hfPrefix.map { $0 + h } })
    }

    /// This scope's FQN without the trailing dot ("layers.3.moe").
    public var fqn: String { prefix.hasSuffix(".") ? String(prefix.dropLast()) : prefix }

    /// Declares a parameter `name` of `shape` (HF: `hf`, under this scope's HF prefix); `gemmOnly`: only GEMMs read it
    /// (`Parameter.gemmOnly`).
    public func parameter(_ name: String, _ shape: [Int], init initialization: ParameterInit, hf: String?,
                          gemmOnly: Bool = false) -> Parameter {
        let layout: HFLayout = hf.flatMap { h in hfPrefix.map { .tensor($0 + h) } } ?? .none
        return declare(name, shape, initialization, layout, gemmOnly: gemmOnly)
    }

    /// Declares the stacked weights of `shape[0]` experts; HF holds expert e as its own tensor `hf(e)` of shape
    /// `shape.dropFirst()`. Only GEMMs read them.
    public func experts(_ name: String, _ shape: [Int], init initialization: ParameterInit, hf: (Int) -> String) -> Parameter {
        let layout: HFLayout = hfPrefix.map { h in .perExpert((0..<shape[0]).map { h + hf($0) }) } ?? .none
        return declare(name, shape, initialization, layout, gemmOnly: true)
    }

    /// Declares a buffer (saved in checkpoints, not trained).
    public func buffer(_ name: String, _ tensor: Tensor, hf: String?) {
        spec.add(ModelBuffer(fqn: prefix + name, tensor: tensor, hf: hf.flatMap { h in hfPrefix.map { $0 + h } }))
    }

    private func declare(_ name: String, _ shape: [Int], _ initialization: ParameterInit, _ hf: HFLayout, gemmOnly: Bool) -> Parameter {
        let p = Parameter(fqn: prefix + name, shape: shape, group: group, initialization: initialization, hf: hf,
                          gemmOnly: gemmOnly, allocate: spec.materialize)
        spec.add(p)
        return p
    }
}
