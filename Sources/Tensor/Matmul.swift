// Matrix multiplies (row-major sgemm), routed by shape (`BLAS.library`):
//   - BLIS (its typed API) for large GEMMs. BLIS and OpenBLAS pick kernels by CPU model, and Debian 12's versions
//     predate some CPUs: BLIS 0.9 falls back to its generic C kernels on Zen 5 (~42 GFLOP/s) and to its AVX2 ones on
//     Sapphire Rapids; OpenBLAS 0.3.21 to its SSE3 "Prescott" kernels on Sapphire Rapids. So on AVX-512 CPUs we pick
//     BLIS's "skx" kernels (see `GEMMLibraries`), and a GEMM goes to whichever library runs the wider kernels:
//     large ones to BLIS where its kernels are wider than OpenBLAS's (measured on Zen 5: skx ~1.8x OpenBLAS's AVX2
//     "Haswell"), every one our kernel does not take where OpenBLAS has only SSE kernels (measured on Sapphire
//     Rapids: BLIS skx 104-125 GFLOP/s on large GEMMs, OpenBLAS Prescott 16-30; small ones level or BLIS ahead).
//   - Our AVX-512 kernel (Sources/CKernels) for GEMMs whose B is untransposed and fits in L2 with room to spare
//     (attention's blocks, weight gradients over few tokens): it skips packing and runs 64x32x256 at ~265 GFLOP/s,
//     where BLIS runs 96 and OpenBLAS 114.
//   - OpenBLAS (cblas) for the rest: small GEMMs with B transposed, or any small GEMM on a CPU without AVX-512.
// With `BLAS.matmulPrecision` bfloat16 (mixed precision: torch autocast's linear / matmul / bmm), every GEMM rounds its
// inputs to bfloat16 and accumulates in fp32 instead, on our AMX or AVX512_BF16 kernels (Sources/CKernels/bf16_gemm.c;
// `BF16Kernel`), or, on CPUs with neither, on the fp32 libraries above over inputs rounded to bfloat16. There an input
// may also be bfloat16 already (`GEMMInput`), where its producer wrote it so for the GEMMs that read it.
// All run single-threaded: large GEMMs are split over the kernel threads by `BLAS.sgemm` itself (or, on a rank that
// lends idle CPUs, into two fixed halves: Runtime/IdleCPUs.swift). Which code runs a GEMM depends on its shape and transB only
// (on a given CPU), so a run is bitwise reproducible for a given thread count and lending setting (see KernelThreads.swift).
import CBLIS
import CKernels
import CLinux
import COpenBLAS
import Foundation
import Runtime

public enum BLAS {
    /// Kernel threads for the element-wise kernels and for splitting GEMMs (see `splitOnKernelThreads()`).
    public static func setThreads(_ n: Int) {
        KernelThreads.count = max(n, 1)
        splitThreads = 0   // GEMMs run whole again (call splitOnKernelThreads() to split them)
    }

    /// Sets both libraries up now: BLIS's kernels (through BLIS_ARCH_TYPE, which it reads when it initialises: `setenv`
    /// is not safe while other threads read the environment, so programs call this before starting threads) and one
    /// thread each. The first GEMM does it otherwise.
    public static func prepare() { _ = GEMMLibraries.setup }

    /// The precision every GEMM computes in (torch autocast's role): set once, before training, from
    /// `training.mixed_precision_param`.
    public static var matmulPrecision: Precision = .float32

    /// Where bfloat16 GEMMs run: the fastest kernel this CPU has (`BF16Kernel.available`); tests and `titan bench-gemm`
    /// pick others.
    public static var bf16Kernel: BF16Kernel = BF16Kernel.available[0]

    /// Threads that split large GEMMs (0: every GEMM runs whole on the calling thread). See `splitOnKernelThreads()`.
    public private(set) static var splitThreads = 0
    /// GEMMs with fewer multiply-adds than this are not split.
    public static var minSplitWork = 1 << 20

    /// Splits every large GEMM into `KernelThreads.count` fixed blocks of rows (or columns) run on the kernel threads.
    /// Deterministic for a given thread count (the blocks depend on the shape and the thread count only); not the same
    /// bits as the unsplit GEMM (see KernelThreads.swift).
    public static func splitOnKernelThreads() {
        splitThreads = KernelThreads.count > 1 ? KernelThreads.count : 0
    }

