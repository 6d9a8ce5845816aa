import Config
import Foundation
import Model
import Parallel
@testable import Train
import XCTest

final class ConfigTests: XCTestCase {
    func run(_ args: [String]) throws -> JobConfig {
        guard case .run(let c) = try JobConfig.resolve(arguments: args) else {
            XCTFail("expected a config, got help"); throw ConfigError.unexpectedArgument("help")
        }
        return c
    }

    func error(_ args: [String]) -> ConfigError? {
        do { _ = try JobConfig.resolve(arguments: args); return nil } catch let e as ConfigError { return e } catch {
            XCTFail("unexpected error \(error)"); return nil
        }
    }

    /// Every key DESIGN.md's Configuration section promises, spelled exactly.
    func testDesignKeysExist() {
        let keys = Set(JobConfig.schema.fields.map(\.key))
        for k in ["training.steps", "training.local_batch_size", "training.seq_len", "training.seed", "training.max_norm",
                  "optimizer.lr", "optimizer.beta1", "optimizer.beta2", "optimizer.eps", "optimizer.weight_decay",
                  "lr_scheduler.warmup_steps", "lr_scheduler.decay_ratio", "lr_scheduler.decay_type", "lr_scheduler.min_lr_factor",
                  "parallelism.data_parallel_shard_degree", "parallelism.expert_parallel_degree",
                  "dataloader.dataset", "dataloader.dataset_path", "job.dump_folder",
                  "checkpoint.enable", "checkpoint.folder", "checkpoint.interval", "checkpoint.initial_load_path",
                  "checkpoint.initial_load_in_hf", "checkpoint.last_save_in_hf", "debug.deterministic",
                  // brief extras
                  "job.description", "model.name", "model.flavor", "optimizer.name",
                  "parallelism.data_parallel_replicate_degree", "checkpoint.keep_latest_k", "dataloader.tokenizer_path",
                  "profiling.enable_trace", "comm.timeout_seconds", "metrics.log_freq",
                  "model.dim", "model.moe.num_experts", "model.moe.top_k"] {
            XCTAssertTrue(keys.contains(k), "missing config key \(k)")
        }
    }

    func testOverrideForms() throws {
        let c = try run(["--module", "qwen3", "--config", "debugmodel_moe",
                         "--training.steps", "7", "--optimizer.lr=1e-3", "--checkpoint.enable",
                         "--debug.deterministic", "false", "--profiling.enable_trace=true",
                         "--lr_scheduler.decay_type", "cosine", "--lr_scheduler.decay_ratio", "none",
                         "--training.max_norm", "-1", "--job.dump_folder", "/tmp/x y",
                         "--model.dim", "128", "--model.moe.num_experts", "16", "--model.moe.score_func", "sigmoid",
                         "--model.norm_eps", "1e-5", "--checkpoint.initial_load_path", "/ckpt"])
        XCTAssertEqual(c.training.steps, 7)
        XCTAssertEqual(c.optimizer.lr, 1e-3)
        XCTAssertTrue(c.checkpoint.enable)
        XCTAssertFalse(c.debug.deterministic)
        XCTAssertTrue(c.profiling.enable_trace)
        XCTAssertEqual(c.lr_scheduler.decay_type, .cosine)
        XCTAssertNil(c.lr_scheduler.decay_ratio)
        XCTAssertEqual(c.training.max_norm, -1)
        XCTAssertEqual(c.job.dump_folder, "/tmp/x y")
        XCTAssertEqual(c.model.args.dim, 128)
        XCTAssertEqual(c.model.args.moe.num_experts, 16)
        XCTAssertEqual(c.model.args.moe.score_func, .sigmoid)
        XCTAssertEqual(c.model.args.norm_eps, 1e-5)
        XCTAssertEqual(c.checkpoint.initial_load_path, "/ckpt")
        // untouched fields keep the named config's values
        XCTAssertEqual(c.training.seq_len, 64)
        XCTAssertTrue(c.model.args.moe_enabled)
    }

