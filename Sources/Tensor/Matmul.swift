// Matrix multiplies through OpenBLAS (row-major cblas_sgemm).
import COpenBLAS
import Foundation

public enum BLAS {
    /// Number of OpenBLAS threads (process-wide); also sets `KernelThreads.count`.
    public static func setThreads(_ n: Int) {
        openblas_set_num_threads(Int32(max(n, 1)))
        KernelThreads.count = max(n, 1)
        splitThreads = 0   // OpenBLAS threads its GEMMs again (call splitOnKernelThreads() to split them instead)
    }

    /// Runs `body` with OpenBLAS single-threaded (restored afterwards), for kernels that run many small GEMMs
    /// concurrently from the kernel threads instead. (A GEMM threaded by OpenBLAS can differ in the last bits from the
    /// same GEMM single-threaded, see Threads.swift, so this choice is part of what a run computes, in every run
    /// alike.) The setting is process-wide: regions of several threads (ranks as threads of one process) are counted,
    /// and the last one out restores the thread count.
    public static func singleThreaded(_ body: () -> Void) {
        singleLock.lock()
        if singleDepth == 0 {
            savedThreads = openblas_get_num_threads()
            if savedThreads > 1 { openblas_set_num_threads(1) }
        }
        singleDepth += 1
        singleLock.unlock()
        body()
        singleLock.lock()
        singleDepth -= 1
        if singleDepth == 0 && savedThreads > 1 { openblas_set_num_threads(savedThreads) }
        singleLock.unlock()
    }

    private static let singleLock = NSLock()
    nonisolated(unsafe) private static var singleDepth = 0
    nonisolated(unsafe) private static var savedThreads: Int32 = 1

    /// The OpenBLAS kernel family in use, e.g. "Haswell" or "SkylakeX".
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// A faster OPENBLAS_CORETYPE for this CPU, or nil. OpenBLAS 0.3.21 (Debian 12) picks the AVX2 "Haswell" kernels
    /// on AVX-512 AMD Zen 4/5; "SKYLAKEX" is ~1.5x faster on bench_moe there. OpenBLAS reads the variable when the
    /// library loads, so a launcher must set it in the environment of the rank processes (or re-exec).
    public static func suggestedCoreType() -> String? {
        if let cur = getenv("OPENBLAS_CORETYPE"), !String(cString: cur).isEmpty { return nil }
        let name = coreName.lowercased()
        guard name == "haswell" || name.hasPrefix("zen") else { return nil }
        guard let fp = fopen("/proc/cpuinfo", "r") else { return nil }
        defer { fclose(fp) }
        var line = [CChar](repeating: 0, count: 8192)
        while fgets(&line, Int32(line.count), fp) != nil {
            let s = String(cString: line)
            if s.hasPrefix("flags") {
                let flags = Set(s.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })
                return ["avx512f", "avx512bw", "avx512vl", "avx512dq"].allSatisfy { flags.contains($0) } ? "SKYLAKEX" : nil
            }
        }
        return nil
    }

    /// Threads that split large GEMMs themselves (0: OpenBLAS threads them). See `splitOnKernelThreads()`.
    public private(set) static var splitThreads = 0
    /// GEMMs with fewer multiply-adds than this are not split.
    public static var minSplitWork = 1 << 20

    /// Makes OpenBLAS single-threaded and splits every large GEMM into `KernelThreads.count` fixed blocks of rows
    /// (or columns) run on the kernel threads: no OpenBLAS worker left spinning (sched_yield) while the kernel threads
    /// run the element-wise kernels. Deterministic for a given thread count (the blocks depend on the shape and the
    /// thread count only); not the same bits as the unsplit GEMM (see Threads.swift).
    public static func splitOnKernelThreads() {
        let t = KernelThreads.count
        guard t > 1 else { return }
        openblas_set_num_threads(1)
        splitThreads = t
    }

    /// C_MN = alpha · op(A) · op(B) + beta · C_MN, row-major. op(A) is M×K, op(B) is K×N.
    /// No-op (beyond scaling C by beta) when a dimension is zero.
    @inline(__always)
    public static func sgemm(transA: Bool, transB: Bool, M: Int, N: Int, K: Int,
                             alpha: Float, A: UnsafePointer<Float>, lda: Int,
                             B: UnsafePointer<Float>, ldb: Int,
                             beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int) {
        let t = splitThreads
        if t > 1 && M * N * K >= minSplitWork && K > 0 && max(M, N) >= 32 * t && !KernelThreads.insideRegion {
            // Split the larger of M and N into t blocks (multiples of 16 rows / columns).
            let alongM = M >= N
            let n = alongM ? M : N
            DispatchQueue.concurrentPerform(iterations: t) { c in
                let lo = (n * c / t) & ~15, hi = c == t - 1 ? n : (n * (c + 1) / t) & ~15
                if lo >= hi { return }
                let a = alongM ? (transA ? A + lo : A + lo * lda) : A
                let b = alongM ? B : (transB ? B + lo * ldb : B + lo)
                KernelThreads.asRegionPart {
                    sgemmSerial(transA: transA, transB: transB, M: alongM ? hi - lo : M, N: alongM ? N : hi - lo, K: K,
                                alpha: alpha, A: a, lda: lda, B: b, ldb: ldb, beta: beta,
                                C: alongM ? C + lo * ldc : C + lo, ldc: ldc)
                }
            }
            return
        }
        sgemmSerial(transA: transA, transB: transB, M: M, N: N, K: K, alpha: alpha, A: A, lda: lda, B: B, ldb: ldb,
                    beta: beta, C: C, ldc: ldc)
    }

    /// `sgemm` without splitting (for callers that already run on the kernel threads).
    @inline(__always)
    public static func sgemmSerial(transA: Bool, transB: Bool, M: Int, N: Int, K: Int,
                                   alpha: Float, A: UnsafePointer<Float>, lda: Int,
                                   B: UnsafePointer<Float>, ldb: Int,
                                   beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int) {
        if M == 0 || N == 0 { return }
        if K == 0 {
            if beta == 1 { return }
            for i in 0..<M { for j in 0..<N { C[i * ldc + j] = beta == 0 ? 0 : beta * C[i * ldc + j] } }
            return
        }
        cblas_sgemm(CblasRowMajor,
                    transA ? CblasTrans : CblasNoTrans,
                    transB ? CblasTrans : CblasNoTrans,
                    Int32(M), Int32(N), Int32(K), alpha, A, Int32(lda), B, Int32(ldb), beta, C, Int32(ldc))
    }
}

