import Foundation

// torchtitan FQNs <-> HF transformers parameter names for Qwen3 / Qwen3-MoE (transformers 4.x layout,
// one nn.Linear per expert), and loading / saving whole HF folders.
//
//   torchtitan                                   HF
//   tok_embeddings.weight                        model.embed_tokens.weight
//   layers.{i}.attention_norm.weight             model.layers.{i}.input_layernorm.weight
//   layers.{i}.attention.wq|wk|wv|wo.weight      model.layers.{i}.self_attn.q_proj|k_proj|v_proj|o_proj.weight
//   layers.{i}.attention.q_norm|k_norm.weight    model.layers.{i}.self_attn.q_norm|k_norm.weight
//   layers.{i}.ffn_norm.weight                   model.layers.{i}.post_attention_layernorm.weight
//   layers.{i}.feed_forward.w1|w2|w3.weight      model.layers.{i}.mlp.gate_proj|down_proj|up_proj.weight
//   layers.{i}.moe.router.gate.weight            model.layers.{i}.mlp.gate.weight
//   layers.{i}.moe.experts.w1 [E,Fe,D]           model.layers.{i}.mlp.experts.{e}.gate_proj.weight [Fe,D]  (stacked over e)
//   layers.{i}.moe.experts.w3 [E,Fe,D]           model.layers.{i}.mlp.experts.{e}.up_proj.weight   [Fe,D]
//   layers.{i}.moe.experts.w2 [E,D,Fe]           model.layers.{i}.mlp.experts.{e}.down_proj.weight [D,Fe]
//   layers.{i}.moe.expert_bias [E]               — (zeros on import, dropped on export)
//   norm.weight                                  model.norm.weight
//   output.weight                                lm_head.weight   (neither exists when tied)

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

/// Maps state dicts between torchtitan FQNs and HF names for one model shape.
public struct Qwen3StateDictAdapter: Sendable {
    public let args: Qwen3ModelArgs

    public init(args: Qwen3ModelArgs) {
        self.args = args
    }

    /// HF tensor names that HF checkpoints may carry but that hold no parameters (ignored on import).
    public static func isIgnorableHFName(_ name: String) -> Bool {
        name.hasSuffix("rotary_emb.inv_freq")
    }

    /// torchtitan FQN → shape of every parameter (and the expert_bias buffer when `includeExpertBias`).
    public func titanShapes(includeExpertBias: Bool = true) -> [String: [Int]] {
        let a = args
        let D = a.dim, hd = a.head_dim
        var s: [String: [Int]] = ["tok_embeddings.weight": [a.vocab_size, D], "norm.weight": [D]]
        if !a.enable_weight_tying { s["output.weight"] = [a.vocab_size, D] }
        for i in 0..<a.n_layers {
            let p = "layers.\(i)."
            s[p + "attention_norm.weight"] = [D]
            s[p + "attention.wq.weight"] = [a.n_heads * hd, D]
            s[p + "attention.wk.weight"] = [a.n_kv_heads * hd, D]
            s[p + "attention.wv.weight"] = [a.n_kv_heads * hd, D]
            s[p + "attention.wo.weight"] = [D, a.n_heads * hd]
            s[p + "attention.q_norm.weight"] = [hd]
            s[p + "attention.k_norm.weight"] = [hd]
            s[p + "ffn_norm.weight"] = [D]
            if a.isMoELayer(i) {
                let E = a.moe.num_experts, Fe = a.moe.hidden_dim
                s[p + "moe.router.gate.weight"] = [E, D]
                s[p + "moe.experts.w1"] = [E, Fe, D]
                s[p + "moe.experts.w2"] = [E, D, Fe]
                s[p + "moe.experts.w3"] = [E, Fe, D]
                if a.moe.num_shared_experts > 0 {
                    let Fs = Fe * a.moe.num_shared_experts
                    s[p + "moe.shared_experts.w1.weight"] = [Fs, D]
                    s[p + "moe.shared_experts.w2.weight"] = [D, Fs]
                    s[p + "moe.shared_experts.w3.weight"] = [Fs, D]
                }
                if includeExpertBias { s[p + "moe.expert_bias"] = [E] }
            } else {
                s[p + "feed_forward.w1.weight"] = [a.hidden_dim, D]
                s[p + "feed_forward.w2.weight"] = [D, a.hidden_dim]
                s[p + "feed_forward.w3.weight"] = [a.hidden_dim, D]
            }
        }
        return s
    }

