import Config
import Foundation
@testable import Train
import XCTest

final class NpyTests: XCTestCase {
    func testRoundTripEveryDType() throws {
        let toks: [Int32] = [0, 1, 2, 65535, 7, 42]
        for dt in NpyDType.allCases {
            XCTAssertEqual(try Npy.decodeTokens(Npy.encode(tokens: toks, dtype: dt), path: "t.npy"), toks, "\(dt)")
        }
        let big: [Int32] = [70000, Int32.max]
        XCTAssertEqual(try Npy.decodeTokens(Npy.encode(tokens: big, dtype: .int32), path: "t.npy"), big)
        XCTAssertEqual(try Npy.decodeTokens(Npy.encode(tokens: big, dtype: .int64), path: "t.npy"), big)
        XCTAssertEqual(try Npy.decodeTokens(Npy.encode(tokens: [], dtype: .uint16), path: "t.npy"), [])
    }

    /// Bytes exactly as numpy 2.x's np.save(np.arange(5, dtype='<u2')) writes them (128-byte header block).
    func testNumpyWrittenFile() throws {
        var header = "{'descr': '<u2', 'fortran_order': False, 'shape': (5,), }"
        header += String(repeating: " ", count: 118 - 1 - header.count) + "\n"
        var bytes: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, 118, 0] + Array(header.utf8)
        for v in 0..<5 { bytes += [UInt8(v), 0] }
        XCTAssertEqual(try Npy.decodeTokens(bytes, path: "np.npy"), [0, 1, 2, 3, 4])
        // version 2 header (4-byte length)
        var v2: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 2, 0, 118, 0, 0, 0] + Array(header.utf8)
        for v in 0..<5 { v2 += [UInt8(v), 0] }
        XCTAssertEqual(try Npy.decodeTokens(v2, path: "np.npy"), [0, 1, 2, 3, 4])
    }

    func makeFile(descr: String, fortran: String = "False", shape: String = "(3,)", dataBytes: Int) -> [UInt8] {
        let header = "{'descr': '\(descr)', 'fortran_order': \(fortran), 'shape': \(shape), }\n"
        return [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, UInt8(header.utf8.count), 0] + Array(header.utf8)
            + [UInt8](repeating: 1, count: dataBytes)
    }

    func expectError(_ bytes: [UInt8], _ check: (NpyError) -> Bool, file: StaticString = #filePath, line: UInt = #line) {
        do { _ = try Npy.decodeTokens(bytes, path: "/data/bad.npy"); XCTFail("no error", file: file, line: line) } catch let e as NpyError {
            XCTAssertTrue(check(e), "\(e)", file: file, line: line)
            XCTAssertTrue(e.description.contains("/data/bad.npy"), "error must name the file: \(e)", file: file, line: line)
        } catch { XCTFail("\(error)", file: file, line: line) }
    }

    func testBadHeaders() {
        expectError(Array("NOTNUMPY..........".utf8)) { if case .badHeader = $0 { return true }; return false }
        expectError([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 9, 0, 0, 0]) { if case .badHeader = $0 { return true }; return false }
        expectError([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, 200, 0, 0x7B]) { if case .badHeader = $0 { return true }; return false }
        expectError(makeFile(descr: "<f4", dataBytes: 12)) { if case .unsupported(_, let r) = $0 { return r.contains("<f4") }; return false }
        expectError(makeFile(descr: ">i4", dataBytes: 12)) { if case .unsupported = $0 { return true }; return false }
        expectError(makeFile(descr: "<i4", fortran: "True", dataBytes: 12)) { if case .unsupported = $0 { return true }; return false }
        expectError(makeFile(descr: "<i4", shape: "(3, 2)", dataBytes: 24)) { if case .unsupported = $0 { return true }; return false }
        expectError(makeFile(descr: "<i4", shape: "()", dataBytes: 4)) { if case .unsupported = $0 { return true }; return false }
        expectError(makeFile(descr: "<i4", dataBytes: 11)) {
            if case .truncated(_, let exp, let act) = $0 { return exp == 12 && act == 11 }; return false
        }
        let header = "{'fortran_order': False, 'shape': (3,), }\n"
        expectError([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, UInt8(header.utf8.count), 0] + Array(header.utf8)) {
            if case .badHeader(_, let r) = $0 { return r.contains("descr") }; return false
        }
        var neg = Npy.encode(tokens: [1, 2], dtype: .int64)
        neg.replaceSubrange((neg.count - 8)..<neg.count, with: [UInt8](repeating: 0xFF, count: 8))
        expectError(neg) { if case .tokenOutOfRange(_, 1, -1) = $0 { return true }; return false }
    }

    func testReadFromDiskAndMissingFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tok-\(UUID().uuidString).npy").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Npy.writeTokens([5, 6, 7], dtype: .uint16, path: path)
        XCTAssertEqual(try Npy.readTokens(path: path), [5, 6, 7])
        XCTAssertThrowsError(try Npy.readTokens(path: path + ".missing")) { e in
            XCTAssertTrue("\(e)".contains(path + ".missing"))
        }
    }
}

