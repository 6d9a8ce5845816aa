import XCTest
import Foundation
import Tensor

/// `BLAS.sgemmSerial` on both of its libraries (BLIS for large GEMMs, OpenBLAS for small ones): every transpose, padded
/// leading dimensions, alpha and beta, against a float64 reference.
final class GEMMTests: XCTestCase {
    func testBothLibrariesMatchReference() {
        var rng = SplitMix64(seed: 21)
        // (M, N, K, expected library): small ones go to OpenBLAS, large ones to BLIS.
        let shapes: [(Int, Int, Int, Bool)] = [(20, 30, 40, false), (16, 96, 1024, false),
                                               (96, 80, 160, true), (130, 33, 300, true)]
        for (M, N, K, onBLIS) in shapes {
            XCTAssertEqual(BLAS.runsOnBLIS(M: M, N: N, K: K), onBLIS, "M \(M) N \(N) K \(K): routed to the other library")
            for transA in [false, true] {
                for transB in [false, true] {
                    // Leading dimensions padded by 3 columns: strides, not shapes, must decide addressing.
                    let lda = (transA ? M : K) + 3, ldb = (transB ? K : N) + 3, ldc = N + 3
                    let a = Tensor(shape: [(transA ? K : M) * lda]), b = Tensor(shape: [(transB ? N : K) * ldb])
                    rng.fillNormal(a.data, a.count); rng.fillNormal(b.data, b.count)
                    let c = Tensor(shape: [M * ldc])
                    rng.fillNormal(c.data, c.count)
                    let c0 = c.toArray()
                    BLAS.sgemmSerial(transA: transA, transB: transB, M: M, N: N, K: K, alpha: 0.5, A: a.ptr, lda: lda,
                                     B: b.ptr, ldb: ldb, beta: 2, C: c.data, ldc: ldc)
                    let what = "M \(M) N \(N) K \(K) transA \(transA) transB \(transB)"
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
    }

    /// BLIS runs the kernels picked for this CPU's instruction set, not its portable C kernels (BLIS 0.9 falls back to
    /// those on CPUs newer than it knows). A BLIS_ARCH_TYPE set outside overrides the pick.
    func testBLISKernelsMatchInstructionSet() throws {
        XCTAssertEqual(BLAS.blisKernels(forCPUFlags: ["avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"]), "skx")
        XCTAssertEqual(BLAS.blisKernels(forCPUFlags: ["avx512f", "avx2", "fma"]), "haswell")
        XCTAssertNil(BLAS.blisKernels(forCPUFlags: ["sse4_2"]))
        guard let picked = BLAS.blisKernelsPicked else {
            throw XCTSkip("BLIS_ARCH_TYPE was set outside, or this CPU has neither AVX-512 nor AVX2: BLIS chooses")
        }
        XCTAssertEqual(picked, BLAS.blisKernels(forCPUFlags: BLAS.cpuFlags))
        XCTAssertEqual(BLAS.blisKernels, picked)
        XCTAssertTrue(BLAS.description.contains("BLIS"), BLAS.description)
    }
}