    /// HF name → shape of every tensor of an HF checkpoint of this shape.
    public func hfShapes() -> [String: [Int]] {
        let a = args
        let D = a.dim, hd = a.head_dim
        var s: [String: [Int]] = ["model.embed_tokens.weight": [a.vocab_size, D], "model.norm.weight": [D]]
        if !a.enable_weight_tying { s["lm_head.weight"] = [a.vocab_size, D] }
        for i in 0..<a.n_layers {
            let p = "model.layers.\(i)."
            s[p + "input_layernorm.weight"] = [D]
            s[p + "self_attn.q_proj.weight"] = [a.n_heads * hd, D]
            s[p + "self_attn.k_proj.weight"] = [a.n_kv_heads * hd, D]
            s[p + "self_attn.v_proj.weight"] = [a.n_kv_heads * hd, D]
            s[p + "self_attn.o_proj.weight"] = [D, a.n_heads * hd]
            s[p + "self_attn.q_norm.weight"] = [hd]
            s[p + "self_attn.k_norm.weight"] = [hd]
            s[p + "post_attention_layernorm.weight"] = [D]
            if a.isMoELayer(i) {
                let E = a.moe.num_experts, Fe = a.moe.hidden_dim
                s[p + "mlp.gate.weight"] = [E, D]
                for e in 0..<E {
                    s[p + "mlp.experts.\(e).gate_proj.weight"] = [Fe, D]
                    s[p + "mlp.experts.\(e).up_proj.weight"] = [Fe, D]
                    s[p + "mlp.experts.\(e).down_proj.weight"] = [D, Fe]
                }
            } else {
                s[p + "mlp.gate_proj.weight"] = [a.hidden_dim, D]
                s[p + "mlp.up_proj.weight"] = [a.hidden_dim, D]
                s[p + "mlp.down_proj.weight"] = [D, a.hidden_dim]
            }
        }
        return s
    }

