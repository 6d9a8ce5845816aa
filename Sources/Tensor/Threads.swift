// Multi-threading of the non-BLAS kernels. Work is split into a FIXED number of row ranges per call and every row is
// computed by the same code, so results are bit-identical for any thread count (no cross-row reductions are split).
import Dispatch
import COpenBLAS

public enum KernelThreads {
    /// Threads used by the element-wise / row-wise kernels (1 = serial). Defaults to OpenBLAS's thread count
    /// (OPENBLAS_NUM_THREADS, else the number of cores); `BLAS.setThreads` sets both.
    public static var count: Int = max(1, Int(openblas_get_num_threads()))
    /// Loops touching fewer floats than this run serially (tests set 0 to force the threaded path).
    public static var minWork: Int = 32_768
}

/// Runs body over [0, n) split into up to `KernelThreads.count` contiguous ranges (serially when the work is small).
/// `costPerItem` ~ floats touched per item, to skip threading for tiny loops.
@inline(__always)
public func parallelFor(_ n: Int, costPerItem: Int = 1, _ body: (Range<Int>) -> Void) {
    let t = KernelThreads.count
    if t <= 1 || n < 2 || n * costPerItem < KernelThreads.minWork {
        if n > 0 { body(0..<n) }
        return
    }
    let chunks = min(t, n)
    DispatchQueue.concurrentPerform(iterations: chunks) { c in
        let lo = n * c / chunks, hi = n * (c + 1) / chunks
        if lo < hi { body(lo..<hi) }
    }
}
