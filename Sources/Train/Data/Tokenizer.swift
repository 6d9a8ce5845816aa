// Tokenizers for `--dataloader.dataset text`: raw bytes, or an HF `tokenizer.json` byte-level
// BPE (GPT-2 / Qwen style). Only what training needs: encode a corpus, decode for logs.

import Foundation

public protocol Tokenizer {
    var vocabSize: Int { get }
    /// The ids document datasets put before and after each document (torchtitan: encode(add_bos, add_eos)); nil when
    /// the tokenizer has none.
    var bosID: Int32? { get }
    var eosID: Int32? { get }
    func encode(_ text: String) -> [Int32]
    func decode(_ ids: [Int32]) -> String
}

/// One token per UTF-8 byte, ids 0..<256, plus BOS 256 and EOS 257 around documents. The fallback when no
/// tokenizer.json is given.
public struct ByteTokenizer: Tokenizer {
    public init() {}
    public var vocabSize: Int { 258 }
    public var bosID: Int32? { 256 }
    public var eosID: Int32? { 257 }
    public func encode(_ text: String) -> [Int32] { text.utf8.map { Int32($0) } }
    public func decode(_ ids: [Int32]) -> String {
        String(decoding: ids.compactMap { (0..<256).contains($0) ? UInt8($0) : nil }, as: UTF8.self)
    }
}

public enum TokenizerError: Error, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case invalid(path: String, reason: String)
    case unsupported(path: String, reason: String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "\(path): cannot read tokenizer: \(reason)"
        case let .invalid(path, reason): return "\(path): invalid tokenizer.json: \(reason)"
        case let .unsupported(path, reason): return "\(path): unsupported tokenizer.json: \(reason) (only byte-level BPE is supported)"
        }
    }
}

/// GPT-2's reversible byte → printable-unicode map: printable Latin-1 bytes map to themselves,
/// the other 68 bytes to U+0100.. in order, so every byte sequence is a string of visible
/// characters and BPE can work on text (e.g. space 0x20 → "Ġ" U+0120).
public func gpt2ByteToUnicode() -> [Character] {
    var bs: [Int] = Array(0x21...0x7E) + Array(0xA1...0xAC) + Array(0xAE...0xFF)
    var cs = bs
    var n = 0
    for b in 0..<256 where !bs.contains(b) {
        bs.append(b); cs.append(256 + n); n += 1
    }
    var table = [Character](repeating: " ", count: 256)
    for (b, c) in zip(bs, cs) { table[b] = Character(Unicode.Scalar(UInt32(c))!) }
    return table
}

public final class BPETokenizer: Tokenizer {
    /// GPT-2's pre-tokenizer regex, used by a ByteLevel pre-tokenizer with use_regex = true.
    public static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    private struct Pair: Hashable { let a: String; let b: String }

    private enum PreStep {
        case split(NSRegularExpression)          // "Isolated": matches and the gaps between them are pieces
        case byteLevelPrefixSpace                // ByteLevel add_prefix_space
    }

    public let vocab: [String: Int32]
    private let idToToken: [Int32: String]
    private let ranks: [Pair: Int]
    /// Added/special tokens (e.g. <|endoftext|>): matched literally before anything else.
    public let addedTokens: [String: Int32]
    private let addedByLength: [String]
    private let steps: [PreStep]
    private let nfc: Bool
    private let ignoreMerges: Bool
    private let byteToChar: [Character]
    private let charToByte: [Character: UInt8]
    private var cache: [String: [Int32]] = [:]
    public let vocabSize: Int
    /// From tokenizer_config.json's bos_token / eos_token beside tokenizer.json, when it names them (`loadTokenizer`).
    public internal(set) var bosID: Int32?
    public internal(set) var eosID: Int32?

