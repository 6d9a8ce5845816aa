import Foundation

// torchtitan FQNs <-> HF transformers tensor names, by the model spec: each parameter declares its HF layout (one
// tensor, or one tensor per expert stacked along our first dimension; see ModelSpec.swift), so this file holds no
// table of names. Loading and saving whole HF folders: HFCheckpoint.swift.

public struct StateDictAdapterError: Error, CustomStringConvertible, Sendable {
    public enum Kind: String, Sendable {
        case missing, unexpected, shapeMismatch, tiedMismatch, unsupported, io
    }
    public let kind: Kind
    public let tensor: String
    public let reason: String
    public init(_ kind: Kind, tensor: String, _ reason: String) {
        self.kind = kind
        self.tensor = tensor
        self.reason = reason
    }
    public var description: String { "state dict tensor '\(tensor)': \(reason)" }
}

/// Maps state dicts between torchtitan FQNs and HF names for one model (its spec).
public struct StateDictAdapter {
    public let spec: ModelSpec
    /// For messages: the model's shape in a few words.
    let shapeHint: String

    public init(spec: ModelSpec, shapeHint: String) {
        self.spec = spec
        self.shapeHint = shapeHint
    }

    /// The adapter of a Qwen3 / Qwen3-MoE model of `args`.
    public init(qwen3 args: Qwen3ModelArgs) throws {
        self.init(spec: try Qwen3Model.spec(args), shapeHint: args.summary)
    }

    /// Throws unless every parameter has an HF counterpart (e.g. shared experts have none in Qwen3-MoE).
    func checkConvertible() throws {
        if let p = spec.parameters.first(where: { $0.hf == .none }) {
            throw StateDictAdapterError(.unsupported, tensor: p.fqn, "has no counterpart in \(spec.hfArchitecture): this model cannot be read from or written to HF format")
        }
    }

    /// Each parameter's HF tensors in flat order (one, or one per expert), with their shapes.
    public var hfPieces: [(parameter: Parameter, tensors: [(name: String, shape: [Int])])] {
        spec.parameters.map { p in
            switch p.hf {
            case .tensor(let n): return (p, [(n, p.shape)])
            case .perExpert(let names): return (p, names.map { ($0, Array(p.shape.dropFirst())) })
            case .none: return (p, [])
            }
        }
    }

    /// HF name → shape of every tensor an HF checkpoint of this model holds (parameters and HF-named buffers).
    public var hfShapes: [String: [Int]] {
        var s: [String: [Int]] = [:]
        for (_, tensors) in hfPieces { for t in tensors { s[t.name] = t.shape } }
        for b in spec.buffers { if let h = b.hf { s[h] = b.tensor.shape } }
        return s
    }

    /// HF names a checkpoint may carry that hold nothing of ours (ignored on import).
    func isIgnorable(_ name: String) -> Bool {
        spec.hfIgnoredSuffixes.contains { name.hasSuffix($0) } || skippedLayer(name) != nil
    }

    /// The layer index of an HF name under `model.layers.{i}.` with i >= the spec's `hfIgnoredLayersFrom`.
    func skippedLayer(_ name: String) -> Int? {
        guard let from = spec.hfIgnoredLayersFrom, name.hasPrefix("model.layers.") else { return nil }
        let rest = name.dropFirst("model.layers.".count)
        guard let dot = rest.firstIndex(of: "."), let i = Int(rest[..<dot]), i >= from else { return nil }
        return i
    }

    /// The skipped layers (multi-token prediction) among `names`, with how many tensors each holds, for one log line.
    public func skippedLayers(_ names: [String]) -> [Int: Int] {
        var r: [Int: Int] = [:]
        for n in names { if let i = skippedLayer(n) { r[i, default: 0] += 1 } }
        return r
    }