    /// GEMMs at least this large in every sense are BLIS's, unless our kernel takes them first (`library`); smaller
    /// ones OpenBLAS's: measured crossover on a Zen 5 core (BLIS skx against OpenBLAS Haswell; at 64x256x64 BLIS 146,
    /// OpenBLAS 122 GFLOP/s; at 16x768x256 BLIS 61, OpenBLAS 86).
    static let blisMinWork = 1 << 20, blisMinSide = 32

    /// What runs the GEMMs, e.g. "BLIS 0.9.0 skx (large) + AVX-512 kernel (small, B untransposed) + OpenBLAS Haswell
    /// (the rest)".
    public static var description: String {
        let setup = GEMMLibraries.setup
        var parts: [String] = []
        if setup.blis != .none {
            parts.append("BLIS \(GEMMLibraries.version) \(setup.blisKernels) (\(setup.blis == .large ? "large" : "the rest"))")
        }
        if setup.smallKernel { parts.append("AVX-512 kernel (small, B untransposed)") }
        if setup.blis != .all { parts.append("OpenBLAS \(openBLASCoreName)" + (parts.isEmpty ? "" : " (the rest)")) }
        return parts.joined(separator: " + ")
    }

    /// The BLIS kernels in use, e.g. "skx" ("generic": BLIS's portable C kernels).
    public static var blisKernels: String { GEMMLibraries.setup.blisKernels }
    /// Whether BLIS_ARCH_TYPE came from outside this process (then BLIS uses it as it is).
    public static var blisArchFromEnvironment: Bool { GEMMLibraries.setup.archFromEnvironment }
    /// Whether this process set BLIS_ARCH_TYPE to skx.
    public static var pickedSKX: Bool { GEMMLibraries.setup.pickedSKX }
    /// Which GEMMs go to BLIS (the others not taken by our kernel run on OpenBLAS).
    public static var gemmsOnBLIS: GEMMLibraries.BLISShare { GEMMLibraries.setup.blis }
    /// Whether this CPU runs our AVX-512 small-GEMM kernel.
    public static var hasSmallKernel: Bool { GEMMLibraries.setup.smallKernel }
    /// The library file `cblas_sgemm` (OpenBLAS's GEMMs) resolves to.
    public static var cblasLibrary: String { GEMMLibraries.setup.cblasLibrary }
    /// Whether BLIS 0.9 needs skx picked on a CPU like this (AVX-512 AMD newer than its CPU table).
    public static func needsSKXPick(_ cpu: CPUInfo) -> Bool { GEMMLibraries.needsSKXPick(cpu) }
    /// Which GEMMs go to BLIS with these kernels on both sides.
    public static func gemmsOnBLIS(blisKernels: String, openBLASCore: String) -> GEMMLibraries.BLISShare {
        GEMMLibraries.share(blisKernels: blisKernels, openBLASCore: openBLASCore)
    }
    /// Whether BLIS takes a GEMM of this shape (unless our kernel takes it first: `library`).
    @inline(__always)
    public static func runsOnBLIS(M: Int, N: Int, K: Int) -> Bool {
        switch GEMMLibraries.setup.blis {
        case .all: return true
        case .large: return M * N * K >= blisMinWork && min(M, N) >= blisMinSide
        case .none: return false
        }
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
        gemm(transA: transA, transB: transB, M: M, N: N, K: K, alpha: alpha, A: .f32(A), lda: lda, B: .f32(B), ldb: ldb,
             beta: beta, C: C, ldc: ldc)
    }

