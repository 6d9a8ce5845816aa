import Config
import Foundation
import Model
@testable import Train
import XCTest

/// `--module deepseek_v3`: its registered configs, its --model.* fields, and errors naming the key.
final class DeepSeekV3ConfigTests: XCTestCase {
    func run(_ args: [String], world: Int = 1) throws -> JobConfig {
        guard case .run(let c) = try JobConfig.resolve(arguments: args, worldSize: world) else { throw ConfigError.unexpectedArgument("help") }
        return c
    }

    func testRegisteredConfigsAndOverrides() throws {
        let c = try run(["--module", "deepseek_v3", "--config", "debugmodel", "--model.q_lora_rank", "8", "--model.dim", "32",
                         "--model.moe.top_k", "3", "--model.rope_scaling", "yarn"])
        guard case .deepseekV3(let a) = c.model.modelArgs else { return XCTFail("\(c.model.modelArgs)") }
        XCTAssertEqual(c.model.name, "deepseek_v3")
        XCTAssertEqual(a.q_lora_rank, 8); XCTAssertEqual(a.dim, 32); XCTAssertEqual(a.moe.top_k, 3); XCTAssertEqual(a.rope_scaling, .yarn)
        XCTAssertEqual(a.n_expert_groups, 4); XCTAssertEqual(a.moe.score_func, .sigmoid)
        let b = try run(["--module", "deepseek_v3", "--config", "bench_moe"])
        XCTAssertEqual(b.model.modelArgs, .deepseekV3(DeepSeekV3Flavors.all["bench_moe"]!))
        // the flavor through --model.name / --model.flavor on another module's config
        let f = try run(["--model.name", "deepseek_v3", "--model.flavor", "debugmodel"])
        XCTAssertEqual(f.model.modelArgs, .deepseekV3(DeepSeekV3Flavors.all["debugmodel"]!))
        // expert parallelism divides the routed experts
        let ep = try run(["--module", "deepseek_v3", "--config", "debugmodel", "--parallelism.data_parallel_shard_degree", "8",
                          "--parallelism.expert_parallel_degree", "8"], world: 8)
        XCTAssertEqual(ep.parallelism.expert_parallel_degree, 8)
        // the resolved config's JSON carries the family's fields
        XCTAssertTrue(try c.json().contains("\"q_lora_rank\""))
    }

    func testBadValuesNameTheKey() {
        func message(_ args: [String]) -> String {
            do { _ = try run(["--module", "deepseek_v3", "--config", "debugmodel"] + args); return "no error" } catch { return "\(error)" }
        }
        var e = message(["--model.n_expert_groups", "3"])
        XCTAssertTrue(e.contains("n_expert_groups") && e.contains("divide"), e)
        e = message(["--model.n_limited_groups", "5"])
        XCTAssertTrue(e.contains("n_limited_groups"), e)
        e = message(["--model.qk_rope_head_dim", "7"])
        XCTAssertTrue(e.contains("qk_rope_head_dim") && e.contains("even"), e)
        e = message(["--model.rope_scaling", "linear"])
        XCTAssertTrue(e.contains("rope_scaling"), e)
        e = message(["--model.flavor", "debugmodle"])
        XCTAssertTrue(e.contains("debugmodel"), e)
    }
}