    func testBareBoolAtEndAndBeforeFlag() throws {
        let a = try run(["--checkpoint.enable"])
        XCTAssertTrue(a.checkpoint.enable)
        let b = try run(["--checkpoint.enable", "--checkpoint.last_save_in_hf", "--training.steps", "3"])
        XCTAssertTrue(b.checkpoint.enable)
        XCTAssertTrue(b.checkpoint.last_save_in_hf)
        XCTAssertEqual(b.training.steps, 3)
        let c = try run(["--checkpoint.enable", "true", "--checkpoint.enable", "FALSE"])
        XCTAssertFalse(c.checkpoint.enable)
    }

    func testRegistryAndNamedDefaults() throws {
        let bench = try run(["--config", "bench_moe"])
        XCTAssertEqual(bench.training.seq_len, 256)
        XCTAssertEqual(bench.training.local_batch_size, 16)
        XCTAssertEqual(bench.model.flavor, "bench_moe")
        XCTAssertTrue(bench.model.args.moe_enabled)
        let dense = try run(["--config", "debugmodel"])
        XCTAssertFalse(dense.model.args.moe_enabled)
        let dflt = try run([])
        XCTAssertEqual(dflt.model.flavor, "debugmodel_moe")
        XCTAssertEqual(dflt.dataloader.dataset, .synthetic)
    }

    func testFlavorOverrideReloadsArchitectureThenAppliesModelFields() throws {
        // --model.flavor is applied first regardless of position; model fields go on top.
        for args in [["--model.flavor", "debugmodel", "--model.dim", "32"], ["--model.dim", "32", "--model.flavor", "debugmodel"]] {
            let c = try run(["--config", "debugmodel_moe"] + args)
            XCTAssertFalse(c.model.args.moe_enabled)
            XCTAssertEqual(c.model.args.dim, 32)
            XCTAssertEqual(c.model.flavor, "debugmodel")
        }
        guard case .invalid(let key, let reason)? = error(["--model.flavor", "debugmodel_mo"]) else { return XCTFail() }
        XCTAssertEqual(key, "model.flavor")
        XCTAssertTrue(reason.contains("debugmodel_moe"), reason)
    }

    func testUnknownKeySuggestsNearest() {
        XCTAssertEqual(error(["--training.step", "3"]), .unknownKey(key: "training.step", suggestion: "training.steps"))
        XCTAssertEqual(error(["--steps", "3"]), .unknownKey(key: "steps", suggestion: "training.steps"))
        XCTAssertEqual(error(["--optimizer.betta1=0.8"]), .unknownKey(key: "optimizer.betta1", suggestion: "optimizer.beta1"))
        XCTAssertEqual(error(["--model.moe.num_expert", "4"]), .unknownKey(key: "model.moe.num_expert", suggestion: "model.moe.num_experts"))
        XCTAssertEqual(error(["--checkpoint.enabled"]), .unknownKey(key: "checkpoint.enabled", suggestion: "checkpoint.enable"))
        let msg = error(["--training.step", "3"])!.description
        XCTAssertTrue(msg.contains("--training.step") && msg.contains("did you mean '--training.steps'"), msg)
    }

    func testBadValuesNameTheKey() {
        XCTAssertEqual(error(["--training.steps", "ten"]), .badValue(key: "training.steps", value: "ten", expected: "int"))
        XCTAssertEqual(error(["--training.steps", "1.5"]), .badValue(key: "training.steps", value: "1.5", expected: "int"))
        XCTAssertEqual(error(["--optimizer.lr=fast"]), .badValue(key: "optimizer.lr", value: "fast", expected: "float"))
        XCTAssertEqual(error(["--checkpoint.enable=yes"]), .badValue(key: "checkpoint.enable", value: "yes", expected: "bool"))
        XCTAssertEqual(error(["--lr_scheduler.decay_type", "exp"]),
                       .badValue(key: "lr_scheduler.decay_type", value: "exp", expected: "linear|sqrt|cosine"))
        XCTAssertEqual(error(["--lr_scheduler.decay_ratio", "half"]),
                       .badValue(key: "lr_scheduler.decay_ratio", value: "half", expected: "float?"))
        XCTAssertEqual(error(["--training.steps"]), .missingValue(key: "training.steps", expected: "int"))
        XCTAssertEqual(error(["--training.steps", "--optimizer.lr", "1"]), .missingValue(key: "training.steps", expected: "int"))
        XCTAssertEqual(error(["stray"]), .unexpectedArgument("stray"))
        XCTAssertEqual(error(["--checkpoint.enable", "1"]), .unexpectedArgument("1"))
        let msg = error(["--training.steps", "ten"])!.description
        XCTAssertTrue(msg.contains("--training.steps") && msg.contains("int"), msg)
    }

