import Foundation
import XCTest

/// `titan generate` as users run it: greedy output against HF transformers' generate() (KIND/generate.json, made by
/// scripts/make_hf_fixtures.py --generate-expectations) from an HF folder and from distributed checkpoints, with and
/// without the KV cache; seeded sampling; streamed text; bad input; the launcher's `generate`.
final class GenerateCommandTests: XCTestCase {
    static let fixtures = TrainingParityTests.fixtures

    struct Expectations: Decodable {
        struct Case: Decodable { var prompt_ids: [Int32]; var new_ids: [Int32] }
        var max_new_tokens: Int
        var cases: [Case]
    }
    struct Sample: Decodable, Equatable { var prompt_ids: [Int32]; var new_ids: [Int32] }

    static func expectations(_ kind: String) throws -> Expectations {
        try JSONDecoder().decode(Expectations.self, from: Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/\(kind)/generate.json")))
    }

    static func hf(_ kind: String) -> [String] {
        ["--checkpoint.initial_load_path", "\(fixtures)/\(kind)", "--checkpoint.initial_load_in_hf", "true"]
    }

    /// Runs `titan generate` (or `titan launch ... generate` with `launcher`); returns the JSON lines and the run.
    @discardableResult
    func generate(_ args: [String], launcher: [String]? = nil, expectSuccess: Bool = true,
                  file: StaticString = #filePath, line: UInt = #line) throws -> ([Sample], Titan.Run) {
        let r = try Titan.run((launcher.map { ["launch"] + $0 } ?? []) + ["generate"] + args)
        if expectSuccess { XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line) }
        let samples = try r.stdout.split(separator: "\n").filter { $0.hasPrefix("{\"prompt_ids\"") }.map {
            try JSONDecoder().decode(Sample.self, from: Data($0.utf8))
        }
        return (samples, r)
    }

    func ids(_ a: [Int32]) -> String { a.map(String.init).joined(separator: ",") }

    func testGreedyFromHFFolderEqualsHFGenerate() throws {
        for kind in ["qwen3_moe", "qwen3_dense", "deepseek_v3"] {
            let e = try Self.expectations(kind)
            for c in e.cases {
                for kv in ["true", "false"] {
                    // eos_ids none: the fixtures' generate() ran with eos_token_id=None
                    let (s, r) = try generate(Self.hf(kind) + ["--generate.prompt_ids", ids(c.prompt_ids),
                                                               "--generate.max_new_tokens", "\(e.max_new_tokens)", "--generate.kv_cache", kv,
                                                               "--generate.eos_ids", "none"])
                    XCTAssertEqual(s, [Sample(prompt_ids: c.prompt_ids, new_ids: c.new_ids)], "\(kind) kv_cache \(kv)")
                    XCTAssertTrue(r.stdout.contains("\"tokens_per_sec\": "), r.stdout)
                }
            }
        }
    }

    func train(dump: String, ranks: Int, _ extra: [String]) throws {
        let args = try TrainingParityTests.expected("qwen3_moe").recipe.cli_overrides + Self.hf("qwen3_moe") + [
            "--dataloader.dataset", "tokens", "--dataloader.dataset_path", "\(Self.fixtures)/tokens.npy",
            "--training.local_batch_size", "\(8 / ranks)", "--parallelism.data_parallel_shard_degree", "\(ranks)",
            "--parallelism.expert_parallel_degree", "\(ranks)", "--comm.timeout_seconds", "60",
            "--job.dump_folder", dump, "--checkpoint.enable", "true"] + extra
        let r = try Titan.run(["launch", "--ranks", "\(ranks)", "--dump-folder", dump, "--", "train"] + args)
        XCTAssertEqual(r.status, 0, r.stderr.suffix(3000).description)
    }

    /// A checkpoint of the fixture's own weights (one step at learning rate 0 changes nothing, on 2 ranks: FSDP 2 × EP 2,
    /// so the checkpoint is sharded) generates what HF generates from the fixture: from the checkpoint folder (its
    /// latest) and from the step folder.
    func testGreedyFromDistributedCheckpointEqualsHFGenerate() throws {
        let dump = temporaryFolder()
        try train(dump: dump, ranks: 2, ["--training.steps", "1", "--optimizer.lr", "0"])
        let e = try Self.expectations("qwen3_moe")
        for source in [dump + "/checkpoint", dump + "/checkpoint/step-1"] {
            for c in e.cases {
                let (s, _) = try generate(["--checkpoint.initial_load_path", source, "--generate.prompt_ids", ids(c.prompt_ids),
                                           "--generate.max_new_tokens", "\(e.max_new_tokens)"])
                XCTAssertEqual(s.map(\.new_ids), [c.new_ids], source)
            }
        }
    }

