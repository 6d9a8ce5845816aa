import Foundation
@testable import Train
import XCTest

/// Document datasets: BOS/EOS around each document, packed into L+1-token windows, streamed in chunks, resumable from
/// any window's position, malformed input named by file and line. Checked against a plain in-memory packing.
final class DocumentTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("docs-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func write(_ text: String, _ name: String) throws -> String {
        let path = "\(dir)/\(name)"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The reference: every document's bytes between BOS 256 and EOS 257, concatenated, repeated, cut into windows.
    func referenceWindows(_ docs: [String], window: Int, count: Int) -> [[Int32]] {
        let stream = docs.flatMap { [Int32(256)] + $0.utf8.map { Int32($0) } + [Int32(257)] }
        return (0..<count).map { w in (0..<window).map { stream[(w * window + $0) % stream.count] } }
    }

    func windows(_ path: String, _ format: DocumentFormat, window: Int, count: Int, from: DocumentPosition = .start) throws -> [[Int32]] {
        let d = try PackedDocuments(path: path, format: format, tokenizer: ByteTokenizer(), windowTokens: window, vocabSize: 300, from: from)
        return try (0..<count).map { _ in try d.next() }
    }

    func testJSONLPackingMatchesReferenceAcrossEpochs() throws {
        let docs = ["hello world", "a", "", "the quick brown fox", "ünïcödé ✓", "x y z"]
        let lines = docs.enumerated().map { i, t in t.isEmpty ? "" : "{\"n\": \(i), \"text\": \(String(data: try! JSONEncoder().encode(t), encoding: .utf8)!)}" }
        let path = try write(lines.joined(separator: "\n") + "\n", "d.jsonl")
        let kept = docs.filter { !$0.isEmpty }   // empty lines are no documents
        for window in [1, 5, 17, 64] {
            XCTAssertEqual(try windows(path, .jsonl(field: "text"), window: window, count: 30), referenceWindows(kept, window: window, count: 30), "window \(window)")
        }
    }

    func testTextLinesAreDocumentsWithCRLFAndNoFinalNewline() throws {
        let path = try write("first line\r\nsecond\n\n  \nthird", "d.txt")
        XCTAssertEqual(try windows(path, .text, window: 7, count: 9), referenceWindows(["first line", "second", "third"], window: 7, count: 9))
    }

    /// Lines longer than the 1 MiB read chunk and many short ones: the stream is the in-memory packing.
    func testStreamsAcrossChunkBoundaries() throws {
        var docs: [String] = []
        for i in 0..<2000 { docs.append(String(repeating: Character(UnicodeScalar(97 + i % 26)!), count: 1 + (i * 37) % 900)) }
        docs.insert(String(repeating: "L", count: 1_500_000), at: 700)
        let path = try write(docs.joined(separator: "\n") + "\n", "big.txt")
        let total = docs.reduce(0) { $0 + $1.utf8.count + 2 }
        let window = 4097, count = total / window + 3   // past the end: into the second epoch
        XCTAssertEqual(try windows(path, .text, window: window, count: count), referenceWindows(docs, window: window, count: count))
    }

    /// From the position of any window, a new reader continues exactly as the first one does (epochs included).
    func testResumesFromEveryWindowsPosition() throws {
        let docs = ["one two three", "four", "five six seven eight nine", "ten"]
        let path = try write(docs.map { "{\"text\": \"\($0)\"}" }.joined(separator: "\n"), "r.jsonl")
        let window = 6, count = 25
        let all = try windows(path, .jsonl(field: "text"), window: window, count: count)
        let reader = try PackedDocuments(path: path, format: .jsonl(field: "text"), tokenizer: ByteTokenizer(), windowTokens: window, vocabSize: 300)
        for w in 0..<count {
            let position = try reader.nextPosition()
            XCTAssertEqual(position.window, w)
            XCTAssertEqual(try windows(path, .jsonl(field: "text"), window: window, count: count - w, from: position), Array(all[w...]), "from window \(w)")
            _ = try reader.next()
        }
    }

    func testMalformedLinesNameFileAndLine() throws {
        let cases: [(String, String)] = [
            ("{\"text\": \"ok\"}\n{\"text\": 3}\n", ":2: field \"text\" is not a string"),
            ("{\"text\": \"ok\"}\n\n[1, 2]\n", ":3: is not a JSON object"),
            ("{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n", ":2: is not valid JSON"),
            ("{\"body\": \"ok\"}\n", ":1: has no field \"text\" (dataloader.text_field)"),
        ]
        for (i, (content, message)) in cases.enumerated() {
            let path = try write(content, "bad\(i).jsonl")
            XCTAssertThrowsError(try windows(path, .jsonl(field: "text"), window: 4, count: 4)) { e in
                XCTAssertTrue("\(e)".hasPrefix(path + message), "\(e)")
            }
        }
        let empty = try write("\n\n", "empty.txt")
        XCTAssertThrowsError(try windows(empty, .text, window: 4, count: 1)) { XCTAssertTrue("\($0)".contains("holds no document"), "\($0)") }
        XCTAssertThrowsError(try windows("\(dir)/missing.jsonl", .jsonl(field: "text"), window: 4, count: 1)) {
            XCTAssertTrue("\($0)".contains("missing.jsonl: cannot open"), "\($0)")
        }
        // A document whose tokens do not fit the model's vocabulary.
        let path = try write("{\"text\": \"x\"}\n", "v.jsonl")
        let d = try PackedDocuments(path: path, format: .jsonl(field: "text"), tokenizer: ByteTokenizer(), windowTokens: 2, vocabSize: 200)
        XCTAssertThrowsError(try d.next()) { XCTAssertTrue("\($0)".contains("v.jsonl:1: token 256 is not < model.vocab_size 200"), "\($0)") }
    }

    /// The loader's windows are global: a run resumed at step S with window W serves W, W+1, ... whatever its data-
    /// parallel split or global batch, where a new run with that batch would have started at S × G.
    func testLoaderContinuesFromItsStartWindow() throws {
        let path = try write((0..<50).map { "{\"text\": \"document \($0)\"}" }.joined(separator: "\n"), "l.jsonl")
        func source() throws -> WindowSource {
            DocumentWindows(try PackedDocuments(path: path, format: .jsonl(field: "text"), tokenizer: ByteTokenizer(), windowTokens: 9, vocabSize: 300))
        }
        let straight = DataLoader(source: try source(), localBatchSize: 4)
        var want: [Int32] = []
        for s in 1...6 { want += try straight.batch(step: s).labels_BL }
        // Two ranks of 2 up to step 2 (windows 0..<8), then three ranks of 1 with G = 3 from window 8.
        let first = try (0..<2).map { d in DataLoader(source: try source(), localBatchSize: 2, dpDegree: 2, dpRank: d) }
        var got: [Int32] = []
        for s in 1...2 { for l in first { got += try l.batch(step: s).labels_BL } }
        let state = try first[0].state(after: 2)
        XCTAssertEqual(state.next_window, 8)
        let then = try (0..<3).map { d in
            DataLoader(source: DocumentWindows(try PackedDocuments(path: path, format: .jsonl(field: "text"), tokenizer: ByteTokenizer(),
                                                                   windowTokens: 9, vocabSize: 300, from: state.document!)),
                       localBatchSize: 1, dpDegree: 3, dpRank: d, startStep: 2, startWindow: state.next_window)
        }
        for s in 3...7 { for l in then { got += try l.batch(step: s).labels_BL } }   // windows 8..<23
        XCTAssertEqual(got.count, 23 * 8)
        XCTAssertEqual(got, Array(want.prefix(got.count)))
    }
}

