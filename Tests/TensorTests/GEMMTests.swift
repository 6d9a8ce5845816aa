import XCTest
import Foundation
import Tensor

/// Every GEMM implementation (BLIS, OpenBLAS, our AVX-512 kernel where the CPU has it), each on small and large shapes,
/// and `BLAS.sgemmSerial`'s routing: every transpose, padded leading dimensions, alpha and beta, against a float64 reference.
final class GEMMTests: XCTestCase {
    func testBothLibrariesMatchReference() {
        var rng = SplitMix64(seed: 21)
        // (M, N, K, large enough for BLIS): small ones are OpenBLAS's (unless BLIS takes every GEMM), large ones BLIS's
        // (where it takes them), unless our kernel takes them first.
        let shapes: [(Int, Int, Int, Bool)] = [(20, 30, 40, false), (9, 47, 5, false), (16, 96, 1024, false),
                                               (96, 80, 160, true), (130, 33, 300, true)]
        for (M, N, K, large) in shapes {
            let share = BLAS.gemmsOnBLIS
            XCTAssertEqual(BLAS.runsOnBLIS(M: M, N: N, K: K), share == .all || (share == .large && large),
                           "M \(M) N \(N) K \(K): not as large as expected for BLIS")
            let libraries: [BLAS.Library?] = [nil, .blis, .openBLAS] + (BLAS.hasSmallKernel ? [.smallAVX512] : [])
            let cases = libraries.flatMap { library in   // nil: as routed
                [(false, false), (false, true), (true, false), (true, true)].map { (library, $0.0, $0.1) }
            }.filter { $0.0 != .smallAVX512 || !$0.2 }   // the AVX-512 kernel takes B untransposed
            for (library, transA, transB) in cases {
                // Leading dimensions padded by 3 columns: strides, not shapes, must decide addressing.
                let lda = (transA ? M : K) + 3, ldb = (transB ? K : N) + 3, ldc = N + 3
                let a = Tensor(shape: [(transA ? K : M) * lda]), b = Tensor(shape: [(transB ? N : K) * ldb])
                rng.fillNormal(a.data, a.count); rng.fillNormal(b.data, b.count)
                let c = Tensor(shape: [M * ldc])
                rng.fillNormal(c.data, c.count)
                let c0 = c.toArray()
                if let library {
                    BLAS.sgemm(on: library, transA: transA, transB: transB, M: M, N: N, K: K, alpha: 0.5,
                               A: a.ptr, lda: lda, B: b.ptr, ldb: ldb, beta: 2, C: c.data, ldc: ldc)
                } else {
                    BLAS.sgemmSerial(transA: transA, transB: transB, M: M, N: N, K: K, alpha: 0.5, A: a.ptr,
                                     lda: lda, B: b.ptr, ldb: ldb, beta: 2, C: c.data, ldc: ldc)
                }
                let what = "\(library?.rawValue ?? "routed") M \(M) N \(N) K \(K) transA \(transA) transB \(transB)"
                var failures = 0
                for i in 0..<M {
                    for j in 0..<ldc {
                        guard j < N else {   // padding columns of C are not touched
                            if c[i * ldc + j] != c0[i * ldc + j] { failures += 1 }
                            continue
                        }
                        var ref = 0.0, mag = 0.0
                        for k in 0..<K {
                            let x = Double(a.data[transA ? k * lda + i : i * lda + k])
                            let y = Double(b.data[transB ? j * ldb + k : k * ldb + j])
                            ref += x * y; mag += abs(x * y)
                        }
                        ref = 0.5 * ref + 2 * Double(c0[i * ldc + j])
                        let tol = 1e-6 * (0.5 * mag + 2 * abs(Double(c0[i * ldc + j])))
                        if abs(Double(c[i * ldc + j]) - ref) > tol { failures += 1 }
                    }
                }
                XCTAssertEqual(failures, 0, "\(what): \(failures) elements off the float64 reference")
            }
        }
    }

    /// Our kernel takes GEMMs with B untransposed and at most 64Ki floats (where the CPU has AVX-512), BLIS large
    /// ones (or all the others, where OpenBLAS has only SSE kernels), OpenBLAS the rest.
    func testRouting() {
        let rest: BLAS.Library = BLAS.gemmsOnBLIS == .all ? .blis : .openBLAS
        let large: BLAS.Library = BLAS.gemmsOnBLIS == .none ? .openBLAS : .blis
        let small: BLAS.Library = BLAS.hasSmallKernel ? .smallAVX512 : rest
        XCTAssertEqual(BLAS.library(M: 64, N: 256, K: 256, transB: false), BLAS.hasSmallKernel ? .smallAVX512 : large)
        XCTAssertEqual(BLAS.library(M: 64, N: 257, K: 256, transB: false), large)   // B one column over 64Ki floats
        XCTAssertEqual(BLAS.library(M: 64, N: 256, K: 256, transB: true), large)    // the kernel takes no Bᵀ
        XCTAssertEqual(BLAS.library(M: 64, N: 64, K: 32, transB: false), small)
        XCTAssertEqual(BLAS.library(M: 64, N: 64, K: 32, transB: true), rest)
        XCTAssertEqual(BLAS.library(M: 16, N: 768, K: 256, transB: true), rest)   // M under 32
    }

