import XCTest
import Foundation
import Model
import Tensor

/// Not a timed test: runs only with SWIFTTITAN_MODEL_BENCH=1 (use a release build) and prints throughput.
final class BenchmarkProbe: XCTestCase {
    func testBenchMoEThroughput() throws {
        let env = ProcessInfo.processInfo.environment
        guard env["SWIFTTITAN_MODEL_BENCH"] == "1" else { throw XCTSkip("set SWIFTTITAN_MODEL_BENCH=1 to run") }
        let B = Int(env["BENCH_B"] ?? "8")!, T = Int(env["BENCH_T"] ?? "256")!
        if let t = env["BENCH_THREADS"] { BLAS.setThreads(Int(t)!) }
        if let t = env["BENCH_KT"] { KernelThreads.count = Int(t)! }
        let m = try Qwen3Model(flavor: env["BENCH_FLAVOR"] ?? "bench_moe", seed: 0)
        let x = randomTokens(B * T, vocab: m.args.vocab_size, seed: 1), y = randomTokens(B * T, vocab: m.args.vocab_size, seed: 2)
        var times: [Double] = []
        let steps = Int(env["BENCH_STEPS"] ?? "6") ?? 6
        for _ in 0..<steps {
            m.zeroGrad()
            let t0 = Date()
            _ = m.forwardBackward(inputs: x, labels: y, B: B, T: T, lossScale: 1 / Float(B * T))
            times.append(Date().timeIntervalSince(t0))
        }
        let best = times.dropFirst().min()!
        print(String(format: "bench %@ [blas %@, kernel threads %d] B=%d T=%d: best %.1f ms/step, %.0f tokens/s (params %d)", m.args.dim == 256 ? "bench_moe" : "model", BLAS.coreName, KernelThreads.count, B, T, best * 1000, Double(B * T) / best, m.parameterCount))
    }
}