final class DataLoaderTests: XCTestCase {
    /// tokens[i] = i, so a window's content spells out its index arithmetic.
    func iota(_ n: Int) -> [Int32] { (0..<n).map { Int32($0) } }

    func testWindowsInputsAndLabels() throws {
        let L = 3
        let dl = DataLoader(tokens: iota(4 * 10 + 2), seqLen: L, localBatchSize: 2)
        XCTAssertEqual(dl.numWindows, 10)  // the 2-token tail is never used
        let b = try dl.batch(step: 1)
        XCTAssertEqual(b.inputs_BL, [0, 1, 2, 4, 5, 6])     // windows 0 and 1: tokens[0..<4], tokens[4..<8]
        XCTAssertEqual(b.labels_BL, [1, 2, 3, 5, 6, 7])
        let b2 = try dl.batch(step: 2)
        XCTAssertEqual(b2.inputs_BL, [8, 9, 10, 12, 13, 14])
    }

    func testDataParallelRanksAndWrapAround() throws {
        let L = 3, B = 2, dp = 2
        let toks = iota(4 * 10 + 2)
        let loaders = (0..<dp).map { DataLoader(tokens: toks, seqLen: L, localBatchSize: B, dpDegree: dp, dpRank: $0) }
        XCTAssertEqual(loaders[0].globalBatchSize, 4)
        XCTAssertEqual(loaders[0].windowIndices(step: 1), [0, 1])
        XCTAssertEqual(loaders[1].windowIndices(step: 1), [2, 3])
        XCTAssertEqual(loaders[0].windowIndices(step: 2), [4, 5])
        XCTAssertEqual(loaders[1].windowIndices(step: 2), [6, 7])
        // step 3 covers windows 8..<12 → 8, 9, 0, 1 (mod 10)
        XCTAssertEqual(loaders[0].windowIndices(step: 3), [8, 9])
        XCTAssertEqual(loaders[1].windowIndices(step: 3), [0, 1])
        XCTAssertEqual(try loaders[1].batch(step: 3).inputs_BL, [0, 1, 2, 4, 5, 6])
        XCTAssertEqual(loaders[0].windowIndices(step: 4), [2, 3])

        // Any dp split of the same global batch sees the same windows as one rank with B*dp.
        let single = DataLoader(tokens: toks, seqLen: L, localBatchSize: B * dp)
        for dp4 in [1, 2, 4] {
            let ranks = (0..<dp4).map { DataLoader(tokens: toks, seqLen: L, localBatchSize: B * dp / dp4, dpDegree: dp4, dpRank: $0) }
            for s in 1...7 {
                XCTAssertEqual(try ranks.flatMap { try $0.batch(step: s).labels_BL }, try single.batch(step: s).labels_BL, "dp=\(dp4) step=\(s)")
            }
        }
    }

    func testThreeRanksUnevenWrap() throws {
        // 7 windows, B=2, dp=3 → G=6; step 2 covers windows 6..<12 → 6,0 | 1,2 | 3,4
        let dl = (0..<3).map { DataLoader(tokens: iota(7 * 5), seqLen: 4, localBatchSize: 2, dpDegree: 3, dpRank: $0) }
        XCTAssertEqual(dl.map { $0.windowIndices(step: 2) }, [[6, 0], [1, 2], [3, 4]])
        XCTAssertEqual(try dl[0].batch(step: 2).inputs_BL, [30, 31, 32, 33, 0, 1, 2, 3])
        XCTAssertEqual(try dl[0].batch(step: 2).labels_BL, [31, 32, 33, 34, 1, 2, 3, 4])
    }