    /// Name pairs (torchtitan, HF) of the 1:1 renamed tensors (everything but the stacked experts).
    public func directNamePairs() -> [(titan: String, hf: String)] {
        let a = args
        var pairs: [(String, String)] = [("tok_embeddings.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight")]
        if !a.enable_weight_tying { pairs.append(("output.weight", "lm_head.weight")) }
        for i in 0..<a.n_layers {
            let t = "layers.\(i).", h = "model.layers.\(i)."
            pairs += [
                (t + "attention_norm.weight", h + "input_layernorm.weight"),
                (t + "attention.wq.weight", h + "self_attn.q_proj.weight"),
                (t + "attention.wk.weight", h + "self_attn.k_proj.weight"),
                (t + "attention.wv.weight", h + "self_attn.v_proj.weight"),
                (t + "attention.wo.weight", h + "self_attn.o_proj.weight"),
                (t + "attention.q_norm.weight", h + "self_attn.q_norm.weight"),
                (t + "attention.k_norm.weight", h + "self_attn.k_norm.weight"),
                (t + "ffn_norm.weight", h + "post_attention_layernorm.weight"),
            ]
            if a.isMoELayer(i) {
                pairs.append((t + "moe.router.gate.weight", h + "mlp.gate.weight"))
            } else {
                pairs += [
                    (t + "feed_forward.w1.weight", h + "mlp.gate_proj.weight"),
                    (t + "feed_forward.w2.weight", h + "mlp.down_proj.weight"),
                    (t + "feed_forward.w3.weight", h + "mlp.up_proj.weight"),
                ]
            }
        }
        return pairs
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

    var shapeHint: String {
        let a = args
        var s = "vocab \(a.vocab_size), dim \(a.dim), layers \(a.n_layers), heads \(a.n_heads)/\(a.n_kv_heads)x\(a.head_dim), ffn \(a.hidden_dim)"
        if a.moe_enabled { s += ", experts \(a.moe.num_experts)x\(a.moe.hidden_dim)" }
        return s
    }

    /// HF state dict → torchtitan FQNs. Every expected HF tensor must be present with its exact shape;
    /// unknown names are errors (apart from `rotary_emb.inv_freq` buffers). For a tied model an
    /// `lm_head.weight` is accepted only when it equals the embedding. MoE layers get a zero
    /// `moe.expert_bias` when `includeExpertBias`.
    public func fromHF(_ hf: StateDict, includeExpertBias: Bool = true) throws -> StateDict {
        let a = args
        if a.moe_enabled, a.moe.num_shared_experts > 0 {
            throw StateDictAdapterError(.unsupported, tensor: "moe.shared_experts",
                                        "num_shared_experts \(a.moe.num_shared_experts): Qwen3-MoE HF checkpoints have no shared experts")
        }
        let expectedHF = hfShapes()
        for name in hf.keys.sorted() where expectedHF[name] == nil {
            if Qwen3StateDictAdapter.isIgnorableHFName(name) { continue }
            if name == "lm_head.weight", a.enable_weight_tying {
                let emb = try checked(hf, "model.embed_tokens.weight", [a.vocab_size, a.dim], side: "HF")
                guard hf[name]! == emb else {
                    throw StateDictAdapterError(.tiedMismatch, tensor: name,
                                                "tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight")
                }
                continue
            }
            throw StateDictAdapterError(.unexpected, tensor: name,
                                        "not a parameter of \(a.moe_enabled ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM") with this config (\(shapeHint))")
        }
        var out: StateDict = [:]
        for (t, h) in directNamePairs() {
            out[t] = try checked(hf, h, expectedHF[h]!, side: "HF")
        }
        for i in 0..<a.n_layers where a.isMoELayer(i) {
            let E = a.moe.num_experts, Fe = a.moe.hidden_dim, D = a.dim
            let h = "model.layers.\(i).mlp.experts."
            var w1 = [Float](), w2 = [Float](), w3 = [Float]()
            w1.reserveCapacity(E * Fe * D); w2.reserveCapacity(E * Fe * D); w3.reserveCapacity(E * Fe * D)
            for e in 0..<E {
                w1 += try checked(hf, h + "\(e).gate_proj.weight", [Fe, D], side: "HF").values
                w3 += try checked(hf, h + "\(e).up_proj.weight", [Fe, D], side: "HF").values
                w2 += try checked(hf, h + "\(e).down_proj.weight", [D, Fe], side: "HF").values
            }
            let t = "layers.\(i).moe."
            out[t + "experts.w1"] = HostTensor(shape: [E, Fe, D], values: w1)
            out[t + "experts.w2"] = HostTensor(shape: [E, D, Fe], values: w2)
            out[t + "experts.w3"] = HostTensor(shape: [E, Fe, D], values: w3)
            if includeExpertBias { out[t + "expert_bias"] = HostTensor(shape: [E], values: [Float](repeating: 0, count: E)) }
        }
        return out
    }

    /// torchtitan state dict → HF names. `moe.expert_bias` (and `tokens_per_expert` buffers) are
    /// dropped; anything else unknown, missing or of the wrong shape is an error.
    public func toHF(_ sd: StateDict) throws -> StateDict {
        let a = args
        if a.moe_enabled, a.moe.num_shared_experts > 0 {
            throw StateDictAdapterError(.unsupported, tensor: "moe.shared_experts",
                                        "num_shared_experts \(a.moe.num_shared_experts): Qwen3MoeForCausalLM has no shared experts, cannot export")
        }
        let expected = titanShapes(includeExpertBias: true)
        for name in sd.keys.sorted() where expected[name] == nil {
            if name.hasSuffix(".tokens_per_expert") { continue }
            if name == "output.weight", a.enable_weight_tying {
                throw StateDictAdapterError(.unexpected, tensor: name, "enable_weight_tying is true: the output projection is tok_embeddings.weight and must not be a separate tensor")
            }
            throw StateDictAdapterError(.unexpected, tensor: name, "not a parameter of this model (\(shapeHint))")
        }
        var out: StateDict = [:]
        for (t, h) in directNamePairs() {
            out[h] = try checked(sd, t, expected[t]!, side: "torchtitan")
        }
        for i in 0..<a.n_layers where a.isMoELayer(i) {
            let E = a.moe.num_experts, Fe = a.moe.hidden_dim, D = a.dim
            let t = "layers.\(i).moe."
            if let b = sd[t + "expert_bias"], b.shape != [E] {
                throw StateDictAdapterError(.shapeMismatch, tensor: t + "expert_bias", "shape \(b.shape), expected [\(E)]")
            }
            let w1 = try checked(sd, t + "experts.w1", [E, Fe, D], side: "torchtitan").values
            let w2 = try checked(sd, t + "experts.w2", [E, D, Fe], side: "torchtitan").values
            let w3 = try checked(sd, t + "experts.w3", [E, Fe, D], side: "torchtitan").values
            let n = Fe * D
            let h = "model.layers.\(i).mlp.experts."
            for e in 0..<E {
                out[h + "\(e).gate_proj.weight"] = HostTensor(shape: [Fe, D], values: Array(w1[(e * n)..<((e + 1) * n)]))
                out[h + "\(e).up_proj.weight"] = HostTensor(shape: [Fe, D], values: Array(w3[(e * n)..<((e + 1) * n)]))
                out[h + "\(e).down_proj.weight"] = HostTensor(shape: [D, Fe], values: Array(w2[(e * n)..<((e + 1) * n)]))
            }
        }
        return out
    }
}

/// An HF folder as initial weights, read on demand: a rank asks for the slices of torchtitan parameters it keeps and
/// gets them from the safetensors files by byte range (experts assembled from the per-expert tensors), so it never
/// reads or holds the whole checkpoint. Validated when opened as `fromHF` validates a loaded state dict: every
/// expected tensor present with its exact shape and a convertible dtype, nothing unknown, a tied lm_head equal to the
/// embedding. HF has no expert bias: the model zeroes it.
public final class HFInitialWeights: InitialWeights {
    public let folder: String
    public let args: Qwen3ModelArgs
    public let parameterShapes: [String: [Int]]
    private let readers: [String: SafeTensorsReader]   // file path → reader
    private let file: [String: String]                 // HF name → file path
    private let pieces: [String: [(hf: String, count: Int)]]   // torchtitan FQN → its HF tensors, in flat order