    /// `sgemm` on fp32 or bfloat16 inputs (bfloat16 ones only under `matmulPrecision` bfloat16).
    @inline(__always)
    public static func gemm(transA: Bool, transB: Bool, M: Int, N: Int, K: Int,
                            alpha: Float, A: GEMMInput, lda: Int, B: GEMMInput, ldb: Int,
                            beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int) {
        let t = splitThreads
        if t > 1 && M * N * K >= minSplitWork && K > 0 && max(M, N) >= 32 * t && !KernelThreads.insideRegion {
            // Split the larger of M and N into t blocks (multiples of 16 rows / columns).
            let alongM = M >= N
            let n = alongM ? M : N
            KernelThreads.run(parts: t) { c in
                let lo = (n * c / t) & ~15, hi = c == t - 1 ? n : (n * (c + 1) / t) & ~15
                if lo >= hi { return }
                let a = alongM ? A + (transA ? lo : lo * lda) : A
                let b = alongM ? B : B + (transB ? lo * ldb : lo)
                KernelThreads.asRegionPart {
                    gemmSerial(transA: transA, transB: transB, M: alongM ? hi - lo : M, N: alongM ? N : hi - lo, K: K,
                               alpha: alpha, A: a, lda: lda, B: b, ldb: ldb, beta: beta,
                               C: alongM ? C + lo * ldc : C + lo, ldc: ldc)
                }
            }
            return
        }
        if t == 0 && IdleCPUs.enabled && M * N * K >= IdleCPUs.minGEMMWork && max(M, N) >= 64 && !KernelThreads.insideRegion {
            // Two fixed halves of the larger of M and N, the second on an idle CPU when there is one (see IdleCPUs).
            let alongM = M >= N
            let lo = ((alongM ? M : N) / 2) & ~15
            let a = alongM ? A + (transA ? lo : lo * lda) : A
            let b = alongM ? B : B + (transB ? lo * ldb : lo)
            IdleCPUs.run({
                gemmSerial(transA: transA, transB: transB, M: alongM ? lo : M, N: alongM ? N : lo, K: K,
                           alpha: alpha, A: A, lda: lda, B: B, ldb: ldb, beta: beta, C: C, ldc: ldc)
            }, {
                gemmSerial(transA: transA, transB: transB, M: alongM ? M - lo : M, N: alongM ? N : N - lo, K: K,
                           alpha: alpha, A: a, lda: lda, B: b, ldb: ldb, beta: beta,
                           C: alongM ? C + lo * ldc : C + lo, ldc: ldc)
            }, lendingTo: IdleCPUs.idleCPU)
            return
        }
        gemmSerial(transA: transA, transB: transB, M: M, N: N, K: K, alpha: alpha, A: A, lda: lda, B: B, ldb: ldb,
                   beta: beta, C: C, ldc: ldc)
    }

    /// `sgemm` without splitting (for callers that already run on the kernel threads).
    @inline(__always)
    public static func sgemmSerial(transA: Bool, transB: Bool, M: Int, N: Int, K: Int,
                                   alpha: Float, A: UnsafePointer<Float>, lda: Int,
                                   B: UnsafePointer<Float>, ldb: Int,
                                   beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int) {
        gemmSerial(transA: transA, transB: transB, M: M, N: N, K: K, alpha: alpha, A: .f32(A), lda: lda, B: .f32(B),
                   ldb: ldb, beta: beta, C: C, ldc: ldc)
    }

    /// `gemm` without splitting.
    @inline(__always)
    public static func gemmSerial(transA: Bool, transB: Bool, M: Int, N: Int, K: Int,
                                  alpha: Float, A: GEMMInput, lda: Int, B: GEMMInput, ldb: Int,
                                  beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int) {
        if M == 0 || N == 0 { return }
        if K == 0 {
            if beta == 1 { return }
            for i in 0..<M { for j in 0..<N { C[i * ldc + j] = beta == 0 ? 0 : beta * C[i * ldc + j] } }
            return
        }
        if matmulPrecision == .bfloat16 {
            bf16gemm(on: bf16Kernel, transA: transA, transB: transB, M: M, N: N, K: K, alpha: alpha, A: A, lda: lda,
                     B: B, ldb: ldb, beta: beta, C: C, ldc: ldc)
            return
        }
        guard case .f32(let a) = A, case .f32(let b) = B else {
            preconditionFailure("BLAS: bfloat16 GEMM inputs under matmulPrecision float32")
        }
        sgemm(on: library(M: M, N: N, K: K, transB: transB), transA: transA, transB: transB, M: M, N: N, K: K,
              alpha: alpha, A: a, lda: lda, B: b, ldb: ldb, beta: beta, C: C, ldc: ldc)
    }

    /// C_MN = alpha · bf16(op(A)) · bf16(op(B)) + beta · C_MN with fp32 accumulation, on the given kernel, unsplit
    /// (M, N, K > 0). bf16(x) rounds to nearest even.
    public static func bf16gemm(on kernel: BF16Kernel, transA: Bool, transB: Bool, M: Int, N: Int, K: Int,
                                alpha: Float, A: UnsafePointer<Float>, lda: Int,
                                B: UnsafePointer<Float>, ldb: Int,
                                beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int) {
        bf16gemm(on: kernel, transA: transA, transB: transB, M: M, N: N, K: K, alpha: alpha, A: .f32(A), lda: lda,
                 B: .f32(B), ldb: ldb, beta: beta, C: C, ldc: ldc)
    }

