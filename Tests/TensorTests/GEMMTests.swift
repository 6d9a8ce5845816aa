import XCTest
import Foundation
import Tensor

/// Every GEMM implementation (BLIS, OpenBLAS, our AVX-512 kernel where the CPU has it), each on small and large shapes,
/// and `BLAS.sgemmSerial`'s routing: every transpose, padded leading dimensions, alpha and beta, against a float64 reference.
final class GEMMTests: XCTestCase {
    func testBothLibrariesMatchReference() {
        var rng = SplitMix64(seed: 21)
        // (M, N, K, expected library): small ones go to OpenBLAS, large ones to BLIS.
        let shapes: [(Int, Int, Int, Bool)] = [(20, 30, 40, false), (9, 47, 5, false), (16, 96, 1024, false),
                                               (96, 80, 160, true), (130, 33, 300, true)]
        for (M, N, K, onBLIS) in shapes {
            XCTAssertEqual(BLAS.runsOnBLIS(M: M, N: N, K: K), onBLIS && BLAS.largeGEMMsOnBLIS,
                           "M \(M) N \(N) K \(K): routed to the other library")
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

    /// Where BLIS 0.9 would fall back to its generic kernels on an AVX-512 CPU, it runs its skx kernels, and large GEMMs
    /// go to it; our AVX-512 kernel runs where the CPU has AVX-512; the rest runs on OpenBLAS (both BLAS libraries
    /// export `cblas_sgemm`: the link order must pick OpenBLAS's).
    func testLibraryChoice() throws {
        let avx512: Set<String> = ["avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"]
        XCTAssertTrue(BLAS.needsSKXPick(CPUInfo(vendor: "AuthenticAMD", family: 0x1A, flags: avx512)))
        XCTAssertFalse(BLAS.needsSKXPick(CPUInfo(vendor: "AuthenticAMD", family: 0x19, flags: avx512)))
        XCTAssertFalse(BLAS.needsSKXPick(CPUInfo(vendor: "GenuineIntel", family: 6, flags: avx512)))
        XCTAssertFalse(BLAS.needsSKXPick(CPUInfo(vendor: "AuthenticAMD", family: 0x1A, flags: ["avx2", "fma"])))
        XCTAssertTrue(BLAS.largeGEMMsOnBLIS(blisKernels: "skx", openBLASCore: "Haswell"))
        XCTAssertTrue(BLAS.largeGEMMsOnBLIS(blisKernels: "skx", openBLASCore: "Zen"))
        XCTAssertFalse(BLAS.largeGEMMsOnBLIS(blisKernels: "generic", openBLASCore: "Haswell"))
        XCTAssertFalse(BLAS.largeGEMMsOnBLIS(blisKernels: "haswell", openBLASCore: "Haswell"))
        XCTAssertFalse(BLAS.largeGEMMsOnBLIS(blisKernels: "skx", openBLASCore: "SkylakeX"))

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
            XCTAssertEqual(BLAS.largeGEMMsOnBLIS, ["haswell", "zen"].contains(BLAS.openBLASCoreName.lowercased()))
        }
    }
}