    public convenience init(path: String) throws {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw TokenizerError.unreadable(path: path, reason: error.localizedDescription)
        }
        try self.init(json: data, path: path)
    }

    /// `path` only names the source in errors.
    public init(json: Data, path: String = "tokenizer.json") throws {
        func invalid(_ r: String) -> TokenizerError { .invalid(path: path, reason: r) }
        func unsupported(_ r: String) -> TokenizerError { .unsupported(path: path, reason: r) }

        guard let root = (try? JSONSerialization.jsonObject(with: json)) as? [String: Any] else {
            throw invalid("not a JSON object")
        }
        guard let model = root["model"] as? [String: Any] else { throw invalid("no 'model' object") }
        if let t = model["type"] as? String, t != "BPE" { throw unsupported("model type \(t)") }
        guard let v = model["vocab"] as? [String: Any] else { throw invalid("no 'model.vocab' object") }
        var vocab: [String: Int32] = [:]
        for (tok, id) in v {
            guard let n = (id as? NSNumber)?.intValue else { throw invalid("vocab id of '\(tok)' is not a number") }
            vocab[tok] = Int32(n)
        }
        // merges: ["a b", ...] (classic) or [["a", "b"], ...] (tokenizers >= 0.20)
        var ranks: [Pair: Int] = [:]
        for (rank, m) in ((model["merges"] as? [Any]) ?? []).enumerated() {
            let parts: [String]
            if let s = m as? String { parts = s.split(separator: " ", omittingEmptySubsequences: false).map(String.init) }
            else if let a = m as? [String] { parts = a }
            else { throw invalid("merge \(rank) is neither \"a b\" nor [a, b]") }
            guard parts.count == 2 else { throw invalid("merge \(rank) does not have two parts: \(m)") }
            let p = Pair(a: parts[0], b: parts[1])
            if ranks[p] == nil { ranks[p] = rank }
        }
        self.ignoreMerges = (model["ignore_merges"] as? Bool) ?? false

        var added: [String: Int32] = [:]
        for case let t as [String: Any] in (root["added_tokens"] as? [Any]) ?? [] {
            guard let content = t["content"] as? String, let id = (t["id"] as? NSNumber)?.intValue else {
                throw invalid("added_tokens entry without content/id")
            }
            added[content] = Int32(id)
        }

        // normalizer: none or NFC (Qwen); anything else would change the text silently.
        switch root["normalizer"] {
        case nil, is NSNull: nfc = false
        case let n as [String: Any]:
            switch n["type"] as? String {
            case "NFC": nfc = true
            default: throw unsupported("normalizer \(n["type"] as? String ?? "?")")
            }
        default: throw invalid("normalizer is not an object")
        }

        // pre_tokenizer: ByteLevel, Split(regex, Isolated), or a Sequence of those.
        var steps: [PreStep] = []
        var sawByteLevel = false
        func addPre(_ p: [String: Any]) throws {
            switch p["type"] as? String {
            case "Sequence":
                for case let q as [String: Any] in (p["pretokenizers"] as? [Any]) ?? [] { try addPre(q) }
            case "ByteLevel":
                sawByteLevel = true
                if (p["add_prefix_space"] as? Bool) == true { steps.append(.byteLevelPrefixSpace) }
                if (p["use_regex"] as? Bool) ?? true {
                    steps.append(.split(try NSRegularExpression(pattern: BPETokenizer.gpt2Pattern)))
                }
            case "Split":
                let behavior = p["behavior"] as? String ?? "Isolated"
                guard behavior == "Isolated" else { throw unsupported("Split behavior \(behavior)") }
                if (p["invert"] as? Bool) == true { throw unsupported("Split with invert = true") }
                guard let pat = p["pattern"] as? [String: Any] else { throw invalid("Split without pattern") }
                let regex: NSRegularExpression
                if let r = pat["Regex"] as? String {
                    do { regex = try NSRegularExpression(pattern: r) } catch {
                        throw unsupported("Split regex not understood by NSRegularExpression: \(r)")
                    }
                } else if let s = pat["String"] as? String {
                    regex = try NSRegularExpression(pattern: NSRegularExpression.escapedPattern(for: s))
                } else { throw invalid("Split pattern is neither Regex nor String") }
                steps.append(.split(regex))
            case let t:
                throw unsupported("pre_tokenizer \(t ?? "?")")
            }
        }
        if let p = root["pre_tokenizer"] as? [String: Any] { try addPre(p) }
        // Some files put ByteLevel only in the decoder; the byte mapping is the same.
        if !sawByteLevel, let d = root["decoder"] as? [String: Any], d["type"] as? String == "ByteLevel" { sawByteLevel = true }
        guard sawByteLevel else { throw unsupported("no ByteLevel pre-tokenizer or decoder") }

        let b2u = gpt2ByteToUnicode()
        for (b, c) in b2u.enumerated() where vocab[String(c)] == nil {
            throw invalid("vocab lacks the byte symbol '\(c)' (byte 0x\(String(b, radix: 16))); byte-level BPE needs all 256")
        }
        var c2b: [Character: UInt8] = [:]
        for (b, c) in b2u.enumerated() { c2b[c] = UInt8(b) }

        var inv: [Int32: String] = [:]
        for (t, id) in vocab { inv[id] = t }
        for (t, id) in added { inv[id] = t }
        self.vocab = vocab
        self.idToToken = inv
        self.ranks = ranks
        self.addedTokens = added
        self.addedByLength = added.keys.sorted { $0.count != $1.count ? $0.count > $1.count : $0 < $1 }
        self.steps = steps
        self.byteToChar = b2u
        self.charToByte = c2b
        self.vocabSize = Int((inv.keys.max() ?? -1) + 1)
    }

    public func tokenId(_ token: String) -> Int32? { addedTokens[token] ?? vocab[token] }

    // MARK: encode

    public func encode(_ text: String) -> [Int32] {
        var out: [Int32] = []
        for (segment, addedId) in splitAddedTokens(text) {
            if let addedId { out.append(addedId); continue }
            let normalized = nfc ? segment.precomposedStringWithCanonicalMapping : segment
            for piece in preTokenize(normalized) { out += encodeWord(piece) }
        }
        return out
    }

    /// Text split at literal occurrences of added tokens (longest match first).
    private func splitAddedTokens(_ text: String) -> [(String, Int32?)] {
        guard !addedByLength.isEmpty else { return [(text, nil)] }
        var out: [(String, Int32?)] = []
        var rest = Substring(text)
        var plain = ""
        while !rest.isEmpty {
            if let tok = addedByLength.first(where: { rest.hasPrefix($0) }) {
                if !plain.isEmpty { out.append((plain, nil)); plain = "" }
                out.append((tok, addedTokens[tok]))
                rest = rest.dropFirst(tok.count)
            } else {
                plain.append(rest.removeFirst())
            }
        }
        if !plain.isEmpty { out.append((plain, nil)) }
        return out
    }

    private func preTokenize(_ text: String) -> [String] {
        var pieces = [text]
        for step in steps {
            switch step {
            case .byteLevelPrefixSpace:
                if let f = pieces.first, !f.hasPrefix(" ") { pieces[0] = " " + f }
            case .split(let re):
                pieces = pieces.flatMap { splitIsolated($0, re) }
            }
        }
        return pieces.filter { !$0.isEmpty }
    }

    private func splitIsolated(_ s: String, _ re: NSRegularExpression) -> [String] {
        let ns = NSString(string: s)
        var out: [String] = []
        var last = 0
        for m in re.matches(in: s, range: NSRange(location: 0, length: ns.length)) where m.range.length > 0 {
            if m.range.location > last { out.append(ns.substring(with: NSRange(location: last, length: m.range.location - last))) }
            out.append(ns.substring(with: m.range))
            last = m.range.location + m.range.length
        }
        if last < ns.length { out.append(ns.substring(from: last)) }
        return out
    }

    /// BPE on one pre-token: bytes → byte symbols, then repeatedly merge the lowest-ranked
    /// adjacent pair (all its occurrences, left to right) until no pair has a rank.
    private func encodeWord(_ piece: String) -> [Int32] {
        if let hit = cache[piece] { return hit }
        let mapped = String(piece.utf8.map { byteToChar[Int($0)] })
        if ignoreMerges, let id = vocab[mapped] { cache[piece] = [id]; return [id] }
        var symbols = mapped.map { String($0) }
        while symbols.count > 1 {
            var best: (rank: Int, pair: Pair)? = nil
            for i in 0..<(symbols.count - 1) {
                let p = Pair(a: symbols[i], b: symbols[i + 1])
                if let r = ranks[p], best == nil || r < best!.rank { best = (r, p) }
            }
            guard let b = best else { break }
            var merged: [String] = []
            merged.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count, symbols[i] == b.pair.a, symbols[i + 1] == b.pair.b {
                    merged.append(b.pair.a + b.pair.b); i += 2
                } else {
                    merged.append(symbols[i]); i += 1
                }
            }
            symbols = merged
        }
        // A merged symbol missing from the vocab (inconsistent file) falls back to its bytes,
        // which init() guaranteed are all present.
        var ids: [Int32] = []
        for s in symbols {
            if let id = vocab[s] { ids.append(id) } else { ids += s.map { vocab[String($0)]! } }
        }
        if cache.count < 100_000 { cache[piece] = ids }
        return ids
    }

    // MARK: decode

    public func decode(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        for id in ids {
            guard let tok = idToToken[id] else { continue }
            if addedTokens[tok] == id, vocab[tok] == nil {
                bytes += Array(tok.utf8)
            } else {
                for c in tok { if let b = charToByte[c] { bytes.append(b) } else { bytes += Array(String(c).utf8) } }
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Tokenizer for `--dataloader.tokenizer_path`: an HF tokenizer.json, or bytes when nil.
/// Its BOS and EOS come from tokenizer_config.json in the same folder (as HF's AutoTokenizer reads them), if present.
public func loadTokenizer(path: String?) throws -> Tokenizer {
    guard let path else { return ByteTokenizer() }
    let tokenizer = try BPETokenizer(path: path)
    let configPath = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("tokenizer_config.json").path
    guard let data = FileManager.default.contents(atPath: configPath) else { return tokenizer }
    guard let config = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
        throw TokenizerError.invalid(path: configPath, reason: "not a JSON object")
    }
    func special(_ key: String) throws -> Int32? {
        // A string, or an AddedToken object {"content": ...}; null or absent: none.
        let value = config[key]
        guard let name = value as? String ?? (value as? [String: Any])?["content"] as? String else { return nil }
        guard let id = tokenizer.tokenId(name) else {
            throw TokenizerError.invalid(path: configPath, reason: "\(key) '\(name)' is not a token of \(path)")
        }
        return id
    }
    tokenizer.bosID = try special("bos_token")
    tokenizer.eosID = try special("eos_token")
    return tokenizer
}