    /// `bf16gemm` on fp32 or bfloat16 inputs (a bfloat16 input is taken as it is: bf16 of it is itself).
    public static func bf16gemm(on kernel: BF16Kernel, transA: Bool, transB: Bool, M: Int, N: Int, K: Int,
                                alpha: Float, A: GEMMInput, lda: Int, B: GEMMInput, ldb: Int,
                                beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int) {
        switch kernel {
        case .amx, .avx512:
            titan_bf16_gemm(kernel == .amx ? TITAN_BF16_AMX : TITAN_BF16_AVX512, Int64(M), Int64(N), Int64(K), alpha,
                            A.raw, Int64(transA ? 1 : lda), Int64(transA ? lda : 1), A.isBF16 ? 1 : 0,
                            B.raw, Int64(transB ? 1 : ldb), Int64(transB ? ldb : 1), B.isBF16 ? 1 : 0, beta, C, Int64(ldc))
        case .widened:
            // The products of bfloat16 values are exact in fp32, so the fp32 GEMM over rounded copies computes the
            // same products; only the order of the fp32 sums differs from the kernels'.
            let (ra, ca) = transA ? (K, M) : (M, K), (rb, cb) = transB ? (N, K) : (K, N)
            let a = UnsafeMutablePointer<Float>.allocate(capacity: ra * ca), b = UnsafeMutablePointer<Float>.allocate(capacity: rb * cb)
            defer { a.deallocate(); b.deallocate() }
            for r in 0..<ra { A.rounded(row: r, ld: lda, count: ca, into: a + r * ca) }
            for r in 0..<rb { B.rounded(row: r, ld: ldb, count: cb, into: b + r * cb) }
            sgemm(on: library(M: M, N: N, K: K, transB: transB), transA: transA, transB: transB, M: M, N: N, K: K,
                  alpha: alpha, A: a, lda: ca, B: b, ldb: cb, beta: beta, C: C, ldc: ldc)
        }
    }

    public enum Library: String, Sendable {
        case blis = "BLIS", openBLAS = "OpenBLAS"
        /// Our AVX-512 kernel for small GEMMs (Sources/CKernels): no packing, B untransposed only.
        case smallAVX512 = "AVX-512 small"
    }

    /// Where `sgemmSerial` runs a GEMM: our AVX-512 kernel where the CPU has it, B is untransposed and at most
    /// `smallKernelMaxB` floats (it streams B from L2 once per 8 rows of C, unpacked); else BLIS for large GEMMs
    /// (`runsOnBLIS`), OpenBLAS for the rest.
    @inline(__always)
    public static func library(M: Int, N: Int, K: Int, transB: Bool) -> Library {
        if !transB && K * N <= smallKernelMaxB && GEMMLibraries.setup.smallKernel { return .smallAVX512 }
        return runsOnBLIS(M: M, N: N, K: K) ? .blis : .openBLAS
    }

    /// B (K × N) up to 256 KB goes to our kernel: there it ran 209-268 GFLOP/s in every shape measured on this CPU
    /// (L2 1 MB), ahead of BLIS; at 512 KB level with it (266 against 258), with B of 1-2 MB behind (219-240 against
    /// 243-247; `titan bench-gemm --compare-libraries`). So the bound is on the safe side.
    static let smallKernelMaxB = 64 * 1024

    /// One GEMM (M, N, K > 0) on the given library, unsplit (`titan bench-gemm --compare-libraries` times each).
    @inline(__always)
    public static func sgemm(on library: Library, transA: Bool, transB: Bool, M: Int, N: Int, K: Int,
                             alpha: Float, A: UnsafePointer<Float>, lda: Int,
                             B: UnsafePointer<Float>, ldb: Int,
                             beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int) {
        prepare()
        switch library {
        case .blis:
            // BLIS takes a row and a column stride per operand, so a transpose is just swapped strides.
            var alpha = alpha, beta = beta
            bli_sgemm(0, 0, Int64(M), Int64(N), Int64(K), &alpha,
                      A, Int64(transA ? 1 : lda), Int64(transA ? lda : 1),
                      B, Int64(transB ? 1 : ldb), Int64(transB ? ldb : 1),
                      &beta, C, Int64(ldc), 1)
        case .smallAVX512:
            precondition(!transB && GEMMLibraries.setup.smallKernel,
                         "BLAS: the AVX-512 kernel takes B untransposed, on AVX-512 CPUs")
            titan_small_sgemm(Int64(M), Int64(N), Int64(K), alpha, A, Int64(transA ? 1 : lda), Int64(transA ? lda : 1),
                              B, Int64(ldb), beta, C, Int64(ldc))
        case .openBLAS:
            cblas_sgemm(CblasRowMajor,
                        transA ? CblasTrans : CblasNoTrans,
                        transB ? CblasTrans : CblasNoTrans,
                        Int32(M), Int32(N), Int32(K), alpha, A, Int32(lda), B, Int32(ldb), beta, C, Int32(ldc))
        }
    }
}

