import XCTest
import Foundation
import Runtime
import Tensor

/// bfloat16 rounding and the bfloat16 GEMMs (AMX, AVX512_BF16 where the CPU has them, the fp32 GEMMs over rounded
/// inputs everywhere), against references computed here by other means: rounding by distance in Double, products of
/// the rounded inputs summed in Double.
final class BF16GEMMTests: XCTestCase {
    /// The bfloat16 value nearest to x by distance (ties to the even mantissa), as Float; NaN stays NaN.
    static func nearestBF16(_ x: Float) -> Float {
        if x.isNaN || x.isInfinite { return x }
        let down = Float(bitPattern: x.bitPattern & 0xFFFF_0000)               // toward zero
        let up = Float(bitPattern: (x.bitPattern & 0xFFFF_0000) &+ 0x1_0000)    // away from zero (may be ±inf)
        let dDown = abs(Double(x) - Double(down))
        // Past the largest finite bfloat16 `up` is infinite: then the distance is to 2^128 (where rounding overflows).
        let dUp = up.isInfinite ? abs(abs(Double(x)) - 0x1p128) : abs(Double(x) - Double(up))
        if dDown != dUp { return dDown < dUp ? down : up }
        return (down.bitPattern >> 16) & 1 == 0 ? down : up
    }

