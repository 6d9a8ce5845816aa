import Foundation

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

    /// Loads an HF folder of any family: model args from config.json, weights (and buffers, zero where HF has none)
    /// with torchtitan FQNs; `skipped`: the line naming multi-token-prediction layers skipped, if any.
    public static func loadModel(folder: String) throws -> (args: ModelArgs, stateDict: StateDict, skipped: String?) {
        let args = try HFModelConfig.load(path: (folder as NSString).appendingPathComponent("config.json"))
        let hf = try readHFTensors(folder: folder)
        let adapter = try args.adapter()
        let note = adapter.skippedLayersNote(Array(hf.keys), source: folder)
        return (args, try adapter.fromHF(hf), note)
    }

    /// Writes an HF folder of any family (see `save(args:stateDict:folder:maxShardBytes:)`).
    public static func save(model args: ModelArgs, stateDict: StateDict, folder: String, maxShardBytes: Int? = nil) throws {
        let hf = try args.adapter().toHF(stateDict)
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: folder, withIntermediateDirectories: true) } catch {
            throw HFCheckpointError(path: folder, "cannot create the folder: \(error)")
        }
        try HFModelConfig.write(args, toFolder: folder)
        try saveTensors(hf, folder: folder, maxShardBytes: maxShardBytes)
    }

    /// Loads an HF folder: model args from config.json, weights (and buffers, zero where HF has none) with
    /// torchtitan FQNs.
    public static func load(folder: String) throws -> (args: Qwen3ModelArgs, stateDict: StateDict) {
        let args = try HFConfig.load(path: (folder as NSString).appendingPathComponent("config.json"))
        let hf = try readHFTensors(folder: folder)
        let sd = try StateDictAdapter(qwen3: args).fromHF(hf)
        return (args, sd)
    }

    /// Writes an HF folder (config.json + model.safetensors, F32) that transformers loads as
    /// Qwen3ForCausalLM / Qwen3MoeForCausalLM. With `maxShardBytes`, tensors are split (in name
    /// order) into model-0000k-of-0000n.safetensors files plus model.safetensors.index.json.
    public static func save(args: Qwen3ModelArgs, stateDict: StateDict, folder: String,
                            maxShardBytes: Int? = nil) throws {
        let hf = try StateDictAdapter(qwen3: args).toHF(stateDict)
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
        try saveTensors(hf, folder: folder, maxShardBytes: maxShardBytes)
    }

    /// Writes HF-named tensors into `folder`: one model.safetensors, or shards plus the index above `maxShardBytes`.
    static func saveTensors(_ hf: StateDict, folder: String, maxShardBytes: Int?) throws {
        let fm = FileManager.default
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