    public init(folder: String, args: Qwen3ModelArgs) throws {
        self.folder = folder
        self.args = args
        let adapter = Qwen3StateDictAdapter(args: args)
        if args.moe_enabled, args.moe.num_shared_experts > 0 {
            throw StateDictAdapterError(.unsupported, tensor: "moe.shared_experts",
                                        "num_shared_experts \(args.moe.num_shared_experts): Qwen3-MoE HF checkpoints have no shared experts")
        }
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
        let expected = adapter.hfShapes()
        for name in expected.keys.sorted() {
            let t = try info(name)
            guard t.shape == expected[name]! else {
                throw StateDictAdapterError(.shapeMismatch, tensor: name,
                                            "shape \(t.shape) in the HF checkpoint, expected \(expected[name]!) for the config (\(adapter.shapeHint))")
            }
        }
        for name in map.keys.sorted() where expected[name] == nil && !Qwen3StateDictAdapter.isIgnorableHFName(name) {
            guard name == "lm_head.weight", args.enable_weight_tying else {
                throw StateDictAdapterError(.unexpected, tensor: name,
                                            "not a parameter of \(args.moe_enabled ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM") with this config (\(adapter.shapeHint))")
            }
        }
        var pieces: [String: [(hf: String, count: Int)]] = [:]
        let shapes = expected
        for (t, h) in adapter.directNamePairs() { pieces[t] = [(h, shapes[h]!.reduce(1, *))] }
        for i in 0..<args.n_layers where args.isMoELayer(i) {
            let h = "model.layers.\(i).mlp.experts.", t = "layers.\(i).moe.experts."
            for (titan, proj) in [("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")] {
                pieces[t + titan] = (0..<args.moe.num_experts).map { e in
                    let n = h + "\(e).\(proj).weight"
                    return (n, shapes[n]!.reduce(1, *))
                }
            }
        }
        self.pieces = pieces
        parameterShapes = adapter.titanShapes(includeExpertBias: false)
        if args.enable_weight_tying, map["lm_head.weight"] != nil { try checkTiedHead() }
    }