    /// Trained weights: a distributed checkpoint after 2 steps generates what its HF export generates (greedy and
    /// sampled), with and without the cache.
    func testTrainedCheckpointGeneratesAsItsHFExport() throws {
        let dump = temporaryFolder()
        try train(dump: dump, ranks: 2, ["--training.steps", "2", "--checkpoint.last_save_in_hf", "true"])
        let prompt = ["--generate.prompt_ids", "3,1,4,1,5,9,2,6", "--generate.max_new_tokens", "30"]
        for sampling in [[], ["--generate.temperature", "0.8", "--generate.top_k", "20", "--generate.top_p", "0.9", "--generate.seed", "4"]] {
            let (fromHF, _) = try generate(["--checkpoint.initial_load_path", dump + "/checkpoint/step-2-hf",
                                            "--checkpoint.initial_load_in_hf", "true"] + prompt + sampling)
            XCTAssertEqual(fromHF.count, 1)
            for kv in ["true", "false"] {
                let (fromDCP, _) = try generate(["--checkpoint.initial_load_path", dump + "/checkpoint", "--generate.kv_cache", kv] + prompt + sampling)
                XCTAssertEqual(fromDCP, fromHF, "\(sampling) kv_cache \(kv)")
            }
        }
        let (fixture, _) = try generate(Self.hf("qwen3_moe") + prompt)
        let (trained, _) = try generate(["--checkpoint.initial_load_path", dump + "/checkpoint"] + prompt)
        XCTAssertNotEqual(fixture, trained, "two training steps change the greedy continuation")
    }

    func testSeededSamplingRepeatsExactly() throws {
        let base = Self.hf("qwen3_moe") + ["--generate.prompt_ids", "1,2,3", "--generate.max_new_tokens", "25",
                                           "--generate.temperature", "1.0", "--generate.top_p", "0.95", "--generate.num_samples", "3"]
        let (a, _) = try generate(base + ["--generate.seed", "11"])
        let (b, _) = try generate(base + ["--generate.seed", "11"])
        let (c, _) = try generate(base + ["--generate.seed", "12"])
        XCTAssertEqual(a.count, 3)
        XCTAssertEqual(a, b, "the same seed repeats")
        XCTAssertNotEqual(a, c, "another seed differs")
        XCTAssertEqual(Set(a.map(\.new_ids)).count, 3, "the samples differ")
        XCTAssertTrue(a.allSatisfy { $0.new_ids.count == 25 && $0.prompt_ids == [1, 2, 3] })
    }

    /// A sample ends with the first end-of-sequence token, which it keeps (HF generate(): greedy with eos_token_id E is
    /// its eos-free continuation cut after E's first appearance): E given by --generate.eos_ids, or by the HF folder's
    /// config.json (a list) or generation_config.json (which wins, as in HF); "none" runs to max_new_tokens.
    func testGenerationStopsAtTheEndOfSequenceToken() throws {
        let e = try Self.expectations("qwen3_moe"), c = e.cases[0]
        let eos = c.new_ids[6], cut = c.new_ids.firstIndex(of: eos)!
        XCTAssertLessThan(cut, e.max_new_tokens - 1, "the fixture's continuation must hold the stop token before its end")
        let expected = Array(c.new_ids[...cut])
        let base = ["--generate.prompt_ids", ids(c.prompt_ids), "--generate.max_new_tokens", "\(e.max_new_tokens)"]

        func finishReasons(_ r: Titan.Run) -> [String] {
            r.stdout.split(separator: "\n").filter { $0.hasPrefix("{\"prompt_ids\"") }.compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["finish_reason"] as? String
            }
        }
        for kv in ["true", "false"] {
            let (s, r) = try generate(Self.hf("qwen3_moe") + base + ["--generate.eos_ids", "250,\(eos)", "--generate.kv_cache", kv])
            XCTAssertEqual(s.map(\.new_ids), [expected], "kv_cache \(kv)")
            XCTAssertEqual(finishReasons(r), ["eos"])
        }