/// Sets both libraries up once, before BLIS's first call, and decides which GEMMs go to BLIS.
/// BLIS reads BLIS_ARCH_TYPE when it initialises. Unless it is set already, it is set to skx's id on the AVX-512 CPUs
/// where BLIS 0.9 would otherwise run narrower kernels: Intel (it knows Skylake-X; later models get its AVX2 ones) and
/// AMD from family 0x1A (Zen 5) on (its generic ones). Then the library with the wider kernels takes the GEMMs it won
/// in the measurements above (`share`).
public enum GEMMLibraries {
    /// Which GEMMs BLIS takes.
    public enum BLISShare: Sendable {
        /// None: OpenBLAS runs at least as wide kernels.
        case none
        /// Large ones (`BLAS.blisMinWork`): BLIS's kernels are wider, OpenBLAS's still vectorised with FMA.
        case large
        /// Every one our kernel does not take: OpenBLAS has only SSE kernels here.
        case all
    }

    struct Setup {
        /// BLIS_ARCH_TYPE came from outside this process.
        let archFromEnvironment: Bool
        /// This process set BLIS_ARCH_TYPE to skx.
        let pickedSKX: Bool
        /// The BLIS kernels in use, e.g. "skx" ("generic": BLIS's portable C kernels).
        let blisKernels: String
        let blis: BLISShare
        /// The file `cblas_sgemm` resolves to (both libraries export it; the link order decides).
        let cblasLibrary: String
        /// The CPU runs our AVX-512 small-GEMM kernel.
        let smallKernel: Bool
    }

    /// skx's index in BLIS 0.9's arch_t enum, which is what it reads from BLIS_ARCH_TYPE.
    static let skxArchID: Int32 = 0

    static let setup: Setup = {
        let cpu = CPUInfo.read()
        let fromEnvironment = getenv("BLIS_ARCH_TYPE") != nil
        var picked = false
        if !fromEnvironment && needsSKXPick(cpu) && String(cString: bli_arch_string(skxArchID)) == "skx" {
            setenv("BLIS_ARCH_TYPE", String(skxArchID), 1)
            picked = true
        }
        bli_thread_set_num_threads(1)
        bli_init()
        openblas_set_num_threads(1)
        let kernels = String(cString: bli_arch_string(bli_arch_query_id()))
        let library = titan_symbol_library("cblas_sgemm").map { String(cString: $0) } ?? "?"
        return Setup(archFromEnvironment: fromEnvironment, pickedSKX: picked, blisKernels: kernels,
                     blis: share(blisKernels: kernels, openBLASCore: BLAS.openBLASCoreName),
                     cblasLibrary: library, smallKernel: titan_small_sgemm_available() != 0)
    }()

    static var version: String { String(cString: bli_info_get_version_str()) }

    /// Whether BLIS 0.9 would run narrower kernels than skx on this AVX-512 CPU without a pick.
    static func needsSKXPick(_ cpu: CPUInfo) -> Bool {
        ["avx512f", "avx512dq", "avx512bw", "avx512vl"].allSatisfy(cpu.flags.contains)
            && (cpu.vendor == "GenuineIntel" || (cpu.vendor == "AuthenticAMD" && cpu.family >= 0x1A))
    }

    /// How wide a kernel family computes: 3 AVX-512, 2 AVX2 + FMA, 1 AVX, 0 SSE or portable C.
    static func width(_ kernels: String) -> Int {
        switch kernels.lowercased() {
        case "skx", "knl", "skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5": return 3
        case "haswell", "zen", "zen2", "zen3", "excavator", "steamroller", "piledriver": return 2
        case "sandybridge", "bulldozer": return 1
        default: return 0
        }
    }

