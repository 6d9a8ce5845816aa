// Matrix multiplies (row-major sgemm), on two BLAS libraries routed by shape:
//   - BLIS (its typed API) for large GEMMs. BLIS picks kernels by CPU model, and Debian 12's BLIS 0.9 knows no CPU
//     newer than 2021: on Zen 4/5 it falls back to generic C kernels. We pick its kernels by instruction set instead
//     (see `GEMMLibraries`): on this class of machine its AVX-512 "skx" kernels run large sgemms at ~1.8x OpenBLAS's
//     AVX2 "Haswell" kernels (which OPENBLAS_CORETYPE=Haswell pins).
//   - OpenBLAS (cblas) for small or skinny ones (attention blocks, experts that received few tokens), where BLIS's
//     packing costs more than its kernel gains (e.g. 64x64x32: BLIS 56, OpenBLAS 104 GFLOP/s).
// Both run single-threaded: large GEMMs are split over the kernel threads by `BLAS.sgemm` itself. Which library runs
// a GEMM depends on its shape only, so a run is bitwise reproducible for a given thread count (see Threads.swift).
import CBLIS
import COpenBLAS
import Foundation

public enum BLAS {
    /// Kernel threads for the element-wise kernels and for splitting GEMMs (see `splitOnKernelThreads()`).
    public static func setThreads(_ n: Int) {
        KernelThreads.count = max(n, 1)
        splitThreads = 0   // GEMMs run whole again (call splitOnKernelThreads() to split them)
    }

    /// Sets both libraries up now: BLIS's kernels (through BLIS_ARCH_TYPE, which it reads when it initialises: `setenv`
    /// is not safe while other threads read the environment, so programs call this before starting threads) and one
    /// thread each. The first GEMM does it otherwise.
    public static func prepare() { _ = GEMMLibraries.configured }

    /// Threads that split large GEMMs (0: every GEMM runs whole on the calling thread). See `splitOnKernelThreads()`.
    public private(set) static var splitThreads = 0
    /// GEMMs with fewer multiply-adds than this are not split.
    public static var minSplitWork = 1 << 20

    /// Splits every large GEMM into `KernelThreads.count` fixed blocks of rows (or columns) run on the kernel threads.
    /// Deterministic for a given thread count (the blocks depend on the shape and the thread count only); not the same
    /// bits as the unsplit GEMM (see Threads.swift).
    public static func splitOnKernelThreads() {
        splitThreads = KernelThreads.count > 1 ? KernelThreads.count : 0
    }

    /// GEMMs at least this large in every sense go to BLIS, the rest to OpenBLAS: measured crossover on a Zen 5 core
    /// (BLIS skx against OpenBLAS Haswell; at 64x256x64 BLIS 146, OpenBLAS 122 GFLOP/s; at 16x768x256 BLIS 61,
    /// OpenBLAS 86).
    static let blisMinWork = 1 << 20, blisMinSide = 32

    /// What runs the GEMMs, e.g. "BLIS 0.9.0 skx (large GEMMs) + OpenBLAS Haswell (small)".
    public static var description: String {
        "BLIS \(GEMMLibraries.version) \(GEMMLibraries.selected) (large GEMMs) + OpenBLAS \(openBLASCoreName) (small)"
    }

    /// The BLIS kernels in use, e.g. "skx" ("generic": BLIS's portable C kernels).
    public static var blisKernels: String { GEMMLibraries.selected }
    /// The BLIS kernels `BLAS` set for this process (nil: BLIS_ARCH_TYPE was set outside, or BLIS chose).
    public static var blisKernelsPicked: String? { GEMMLibraries.configured }
    /// The BLIS kernels `BLAS` picks for a CPU with these /proc/cpuinfo flags (nil: BLIS's own choice).
    public static func blisKernels(forCPUFlags flags: Set<String>) -> String? { GEMMLibraries.archForCPU(flags: flags) }
    /// This machine's /proc/cpuinfo flags.
    public static var cpuFlags: Set<String> { GEMMLibraries.cpuFlags() }
    /// Whether `sgemmSerial` runs a GEMM of this shape on BLIS (else OpenBLAS).
    @inline(__always)
    public static func runsOnBLIS(M: Int, N: Int, K: Int) -> Bool {
        M * N * K >= blisMinWork && min(M, N) >= blisMinSide
    }

    /// The OpenBLAS kernel family in use, e.g. "Haswell".
    public static var openBLASCoreName: String { String(cString: openblas_get_corename()) }

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
        _ = GEMMLibraries.configured
        if runsOnBLIS(M: M, N: N, K: K) {
            // BLIS takes a row and a column stride per operand, so a transpose is just swapped strides.
            var alpha = alpha, beta = beta
            bli_sgemm(0, 0, Int64(M), Int64(N), Int64(K), &alpha,
                      A, Int64(transA ? 1 : lda), Int64(transA ? lda : 1),
                      B, Int64(transB ? 1 : ldb), Int64(transB ? ldb : 1),
                      &beta, C, Int64(ldc), 1)
        } else {
            cblas_sgemm(CblasRowMajor,
                        transA ? CblasTrans : CblasNoTrans,
                        transB ? CblasTrans : CblasNoTrans,
                        Int32(M), Int32(N), Int32(K), alpha, A, Int32(lda), B, Int32(ldb), beta, C, Int32(ldc))
        }
    }
}

/// Chooses BLIS's kernels (once, before its first call) and makes both libraries single-threaded.
/// BLIS reads BLIS_ARCH_TYPE when it initialises; a value the user set is kept. Otherwise: "skx" (AVX-512 kernels)
/// when the CPU has AVX-512 F/DQ/BW/VL, "haswell" (AVX2) with AVX2 and FMA, else BLIS's own choice.
enum GEMMLibraries {
    /// BLIS 0.9 reads BLIS_ARCH_TYPE as an index into its arch_t enum.
    static let archIDs = ["skx": 0, "haswell": 3]

    /// The kernels set through BLIS_ARCH_TYPE (nil: the environment had a value already, or the CPU has neither
    /// AVX-512 nor AVX2 and BLIS chooses).
    static let configured: String? = {
        var picked: String?
        if getenv("BLIS_ARCH_TYPE") == nil, let arch = archForCPU(flags: cpuFlags()), let id = archIDs[arch] {
            setenv("BLIS_ARCH_TYPE", String(id), 1)
            picked = arch
        }
        bli_thread_set_num_threads(1)
        bli_init()
        openblas_set_num_threads(1)
        return picked
    }()

    /// The BLIS kernels in use, e.g. "skx" ("generic" means BLIS's portable C kernels).
    static var selected: String { _ = configured; return String(cString: bli_arch_string(bli_arch_query_id())) }
    static var version: String { String(cString: bli_info_get_version_str()) }

    static func archForCPU(flags: Set<String>) -> String? {
        if ["avx512f", "avx512dq", "avx512bw", "avx512vl"].allSatisfy(flags.contains) { return "skx" }
        if ["avx2", "fma"].allSatisfy(flags.contains) { return "haswell" }
        return nil
    }

    /// The "flags" line of /proc/cpuinfo (empty where there is none).
    static func cpuFlags() -> Set<String> {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return [] }
        return Set(line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == ":" }).map(String.init))
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