/// [validation]: its rules and how many batches an evaluation takes.
final class ValidatorConfigTests: XCTestCase {
    func testRulesAndBatchCounts() throws {
        var v = ValidationConfig()
        v.freq = 0
        XCTAssertThrowsError(try v.validate()) { XCTAssertTrue("\($0)".contains("freq"), "\($0)") }
        v.freq = 5; v.steps = 0
        XCTAssertThrowsError(try v.validate()) { XCTAssertTrue("\($0)".contains("steps"), "\($0)") }
        v.steps = -1; v.seq_len = 0
        XCTAssertThrowsError(try v.validate()) { XCTAssertTrue("\($0)".contains("seq_len"), "\($0)") }

        var job = JobConfig()
        job.training.local_batch_size = 2
        job.training.seq_len = 8
        v = ValidationConfig()
        v.enable = true
        // The whole of a synthetic stream is no number of batches.
        XCTAssertThrowsError(try Validator(v, training: job, vocabSize: 300, dpDegree: 2, dpRank: 0)) {
            XCTAssertTrue("\($0)".contains("validation.steps"), "\($0)")
        }
        // A document file's first pass: 10 documents "doc N" of 7 tokens with BOS/EOS = 70 tokens = 7 windows of 9,
        // so 1 global batch of 2 × 2 (a partial batch is dropped); 3 batches when asked for.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("val-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try (0..<10).map { "doc \($0)" }.joined(separator: "\n").write(toFile: "\(dir)/v.txt", atomically: true, encoding: .utf8)
        v.dataset = .text
        v.dataset_path = "\(dir)/v.txt"
        XCTAssertEqual(try Validator.firstPassWindows(Validator(v, training: job, vocabSize: 300, dpDegree: 1, dpRank: 0).data, seqLen: 8, vocabSize: 300), 7)
        XCTAssertEqual(try Validator(v, training: job, vocabSize: 300, dpDegree: 2, dpRank: 1).batches, 1)
        v.steps = 3
        XCTAssertEqual(try Validator(v, training: job, vocabSize: 300, dpDegree: 2, dpRank: 1).batches, 3)
        v.dataset_path = nil
        XCTAssertThrowsError(try Validator(v, training: job, vocabSize: 300, dpDegree: 1, dpRank: 0)) {
            XCTAssertTrue("\($0)".contains("validation.dataset_path"), "\($0)")
        }
    }
}
