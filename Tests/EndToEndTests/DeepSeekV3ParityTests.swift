import Foundation
import XCTest

/// DeepSeek-V3 training through the CLI against transformers 5.x DeepseekV3ForCausalLM + torch.optim.AdamW
/// (fixtures deepseek_v3, deepseek_v3_q0), on one rank and on every parallel topology of the same global batch, with
/// the Qwen3 tolerances (step 1 within 1e-5 relative, all ten steps within 1e-4). The fixture's expert groups matter
/// (4 groups, 2 kept) and its e_score_correction_bias is nonzero, so routing differences would show.
extension TrainingParityTests {
    static let deepSeek = ["--module", "deepseek_v3", "--config", "debugmodel"]

    func testDeepSeekV3SingleRankMatchesHF() throws {
        for model in ["deepseek_v3", "deepseek_v3_q0"] {
            try assertMatchesHF(model, train(model, ranks: 1, Self.deepSeek), "\(model) 1 rank")
        }
    }

    /// 8 ranks, FSDP over all 8 (local batch 1), expert parallel 1, 2, 4 and 8 (with 8 experts and top-3 over 2 of 4
    /// groups, some ranks' experts get no token in some layers and steps).
    func testDeepSeekV3EightRanksFSDPWithExpertParallelMatchesHF() throws {
        for ep in [1, 2, 4, 8] {
            try assertMatchesHF("deepseek_v3", train("deepseek_v3", ranks: 8, Self.deepSeek + ["--training.local_batch_size", "1",
                "--parallelism.data_parallel_shard_degree", "8", "--parallelism.expert_parallel_degree", "\(ep)"]), "deepseek_v3 shard 8 ep \(ep)")
        }
        try assertMatchesHF("deepseek_v3_q0", train("deepseek_v3_q0", ranks: 8, Self.deepSeek + ["--training.local_batch_size", "1",
            "--parallelism.data_parallel_shard_degree", "8", "--parallelism.expert_parallel_degree", "8"]), "deepseek_v3_q0 shard 8 ep 8")
    }

    /// HSDP: 2 replicas × 4 shards, expert parallel 2 and 4.
    func testDeepSeekV3HSDPMatchesHF() throws {
        for ep in [2, 4] {
            try assertMatchesHF("deepseek_v3", train("deepseek_v3", ranks: 8, Self.deepSeek + ["--training.local_batch_size", "1",
                "--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "4",
                "--parallelism.expert_parallel_degree", "\(ep)"]), "deepseek_v3 2x4 hsdp ep \(ep)")
        }
    }
}
