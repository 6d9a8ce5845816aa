import Foundation
import Train
import XCTest

/// Validation during training against HF transformers' loss of the same weights over the same windows, on one rank
/// and on sharded topologies; and document datasets resuming on another topology without repeating or skipping a
/// window.
final class ValidationAndDataTests: XCTestCase {
    struct Row: Decodable { var step: Int; var loss: Double; var validation_loss: Double? }

    /// A fresh folder that exists.
    func folder() throws -> String {
        let dir = temporaryFolder()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func rows(_ dump: String) -> [Row] {
        let lines = (try? String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8))?.split(separator: "\n") ?? []
        return lines.compactMap { try? JSONDecoder().decode(Row.self, from: Data($0.utf8)) }
    }

    func launch(_ ranks: Int, dump: String, _ args: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try Titan.run(["launch", "--ranks", "\(ranks)", "--dump-folder", dump, "--", "train", "--job.dump_folder", dump,
                               "--comm.timeout_seconds", "60"] + args)
        XCTAssertEqual(r.status, 0, "\(ranks) ranks \(args): \(r.stderr.suffix(3000))", file: file, line: line)
    }

    /// The qwen3_moe fixture trains on windows 0..<8 at step 1 and 8..<16 at step 2 (global batch 8); HF's step-2 loss
    /// is the loss of the weights after step 1 over windows 8..<16. A validation stream that starts at window 8 must
    /// give that loss after step 1 (1e-5), and every topology the one-rank value (1e-6).
    func testValidationLossMatchesHFOnEveryTopology() throws {
        let fixtures = TrainingParityTests.fixtures
        let expected = try TrainingParityTests.expected("qwen3_moe")
        let L = 16, G = 8
        let dir = try folder()
        let tokens = try Npy.readTokens(path: "\(fixtures)/tokens.npy")
        let val = "\(dir)/val.npy"
        try Npy.writeTokens(Array(tokens[(G * (L + 1))...]), dtype: .int32, path: val)
        let recipe = expected.recipe.cli_overrides.enumerated().filter { i, _ in i < 2 || i > 3 }.map(\.element)   // without local_batch_size 8
        let common = recipe + ["--training.steps", "2", "--checkpoint.initial_load_path", "\(fixtures)/qwen3_moe",
            "--checkpoint.initial_load_in_hf", "true", "--dataloader.dataset", "tokens", "--dataloader.dataset_path", "\(fixtures)/tokens.npy",
            "--validation.enable", "true", "--validation.freq", "1", "--validation.steps", "1",
            "--validation.dataset", "tokens", "--validation.dataset_path", val]

        let one = "\(dir)/one"
        try launch(1, dump: one, common + ["--training.local_batch_size", "8"])
        let reference = rows(one)
        XCTAssertEqual(reference.map(\.step), [1, 2])
        guard reference.count == 2, let v1 = reference[0].validation_loss, let v2 = reference[1].validation_loss else {
            return XCTFail("no validation_loss rows: \(reference)")
        }
        XCTAssertLessThan(abs(v1 - expected.losses[1]) / expected.losses[1], 1e-5, "validation after step 1 \(v1) vs HF's step-2 loss \(expected.losses[1])")
        // The same forward as step 2's training loss, over the same windows with the same weights.
        XCTAssertLessThan(abs(v1 - reference[1].loss) / reference[1].loss, 1e-6)
        XCTAssertNotEqual(v1, v2, "step 2's weights give another validation loss")

        for (label, flags) in [("FSDP 8 x EP 4", ["--parallelism.data_parallel_shard_degree", "8", "--parallelism.expert_parallel_degree", "4"]),
                               ("HSDP 2 x 4, EP 2", ["--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "4",
                                                     "--parallelism.expert_parallel_degree", "2"])] {
            let dump = "\(dir)/\(label.filter(\.isLetter))"
            try launch(8, dump: dump, common + ["--training.local_batch_size", "1"] + flags)
            let got = rows(dump)
            XCTAssertEqual(got.map(\.step), [1, 2], label)
            for (r, want) in zip(got, [v1, v2]) {
                guard let v = r.validation_loss else { XCTFail("\(label): step \(r.step) has no validation_loss"); continue }
                XCTAssertLessThan(abs(v - want) / want, 1e-6, "\(label) step \(r.step): \(v) vs one rank's \(want)")
            }
        }
    }