    static func share(blisKernels: String, openBLASCore: String) -> BLISShare {
        let blis = width(blisKernels), openBLAS = width(openBLASCore)
        if blis <= openBLAS { return .none }
        return openBLAS >= 2 ? .large : .all
    }
}

/// What /proc/cpuinfo says about the first CPU (empty where there is none).
public struct CPUInfo: Sendable {
    public var vendor: String, family: Int, flags: Set<String>

    public init(vendor: String, family: Int, flags: Set<String>) {
        self.vendor = vendor; self.family = family; self.flags = flags
    }

    public static func read() -> CPUInfo {
        var cpu = CPUInfo(vendor: "", family: -1, flags: [])
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return cpu }
        for line in text.split(separator: "\n") {
            let kv = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard kv.count == 2 else { continue }
            switch kv[0] {
            case "vendor_id" where cpu.vendor.isEmpty: cpu.vendor = kv[1]
            case "cpu family" where cpu.family < 0: cpu.family = Int(kv[1]) ?? -1
            case "flags" where cpu.flags.isEmpty: cpu.flags = Set(kv[1].split(separator: " ").map(String.init))
            default: break
            }
            if !cpu.vendor.isEmpty && cpu.family >= 0 && !cpu.flags.isEmpty { break }
        }
        return cpu
    }
}

/// A GEMM input: fp32, or bfloat16 (its bits) where a mixed-precision producer wrote it so; the bfloat16 GEMMs then
/// read half the bytes and round nothing (the producer rounded to nearest even as they would have).
public enum GEMMInput {
    case f32(UnsafePointer<Float>)
    case bf16(UnsafePointer<UInt16>)

    @inline(__always)
    public static func + (x: GEMMInput, n: Int) -> GEMMInput {
        switch x {
        case .f32(let p): return .f32(p + n)
        case .bf16(let p): return .bf16(p + n)
        }
    }

    var raw: UnsafeRawPointer {
        switch self {
        case .f32(let p): return UnsafeRawPointer(p)
        case .bf16(let p): return UnsafeRawPointer(p)
        }
    }

    var isBF16: Bool { if case .bf16 = self { return true } else { return false } }

    /// Row r (ld apart) of `count` values, rounded to bfloat16, as fp32.
    func rounded(row r: Int, ld: Int, count: Int, into y: UnsafeMutablePointer<Float>) {
        switch self {
        case .f32(let p): titan_round_bf16(p + r * ld, y, Int64(count))
        case .bf16(let p): titan_bf16_to_f32(p + r * ld, y, Int64(count))
        }
    }
}

/// A floating-point format of parameters, matmul inputs or collective payloads (torchtitan's config values).
public enum Precision: String, Sendable, CaseIterable {
    case float32, bfloat16
}

/// A bfloat16 GEMM kernel (fp32 accumulation).
public enum BF16Kernel: String, Sendable, CaseIterable {
    /// AMX tiles (tdpbf16ps), 16 × 16 × 32 per instruction: Sapphire Rapids and later Xeons.
    case amx = "AMX"
    /// AVX512_BF16 (vdpbf16ps): twice fp32 FMA's multiply-adds per instruction (Cooper Lake, Zen 4 and later; on
    /// Sapphire Rapids only half an instruction per cycle issues, so there it trails fp32 and AMX runs instead).
    case avx512 = "AVX512_BF16"
    /// Neither: the fp32 GEMMs over inputs rounded to bfloat16 (the same products, summed in another order).
    case widened = "fp32 GEMM on bf16-rounded inputs"

    /// The kernels this CPU runs, fastest first (`widened` always last).
    public static let available: [BF16Kernel] = {
        let bits = titan_bf16_kernels()
        return (bits & TITAN_BF16_AMX != 0 ? [.amx] : []) + (bits & TITAN_BF16_AVX512 != 0 ? [.avx512] : []) + [.widened]
    }()
}

/// y[i] = bf16(x[i]) (nearest even; bits), over the kernel threads.
public func to_bf16(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<UInt16>, _ n: Int) {
    parallelFor(n, costPerItem: 1) { r in titan_f32_to_bf16(x + r.lowerBound, y + r.lowerBound, Int64(r.count)) }
}

/// y[i] = x[i] rounded to bfloat16 (nearest even) and widened back, over the kernel threads (x == y allowed).
public func round_bf16(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
    parallelFor(n, costPerItem: 1) { r in titan_round_bf16(x + r.lowerBound, y + r.lowerBound, Int64(r.count)) }
}

