import ArgumentParser
import Foundation
import Model
import Tensor

/// `titan bench-gemm`: the sgemm peak of this machine (`BLAS.sgemm` as the trainer runs it: split over the kernel
/// threads) and the model FLOPs per token of a flavor, so a benchmark can report model FLOP utilisation (MFU) against a
/// peak measured in the same run.
///
/// Model FLOPs per training token (torchtitan's `get_num_flop_per_token`):
///   6 · N_active + 12 · n_layers · n_heads · head_dim · seq_len
/// N_active = parameters a token multiplies by: attention projections (wq, wk, wv, wo), the router, top_k routed experts
/// (+ shared experts) or the dense FFN per layer, and the output projection (embedding lookups and norms excluded).
/// The attention term counts QKᵀ and PV forward (4·H·hd·T per token per layer) and backward (×2), non-causal as torchtitan.
struct BenchGemm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-gemm",
        abstract: "Time BLAS.sgemm (square, row-major) and print the GFLOP/s peak plus a flavor's model FLOPs per token.")

    @Option(help: "Matrix size M = N = K.")
    var size: Int = 1024
    @Option(help: "Timed repetitions (after one warm-up).")
    var reps: Int = 8
    @Option(help: "Kernel threads (default: OPENBLAS_NUM_THREADS, else the number of CPUs).")
    var threads: Int?
    @Option(help: "Model flavor whose FLOPs per token are printed.")
    var flavor: String = "bench_moe"
    @Option(help: "Sequence length for the attention FLOPs.")
    var seqLen: Int = 256

    static func activeParams(_ a: Qwen3ModelArgs) -> Int {
        var n = 0
        for l in 0..<a.n_layers {
            n += a.dim * a.n_heads * a.head_dim * 2 + a.dim * a.n_kv_heads * a.head_dim * 2
            if a.isMoELayer(l) {
                n += a.moe.num_experts * a.dim
                n += (a.moe.top_k + a.moe.num_shared_experts) * 3 * a.dim * a.moe.hidden_dim
            } else {
                n += 3 * a.dim * a.hidden_dim
            }
        }
        return n + a.vocab_size * a.dim
    }

    static func flopsPerToken(_ a: Qwen3ModelArgs, seqLen: Int) -> Double {
        6 * Double(activeParams(a)) + 12 * Double(a.n_layers * a.n_heads * a.head_dim * seqLen)
    }

    func run() throws {
        BLAS.prepare()
        if let t = threads { BLAS.setThreads(t) }
        BLAS.splitOnKernelThreads()
        let n = size
        let a = Tensor(shape: [n, n]), b = Tensor(shape: [n, n]), c = Tensor(shape: [n, n])
        var rng = SplitMix64(seed: 1)
        for i in 0..<(n * n) { a.data[i] = rng.nextUniform() - 0.5; b.data[i] = rng.nextUniform() - 0.5 }
        func gemm() { matmul_forward(c.data, a.ptr, b.ptr, T: n, D: n, N: n) }
        gemm()
        var best = Double.infinity, total = 0.0
        for _ in 0..<max(reps, 1) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            gemm()
            let s = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = min(best, s); total += s
        }
        let flop = 2 * Double(n) * Double(n) * Double(n)
        let peak = flop / best / 1e9, mean = flop / (total / Double(max(reps, 1))) / 1e9
        let args = try ModelFlavors.named(flavor)
        let fpt = Self.flopsPerToken(args, seqLen: seqLen)
        print("sgemm \(n)x\(n)x\(n), \(KernelThreads.count) thread(s), \(BLAS.description): best \(String(format: "%.1f", peak)) GFLOP/s, mean \(String(format: "%.1f", mean)) GFLOP/s")
        print("\(flavor): \(Self.activeParams(args)) active params/token, \(String(format: "%.4g", fpt)) model FLOPs/token at seq_len \(seqLen)")
        print("{\"name\": \"sgemm\", \"size\": \(n), \"threads\": \(KernelThreads.count), \"peak_gflops\": \(String(format: "%.2f", peak)), "
              + "\"mean_gflops\": \(String(format: "%.2f", mean)), \"flavor\": \"\(flavor)\", \"active_params\": \(Self.activeParams(args)), "
              + "\"flops_per_token\": \(String(format: "%.6g", fpt))}")
    }
}