    /// One line saying which layers an import skipped, or nil when none were.
    public func skippedLayersNote(_ names: [String], source: String) -> String? {
        let s = skippedLayers(names)
        guard !s.isEmpty else { return nil }
        let layers = s.keys.sorted()
        return "HF checkpoint \(source): skipped \(s.values.reduce(0, +)) tensor(s) of layer(s) \(layers.map(String.init).joined(separator: ", ")) "
            + "beyond num_hidden_layers (\(spec.hfIgnoredLayersFrom ?? 0)): multi-token-prediction layers (num_nextn_predict_layers), "
            + "not part of \(spec.hfArchitecture), as transformers skips them"
    }

    private func checked(_ sd: StateDict, _ name: String, _ shape: [Int], side: String) throws -> HostTensor {
        guard let t = sd[name] else {
            throw StateDictAdapterError(.missing, tensor: name, "missing from the \(side) state dict (expected shape \(shape))")
        }
        guard t.shape == shape else {
            throw StateDictAdapterError(.shapeMismatch, tensor: name,
                                        "shape \(t.shape) in the \(side) state dict, expected \(shape) for the config (\(shapeHint))")
        }
        return t
    }

    /// Throws on an HF name this model does not have (an ignorable one, or a tied copy equal to its original, is fine).
    func checkNoUnexpected(_ names: [String], equalsTied: (String, String) throws -> Bool) throws {
        let expected = hfShapes
        for name in names.sorted() where expected[name] == nil && !isIgnorable(name) {
            if let original = spec.hfTied[name] {
                guard try equalsTied(name, original) else {
                    throw StateDictAdapterError(.tiedMismatch, tensor: name, "the model ties it to \(original), but the two differ")
                }
                continue
            }
            throw StateDictAdapterError(.unexpected, tensor: name, "not a parameter of \(spec.hfArchitecture) with this config (\(shapeHint))")
        }
    }

    /// HF state dict → torchtitan FQNs. Every expected HF tensor must be present with its exact shape; unknown names
    /// are errors (apart from ignorable ones, and a tied copy equal to its original). Buffers HF lacks are zeros.
    public func fromHF(_ hf: StateDict) throws -> StateDict {
        try checkConvertible()
        let hf = FusedExperts.unfused(hf)
        try checkNoUnexpected(Array(hf.keys)) { name, original in
            hf[name] == (try checked(hf, original, hfShapes[original] ?? [], side: "HF"))
        }
        var out: StateDict = [:]
        for (p, tensors) in hfPieces {
            var values = [Float]()
            values.reserveCapacity(p.count)
            for t in tensors { values += try checked(hf, t.name, t.shape, side: "HF").values }
            out[p.fqn] = HostTensor(shape: p.shape, values: values)
        }
        for b in spec.buffers {
            out[b.fqn] = try b.hf.map { try checked(hf, $0, b.tensor.shape, side: "HF") }
                ?? HostTensor(shape: b.tensor.shape, values: [Float](repeating: 0, count: b.tensor.count))
        }
        return out
    }

    /// torchtitan state dict → HF names. Buffers HF has no name for are dropped; anything else unknown, missing or
    /// of the wrong shape is an error.
    public func toHF(_ sd: StateDict) throws -> StateDict {
        try checkConvertible()
        let expected = spec.stateDictShapes
        for name in sd.keys.sorted() where expected[name] == nil {
            throw StateDictAdapterError(.unexpected, tensor: name, "not a parameter of this model (\(shapeHint))")
        }
        var out: StateDict = [:]
        for (p, tensors) in hfPieces {
            let values = try checked(sd, p.fqn, p.shape, side: "torchtitan").values
            var o = 0
            for t in tensors {
                let n = t.shape.reduce(1, *)
                out[t.name] = HostTensor(shape: t.shape, values: Array(values[o..<(o + n)]))
                o += n
            }
        }
        for b in spec.buffers {
            if let t = sd[b.fqn], t.shape != b.tensor.shape {
                throw StateDictAdapterError(.shapeMismatch, tensor: b.fqn, "shape \(t.shape), expected \(b.tensor.shape)")
            }
            if let h = b.hf, let t = sd[b.fqn] { out[h] = t }
        }
        return out
    }
}