    func testUnknownConfigSuggests() {
        guard case .unknownConfig(let m, let c, let s, let avail)? = error(["--config", "debugmodel_mo"]) else { return XCTFail() }
        XCTAssertEqual(m, "qwen3"); XCTAssertEqual(c, "debugmodel_mo")
        XCTAssertEqual(s, "--module qwen3 --config debugmodel_moe")
        XCTAssertTrue(avail.contains("qwen3/bench_moe"))
    }

    func testValidationNamesKey() {
        XCTAssertEqual(error(["--dataloader.dataset", "tokens"]),
                       .invalid(key: "dataloader.dataset_path", reason: "is required when dataloader.dataset is tokens"))
        guard case .invalid(let k, _)? = error(["--training.steps", "0"]) else { return XCTFail() }
        XCTAssertEqual(k, "training.steps")
        guard case .invalid(let k2, _)? = error(["--parallelism.expert_parallel_degree", "3"]) else { return XCTFail() }
        XCTAssertEqual(k2, "parallelism.expert_parallel_degree")
    }

    /// A topology's degrees reach the config as values: defaults the command line overrides, its expert-parallel
    /// degree only for a model with experts, all checked against the world size with errors naming the key.
    func testTopologyDegreesAreDefaultsCheckedAgainstTheWorld() throws {
        var topology = ParallelismConfig()
        topology.data_parallel_replicate_degree = 2
        topology.data_parallel_shard_degree = -1
        topology.expert_parallel_degree = 4
        func resolve(_ args: [String], world: Int = 8) throws -> JobConfig {
            guard case .run(let c) = try JobConfig.resolve(arguments: args, topology: topology, worldSize: world) else { throw ConfigError.unexpectedArgument("help") }
            return c
        }
        let c = try resolve([])
        XCTAssertEqual([c.parallelism.data_parallel_replicate_degree, c.parallelism.data_parallel_shard_degree,
                        c.parallelism.expert_parallel_degree], [2, 4, 4], "-1 is written as the shard degree it stands for")
        XCTAssertEqual(try resolve(["--parallelism.expert_parallel_degree", "2"]).parallelism.expert_parallel_degree, 2)
        XCTAssertEqual(try resolve(["--config", "debugmodel"]).parallelism.expert_parallel_degree, 1, "a dense model ignores the topology's EP")
        func key(_ args: [String], world: Int = 8) -> String? {
            do { _ = try resolve(args, world: world); return nil } catch let ConfigError.invalid(key, _) { return key } catch { return "\(error)" }
        }
        XCTAssertEqual(key(["--parallelism.data_parallel_replicate_degree", "3"]), "parallelism.data_parallel_replicate_degree")
        XCTAssertEqual(key(["--parallelism.data_parallel_shard_degree", "3"]), "parallelism.data_parallel_shard_degree")
        XCTAssertEqual(key(["--parallelism.data_parallel_replicate_degree", "1"], world: 6), "parallelism.expert_parallel_degree",
                       "ep 4 does not divide the shard degree 6")
        XCTAssertEqual(key(["--parallelism.expert_parallel_degree", "4", "--model.moe.num_experts", "6"]), "parallelism.expert_parallel_degree",
                       "ep 4 does not divide 6 experts")
    }

    /// training.global_batch_size: -1 is one micro-batch; a multiple of local × dp is that many; anything else is an
    /// error naming the key.
    func testGlobalBatchSizeGivesMicroBatches() throws {
        let dims = ParallelDims(replicate: 1, shard: 4, ep: 1)
        var c = try run(["--training.local_batch_size", "2"])
        XCTAssertEqual(try c.microBatches(dims), 1)
        c.training.global_batch_size = 24
        XCTAssertEqual(try c.microBatches(dims), 3)
        c.training.global_batch_size = 12
        XCTAssertThrowsError(try c.microBatches(dims)) { e in
            guard case ConfigError.invalid(let key, let reason)? = e as? ConfigError else { return XCTFail("\(e)") }
            XCTAssertEqual(key, "training.global_batch_size")
            XCTAssertTrue(reason.contains("× the data-parallel degree (4) = 8"), reason)
        }
        guard case .invalid(let key, _)? = error(["--training.global_batch_size", "6", "--training.local_batch_size", "4"]) else { return XCTFail() }
        XCTAssertEqual(key, "training.global_batch_size")
        guard case .invalid(let key2, _)? = error(["--training.global_batch_size", "0"]) else { return XCTFail() }
        XCTAssertEqual(key2, "training.global_batch_size")
    }