    /// Documents of a jsonl file packed into windows: a run checkpointed on 2 ranks and resumed on 4 (the same global
    /// batch) continues with the windows the uninterrupted one-rank run trains on: every later loss agrees to fp32
    /// round-off, where one repeated or skipped window would move it by far more.
    func testJSONLResumesOnAnotherTopologyWithoutRepeatingOrSkipping() throws {
        let dir = try folder()
        let data = "\(dir)/docs.jsonl"
        let words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
        var text = ""
        for i in 0..<300 {
            let n = 3 + (i * 7919) % 37
            let doc = (0..<n).map { words[($0 * 31 + i * 17) % words.count] }.joined(separator: " ")
            text += "{\"id\": \(i), \"text\": \"\(doc)\"}\n"
        }
        try text.write(toFile: data, atomically: true, encoding: .utf8)
        let common = ["--config", "debugmodel", "--training.seq_len", "32", "--dataloader.dataset", "jsonl",
                      "--dataloader.dataset_path", data, "--checkpoint.enable", "true", "--checkpoint.interval", "3",
                      "--lr_scheduler.warmup_steps", "0", "--lr_scheduler.decay_ratio", "0"]   // a schedule independent of training.steps

        let straight = "\(dir)/straight"
        try launch(1, dump: straight, common + ["--training.steps", "6", "--training.local_batch_size", "4"])
        let resumed = "\(dir)/resumed"
        try launch(2, dump: resumed, common + ["--training.steps", "3", "--training.local_batch_size", "2",
                                               "--parallelism.data_parallel_shard_degree", "2"])
        try launch(4, dump: resumed, common + ["--training.steps", "6", "--training.local_batch_size", "1",
                                               "--parallelism.data_parallel_shard_degree", "4"])
        let want = rows(straight), got = rows(resumed)
        XCTAssertEqual(want.map(\.step), Array(1...6))
        XCTAssertEqual(got.map(\.step), Array(1...6), "the resumed run's rows")
        for (a, b) in zip(want, got) {
            XCTAssertLessThan(abs(a.loss - b.loss) / a.loss, 1e-5, "step \(a.step): \(b.loss) resumed vs \(a.loss) straight")
        }
        // The checkpoint keeps the next window (3 steps of 4) and where it starts; the position is global: the
        // uninterrupted run's step-3 checkpoint says the same.
        func dataloader(_ dump: String) throws -> NSDictionary? {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(dump)/checkpoint/step-3/metadata.json"))
            return (try JSONSerialization.jsonObject(with: data) as? [String: Any])?["dataloader"] as? NSDictionary
        }
        let state = try dataloader(resumed)
        XCTAssertEqual(state?["next_window"] as? Int, 12, "\(String(describing: state))")
        XCTAssertNotNil(state?["document"] as? NSDictionary)
        XCTAssertEqual(state, try dataloader(straight))
    }

    /// A malformed line stops the run with the file and line number.
    func testMalformedJSONLNamesFileAndLine() throws {
        let dir = try folder()
        let data = "\(dir)/bad.jsonl"
        try "{\"text\": \"one\"}\n{\"text\": \"two\"}\n\n{\"txt\": \"three\"}\n".write(toFile: data, atomically: true, encoding: .utf8)
        let r = try Titan.run(["train", "--config", "debugmodel", "--training.steps", "2", "--training.seq_len", "8",
                               "--training.local_batch_size", "2", "--dataloader.dataset", "jsonl", "--dataloader.dataset_path", data,
                               "--job.dump_folder", "\(dir)/out"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("\(data):4: has no field \"text\""), r.stderr.suffix(1000).description)
    }
}