/// An HF folder as initial weights, read on demand: a rank asks for the slices of torchtitan parameters it keeps and
/// gets them from the safetensors files by byte range (experts assembled from the per-expert tensors), so it never
/// reads or holds the whole checkpoint. Validated when opened as `fromHF` validates a loaded state dict: every
/// expected tensor present with its exact shape and a convertible dtype, nothing unknown, a tied copy equal to its
/// original. Buffers HF has no name for start at zero.
public final class HFInitialWeights: InitialWeights {
    public let folder: String
    public let parameterShapes: [String: [Int]]
    private let readers: [String: SafeTensorsReader]   // file path → reader
    private let file: [String: String]                 // HF name → file path
    private let pieces: [String: [(hf: String, count: Int)]]   // torchtitan FQN → its HF tensors, in flat order
    private let bufferNames: [String: String]          // torchtitan buffer FQN → HF name
    private let slices: [String: FusedExperts.Slice]   // per-expert HF name → its part of a fused experts tensor
    /// One line naming the multi-token-prediction layers the checkpoint holds and the import skips, if any.
    public let skippedNote: String?

    public init(folder: String, adapter: StateDictAdapter) throws {
        self.folder = folder
        try adapter.checkConvertible()
        let map = try HFCheckpoint.weightMap(folder: folder)
        var readers: [String: SafeTensorsReader] = [:]
        for f in Set(map.values).sorted() { readers[f] = try SafeTensorsReader(path: f) }
        self.readers = readers
        file = map
        func info(_ name: String) throws -> SafeTensorInfo {
            guard let f = map[name] else {
                throw StateDictAdapterError(.missing, tensor: name, "not in the HF checkpoint \(folder)")
            }
            guard readers[f]!.header.tensors[name] != nil else {
                throw SafeTensorsError(.missingTensor, file: f, tensor: name, "listed in \(HFCheckpoint.indexFileName) but not in this shard")
            }
            return try readers[f]!.info(name)
        }
        // Routed experts stored fused (transformers 5's gate_up_proj / down_proj): per-expert names read slices of them.
        var fusedShapes: [String: [Int]] = [:]
        for name in map.keys where FusedExperts.isFused(name) { fusedShapes[name] = try info(name).shape }
        let slices = FusedExperts.slices(fusedShapes).filter { map[$0.key] == nil }
        self.slices = slices
        func shape(_ name: String) throws -> [Int] {
            if let s = slices[name] { return s.shape }
            return try info(name).shape
        }
        let expected = adapter.hfShapes
        for name in expected.keys.sorted() {
            let got = try shape(name)
            guard got == expected[name]! else {
                throw StateDictAdapterError(.shapeMismatch, tensor: name,
                                            "shape \(got) in the HF checkpoint, expected \(expected[name]!) for the config (\(adapter.shapeHint))")
            }
        }
        var pieces: [String: [(hf: String, count: Int)]] = [:]
        for (p, tensors) in adapter.hfPieces { pieces[p.fqn] = tensors.map { ($0.name, $0.shape.reduce(1, *)) } }
        self.pieces = pieces
        bufferNames = Dictionary(uniqueKeysWithValues: adapter.spec.buffers.compactMap { b in b.hf.map { (b.fqn, $0) } })
        parameterShapes = adapter.spec.parameterShapes
        skippedNote = adapter.skippedLayersNote(Array(map.keys), source: folder)
        let consumed = Set(slices.values.map(\.source))
        try adapter.checkNoUnexpected(map.keys.filter { !consumed.contains($0) }) { name, original in
            let shape = try info(name).shape
            guard shape == expected[original] else { return false }
            return try self.equal(name, original, count: shape.reduce(1, *))
        }
    }

    /// Whether HF tensors `a` and `b` (`count` elements each) hold the same values, compared in chunks.
    private func equal(_ a: String, _ b: String, count: Int) throws -> Bool {
        let chunk = 1 << 20
        var x = [Float](repeating: 0, count: min(chunk, count)), y = x
        var lo = 0
        while lo < count {
            let r = lo..<min(lo + chunk, count)
            try x.withUnsafeMutableBufferPointer { try readHF(a, r, $0.baseAddress!) }
            try y.withUnsafeMutableBufferPointer { try readHF(b, r, $0.baseAddress!) }
            if x.prefix(r.count) != y.prefix(r.count) { return false }
            lo = r.upperBound
        }
        return true
    }