    func testHelpListsEveryFieldWithTypeAndDefault() throws {
        guard case .help(let text) = try JobConfig.resolve(arguments: ["--config", "bench_moe", "--training.steps", "99", "--help"]) else {
            return XCTFail("expected help")
        }
        for f in JobConfig.schema.fields {
            XCTAssertTrue(text.contains("--\(f.key) "), "help misses \(f.key)")
        }
        let line = { (key: String) in text.split(separator: "\n").first { $0.contains("--\(key) ") }.map(String.init) ?? "" }
        XCTAssertTrue(line("training.seq_len").contains("int (default: 256)"), line("training.seq_len"))
        XCTAssertTrue(line("training.steps").contains("(default: 99)"), line("training.steps"))
        XCTAssertTrue(line("lr_scheduler.decay_type").contains("linear|sqrt|cosine"), line("lr_scheduler.decay_type"))
        XCTAssertTrue(line("checkpoint.initial_load_path").contains("string? (default: none)"), line("checkpoint.initial_load_path"))
        XCTAssertTrue(line("checkpoint.enable").contains("bool (default: false)"))
        XCTAssertTrue(text.contains("--module qwen3 --config bench_moe"))
    }

    func testJSONDumpIsNestedStableAndComplete() throws {
        let c = try run(["--model.moe.num_experts", "4", "--lr_scheduler.decay_ratio", "none", "--job.description", "a \"quoted\"\nline"])
        let text = try c.json()
        XCTAssertEqual(text, try run(["--model.moe.num_experts", "4", "--lr_scheduler.decay_ratio", "none",
                                      "--job.description", "a \"quoted\"\nline"]).json())
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let model = try XCTUnwrap(obj["model"] as? [String: Any])
        XCTAssertEqual(model["flavor"] as? String, "debugmodel_moe")
        XCTAssertEqual((model["moe"] as? [String: Any])?["num_experts"] as? Int, 4)
        XCTAssertEqual((model["moe"] as? [String: Any])?["score_func"] as? String, "softmax")
        XCTAssertEqual(model["dim"] as? Int, 64)
        XCTAssertTrue((obj["lr_scheduler"] as? [String: Any])?["decay_ratio"] is NSNull)
        XCTAssertEqual((obj["job"] as? [String: Any])?["description"] as? String, "a \"quoted\"\nline")
        XCTAssertEqual((obj["training"] as? [String: Any])?["max_norm"] as? Double, 1.0)
        XCTAssertEqual((obj["checkpoint"] as? [String: Any])?["enable"] as? Bool, false)
        // every field is in the dump exactly once
        var count = 0
        func walk(_ o: Any) { if let d = o as? [String: Any] { d.values.forEach(walk) } else { count += 1 } }
        walk(obj)
        XCTAssertEqual(count, JobConfig.schema.fields.count)
        // keys come out sorted, at every level
        let order = ["checkpoint", "comm", "dataloader", "debug", "job", "lr_scheduler", "metrics", "model", "optimizer",
                     "parallelism", "profiling", "training"]
        let positions = order.map { text.range(of: "\n  \"\($0)\" : ")!.lowerBound }
        XCTAssertEqual(positions, positions.sorted())
    }

    func testWriteConfigJSON() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try run(["--job.dump_folder", dir])
        try writeConfigJSON(c, dumpFolder: dir)
        XCTAssertEqual(try String(contentsOfFile: dir + "/config.json", encoding: .utf8), try c.json())
    }

    func testEditDistance() {
        XCTAssertEqual(editDistance("kitten", "sitting"), 3)
        XCTAssertEqual(editDistance("", "abc"), 3)
        XCTAssertEqual(editDistance("same", "same"), 0)
    }
}
