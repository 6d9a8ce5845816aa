import Foundation

/// The architecture of any model family this trainer builds: what the trainer, checkpoints, the HF import/export and
/// `titan convert` carry around without naming a family. Each case holds its family's own args.
public enum ModelArgs: Equatable, Sendable {
    case qwen3(Qwen3ModelArgs)
    case deepseekV3(DeepSeekV3ModelArgs)

    /// The `--model.name` of the family.
    public var family: String {
        switch self {
        case .qwen3: return "qwen3"
        case .deepseekV3: return "deepseek_v3"
        }
    }

    public var vocab_size: Int {
        switch self { case .qwen3(let a): return a.vocab_size; case .deepseekV3(let a): return a.vocab_size }
    }
    public var max_seq_len: Int {
        switch self { case .qwen3(let a): return a.max_seq_len; case .deepseekV3(let a): return a.max_seq_len }
    }
    public var n_layers: Int {
        switch self { case .qwen3(let a): return a.n_layers; case .deepseekV3(let a): return a.n_layers }
    }
    /// The MoE options (routed experts, how they are computed and balanced).
    public var moe: MoEArgs {
        get { switch self { case .qwen3(let a): return a.moe; case .deepseekV3(let a): return a.moe } }
        set {
            switch self {
            case .qwen3(var a): a.moe = newValue; self = .qwen3(a)
            case .deepseekV3(var a): a.moe = newValue; self = .deepseekV3(a)
            }
        }
    }
    /// Whether some layer has routed experts.
    public var hasMoE: Bool {
        switch self { case .qwen3(let a): return a.moe_enabled; case .deepseekV3(let a): return a.hasMoELayers }
    }
    /// Routed experts per MoE layer (0: a dense model): what expert parallelism divides.
    public var routedExperts: Int { hasMoE ? moe.num_experts : 0 }

    public var summary: String {
        switch self { case .qwen3(let a): return a.summary; case .deepseekV3(let a): return a.summary }
    }
    public var activeParameters: Int {
        switch self { case .qwen3(let a): return a.activeParameters; case .deepseekV3(let a): return a.activeParameters }
    }
    /// Model FLOPs per training token at `seqLen` (for MFU).
    public func flopsPerToken(seqLen: Int) -> Double {
        switch self {
        case .qwen3(let a): return a.flopsPerToken(seqLen: seqLen)
        case .deepseekV3(let a): return a.flopsPerToken(seqLen: seqLen)
        }
    }

    public func validate() throws {
        switch self { case .qwen3(let a): try a.validate(); case .deepseekV3(let a): try a.validate() }
    }

    /// The model, initialised from `seed` (`materialize: false`: the meta-device init).
    public func build(seed: UInt64 = 0, materialize: Bool = true) throws -> TrainableModel {
        switch self {
        case .qwen3(let a): return try Qwen3Model(args: a, seed: seed, materialize: materialize)
        case .deepseekV3(let a): return try DeepSeekV3Model(args: a, seed: seed, materialize: materialize)
        }
    }

    /// The parameter table, without storage.
    public func spec() throws -> ModelSpec { try build(materialize: false).spec }

    /// The HF state-dict adapter of this architecture.
    public func adapter() throws -> StateDictAdapter { StateDictAdapter(spec: try spec(), shapeHint: summary) }

    /// HF config.json contents.
    public func hfConfig() throws -> [String: Any] {
        switch self {
        case .qwen3(let a): return try HFConfig.export(a)
        case .deepseekV3(let a): return try DeepSeekV3HFConfig.export(a)
        }
    }
}

/// Checkpoint metadata stores the args as the family's own JSON object; DeepSeek-V3's carries "family":
/// "deepseek_v3" beside its fields (Qwen3's has no such key, as checkpoints written before DeepSeek-V3 have none).
extension ModelArgs: Codable {
    private enum FamilyKey: String, CodingKey { case family }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: FamilyKey.self)
        switch try c.decodeIfPresent(String.self, forKey: .family) ?? "qwen3" {
        case "qwen3": self = .qwen3(try Qwen3ModelArgs(from: decoder))
        case "deepseek_v3": self = .deepseekV3(try DeepSeekV3ModelArgs(from: decoder))
        case let f: throw DecodingError.dataCorruptedError(forKey: .family, in: c, debugDescription: "unknown model family '\(f)'")
        }
    }

    public func encode(to encoder: Encoder) throws {
        switch self {
        case .qwen3(let a): try a.encode(to: encoder)
        case .deepseekV3(let a):
            try a.encode(to: encoder)
            var c = encoder.container(keyedBy: FamilyKey.self)
            try c.encode("deepseek_v3", forKey: .family)
        }
    }
}

/// config.json of any family: DeepSeek-V3 (architectures DeepseekV3ForCausalLM / model_type deepseek_v3) or Qwen3.
public enum HFModelConfig {
    /// Reads `path` (a config.json file, or a folder containing one).
    public static func load(path: String) throws -> ModelArgs {
        let (obj, file) = try readObject(path: path)
        return try parse(object: obj, source: file)
    }

    public static func parse(_ data: Data, source: String = "config.json") throws -> ModelArgs {
        try parse(object: object(data, source: source), source: source)
    }

    static func parse(object obj: [String: Any], source: String) throws -> ModelArgs {
        if DeepSeekV3HFConfig.describes(obj) { return .deepseekV3(try DeepSeekV3HFConfig.parse(object: obj, source: source)) }
        return .qwen3(try HFConfig.parse(object: obj, source: source))
    }

    /// The token ids HF generate() stops at for the model in `folder`: generation_config.json's eos_token_id when that
    /// file exists and names one, else config.json's (an integer or a list of them; null or absent: none).
    public static func eosTokenIDs(folder: String) throws -> [Int32] {
        for name in ["generation_config.json", "config.json"] {
            let file = (folder as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: file) else { continue }
            let (obj, _) = try readObject(path: file)
            guard let value = obj["eos_token_id"], !(value is NSNull) else { continue }
            let ids = (value as? [Any]) ?? [value]
            return try ids.map { v in
                guard let i = (v as? NSNumber).flatMap({ Int32(exactly: $0.doubleValue) }), i >= 0 else {
                    throw HFConfigError(source: file, key: "eos_token_id", "expected a token id or a list of them, got \(v)")
                }
                return i
            }
        }
        return []
    }

    /// The JSON object of a config.json (`path`: the file or its folder), and the file's path for errors.
    static func readObject(path: String) throws -> (object: [String: Any], file: String) {
        var isDir: ObjCBool = false
        var file = path
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            file = (path as NSString).appendingPathComponent("config.json")
        }
        guard let data = FileManager.default.contents(atPath: file) else {
            throw HFConfigError(source: file, key: nil, "cannot read the file (missing or no permission)")
        }
        return (try object(data, source: file), file)
    }

    /// `data` as a JSON object.
    static func object(_ data: Data, source: String) throws -> [String: Any] {
        let root: Any
        do { root = try JSONValue.parse(data) } catch {
            throw HFConfigError(source: source, key: nil, "not valid JSON: \(error)")
        }
        guard let obj = root as? [String: Any] else {
            throw HFConfigError(source: source, key: nil, "top level is a JSON \(JSONValue.typeName(root)), expected an object")
        }
        return obj
    }

    /// Writes `config.json` into `folder` (created if needed).
    public static func write(_ a: ModelArgs, toFolder folder: String) throws {
        let data = try JSONValue.prettyData(a.hfConfig())
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = (folder as NSString).appendingPathComponent("config.json")
        do {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw HFConfigError(source: path, key: nil, "cannot write: \(error)")
        }
    }
}