    private func readHF(_ name: String, _ elements: Range<Int>, _ out: UnsafeMutablePointer<Float>) throws {
        if let s = slices[name] {
            let r = (elements.lowerBound + s.offset)..<(elements.upperBound + s.offset)
            return try readers[file[s.source]!]!.read(s.source, elements: r, into: out)
        }
        try readers[file[name]!]!.read(name, elements: elements, into: out)
    }

    public func read(_ fqn: String, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) throws {
        guard let list = pieces[fqn] else { throw ModelError.missingKeys([fqn]) }
        var start = 0, written = 0
        for (name, count) in list {
            let lo = max(elements.lowerBound, start), hi = min(elements.upperBound, start + count)
            if lo < hi {
                try readHF(name, (lo - start)..<(hi - start), out + written)
                written += hi - lo
            }
            start += count
            if start >= elements.upperBound { break }
        }
        guard written == elements.count else {
            throw ModelError.missingKeys(["\(fqn)[\(elements)] (the HF tensors hold \(start) elements)"])
        }
    }

    public func buffer(_ fqn: String) -> HostTensor? {
        guard let name = bufferNames[fqn], let r = readers[file[name] ?? ""] else { return nil }
        return try? r.tensor(name)
    }
}

/// transformers 5 holds a layer's routed experts fused: `experts.gate_up_proj` [E, 2F, D] (expert e: its F gate rows,
/// then its F up rows) and `experts.down_proj` [E, D, F]. A checkpoint stored that way imports as one stored per expert
/// (what save_pretrained writes): each per-expert HF name is a contiguous element range of the fused tensor.
enum FusedExperts {
    struct Slice {
        let source: String
        let offset: Int
        let shape: [Int]
    }

    static func isFused(_ name: String) -> Bool { name.hasSuffix(".experts.gate_up_proj") || name.hasSuffix(".experts.down_proj") }

    /// Per-expert HF names → their slices, for the fused tensors among `shapes` (HF name → shape; 3-D ones only).
    static func slices(_ shapes: [String: [Int]]) -> [String: Slice] {
        var r: [String: Slice] = [:]
        for (name, s) in shapes where s.count == 3 {
            if name.hasSuffix(".experts.gate_up_proj"), s[1] % 2 == 0 {
                let base = String(name.dropLast("gate_up_proj".count)), E = s[0], F = s[1] / 2, D = s[2]
                for e in 0..<E {
                    r["\(base)\(e).gate_proj.weight"] = Slice(source: name, offset: e * 2 * F * D, shape: [F, D])
                    r["\(base)\(e).up_proj.weight"] = Slice(source: name, offset: e * 2 * F * D + F * D, shape: [F, D])
                }
            } else if name.hasSuffix(".experts.down_proj") {
                let base = String(name.dropLast("down_proj".count)), E = s[0], D = s[1], F = s[2]
                for e in 0..<E { r["\(base)\(e).down_proj.weight"] = Slice(source: name, offset: e * D * F, shape: [D, F]) }
            }
        }
        return r
    }

    /// `hf` with its fused expert tensors split per expert (names already present per expert are kept, and then the
    /// fused tensor stays, to be reported as unexpected).
    static func unfused(_ hf: StateDict) -> StateDict {
        let fused = hf.filter { isFused($0.key) }
        guard !fused.isEmpty else { return hf }
        var out = hf
        let slices = slices(fused.mapValues(\.shape)).filter { hf[$0.key] == nil }
        for (name, s) in slices {
            let n = s.shape.reduce(1, *)
            out[name] = HostTensor(shape: s.shape, values: Array(hf[s.source]!.values[s.offset..<(s.offset + n)]))
        }
        for source in Set(slices.values.map(\.source)) { out.removeValue(forKey: source) }
        return out
    }
}
