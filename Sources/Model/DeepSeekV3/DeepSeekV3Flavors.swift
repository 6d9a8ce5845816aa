/// Named DeepSeek-V3 architectures (torchtitan: deepseekv3_configs), sized for CPUs.
public enum DeepSeekV3Flavors {
    public static let all: [String: DeepSeekV3ModelArgs] = {
        var r: [String: DeepSeekV3ModelArgs] = [:]

        // Tiny: 3 layers (the first dense), MLA with a plain q projection, 8 experts in 4 groups keep 2, top-2, one
        // shared expert; trains in seconds on a CPU.
        var d = DeepSeekV3ModelArgs()
        d.vocab_size = 2048; d.dim = 64; d.n_layers = 3; d.n_dense_layers = 1; d.n_heads = 4; d.hidden_dim = 128
        d.q_lora_rank = 0; d.kv_lora_rank = 32; d.qk_nope_head_dim = 16; d.qk_rope_head_dim = 8; d.v_head_dim = 16
        d.moe.num_experts = 8; d.moe.top_k = 2; d.moe.hidden_dim = 32; d.moe.num_shared_experts = 1
        d.moe.score_func = .sigmoid; d.moe.route_norm = true; d.moe.route_scale = 1
        d.n_expert_groups = 4; d.n_limited_groups = 2
        d.rope_theta = 10000; d.rope_interleave = true; d.rope_scaling = .none
        r["debugmodel"] = d

        // Benchmark: the real model's shape in miniature (q low-rank path, YaRN as DeepSeek-V3's config has it).
        var b = DeepSeekV3ModelArgs()
        b.vocab_size = 2048; b.dim = 256; b.n_layers = 4; b.n_dense_layers = 1; b.n_heads = 8; b.hidden_dim = 1024
        b.q_lora_rank = 128; b.kv_lora_rank = 64; b.qk_nope_head_dim = 32; b.qk_rope_head_dim = 16; b.v_head_dim = 32
        b.moe.num_experts = 16; b.moe.top_k = 4; b.moe.hidden_dim = 256; b.moe.num_shared_experts = 1
        b.moe.score_func = .sigmoid; b.moe.route_norm = true; b.moe.route_scale = 2.5
        b.n_expert_groups = 4; b.n_limited_groups = 2
        b.rope_theta = 10000; b.rope_interleave = true; b.rope_scaling = .yarn
        b.rope_factor = 40; b.original_seq_len = 4096; b.beta_fast = 32; b.beta_slow = 1; b.mscale = 1; b.mscale_all_dim = 1
        b.max_seq_len = 163840
        r["bench_moe"] = b
        return r
    }()
}