    /// beta 0 writes C without reading it (C may hold anything, NaN included), in every implementation.
    func testBetaZeroIgnoresC() {
        var rng = SplitMix64(seed: 5)
        let (M, N, K) = (37, 41, 29)
        let a = Tensor(shape: [M * K]), b = Tensor(shape: [K * N])
        rng.fillNormal(a.data, a.count); rng.fillNormal(b.data, b.count)
        for library in [BLAS.Library.blis, .openBLAS] + (BLAS.hasSmallKernel ? [.smallAVX512] : []) {
            let c = Tensor(shape: [M * N])
            c.fill(.nan)
            BLAS.sgemm(on: library, transA: false, transB: false, M: M, N: N, K: K, alpha: 1, A: a.ptr, lda: K,
                       B: b.ptr, ldb: N, beta: 0, C: c.data, ldc: N)
            var failures = 0
            for i in 0..<M { for j in 0..<N {
                var ref = 0.0, mag = 0.0
                for k in 0..<K { let x = Double(a[i * K + k]) * Double(b[k * N + j]); ref += x; mag += abs(x) }
                if !(abs(Double(c[i * N + j]) - ref) <= 1e-6 * mag) { failures += 1 }
            } }
            XCTAssertEqual(failures, 0, "\(library.rawValue): \(failures) elements wrong with beta 0 over a NaN C")
        }
    }

    /// On AVX-512 CPUs where BLIS 0.9 would run narrower kernels it runs its skx ones, and the library with the wider
    /// kernels takes the GEMMs it won; our AVX-512 kernel runs where the CPU has AVX-512; the rest runs on OpenBLAS
    /// (both BLAS libraries export `cblas_sgemm`: the link order must pick OpenBLAS's).
    func testLibraryChoice() throws {
        let avx512: Set<String> = ["avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"]
        XCTAssertTrue(BLAS.needsSKXPick(CPUInfo(vendor: "AuthenticAMD", family: 0x1A, flags: avx512)))
        XCTAssertFalse(BLAS.needsSKXPick(CPUInfo(vendor: "AuthenticAMD", family: 0x19, flags: avx512)))
        XCTAssertTrue(BLAS.needsSKXPick(CPUInfo(vendor: "GenuineIntel", family: 6, flags: avx512)))
        XCTAssertFalse(BLAS.needsSKXPick(CPUInfo(vendor: "GenuineIntel", family: 6, flags: ["avx2", "fma"])))
        XCTAssertFalse(BLAS.needsSKXPick(CPUInfo(vendor: "AuthenticAMD", family: 0x1A, flags: ["avx2", "fma"])))
        XCTAssertEqual(BLAS.gemmsOnBLIS(blisKernels: "skx", openBLASCore: "Haswell"), .large)
        XCTAssertEqual(BLAS.gemmsOnBLIS(blisKernels: "skx", openBLASCore: "Zen"), .large)
        XCTAssertEqual(BLAS.gemmsOnBLIS(blisKernels: "skx", openBLASCore: "Prescott"), .all)
        XCTAssertEqual(BLAS.gemmsOnBLIS(blisKernels: "haswell", openBLASCore: "Core2"), .all)
        XCTAssertEqual(BLAS.gemmsOnBLIS(blisKernels: "generic", openBLASCore: "Haswell"), .none)
        XCTAssertEqual(BLAS.gemmsOnBLIS(blisKernels: "generic", openBLASCore: "Prescott"), .none)
        XCTAssertEqual(BLAS.gemmsOnBLIS(blisKernels: "haswell", openBLASCore: "Haswell"), .none)
        XCTAssertEqual(BLAS.gemmsOnBLIS(blisKernels: "skx", openBLASCore: "SkylakeX"), .none)

        XCTAssertTrue(BLAS.cblasLibrary.contains("openblas"), "cblas_sgemm resolves to \(BLAS.cblasLibrary)")
        let cpu = CPUInfo.read()
        XCTAssertEqual(BLAS.hasSmallKernel, cpu.flags.contains("avx512f"), "the AVX-512 kernel's CPU check")
        guard !BLAS.blisArchFromEnvironment else { throw XCTSkip("BLIS_ARCH_TYPE was set outside: BLIS uses it") }
        if ["avx512f", "avx512dq", "avx512bw", "avx512vl"].allSatisfy(cpu.flags.contains) {
            XCTAssertNotEqual(BLAS.blisKernels, "generic", "BLIS runs its portable C kernels on an AVX-512 CPU")
        }
        XCTAssertEqual(BLAS.pickedSKX, BLAS.needsSKXPick(cpu))
        if BLAS.pickedSKX {
            XCTAssertEqual(BLAS.blisKernels, "skx", "BLIS did not take the kernels picked through BLIS_ARCH_TYPE")
            XCTAssertEqual(BLAS.gemmsOnBLIS, BLAS.gemmsOnBLIS(blisKernels: "skx", openBLASCore: BLAS.openBLASCoreName))
        }
    }
}
