// The peak the metrics' MFU is measured against. torchtitan divides by a GPU's datasheet peak; a CPU has no such
// number we could trust (clocks, AVX-512 licences, how many ranks share a core), so every rank times a short GEMM at
// the run's precision at start, all at once, as the steps will run them: ranks sharing a CPU split it during the
// timing as they do during training, and the job's peak is all of their GEMM FLOPs over the time they took.

import Collectives
import Foundation
import Runtime
import Tensor

/// The job's peak FLOP/s: `--metrics.peak_tflops` when given (every rank's together), else measured.
public func jobPeakFlops(_ config: MetricsConfig, world: ProcessGroup) throws -> Double {
    if config.peak_tflops > 0 { return config.peak_tflops * 1e12 }
    return try measureJobPeakFlops(world: world)
}

/// Every rank runs `reps` n×n×n GEMMs through `BLAS` (its kernel threads, bfloat16 inputs when the run's matmuls use
/// them), all starting after one barrier; the peak is all their FLOPs over the time the slowest rank took (ranks that
/// finish early leave their CPU to the others, so a sum of per-rank rates would overstate it). ~50 ms on 2 cores.
public func measureJobPeakFlops(world: ProcessGroup, n: Int = 768, reps: Int = 3) throws -> Double {
    let a = Tensor(shape: [n, n]), b = Tensor(shape: [n, n]), c = Tensor(shape: [n, n])
    var rng = SplitMix64(seed: 1)
    rng.fillNormal(a.data, n * n)
    rng.fillNormal(b.data, n * n)
    matmul_forward(c.data, a.ptr, b.ptr, T: n, D: n, N: n)   // warm-up: packing buffers, page faults
    try world.barrier()   // every rank times at once, sharing the CPUs as the steps will
    let start = Runtime.now()
    for _ in 0..<reps { matmul_forward(c.data, a.ptr, b.ptr, T: n, D: n, N: n) }
    let seconds = Double(Runtime.now() - start) / 1e9
    let slowest = try world.allReduce([seconds], op: .max)[0]
    return 2 * Double(n) * Double(n) * Double(n) * Double(reps) * Double(world.size) / slowest
}