    /// A tied model's lm_head.weight, when the checkpoint carries one, must equal the embedding (compared in chunks).
    private func checkTiedHead() throws {
        let lm = try readers[file["lm_head.weight"]!]!.info("lm_head.weight")
        let count = args.vocab_size * args.dim
        guard lm.shape == [args.vocab_size, args.dim] else {
            throw StateDictAdapterError(.tiedMismatch, tensor: "lm_head.weight",
                                        "tie_word_embeddings is true but lm_head.weight has shape \(lm.shape), the embedding [\(args.vocab_size), \(args.dim)]")
        }
        let chunk = 1 << 20
        var a = [Float](repeating: 0, count: min(chunk, count)), b = a
        var lo = 0
        while lo < count {
            let r = lo..<min(lo + chunk, count)
            try a.withUnsafeMutableBufferPointer { try readHF("lm_head.weight", r, $0.baseAddress!) }
            try b.withUnsafeMutableBufferPointer { try readHF("model.embed_tokens.weight", r, $0.baseAddress!) }
            guard a.prefix(r.count) == b.prefix(r.count) else {
                throw StateDictAdapterError(.tiedMismatch, tensor: "lm_head.weight",
                                            "tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight")
            }
            lo = r.upperBound
        }
    }

    private func readHF(_ name: String, _ elements: Range<Int>, _ out: UnsafeMutablePointer<Float>) throws {
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

    public func buffer(_ fqn: String) -> HostTensor? { nil }
}

public struct HFCheckpointError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let reason: String
    public init(path: String, _ reason: String) {
        self.path = path
        self.reason = reason
    }
    public var description: String { "HF checkpoint \(path): \(reason)" }
}

/// Loading and saving HF model folders (config.json + model.safetensors, or a sharded
/// model.safetensors.index.json).
public enum HFCheckpoint {
    public static let indexFileName = "model.safetensors.index.json"
    public static let singleFileName = "model.safetensors"

    /// Where each HF tensor of a folder lives: HF name → safetensors file path.
    public static func weightMap(folder: String) throws -> [String: String] {
        let fm = FileManager.default
        let index = (folder as NSString).appendingPathComponent(indexFileName)
        let single = (folder as NSString).appendingPathComponent(singleFileName)
        // Like transformers: a single model.safetensors wins over an index.
        if fm.fileExists(atPath: single) {
            let r = try SafeTensorsReader(path: single)
            var out: [String: String] = [:]
            for n in r.names { out[n] = single }
            return out
        }
        if fm.fileExists(atPath: index) {
            guard let data = fm.contents(atPath: index) else { throw HFCheckpointError(path: index, "cannot read") }
            let root: Any
            do { root = try JSONValue.parse(data) } catch {
                throw HFCheckpointError(path: index, "not valid JSON: \(error)")
            }
            guard let wm = (root as? [String: Any])?["weight_map"] as? [String: Any] else {
                throw HFCheckpointError(path: index, "missing \"weight_map\" object")
            }
            var out: [String: String] = [:]
            for (name, file) in wm {
                guard let f = file as? String, !f.isEmpty, !f.contains("/"), !f.contains("\\") else {
                    throw HFCheckpointError(path: index, "weight_map[\(name)] must be a plain file name in the folder, got \(JSONValue.text(file))")
                }
                out[name] = (folder as NSString).appendingPathComponent(f)
            }
            return out
        }
        throw HFCheckpointError(path: folder, "neither \(singleFileName) nor \(indexFileName) found")
    }