/// A Linear layer without bias: out_TN = x_TD · w_NDᵀ (or out_TN += ... when `accumulate`).
///   x_TD: [T, D], w_ND: [N, D] (PyTorch Linear weight layout), out_TN: [T, N].
public func matmul_forward(_ out_TN: UnsafeMutablePointer<Float>, _ x_TD: UnsafePointer<Float>, _ w_ND: UnsafePointer<Float>,
                           T: Int, D: Int, N: Int, accumulate: Bool = false) {
    matmul_forward(out_TN, .f32(x_TD), .f32(w_ND), T: T, D: D, N: N, accumulate: accumulate)
}

/// `matmul_forward` with w fp32 or bfloat16 (a parameter's `gemmInput`).
public func matmul_forward(_ out_TN: UnsafeMutablePointer<Float>, _ x_TD: UnsafePointer<Float>, _ w_ND: GEMMInput,
                           T: Int, D: Int, N: Int, accumulate: Bool = false) {
    matmul_forward(out_TN, .f32(x_TD), w_ND, T: T, D: D, N: N, accumulate: accumulate)
}

/// `matmul_forward` with x and w fp32 or bfloat16.
public func matmul_forward(_ out_TN: UnsafeMutablePointer<Float>, _ x_TD: GEMMInput, _ w_ND: GEMMInput,
                           T: Int, D: Int, N: Int, accumulate: Bool = false) {
    BLAS.gemm(transA: false, transB: true, M: T, N: N, K: D, alpha: 1, A: x_TD, lda: D, B: w_ND, ldb: D,
              beta: accumulate ? 1 : 0, C: out_TN, ldc: N)
}

/// Backward of `matmul_forward`, accumulating:
///   dx_TD += dout_TN · w_ND      (skipped when dx_TD is nil; WRITTEN instead when `overwriteDx`, which saves
///                                 zeroing a scratch buffer first: the same values)
///   dw_ND += dout_TNᵀ · x_TD     (skipped when dw_ND is nil)
public func matmul_backward(dx_TD: UnsafeMutablePointer<Float>?, dw_ND: UnsafeMutablePointer<Float>?,
                            dout_TN: UnsafePointer<Float>, x_TD: UnsafePointer<Float>, w_ND: UnsafePointer<Float>,
                            T: Int, D: Int, N: Int, overwriteDx: Bool = false) {
    matmul_backward(dx_TD: dx_TD, dw_ND: dw_ND, dout_TN: .f32(dout_TN), x_TD: .f32(x_TD), w_ND: .f32(w_ND), T: T, D: D, N: N,
                    overwriteDx: overwriteDx)
}

/// `matmul_backward` with w fp32 or bfloat16 (a parameter's `gemmInput`).
public func matmul_backward(dx_TD: UnsafeMutablePointer<Float>?, dw_ND: UnsafeMutablePointer<Float>?,
                            dout_TN: UnsafePointer<Float>, x_TD: UnsafePointer<Float>, w_ND: GEMMInput,
                            T: Int, D: Int, N: Int, overwriteDx: Bool = false) {
    matmul_backward(dx_TD: dx_TD, dw_ND: dw_ND, dout_TN: .f32(dout_TN), x_TD: .f32(x_TD), w_ND: w_ND, T: T, D: D, N: N,
                    overwriteDx: overwriteDx)
}

/// `matmul_backward` with dout, x and w fp32 or bfloat16.
public func matmul_backward(dx_TD: UnsafeMutablePointer<Float>?, dw_ND: UnsafeMutablePointer<Float>?,
                            dout_TN: GEMMInput, x_TD: GEMMInput, w_ND: GEMMInput,
                            T: Int, D: Int, N: Int, overwriteDx: Bool = false) {
    if let dx = dx_TD {
        BLAS.gemm(transA: false, transB: false, M: T, N: D, K: N, alpha: 1, A: dout_TN, lda: N, B: w_ND, ldb: D,
                  beta: overwriteDx ? 0 : 1, C: dx, ldc: D)
    }
    if let dw = dw_ND {
        BLAS.gemm(transA: true, transB: false, M: N, N: D, K: T, alpha: 1, A: dout_TN, lda: N, B: x_TD, ldb: D,
                  beta: 1, C: dw, ldc: D)
    }
}