/// A Linear layer without bias: out_TN = x_TD · w_NDᵀ (or out_TN += ... when `accumulate`).
///   x_TD: [T, D], w_ND: [N, D] (PyTorch Linear weight layout), out_TN: [T, N].
public func matmul_forward(_ out_TN: UnsafeMutablePointer<Float>, _ x_TD: UnsafePointer<Float>, _ w_ND: UnsafePointer<Float>,
                           T: Int, D: Int, N: Int, accumulate: Bool = false) {
    BLAS.sgemm(transA: false, transB: true, M: T, N: N, K: D, alpha: 1, A: x_TD, lda: D, B: w_ND, ldb: D,
               beta: accumulate ? 1 : 0, C: out_TN, ldc: N)
}

/// Backward of `matmul_forward`, accumulating:
///   dx_TD += dout_TN · w_ND      (skipped when dx_TD is nil; WRITTEN instead when `overwriteDx`, which saves
///                                 zeroing a scratch buffer first: the same values)
///   dw_ND += dout_TNᵀ · x_TD     (skipped when dw_ND is nil)
public func matmul_backward(dx_TD: UnsafeMutablePointer<Float>?, dw_ND: UnsafeMutablePointer<Float>?,
                            dout_TN: UnsafePointer<Float>, x_TD: UnsafePointer<Float>, w_ND: UnsafePointer<Float>,
                            T: Int, D: Int, N: Int, overwriteDx: Bool = false) {
    if let dx = dx_TD {
        BLAS.sgemm(transA: false, transB: false, M: T, N: D, K: N, alpha: 1, A: dout_TN, lda: N, B: w_ND, ldb: D,
                   beta: overwriteDx ? 0 : 1, C: dx, ldc: D)
    }
    if let dw = dw_ND {
        BLAS.sgemm(transA: true, transB: false, M: N, N: D, K: T, alpha: 1, A: dout_TN, lda: N, B: x_TD, ldb: D,
                   beta: 1, C: dw, ldc: D)
    }
}