    func testRoundingMatchesNearestEven() {
        var specials: [Float] = [0, -0.0, 1, -1, .infinity, -.infinity, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
                                 .leastNonzeroMagnitude, .leastNormalMagnitude, Float(1e-40 as Double), Float(-3e-39 as Double),
                                 1 + 0x1p-8,          // halfway between 1 and 1 + 2^-7: to even (1)
                                 1 + 3 * 0x1p-8,      // halfway between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6)
                                 1 + 0x1p-8 + 0x1p-20, 0x1.FEp127, 0x1.FFp127]
        var rng = SplitMix64(seed: 7)
        for _ in 0..<100_000 { specials.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))) }
        let n = specials.count
        let y = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { y.deallocate() }
        specials.withUnsafeBufferPointer { round_bf16($0.baseAddress!, into: y, n) }
        var wrong = 0
        for i in 0..<n {
            let x = specials[i], want = Self.nearestBF16(x)
            if x.isNaN {
                if y[i].bitPattern != 0x7FC0_0000 { wrong += 1 }   // torch: every NaN becomes 0x7FC0
            } else if y[i].bitPattern != want.bitPattern {
                wrong += 1
                if wrong < 5 { XCTFail("\(x) (\(String(x.bitPattern, radix: 16))) rounded to \(y[i]), expected \(want)") }
            }
        }
        XCTAssertEqual(wrong, 0)
        XCTAssertEqual(y[12], 1)
        XCTAssertEqual(y[13], 1 + 0x1p-6)
        XCTAssertEqual(y[16], .infinity, "past the largest bfloat16 by half an ulp rounds to infinity")
    }

    /// Every kernel, every transpose, padded leading dimensions, alpha and beta, edge sizes around the 32 × 32 blocks
    /// and the 512-deep reduction blocks: within fp32 accumulation error of the float64 sum of the rounded products.
    func testKernelsMatchReference() {
        var rng = SplitMix64(seed: 11)
        let shapes: [(Int, Int, Int)] = [(1, 1, 1), (5, 17, 3), (31, 33, 32), (32, 32, 64), (64, 48, 600), (100, 70, 33),
                                         (17, 530, 40), (40, 20, 1100)]
        for kernel in BF16Kernel.available {
            for (M, N, K) in shapes {
                for (transA, transB) in [(false, false), (false, true), (true, false), (true, true)] {
                    let (alpha, beta): (Float, Float) = [(1, 0), (0.5, 1), (1, 2)][(M + N + K) % 3]
                    let lda = (transA ? M : K) + 3, ldb = (transB ? K : N) + 1, ldc = N + 2
                    let a = Tensor(shape: [(transA ? K : M) * lda]), b = Tensor(shape: [(transB ? N : K) * ldb])
                    rng.fillNormal(a.data, a.count); rng.fillNormal(b.data, b.count)
                    let c = Tensor(shape: [M * ldc])
                    rng.fillNormal(c.data, c.count)
                    if beta == 0 { for i in 0..<M { for j in 0..<N { c.data[i * ldc + j] = .nan } } }
                    let c0 = c.toArray()
                    BLAS.bf16gemm(on: kernel, transA: transA, transB: transB, M: M, N: N, K: K, alpha: alpha, A: a.ptr,
                                  lda: lda, B: b.ptr, ldb: ldb, beta: beta, C: c.data, ldc: ldc)
                    // op(A) as [M][K] and op(B) as [N][K], rounded by distance
                    var ra = [Double](repeating: 0, count: M * K), rb = [Double](repeating: 0, count: N * K)
                    for i in 0..<M { for k in 0..<K { ra[i * K + k] = Double(Self.nearestBF16(a.data[transA ? k * lda + i : i * lda + k])) } }
                    for j in 0..<N { for k in 0..<K { rb[j * K + k] = Double(Self.nearestBF16(b.data[transB ? j * ldb + k : k * ldb + j])) } }
                    var failures = 0
                    for i in 0..<M {
                        for j in 0..<ldc {
                            guard j < N else {   // C's padding is not touched
                                if c[i * ldc + j].bitPattern != c0[i * ldc + j].bitPattern { failures += 1 }
                                continue
                            }
                            var ref = 0.0, mag = 0.0
                            for k in 0..<K { let p = ra[i * K + k] * rb[j * K + k]; ref += p; mag += abs(p) }
                            let cij = beta == 0 ? 0 : Double(c0[i * ldc + j])
                            ref = Double(alpha) * ref + Double(beta) * cij
                            let tol = 2e-6 * (Double(abs(alpha)) * mag + abs(Double(beta) * cij)) + 1e-30
                            if !(abs(Double(c[i * ldc + j]) - ref) <= tol) { failures += 1 }
                        }
                    }
                    XCTAssertEqual(failures, 0, "\(kernel.rawValue) M \(M) N \(N) K \(K) transA \(transA) transB \(transB) alpha \(alpha) beta \(beta)")
                }
            }
        }
    }

    /// bfloat16 inputs (as mixed-precision producers write them) give the same bits as the fp32 inputs they were
    /// rounded from, on every kernel, with A, B or both in bfloat16, every transpose, padded leading dimensions, whole
    /// and partial 32-row blocks and 32-deep steps.
    func testBFloat16InputsGiveTheSameBits() {
        var rng = SplitMix64(seed: 5)
        let shapes: [(Int, Int, Int)] = [(5, 17, 3), (64, 48, 64), (96, 40, 600), (33, 530, 96), (100, 70, 33)]
        for kernel in BF16Kernel.available {
            for (M, N, K) in shapes {
                for (transA, transB) in [(false, false), (false, true), (true, false), (true, true)] {
                    let lda = (transA ? M : K) + 5, ldb = (transB ? K : N) + 3, ldc = N + 1
                    let (na, nb) = ((transA ? K : M) * lda, (transB ? N : K) * ldb)
                    let a = Tensor(shape: [na]), b = Tensor(shape: [nb])
                    rng.fillNormal(a.data, na); rng.fillNormal(b.data, nb)
                    let a16 = UnsafeMutablePointer<UInt16>.allocate(capacity: na), b16 = UnsafeMutablePointer<UInt16>.allocate(capacity: nb)
                    defer { a16.deallocate(); b16.deallocate() }
                    to_bf16(a.ptr, into: a16, na); to_bf16(b.ptr, into: b16, nb)
                    let beta: Float = M % 2 == 0 ? 0 : 1
                    func run(_ A: GEMMInput, _ B: GEMMInput) -> [Float] {
                        let c = Tensor(shape: [M * ldc])
                        for i in 0..<c.count { c.data[i] = Float(i % 7) }
                        BLAS.bf16gemm(on: kernel, transA: transA, transB: transB, M: M, N: N, K: K, alpha: 1, A: A, lda: lda,
                                      B: B, ldb: ldb, beta: beta, C: c.data, ldc: ldc)
                        return c.toArray()
                    }
                    let want = run(.f32(a.ptr), .f32(b.ptr))
                    let name = "\(kernel.rawValue) M \(M) N \(N) K \(K) transA \(transA) transB \(transB)"
                    XCTAssertEqual(run(.bf16(a16), .f32(b.ptr)), want, "A bfloat16, " + name)
                    XCTAssertEqual(run(.f32(a.ptr), .bf16(b16)), want, "B bfloat16, " + name)
                    XCTAssertEqual(run(.bf16(a16), .bf16(b16)), want, "both bfloat16, " + name)
                }
            }
        }
    }

    /// Small integer inputs make every product and sum exact: then every kernel gives the same bits.
    func testKernelsAgreeExactly() {
        let (M, N, K) = (70, 90, 700)
        let a = Tensor(shape: [M * K]), b = Tensor(shape: [K * N])
        for i in 0..<a.count { a.data[i] = Float(i * 7 % 9) - 4 }
        for i in 0..<b.count { b.data[i] = Float(i * 5 % 7) - 3 }
        var results: [[Float]] = []
        for kernel in BF16Kernel.available {
            let c = Tensor(shape: [M * N])
            BLAS.bf16gemm(on: kernel, transA: false, transB: false, M: M, N: N, K: K, alpha: 1, A: a.ptr, lda: K,
                          B: b.ptr, ldb: N, beta: 0, C: c.data, ldc: N)
            results.append(c.toArray())
        }
        for r in results.dropFirst() { XCTAssertEqual(r, results[0]) }
    }

    /// Under `matmulPrecision` bfloat16 every GEMM (here a Linear forward, split over the kernel threads) rounds its
    /// inputs: the same as the unsplit bfloat16 GEMM on inputs rounded beforehand, and the same bits on every run.
    func testMatmulPrecisionRoutesEveryGEMM() {
        let (T, D, N) = (300, 96, 200)
        var rng = SplitMix64(seed: 3)
        let x = Tensor(shape: [T * D]), w = Tensor(shape: [N * D])
        rng.fillNormal(x.data, x.count); rng.fillNormal(w.data, w.count)
        let before = (BLAS.matmulPrecision, KernelThreads.count)
        defer { BLAS.matmulPrecision = before.0; BLAS.setThreads(before.1) }
        BLAS.setThreads(2)
        BLAS.splitOnKernelThreads()
        BLAS.minSplitWork = 1
        defer { BLAS.minSplitWork = 1 << 20 }
        BLAS.matmulPrecision = .bfloat16
        let out1 = Tensor(shape: [T * N]), out2 = Tensor(shape: [T * N])
        matmul_forward(out1.data, x.ptr, w.ptr, T: T, D: D, N: N)
        matmul_forward(out2.data, x.ptr, w.ptr, T: T, D: D, N: N)
        XCTAssertEqual(out1.toArray(), out2.toArray(), "bitwise repeatable")
        BLAS.matmulPrecision = .float32
        let xr = Tensor(shape: [T * D]), wr = Tensor(shape: [N * D]), ref = Tensor(shape: [T * N])
        round_bf16(x.ptr, into: xr.data, x.count); round_bf16(w.ptr, into: wr.data, w.count)
        matmul_forward(ref.data, xr.ptr, wr.ptr, T: T, D: D, N: N)
        var worst = 0.0
        for i in 0..<ref.count { worst = max(worst, Double(abs(out1[i] - ref[i]))) }
        XCTAssertLessThan(worst, 1e-4, "bfloat16 GEMM vs fp32 GEMM of the rounded inputs")
        let full = Tensor(shape: [T * N])
        matmul_forward(full.data, x.ptr, w.ptr, T: T, D: D, N: N)
        var rounding = 0.0
        for i in 0..<ref.count { rounding = max(rounding, Double(abs(out1[i] - full[i]))) }
        XCTAssertGreaterThan(rounding, 1e-3, "the inputs were not rounded to bfloat16")
    }
}