    /// A batch is a function of the step alone: a loader built later (a resumed run) serves the same batch.
    func testBatchesArePureFunctionsOfTheStep() throws {
        let a = DataLoader(tokens: iota(200), seqLen: 4, localBatchSize: 3)
        let first = try (1...3).map { try a.batch(step: $0) }
        XCTAssertEqual(try DataLoader(tokens: iota(200), seqLen: 4, localBatchSize: 3).batch(step: 3), first[2])
        XCTAssertNotEqual(first[1], first[2])
    }

    func testSyntheticDeterministicPrefixStableAndInVocab() {
        let a = SyntheticCorpus.generate(count: 5000, vocabSize: 2048, seed: 0)
        XCTAssertEqual(a, SyntheticCorpus.generate(count: 5000, vocabSize: 2048, seed: 0))
        XCTAssertEqual(Array(SyntheticCorpus.generate(count: 9000, vocabSize: 2048, seed: 0).prefix(5000)), a)
        XCTAssertNotEqual(a, SyntheticCorpus.generate(count: 5000, vocabSize: 2048, seed: 1))
        XCTAssertTrue(a.allSatisfy { $0 >= 0 && $0 < 2048 })
        let small = SyntheticCorpus.generate(count: 1000, vocabSize: 10, seed: 3)
        XCTAssertTrue(small.allSatisfy { $0 >= 0 && $0 < 10 })
    }

    /// Learnable: the next token given the current one is far more predictable than a unigram guess.
    func testSyntheticHasBigramStructure() {
        let toks = SyntheticCorpus.generate(count: 200_000, vocabSize: 2048, seed: 0)
        var uni: [Int32: Int] = [:], bi: [Int64: Int] = [:], ctx: [Int32: Int] = [:]
        for i in 0..<(toks.count - 1) {
            uni[toks[i], default: 0] += 1
            ctx[toks[i], default: 0] += 1
            bi[Int64(toks[i]) << 32 | Int64(toks[i + 1]), default: 0] += 1
        }
        let n = Double(toks.count - 1)
        let hUni = -uni.values.reduce(0.0) { $0 + Double($1) / n * log(Double($1) / n) }
        var hCond = 0.0
        for (k, c) in bi {
            let p = Double(c) / n
            hCond -= p * log(Double(c) / Double(ctx[Int32(k >> 32)]!))
        }
        XCTAssertGreaterThan(hUni, 5.0)      // ≈ ln 256: a model must learn something to beat it
        XCTAssertLessThan(hCond, 1.2)        // ≈ 0.9 nats once bigrams are learned
    }

    func testLoadTokenStreamSources() throws {
        var c = DataLoaderConfig()
        let syn = try c.loadTokens(seqLen: 7, globalBatch: 4, steps: 3, seed: 0, vocabSize: 100)
        XCTAssertEqual(syn.count, 3 * 4 * 8)

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let npy = dir.appendingPathComponent("t.npy").path
        try Npy.writeTokens(iota(50), dtype: .int32, path: npy)
        c.dataset = .tokens; c.dataset_path = npy
        XCTAssertEqual(try c.loadTokens(seqLen: 7, globalBatch: 2, steps: 3, seed: 0, vocabSize: 100), iota(50))
        XCTAssertThrowsError(try c.loadTokens(seqLen: 7, globalBatch: 2, steps: 3, seed: 0, vocabSize: 40)) { e in
            XCTAssertTrue("\(e)".contains("vocab_size 40"), "\(e)")
        }
        XCTAssertThrowsError(try c.loadTokens(seqLen: 60, globalBatch: 2, steps: 3, seed: 0, vocabSize: 100))

        // Document files stream: one line one document, BOS and EOS around it (the byte tokenizer's 256 and 257).
        let txt = dir.appendingPathComponent("t.txt").path
        try "hello, world".write(toFile: txt, atomically: true, encoding: .utf8)
        c.dataset = .text; c.dataset_path = txt
        let w = try c.windows(seqLen: 4, globalBatch: 2, steps: 3, seed: 0, vocabSize: 258)
        XCTAssertNil(w.count)
        XCTAssertEqual(Array(try w.window(0)), [256] + "hell".utf8.map { Int32($0) })
    }
}
