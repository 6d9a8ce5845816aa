import Foundation
@testable import Train
import XCTest

final class TokenizerTests: XCTestCase {
    static let qwenPattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// A hand-made byte-level BPE tokenizer.json: ids 0..<256 are the byte symbols (id = byte),
    /// then the merges below in rank order, then <|endoftext|>.
    static func tokenizerJSON(preTokenizer: [String: Any], mergesAsArrays: Bool = false, normalizer: Any = NSNull()) -> Data {
        let b2u = gpt2ByteToUnicode()
        var vocab: [String: Int] = [:]
        for b in 0..<256 { vocab[String(b2u[b])] = b }
        let merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("Ġwor", "l"), ("Ġworl", "d")]
        for (i, m) in merges.enumerated() { vocab[m.0 + m.1] = 256 + i }
        let root: [String: Any] = [
            "version": "1.0",
            "added_tokens": [["id": 265, "content": "<|endoftext|>", "special": true]],
            "normalizer": normalizer,
            "pre_tokenizer": preTokenizer,
            "decoder": ["type": "ByteLevel"],
            "model": ["type": "BPE", "vocab": vocab,
                      "merges": mergesAsArrays ? merges.map { [$0.0, $0.1] } as Any : merges.map { "\($0.0) \($0.1)" } as Any],
        ]
        return try! JSONSerialization.data(withJSONObject: root)
    }

    static let qwenPre: [String: Any] = ["type": "Sequence", "pretokenizers": [
        ["type": "Split", "pattern": ["Regex": qwenPattern], "behavior": "Isolated", "invert": false],
        ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false],
    ]]

    func testByteToUnicode() {
        let t = gpt2ByteToUnicode()
        XCTAssertEqual(t[Int(UInt8(ascii: "A"))], "A")
        XCTAssertEqual(t[0x20], "\u{120}")  // Ġ
        XCTAssertEqual(t[0x00], "\u{100}")
        XCTAssertEqual(t[0x0A], "\u{10A}")  // Ċ
        XCTAssertEqual(Set(t).count, 256)
    }

    func testQwenStyleEncode() throws {
        let tok = try BPETokenizer(json: Self.tokenizerJSON(preTokenizer: Self.qwenPre, normalizer: ["type": "NFC"]))
        // pieces: "hello" " world" " " "1" "2" "3" "!" then the special token
        XCTAssertEqual(tok.encode("hello world 123!<|endoftext|>"), [259, 264, 32, 49, 50, 51, 33, 265])
        XCTAssertEqual(tok.encode("hellohello"), [259, 259])
        XCTAssertEqual(tok.encode("hel"), [256, 108])  // "he" + "l": "l l" needs two l's
        XCTAssertEqual(tok.vocabSize, 266)
        XCTAssertEqual(tok.tokenId("<|endoftext|>"), 265)
    }

    func testMergeArraysFormatAndGPT2ByteLevelRegex() throws {
        let tok = try BPETokenizer(json: Self.tokenizerJSON(
            preTokenizer: ["type": "ByteLevel", "add_prefix_space": false, "use_regex": true], mergesAsArrays: true))
        XCTAssertEqual(tok.encode("hello world"), [259, 264])
        // GPT-2's regex keeps digits together with a leading space: " 12" is one piece, no merges
        XCTAssertEqual(tok.encode(" 12"), [32, 49, 50])
        let prefixed = try BPETokenizer(json: Self.tokenizerJSON(
            preTokenizer: ["type": "ByteLevel", "add_prefix_space": true, "use_regex": true]))
        XCTAssertEqual(prefixed.encode("world"), [264])
    }

    func testDecodeRoundTrip() throws {
        let tok = try BPETokenizer(json: Self.tokenizerJSON(preTokenizer: Self.qwenPre))
        for s in ["hello world", "héllo wörld, 世界! 123\n\ttabs  spaces", "<|endoftext|>hello<|endoftext|>", "emoji 🦙 ok", ""] {
            XCTAssertEqual(tok.decode(tok.encode(s)), s)
        }
    }

    func testNFCNormalizer() throws {
        let tok = try BPETokenizer(json: Self.tokenizerJSON(preTokenizer: Self.qwenPre, normalizer: ["type": "NFC"]))
        // "e" + combining acute becomes the single code point é (2 UTF-8 bytes) before BPE
        XCTAssertEqual(tok.encode("e\u{301}"), Array("\u{e9}".utf8).map { Int32($0) })
    }

    func testUnsupportedAndInvalidFiles() {
        XCTAssertThrowsError(try BPETokenizer(json: Data("[1]".utf8), path: "x.json")) { e in
            XCTAssertTrue("\(e)".contains("x.json"))
        }
        let wordPiece = try! JSONSerialization.data(withJSONObject: ["model": ["type": "WordPiece", "vocab": [:]]])
        XCTAssertThrowsError(try BPETokenizer(json: wordPiece)) { e in XCTAssertTrue("\(e)".contains("WordPiece")) }
        let noBytes = try! JSONSerialization.data(withJSONObject: [
            "pre_tokenizer": ["type": "ByteLevel"], "model": ["type": "BPE", "vocab": ["a": 0], "merges": []]])
        XCTAssertThrowsError(try BPETokenizer(json: noBytes)) { e in XCTAssertTrue("\(e)".contains("byte symbol")) }
        XCTAssertThrowsError(try BPETokenizer(path: "/nonexistent/tokenizer.json")) { e in
            XCTAssertTrue("\(e)".contains("/nonexistent/tokenizer.json"))
        }
    }

    func testByteTokenizer() {
        let t = ByteTokenizer()
        XCTAssertEqual(t.encode("hé"), [104, 195, 169])
        XCTAssertEqual(t.decode(t.encode("héllo 世界")), "héllo 世界")
        // Bytes, then BOS and EOS for document datasets; decoding drops them.
        XCTAssertEqual(t.vocabSize, 258)
        XCTAssertEqual([t.bosID, t.eosID], [256, 257])
        XCTAssertEqual(t.decode([256] + t.encode("ok") + [257]), "ok")
    }
}
