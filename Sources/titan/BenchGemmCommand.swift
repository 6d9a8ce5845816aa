import ArgumentParser
import CKernels
import Foundation
import Model
import Runtime
import Tensor

/// `titan bench-gemm`: the sgemm peak of this machine (`BLAS.sgemm` as the trainer runs it: split over the kernel
/// threads), or with `--bf16` the bfloat16 GEMM peak (what a mixed-precision run's matmuls reach), and the model FLOPs
/// per token of a flavor (`Qwen3ModelArgs.flopsPerToken`), so a benchmark can report model FLOP utilisation (MFU)
/// against a peak measured in the same run.
struct BenchGemm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-gemm",
        abstract: "Time BLAS.sgemm (square, row-major; --bf16: bfloat16 inputs, fp32 accumulation) and print the GFLOP/s peak plus a flavor's model FLOPs per token.")

    @Option(help: "Matrix size M = N = K.")
    var size: Int = 1024
    @Option(help: "Timed repetitions (after one warm-up).")
    var reps: Int = 8
    @Option(help: "Kernel threads (default: OPENBLAS_NUM_THREADS, else the number of CPUs).")
    var threads: Int?
    @Option(help: "Model flavor whose FLOPs per token are printed.")
    var flavor: String = "bench_moe"
    @Option(help: "Model family of the flavor: qwen3 or deepseek_v3.")
    var module: String = "qwen3"
    @Option(help: "Sequence length for the attention FLOPs.")
    var seqLen: Int = 256
    @Flag(help: "Instead: time each GEMM implementation on one thread over the shapes behind BLAS's routing.")
    var compareLibraries = false
    @Flag(help: "bfloat16 GEMMs (mixed precision's matmuls): the peak, or with --compare-libraries our kernels against oneDNN's.")
    var bf16 = false

    func run() throws {
        BLAS.prepare()
        if compareLibraries { return bf16 ? Self.compareBF16Kernels() : Self.compareLibraries() }
        if bf16 { BLAS.matmulPrecision = .bfloat16 }
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
        var model = ModelConfig()
        model.name = module
        model.flavor = flavor
        let args: ModelArgs
        do { args = try model.withFlavorArgs().modelArgs } catch { throw ValidationError("\(error)") }
        let fpt = args.flopsPerToken(seqLen: seqLen)
        let what = bf16 ? "bf16 gemm (fp32 accumulation)" : "sgemm", on = bf16 ? BLAS.bf16Kernel.rawValue : BLAS.description
        print("\(what) \(n)x\(n)x\(n), \(KernelThreads.count) thread(s), \(on): best \(String(format: "%.1f", peak)) GFLOP/s, mean \(String(format: "%.1f", mean)) GFLOP/s")
        print("\(flavor): \(args.activeParameters) active params/token, \(String(format: "%.4g", fpt)) model FLOPs/token at seq_len \(seqLen)")
        print(jsonLine(["name": bf16 ? "bf16_gemm" : "sgemm", "size": n, "threads": KernelThreads.count, "peak_gflops": rounded(peak, places: 2),
                        "mean_gflops": rounded(mean, places: 2), "flavor": flavor, "active_params": args.activeParameters,
                        "flops_per_token": fpt]))
    }

    /// (M, N, K, transA, transB): attention's blocks (scores A·B with K = head dim 32 after K is transposed, values
    /// A·B), the crossover region, short K, large projection / expert GEMMs, and B outgrowing L2.
    static let comparedShapes: [(Int, Int, Int, Bool, Bool)] = [
        (64, 64, 32, false, true), (64, 64, 32, false, false), (64, 256, 32, false, false),
        (64, 32, 256, false, false),
        (16, 768, 256, false, true), (32, 768, 256, false, true), (64, 256, 64, false, false),
        (128, 128, 128, false, false), (512, 256, 8, true, false), (512, 256, 32, true, false),
        (256, 768, 256, false, true), (2048, 256, 256, false, false), (2048, 768, 256, false, true),
        (512, 512, 256, false, false), (1024, 256, 1024, false, false), (768, 256, 2048, true, false),
        (1024, 256, 256, false, true), (256, 256, 1024, true, false),
    ]

    /// GFLOP/s of each implementation per shape (best of 5 runs of ≥ 0.1 s each, beta 1; our AVX-512 kernel only
    /// where B is untransposed), and where `BLAS` routes the shape.
    static func compareLibraries() {
        func cell(_ s: String, _ width: Int) -> String {
            s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
        }
        print("GEMM libraries, one thread each: \(BLAS.description)")
        print("M x N x K".padding(toLength: 18, withPad: " ", startingAt: 0) + cell("op", 6) + cell("BLIS", 10)
              + cell("OpenBLAS", 10) + cell("AVX-512", 10) + cell("routed", 15) + "   (GFLOP/s)")
        var json: [String] = []
        var rng = SplitMix64(seed: 3)
        for (M, N, K, transA, transB) in comparedShapes {
            let a = Tensor(shape: [M * K]), b = Tensor(shape: [K * N]), c = Tensor(shape: [M * N])
            rng.fillNormal(a.data, a.count); rng.fillNormal(b.data, b.count)
            let lda = transA ? M : K, ldb = transB ? K : N
            var gflops: [BLAS.Library: Double] = [:]
            let libraries: [BLAS.Library] = [.blis, .openBLAS] + (BLAS.hasSmallKernel && !transB ? [.smallAVX512] : [])
            for library in libraries {
                func gemm() {
                    BLAS.sgemm(on: library, transA: transA, transB: transB, M: M, N: N, K: K, alpha: 1, A: a.ptr,
                               lda: lda, B: b.ptr, ldb: ldb, beta: 1, C: c.data, ldc: N)
                }
                gemm()
                var best = 0.0
                for _ in 0..<5 {
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    var calls = 0, elapsed = 0.0
                    repeat {
                        gemm(); calls += 1
                        elapsed = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                    } while elapsed < 0.1
                    best = max(best, 2 * Double(M * N * K) * Double(calls) / elapsed / 1e9)
                }
                gflops[library] = best
            }
            let op = (transA ? "Aᵀ" : "A") + "·" + (transB ? "Bᵀ" : "B")
            let routed = BLAS.library(M: M, N: N, K: K, transB: transB)
            let small = gflops[.smallAVX512].map { String(format: "%.1f", $0) }
            print("\(M) x \(N) x \(K)".padding(toLength: 18, withPad: " ", startingAt: 0) + cell(op, 6)
                  + cell(String(format: "%.1f", gflops[.blis]!), 10)
                  + cell(String(format: "%.1f", gflops[.openBLAS]!), 10)
                  + cell(small ?? "-", 10) + cell(routed.rawValue, 15))
            json.append(jsonLine(["name": "sgemm_library", "m": M, "n": N, "k": K, "op": op,
                                  "blis_gflops": rounded(gflops[.blis]!, places: 1), "openblas_gflops": rounded(gflops[.openBLAS]!, places: 1),
                                  "avx512_small_gflops": gflops[.smallAVX512].map { rounded($0, places: 1) } ?? NSNull(),
                                  "routed": routed.rawValue]))
        }
        json.forEach { print($0) }
    }

    /// GFLOP/s of `gemm` on one thread: the best of 5 runs of ≥ 0.1 s each.
    static func time(flop: Double, _ gemm: () -> Void) -> Double {
        gemm()
        var best = 0.0
        for _ in 0..<5 {
            let t0 = DispatchTime.now().uptimeNanoseconds
            var calls = 0, elapsed = 0.0
            repeat {
                gemm(); calls += 1
                elapsed = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            } while elapsed < 0.1
            best = max(best, flop * Double(calls) / elapsed / 1e9)
        }
        return best
    }

    /// GFLOP/s of each bfloat16 GEMM kernel per shape, on one thread, fp32 in and out (the rounding of the inputs
    /// included), against oneDNN's bf16 matmul where libdnnl is installed: its primitive made for the shape (created
    /// once, outside the timing: its creation time is printed) and made with M left to run time (one primitive for
    /// every M, as expert GEMMs with their varying token counts would need), each call converting the fp32 inputs
    /// first; and the fp32 GEMM as routed, for scale.
    static func compareBF16Kernels() {
        func cell(_ s: String, _ width: Int) -> String {
            s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
        }
        func number(_ x: Double?) -> String { x.map { $0 < 0 ? "-" : String(format: "%.1f", $0) } ?? "-" }
        let onednn = String(cString: titan_onednn_describe())
        print("bfloat16 GEMM kernels, one thread each; oneDNN: \(onednn)")
        let kernels = BF16Kernel.available
        print("M x N x K".padding(toLength: 18, withPad: " ", startingAt: 0) + cell("op", 6)
              + kernels.map { cell($0 == .widened ? "widened" : $0.rawValue, 13) }.joined()
              + cell("\(kernels[0] == .widened ? "widened" : kernels[0].rawValue) bf16 in", 15) + cell("oneDNN", 10) + cell("(create)", 10) + cell("oneDNN rt-M", 13) + cell("fp32", 9) + "   (GFLOP/s)")
        var json: [String] = []
        var rng = SplitMix64(seed: 3)
        var implementations = Set<String>()
        for (M, N, K, transA, transB) in comparedShapes {
            let a = Tensor(shape: [M * K]), b = Tensor(shape: [K * N]), c = Tensor(shape: [M * N])
            rng.fillNormal(a.data, a.count); rng.fillNormal(b.data, b.count)
            let lda = transA ? M : K, ldb = transB ? K : N
            let flop = 2 * Double(M * N * K)
            var ours: [BF16Kernel: Double] = [:]
            for kernel in kernels {
                ours[kernel] = time(flop: flop) {
                    BLAS.bf16gemm(on: kernel, transA: transA, transB: transB, M: M, N: N, K: K, alpha: 1, A: a.ptr,
                                  lda: lda, B: b.ptr, ldb: ldb, beta: 1, C: c.data, ldc: N)
                }
            }
            // The first kernel on inputs that are bfloat16 already (as mixed-precision producers write them).
            let a16 = UnsafeMutablePointer<UInt16>.allocate(capacity: a.count), b16 = UnsafeMutablePointer<UInt16>.allocate(capacity: b.count)
            defer { a16.deallocate(); b16.deallocate() }
            to_bf16(a.ptr, into: a16, a.count); to_bf16(b.ptr, into: b16, b.count)
            let bf16In = time(flop: flop) {
                BLAS.bf16gemm(on: kernels[0], transA: transA, transB: transB, M: M, N: N, K: K, alpha: 1, A: .bf16(a16),
                              lda: lda, B: .bf16(b16), ldb: ldb, beta: 1, C: c.data, ldc: N)
            }
            let fp32 = time(flop: flop) {
                BLAS.sgemmSerial(transA: transA, transB: transB, M: M, N: N, K: K, alpha: 1, A: a.ptr, lda: lda,
                                 B: b.ptr, ldb: ldb, beta: 1, C: c.data, ldc: N)
            }
            var create = 0.0, createRuntime = 0.0
            var impl = [CChar](repeating: 0, count: 64), implRuntime = [CChar](repeating: 0, count: 64)
            let fixed = titan_onednn_bf16_gemm(Int64(M), Int64(N), Int64(K), transA ? 1 : 0, transB ? 1 : 0, 0, 0.1, &create, &impl, 64)
            let runtime = titan_onednn_bf16_gemm(Int64(M), Int64(N), Int64(K), transA ? 1 : 0, transB ? 1 : 0, 1, 0.1,
                                                 &createRuntime, &implRuntime, 64)
            if fixed >= 0 { implementations.insert("fixed shape: " + String(cString: impl)) }
            if runtime >= 0 { implementations.insert("runtime M: " + String(cString: implRuntime)) }
            let op = (transA ? "Aᵀ" : "A") + "·" + (transB ? "Bᵀ" : "B")
            print("\(M) x \(N) x \(K)".padding(toLength: 18, withPad: " ", startingAt: 0) + cell(op, 6)
                  + kernels.map { cell(number(ours[$0]), 13) }.joined() + cell(number(bf16In), 15)
                  + cell(number(fixed), 10) + cell(fixed >= 0 ? String(format: "%.2fms", create) : "-", 10)
                  + cell(number(runtime), 13) + cell(number(fp32), 9))
            var row: [String: Any] = ["name": "bf16_gemm_kernel", "m": M, "n": N, "k": K, "op": op,
                                      "fp32_routed_gflops": rounded(fp32, places: 1)]
            for kernel in kernels { row[kernel.rawValue] = rounded(ours[kernel]!, places: 1) }
            row["bf16_inputs_gflops"] = rounded(bf16In, places: 1)
            row["onednn_gflops"] = fixed >= 0 ? rounded(fixed, places: 1) : NSNull()
            row["onednn_create_ms"] = fixed >= 0 ? rounded(create, places: 3) : NSNull()
            row["onednn_runtime_m_gflops"] = runtime >= 0 ? rounded(runtime, places: 1) : NSNull()
            json.append(jsonLine(row))
        }
        if !implementations.isEmpty { print("oneDNN implementations: " + implementations.sorted().joined(separator: ", ")) }
        json.forEach { print($0) }
    }
}