    /// Reads the HF tensors of a folder (all, or only `names`), each shard opened once and each
    /// tensor read by its byte range.
    public static func readHFTensors(folder: String, names: Set<String>? = nil) throws -> StateDict {
        let map = try weightMap(folder: folder)
        var byFile: [String: [String]] = [:]
        for (n, f) in map where names?.contains(n) ?? true { byFile[f, default: []].append(n) }
        if let want = names {
            for n in want.sorted() where map[n] == nil {
                throw StateDictAdapterError(.missing, tensor: n, "not in the HF checkpoint \(folder)")
            }
        }
        var out: StateDict = [:]
        for f in byFile.keys.sorted() {
            let r = try SafeTensorsReader(path: f)
            for n in byFile[f]!.sorted() {
                guard r.header.tensors[n] != nil else {
                    throw SafeTensorsError(.missingTensor, file: f, tensor: n, "listed in \(indexFileName) but not in this shard")
                }
                out[n] = try r.tensor(n)
            }
        }
        return out
    }

    /// Loads an HF folder: model args from config.json, weights with torchtitan FQNs.
    public static func load(folder: String, includeExpertBias: Bool = true) throws -> (args: Qwen3ModelArgs, stateDict: StateDict) {
        let args = try HFConfig.load(path: (folder as NSString).appendingPathComponent("config.json"))
        let hf = try readHFTensors(folder: folder)
        let sd = try Qwen3StateDictAdapter(args: args).fromHF(hf, includeExpertBias: includeExpertBias)
        return (args, sd)
    }

    /// Writes an HF folder (config.json + model.safetensors, F32) that transformers loads as
    /// Qwen3ForCausalLM / Qwen3MoeForCausalLM. With `maxShardBytes`, tensors are split (in name
    /// order) into model-0000k-of-0000n.safetensors files plus model.safetensors.index.json.
    public static func save(args: Qwen3ModelArgs, stateDict: StateDict, folder: String,
                            maxShardBytes: Int? = nil) throws {
        let hf = try Qwen3StateDictAdapter(args: args).toHF(stateDict)
        try saveHFTensors(hf, args: args, folder: folder, maxShardBytes: maxShardBytes)
    }

    /// Writes tensors that already carry HF names, with config.json.
    public static func saveHFTensors(_ hf: StateDict, args: Qwen3ModelArgs, folder: String,
                                     maxShardBytes: Int? = nil) throws {
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw HFCheckpointError(path: folder, "cannot create the folder: \(error)")
        }
        try HFConfig.write(args, toFolder: folder)
        let meta = ["format": "pt"]
        let names = hf.keys.sorted()
        let total = hf.values.reduce(0) { $0 + $1.values.count * 4 }
        let index = (folder as NSString).appendingPathComponent(indexFileName)
        let single = (folder as NSString).appendingPathComponent(singleFileName)
        guard let limit = maxShardBytes, total > limit else {
            try SafeTensors.write(hf, to: single, metadata: meta)
            if fm.fileExists(atPath: index) { try? fm.removeItem(atPath: index) }
            return
        }
        var shards: [[String]] = [[]]
        var size = 0
        for n in names {
            let b = hf[n]!.values.count * 4
            if size > 0, size + b > limit { shards.append([]); size = 0 }
            shards[shards.count - 1].append(n)
            size += b
        }
        var weightMap: [String: String] = [:]
        for (k, shard) in shards.enumerated() {
            let file = String(format: "model-%05d-of-%05d.safetensors", k + 1, shards.count)
            var part: StateDict = [:]
            for n in shard { part[n] = hf[n]!; weightMap[n] = file }
            try SafeTensors.write(part, to: (folder as NSString).appendingPathComponent(file), metadata: meta)
        }
        let idx: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
        do {
            try JSONValue.prettyData(idx).write(to: URL(fileURLWithPath: index), options: .atomic)
        } catch {
            throw HFCheckpointError(path: index, "cannot write: \(error)")
        }
        if fm.fileExists(atPath: single) { try? fm.removeItem(atPath: single) }
    }
}