        // From the HF folder: config.json's list, then generation_config.json's id over it.
        let folder = temporaryFolder()
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let source = "\(Self.fixtures)/qwen3_moe"
        try FileManager.default.createSymbolicLink(atPath: folder + "/model.safetensors", withDestinationPath: source + "/model.safetensors")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: source + "/config.json"))) as! [String: Any]
        config["eos_token_id"] = [999_999, Int(eos)]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: folder + "/config.json"))
        let hf = ["--checkpoint.initial_load_path", folder, "--checkpoint.initial_load_in_hf", "true"]
        var (s, r) = try generate(hf + base)
        XCTAssertEqual(s.map(\.new_ids), [expected], "config.json's eos_token_id")
        XCTAssertTrue(r.stderr.contains("stopping at token(s) \(eos)"), r.stderr)
        (s, r) = try generate(hf + base + ["--generate.eos_ids", "none"])
        XCTAssertEqual(s.map(\.new_ids), [c.new_ids], "eos_ids none")
        XCTAssertEqual(finishReasons(r), ["length"])
        let other = c.new_ids[2], otherCut = c.new_ids.firstIndex(of: other)!
        try Data("{\"eos_token_id\": \(other)}".utf8).write(to: URL(fileURLWithPath: folder + "/generation_config.json"))
        (s, _) = try generate(hf + base)
        XCTAssertEqual(s.map(\.new_ids), [Array(c.new_ids[...otherCut])], "generation_config.json's eos_token_id wins")

        try Data("{\"eos_token_id\": \"x\"}".utf8).write(to: URL(fileURLWithPath: folder + "/generation_config.json"))
        (_, r) = try generate(hf + base, expectSuccess: false)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("generation_config.json") && r.stderr.contains("eos_token_id"), r.stderr)
    }

    func testTextPromptStreamsTextThenJSON() throws {
        let (s, r) = try generate(Self.hf("qwen3_moe") + ["--generate.prompt", "Hi", "--generate.max_new_tokens", "8"])
        XCTAssertEqual(s.map(\.prompt_ids), [[72, 105]])   // byte-level: no tokenizer_path
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertTrue(lines.first?.hasPrefix("Hi") ?? false, r.stdout)
        XCTAssertTrue(lines.dropLast().last?.hasPrefix("{\"prompt_ids\"") ?? false, "the JSON line ends the output: \(r.stdout)")
    }

    func testLauncherRunsGenerateOnOneRank() throws {
        let args = Self.hf("qwen3_dense") + ["--generate.prompt_ids", "7", "--generate.max_new_tokens", "24"]
        let (s, _) = try generate(args, launcher: ["--ranks", "1"])
        XCTAssertEqual(s.map(\.new_ids), [try Self.expectations("qwen3_dense").cases[1].new_ids])
        let (_, r) = try generate(args, launcher: ["--ranks", "2"], expectSuccess: false)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("generate runs in one process"), r.stderr)
    }

    func testBadInputIsAnErrorNamingTheKey() throws {
        let hf = Self.hf("qwen3_moe")
        let cases: [([String], String)] = [
            (hf, "--generate.prompt_ids': no prompt"),
            (hf + ["--generate.prompt_ids", ""], "--generate.prompt_ids': is empty"),
            (hf + ["--generate.prompt", ""], "--generate.prompt': is empty"),
            (hf + ["--generate.prompt_ids", "1,300"], "--generate.prompt_ids': token 1 is 300, not < the model's vocab_size 256"),
            (hf + ["--generate.prompt_ids", "1,2", "--generate.max_new_tokens", "127"], "--generate.max_new_tokens': the prompt's 2 tokens + max_new_tokens 127 = 129 exceed the model's max_seq_len 128"),
            (hf + ["--generate.prompt_ids", "1", "--generate.temperature", "-1"], "--generate.temperature': must be >= 0"),
            (hf + ["--generate.prompt_ids", "1", "--generate.top_p", "0"], "--generate.top_p': must be in (0, 1]"),
            (hf + ["--generate.prompt_ids", "1", "--generate.top_k", "-3"], "--generate.top_k': must be >= 0"),
            (hf + ["--generate.prompt_ids", "1", "--generate.prompt", "x"], "not both"),
            (hf + ["--generate.prompt_ids", "1", "--generate.top_kk", "3"], "unknown config key '--generate.top_kk'; did you mean '--generate.top_k'?"),
            (hf + ["--generate.prompt_ids", "1", "--generate.eos_ids", "1,x"], "--generate.eos_ids': entry 1 'x' is not a token id"),
            (hf + ["--generate.prompt_ids", "1", "--generate.eos_ids", "256"], "--generate.eos_ids': 256 is not < the model's vocab_size 256"),
        ]
        for (args, message) in cases {
            let (_, r) = try generate(args, expectSuccess: false)
            XCTAssertEqual(r.status, 2, "\(args.suffix(4))")
            XCTAssertTrue(r.stderr.contains(message), "\(args.suffix(4)): \(r.stderr)")
        }
    }
}
