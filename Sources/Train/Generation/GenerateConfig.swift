// [generate]: what `titan generate` decodes (torchtitan's generate script and HF generate()'s options).

import Config

public struct GenerateConfig: ConfigSection {
    /// Comma-separated token ids, e.g. "1,2,3". Exactly one of prompt_ids and prompt.
    public var prompt_ids: String? = nil
    /// Text, tokenized by dataloader.tokenizer_path (an HF tokenizer.json) or, without one, byte-level.
    public var prompt: String? = nil
    public var max_new_tokens = 32
    /// 0: greedy (argmax, HF's do_sample=False); > 0: sampling from softmax(logits / temperature).
    public var temperature = 0.0
    /// Keep the k highest logits (and any tied with the k-th); 0: off.
    public var top_k = 0
    /// Keep the smallest set of highest-probability tokens whose probability exceeds top_p; 1: off.
    public var top_p = 1.0
    /// Seeds the sampling draws (sample i draws from its own stream, see Sampler.swift); unused when greedy.
    public var seed = 0
    public var num_samples = 1
    /// false: recompute the whole sequence for every new token (the reference the KV cache must equal).
    public var kv_cache = true
    /// Token ids that end a sample (HF's eos_token_id), comma-separated; "none": every sample runs to max_new_tokens;
    /// "auto": the HF folder's generation_config.json / config.json eos_token_id, else tokenizer_config.json's
    /// eos_token (of dataloader.tokenizer_path), else none.
    public var eos_ids = "auto"
    public init() {}

    public static let doc = "titan generate: prompt, length, sampling"
    public static let fields: [ConfigField<GenerateConfig>] = [
        ConfigField("prompt_ids", \.prompt_ids, "prompt as comma-separated token ids, e.g. 1,2,3"),
        ConfigField("prompt", \.prompt, "prompt text (tokenized with dataloader.tokenizer_path, else byte-level)"),
        ConfigField("max_new_tokens", \.max_new_tokens, "tokens to generate per sample"),
        ConfigField("temperature", \.temperature, "0: greedy; > 0: sample from softmax(logits / temperature)"),
        ConfigField("top_k", \.top_k, "sample among the k highest logits only (0: off)"),
        ConfigField("top_p", \.top_p, "sample among the most likely tokens whose probabilities sum past top_p (1: off)"),
        ConfigField("seed", \.seed, "seed of the sampling draws"),
        ConfigField("num_samples", \.num_samples, "samples generated from the prompt"),
        ConfigField("kv_cache", \.kv_cache, "decode incrementally with a per-layer key/value cache (false: recompute the prefix per token)"),
        ConfigField("eos_ids", \.eos_ids, "token ids that end a sample, e.g. 1,2; none: always max_new_tokens; auto: the HF folder's eos_token_id, else the tokenizer's eos_token"),
    ]

    public func validate() throws {
        if max_new_tokens < 1 { throw ConfigError.invalid(key: "max_new_tokens", reason: "must be >= 1, got \(max_new_tokens)") }
        if !(temperature >= 0) || !temperature.isFinite {
            throw ConfigError.invalid(key: "temperature", reason: "must be >= 0 (0: greedy), got \(temperature)")
        }
        if top_k < 0 { throw ConfigError.invalid(key: "top_k", reason: "must be >= 0 (0: off), got \(top_k)") }
        if !(top_p > 0 && top_p <= 1) { throw ConfigError.invalid(key: "top_p", reason: "must be in (0, 1] (1: off), got \(top_p)") }
        if num_samples < 1 { throw ConfigError.invalid(key: "num_samples", reason: "must be >= 1, got \(num_samples)") }
        if prompt != nil && prompt_ids != nil {
            throw ConfigError.invalid(key: "prompt", reason: "give either generate.prompt or generate.prompt_ids, not both")
        }
        if let ids = prompt_ids { _ = try Self.parseIDs(ids) }
        if eos_ids != "none" && eos_ids != "auto" { _ = try Self.parseIDs(eos_ids, key: "eos_ids") }
    }

    /// The ids that end a sample: eos_ids as given (each must be < vocabSize), or, "auto", the model's `modelEOS` (an HF
    /// folder's eos_token_id) when it names any, else `tokenizerEOS`; ids a model cannot produce are left out of those.
    public func stopIDs(modelEOS: [Int32], tokenizerEOS: Int32?, vocabSize: Int) throws -> Set<Int32> {
        switch eos_ids {
        case "none": return []
        case "auto":
            let ids = modelEOS.isEmpty ? tokenizerEOS.map { [$0] } ?? [] : modelEOS
            return Set(ids.filter { Int($0) < vocabSize })
        default:
            let ids = try Self.prefixingKey { try Self.parseIDs(eos_ids, key: "eos_ids") }
            if let id = ids.first(where: { Int($0) >= vocabSize }) {
                throw ConfigError.invalid(key: "generate.eos_ids", reason: "\(id) is not < the model's vocab_size \(vocabSize)")
            }
            return Set(ids)
        }
    }

    public var sampling: SamplingOptions { SamplingOptions(temperature: temperature, topK: top_k, topP: top_p) }

    /// "1, 2,3" → [1, 2, 3]; errors name the key.
    static func parseIDs(_ text: String, key: String = "prompt_ids") throws -> [Int32] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        if parts.count == 1 && parts[0].isEmpty {
            throw ConfigError.invalid(key: key, reason: "is empty: give at least one token id, e.g. 1,2,3")
        }
        return try parts.enumerated().map { i, p in
            guard let v = Int32(p), v >= 0 else {
                throw ConfigError.invalid(key: key, reason: "entry \(i) '\(p)' is not a token id (a non-negative integer)")
            }
            return v
        }
    }

    /// The prompt's token ids, checked against the model: not empty, every id < vocabSize, and prompt + max_new_tokens
    /// within maxSeqLen. Errors name the key (with its section: these come after the config was resolved).
    public func promptTokens(tokenizer: Tokenizer, vocabSize: Int, maxSeqLen: Int) throws -> [Int32] {
        let ids: [Int32]
        let key: String
        if let p = prompt_ids {
            ids = try Self.prefixingKey { try Self.parseIDs(p) }
            key = "generate.prompt_ids"
        } else if let text = prompt {
            ids = tokenizer.encode(text)
            key = "generate.prompt"
            if ids.isEmpty { throw ConfigError.invalid(key: key, reason: "is empty: give some text to continue") }
        } else {
            throw ConfigError.invalid(key: "generate.prompt_ids", reason: "no prompt: give --generate.prompt_ids 1,2,3 or --generate.prompt TEXT")
        }
        if let (i, id) = ids.enumerated().first(where: { Int($0.element) >= vocabSize }) {
            throw ConfigError.invalid(key: key, reason: "token \(i) is \(id), not < the model's vocab_size \(vocabSize)")
        }
        if ids.count + max_new_tokens > maxSeqLen {
            throw ConfigError.invalid(key: "generate.max_new_tokens",
                reason: "the prompt's \(ids.count) tokens + max_new_tokens \(max_new_tokens) = \(ids.count + max_new_tokens) exceed the model's max_seq_len \(maxSeqLen)")
        }
        return ids
    }

    private static func prefixingKey<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let ConfigError.invalid(key, reason) {
            throw ConfigError.invalid(key: "generate." + key, reason: reason)
        }
    }
}
