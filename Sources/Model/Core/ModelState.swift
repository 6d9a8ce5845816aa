import Tensor

// Initial values and state dicts of a model's parameters and buffers, from its spec: the same for every family.

extension ModelSpec {
    /// Re-initialises every materialized parameter deterministically from `seed` and zeroes the buffers.
    public func initialize(seed: UInt64) {
        initSeed = seed
        initialWeights = nil
        for p in parameters where p.value != nil {
            precondition(p.value.count == p.count, "initialize: \(p.fqn) holds a slice; initialise slices with initialValues")
            p.randomInitialValues(seed: seed, elements: 0..<p.count, into: p.value.data)
        }
        for b in buffers { b.tensor.zero() }
    }

    /// Elements `elements` (flat, row-major, of the full shape) of `p`'s initial value, written to out[0..<elements.count]:
    /// from the initial weights when set, else the parameter's own random stream for the seed.
    public func initialValues(of p: Parameter, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) throws {
        precondition(elements.lowerBound >= 0 && elements.upperBound <= p.count, "initialValues: \(elements) outside \(p.fqn)")
        if let w = initialWeights {
            try w.read(p.fqn, elements: elements, into: out)
        } else {
            p.randomInitialValues(seed: initSeed, elements: elements, into: out)
        }
    }

    /// Makes `w` the initial weights of a model built without parameter storage: `initialValues` reads from it, so a
    /// sharding wrapper takes just its slices and the model never holds a full copy. Buffers are loaded at once (zero
    /// where `w` has none). Throws unless `w` holds exactly the model's parameters with their shapes.
    /// `clearInitialWeights()` drops the source once the wrapper has its shards.
    public func setInitialWeights(_ w: InitialWeights) throws {
        precondition(parameters.allSatisfy { $0.awaitsInitialization },
                     "setInitialWeights: the model has parameter storage (or is sharded already); use load(stateDict:)")
        try ModelError.checkNamesAndShapes(expected: parameterShapes, got: w.parameterShapes)
        for b in buffers {
            if let h = w.buffer(b.fqn), h.shape != b.tensor.shape {
                throw ModelError.shapeMismatch(fqn: b.fqn, expected: b.tensor.shape, got: h.shape)
            }
        }
        loadBuffers(w.buffer)
        initialWeights = w
    }

    /// Makes `sd` the initial weights (see the `InitialWeights` form); absent buffers are zeroed with
    /// `allowMissingBuffers`.
    public func setInitialWeights(_ sd: StateDict, allowMissingBuffers: Bool = false) throws {
        try validate(stateDict: sd, allowMissingBuffers: allowMissingBuffers)
        try setInitialWeights(StateDictWeights(sd, bufferNames: Set(buffers.map(\.fqn))))
    }

    public func clearInitialWeights() { initialWeights = nil }

    /// All parameters (their values must be present) and buffers as host tensors, by FQN.
    public func stateDict() -> StateDict {
        var sd: StateDict = [:]
        for p in parameters { sd[p.fqn] = HostTensor(shape: p.shape, values: p.value.toArray()) }
        for b in buffers { sd[b.fqn] = HostTensor(shape: b.tensor.shape, values: b.tensor.toArray()) }
        return sd
    }

    /// Throws on missing or unexpected names and shape mismatches: the check every loader runs before it changes
    /// anything. With `allowMissingBuffers`, absent buffers are fine.
    public func validate(stateDict sd: StateDict, allowMissingBuffers: Bool = false) throws {
        try ModelError.checkNamesAndShapes(expected: stateDictShapes, got: sd.mapValues(\.shape),
                                           optional: allowMissingBuffers ? Set(buffers.map(\.fqn)) : [])
    }

    /// Loads parameters and buffers (allocating storage where there is none). Throws, before changing anything, on
    /// missing or unexpected names or shape mismatches; absent buffers are zeroed with `allowMissingBuffers`.
    public func load(stateDict sd: StateDict, allowMissingBuffers: Bool = false) throws {
        try validate(stateDict: sd, allowMissingBuffers: allowMissingBuffers)
        for p in parameters {
            if p.value == nil { p.value = Tensor(shape: p.shape); p.grad = Tensor(shape: p.shape); p.awaitsInitialization = false }
            sd[p.fqn]!.values.withUnsafeBufferPointer { p.value.data.update(from: $0.baseAddress!, count: p.count) }
        }
        loadBuffers { sd[$0] }
    }

    /// Buffers from `source` (zero where it has none); shapes already checked.
    public func loadBuffers(_ source: (String) -> HostTensor?) {
        for b in buffers {
            if let h = source(b.fqn) {
                h.values.withUnsafeBufferPointer { b.tensor.data.update(from: $0.baseAddress!, count: b.tensor.count) }
            } else {
                b.tensor.zero()
            }
        }
    }
}
