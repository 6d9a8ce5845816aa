/// Named Qwen3 architectures (torchtitan: qwen3_configs).
public enum Qwen3Flavors {
    public static let all: [String: Qwen3ModelArgs] = {
        var r: [String: Qwen3ModelArgs] = [:]

        // Dense, tiny.
        var d = Qwen3ModelArgs()
        d.vocab_size = 2048; d.dim = 64; d.n_layers = 2; d.n_heads = 4; d.n_kv_heads = 2; d.head_dim = 16
        d.hidden_dim = 128; d.moe_enabled = false
        r["debugmodel"] = d

        // Tiny MoE: 8 experts, top-2, every layer sparse; trains in seconds on a CPU.
        var m = d
        m.n_layers = 2; m.moe_enabled = true; m.decoder_sparse_step = 1
        m.moe.num_experts = 8; m.moe.top_k = 2; m.moe.hidden_dim = 64
        m.moe.score_func = .softmax; m.moe.route_norm = true
        r["debugmodel_moe"] = m

        // Benchmark MoE.
        var b = Qwen3ModelArgs()
        b.vocab_size = 2048; b.dim = 256; b.n_layers = 4; b.n_heads = 8; b.n_kv_heads = 4; b.head_dim = 32
        b.hidden_dim = 1024; b.moe_enabled = true; b.decoder_sparse_step = 1
        b.moe.num_experts = 16; b.moe.top_k = 2; b.moe.hidden_dim = 512
        r["bench_moe"] = b
        return r
    }()
}
