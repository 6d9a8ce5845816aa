import Runtime
import XCTest
import Foundation
import Tensor

final class KernelThreadsTests: XCTestCase {
    private func withThreads(_ n: Int, _ body: () -> Void) {
        let saved = (KernelThreads.count, KernelThreads.minWork)
        defer { KernelThreads.count = saved.0; KernelThreads.minWork = saved.1 }
        KernelThreads.count = n
        KernelThreads.minWork = 0
        body()
    }

    /// Counts per part and the threads that ran them.
    private final class Tally: @unchecked Sendable {
        let lock = NSLock()
        var runs: [Int]
        var threads = Set<UInt>()
        init(parts: Int) { runs = Array(repeating: 0, count: parts) }
        func ran(_ part: Int) {
            let me = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(bitPattern: UInt(pthread_self()))))
            lock.lock(); runs[part] += 1; threads.insert(me); lock.unlock()
        }
    }

    /// The pool: every part of every region runs exactly once, also when regions follow each other faster than the
    /// workers come back, and the workers do run parts.
    func testPoolRunsEveryPartOnceAcrossManyRegions() {
        withThreads(4) {
            var threads = Set<UInt>()
            for region in 0..<2_000 {
                let parts = 1 + region % 7
                let tally = Tally(parts: parts)
                KernelThreads.run(parts: parts) { part in
                    if region % 100 == 0 { usleep(2_000) }   // parts long enough for sleeping workers to join
                    tally.ran(part)
                }
                XCTAssertEqual(tally.runs, Array(repeating: 1, count: parts), "region \(region)")
                threads.formUnion(tally.threads)
            }
            XCTAssertGreaterThan(threads.count, 1, "the workers never ran a part")
        }
    }

    /// Callers on several threads racing for the pool: each runs all its parts (the losers on their own thread).
    func testPoolConcurrentCallersEachRunAllTheirParts() {
        withThreads(4) {
            let callers = 6, regions = 300
            let tallies = (0..<callers).map { _ in (0..<regions).map { _ in Tally(parts: 5) } }
            DispatchQueue.concurrentPerform(iterations: callers) { c in
                for r in 0..<regions { KernelThreads.run(parts: 5) { tallies[c][r].ran($0) } }
            }
            for c in 0..<callers { for r in 0..<regions {
                XCTAssertEqual(tallies[c][r].runs, [1, 1, 1, 1, 1], "caller \(c) region \(r)")
            } }
        }
    }

    /// Every item with a cost runs exactly once; zero-cost items are skipped; items within a thread's share run
    /// inside a region (nested kernels serial), an item above the share runs outside one (its kernels split).
    func testParallelForEachRunsEachItemOnceAndMarksRegions() {
        withThreads(2) {
            let costs = [5, 0, 3, 40, 7, 1, 0, 2]   // total 58, share 29: item 3 is above it
            let lock = NSLock()
            var runs = [Int: Int](), inside = [Int: Bool]()
            parallelForEach(costs: costs) { i in
                let r = KernelThreads.insideRegion
                lock.lock(); runs[i, default: 0] += 1; inside[i] = r; lock.unlock()
            }
            XCTAssertEqual(runs, [0: 1, 2: 1, 3: 1, 4: 1, 5: 1, 7: 1])
            XCTAssertEqual(inside[3], false)
            for i in [0, 2, 4, 5, 7] { XCTAssertEqual(inside[i], true, "item \(i)") }
            XCTAssertFalse(KernelThreads.insideRegion, "the caller's thread is outside any region afterwards")
        }
    }

    /// A parallelFor nested in a region runs its whole range as one serial call on the region's thread.
    func testNestedParallelForIsSerial() {
        withThreads(2) {
            let lock = NSLock()
            var nestedRanges: [Range<Int>] = []
            parallelFor(4) { outer in
                for _ in outer {
                    parallelFor(100) { r in lock.lock(); nestedRanges.append(r); lock.unlock() }
                }
            }
            XCTAssertEqual(nestedRanges.count, 4)
            XCTAssertTrue(nestedRanges.allSatisfy { $0 == 0..<100 })
        }
    }

    /// Concurrent items give the same bits as a serial loop (GEMMs are never split inside a region).
    func testParallelForEachMatchesSerialLoop() {
        let E = 6, M = 40, K = 48, N = 64
        var rng = SplitMix64(seed: 11)
        let a = Tensor(shape: [E, M, K]), b = Tensor(shape: [E, N, K])
        rng.fillNormal(a.data, a.count); rng.fillNormal(b.data, b.count)
        func run(threads: Int) -> [Float] {
            let c = Tensor(shape: [E, M, N])
            withThreads(threads) {
                parallelForEach(costs: (0..<E).map { ($0 + 1) * M * K }) { e in
                    matmul_forward(c.data + e * M * N, a.ptr + e * M * K, b.ptr + e * N * K, T: M, D: K, N: N)
                }
            }
            return c.toArray()
        }
        let serial = run(threads: 1)
        XCTAssertEqual(run(threads: 2), serial)
        XCTAssertEqual(run(threads: 3), serial)
        XCTAssertTrue(serial.contains { $0 != 0 })
    }

    /// Large GEMMs split over the kernel threads (`BLAS.splitOnKernelThreads`, as the trainer runs them): every element
    /// matches a float64 reference, and a repeated call gives the same bits. Not the same bits as the unsplit GEMM: a
    /// BLAS library rounds rows near the ends of its internal partitions differently (and a block may go to the other
    /// library), so results are reproducible for a given thread count only.
    func testSplitGEMMsMatchReferenceAndRepeat() {
        let savedBLASThreads = KernelThreads.count
        withThreads(2) {
            BLAS.splitOnKernelThreads()
            defer { BLAS.setThreads(savedBLASThreads) }
            var rng = SplitMix64(seed: 12)
            // (M, N, K): the first splits along M, the second along N (the larger of the two); the blocks of the
            // third are large enough for BLIS (where large GEMMs go to it)
            for (M, N, K) in [(200, 64, 96), (64, 300, 80), (320, 96, 160)] {
                for transA in [false, true] {
                    for transB in [false, true] {
                        let a = Tensor(shape: [M * K]), b = Tensor(shape: [K * N])
                        rng.fillNormal(a.data, a.count); rng.fillNormal(b.data, b.count)
                        let lda = transA ? M : K, ldb = transB ? K : N
                        func gemm() -> [Float] {
                            let c = Tensor(shape: [M * N])
                            c.fill(1)
                            BLAS.sgemm(transA: transA, transB: transB, M: M, N: N, K: K, alpha: 0.5, A: a.ptr, lda: lda,
                                       B: b.ptr, ldb: ldb, beta: 2, C: c.data, ldc: N)
                            return c.toArray()
                        }
                        let c = gemm()
                        XCTAssertEqual(gemm(), c, "M \(M) N \(N) K \(K) transA \(transA) transB \(transB): not repeatable")
                        for i in 0..<M { for j in 0..<N {
                            var ref = 0.0, mag = 0.0
                            for k in 0..<K {
                                let x = Double(a.data[transA ? k * lda + i : i * lda + k])
                                let y = Double(b.data[transB ? j * ldb + k : k * ldb + j])
                                ref += x * y; mag += abs(x * y)
                            }
                            ref = 0.5 * ref + 2
                            XCTAssertEqual(Double(c[i * N + j]), ref, accuracy: 1e-6 * (0.5 * mag + 2),
                                           "M \(M) N \(N) K \(K) transA \(transA) transB \(transB) [\(i), \(j)]")
                        } }
                    }
                }
            }
        }
    }
}
