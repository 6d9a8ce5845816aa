import CLinux
import Foundation
import Runtime
import Tensor
import XCTest

/// Idle-CPU lending: the board finds a CPU only when every rank bound to it waits, and a GEMM or loop whose half ran on
/// the helper gives bitwise what it gives when this thread runs both halves (and a GEMM matches a float64 reference).
final class IdleCPUsTests: XCTestCase {
    private func boardPath() -> String {
        NSTemporaryDirectory() + "titan-board-\(UUID().uuidString.prefix(8))"
    }

    func testBoardFindsACPUWhoseRanksAllWait() throws {
        let path = boardPath()
        defer { unlink(path) }
        // Ranks 0, 1 on CPU 0; ranks 2, 3 on CPU 1; rank 4 of 5 never joins.
        let r = try (0..<4).map { rank in try XCTUnwrap(titan_cpu_board_open(path, 5, Int32(rank), Int32(rank / 2))) }
        XCTAssertEqual(titan_cpu_board_idle_cpu(r[0]), -1, "nobody waits")
        titan_cpu_board_set_waiting(r[2], 1)
        XCTAssertEqual(titan_cpu_board_idle_cpu(r[0]), -1, "rank 3 still computes on CPU 1")
        titan_cpu_board_set_waiting(r[3], 1)
        XCTAssertEqual(titan_cpu_board_idle_cpu(r[0]), 1, "both ranks of CPU 1 wait")
        XCTAssertEqual(titan_cpu_board_idle_cpu(r[1]), 1)
        XCTAssertEqual(titan_cpu_board_idle_cpu(r[2]), -1, "a rank never lends to its own CPU, and CPU 0 computes")
        titan_cpu_board_set_waiting(r[0], 1)
        XCTAssertEqual(titan_cpu_board_idle_cpu(r[2]), -1, "rank 1 still computes on CPU 0")
        titan_cpu_board_set_waiting(r[1], 1)
        XCTAssertEqual(titan_cpu_board_idle_cpu(r[2]), 0)
        titan_cpu_board_set_waiting(r[3], 0)
        XCTAssertEqual(titan_cpu_board_idle_cpu(r[0]), -1, "rank 3 computes again")
        titan_cpu_board_close(r[3])
        XCTAssertEqual(titan_cpu_board_idle_cpu(r[0]), 1, "off the board, rank 3 no longer counts for CPU 1")
        for b in r.prefix(3) { titan_cpu_board_close(b) }
        XCTAssertNil(titan_cpu_board_open(path, 2, 2, 0), "rank outside the board")
        XCTAssertNil(titan_cpu_board_open("/nonexistent-dir/board", 2, 0, 0))
    }

    func testLentHalvesGiveTheUnlentBits() throws {
        let path = boardPath()
        defer { unlink(path) }
        let threads = KernelThreads.count, split = BLAS.splitThreads
        BLAS.setThreads(1)   // lending is for ranks with one kernel thread
        IdleCPUs.helperAlwaysTakes = true   // no race: every half offered to the helper runs there
        defer {
            IdleCPUs.helperAlwaysTakes = false
            BLAS.setThreads(threads)
            if split > 0 { BLAS.splitOnKernelThreads() }
        }
        // This process is rank 0 on CPU 0; "rank 1" on CPU 1 is another handle on the same board.
        try IdleCPUs.join(boardPath: path, ranks: 2, rank: 0, cpu: 0)
        defer { IdleCPUs.leave() }
        let other = try XCTUnwrap(titan_cpu_board_open(path, 2, 1, 1))
        defer { titan_cpu_board_close(other) }
        XCTAssertTrue(IdleCPUs.enabled)

        var rng = SplitMix64(seed: 5)
        // Split along M (M >= N) and along N, with every transpose; 2^24+ multiply-adds each.
        for (M, N, K) in [(384, 200, 320), (136, 520, 300)] {
            XCTAssertGreaterThanOrEqual(M * N * K, IdleCPUs.minGEMMWork)
            for (transA, transB) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = Tensor(shape: [M * K]), b = Tensor(shape: [K * N]), c0 = Tensor(shape: [M * N])
                rng.fillNormal(a.data, a.count); rng.fillNormal(b.data, b.count); rng.fillNormal(c0.data, c0.count)
                func gemm(otherWaits: Bool) -> [Float] {
                    titan_cpu_board_set_waiting(other, otherWaits ? 1 : 0)
                    let c = Tensor(shape: [M * N])
                    c.data.update(from: c0.data, count: M * N)
                    BLAS.sgemm(transA: transA, transB: transB, M: M, N: N, K: K, alpha: 0.5, A: a.ptr, lda: transA ? M : K,
                               B: b.ptr, ldb: transB ? K : N, beta: 1, C: c.data, ldc: N)
                    return c.toArray()
                }
                let lentBefore = IdleCPUs.lentTasks
                let here = gemm(otherWaits: false)
                let what = "M \(M) N \(N) K \(K) transA \(transA) transB \(transB)"
                XCTAssertEqual(IdleCPUs.lentTasks, lentBefore, "\(what): lent with no CPU idle")
                let lent = gemm(otherWaits: true)
                XCTAssertEqual(IdleCPUs.lentTasks, lentBefore + 1, "\(what): the second half did not run on the helper")
                let differing = zip(lent, here).filter { $0.bitPattern != $1.bitPattern }.count
                XCTAssertEqual(lent.count, here.count)
                XCTAssertEqual(differing, 0, "\(what): lent and unlent halves differ in \(differing) elements")
                var worst = 0.0
                for i in 0..<M {
                    for j in 0..<N {
                        var ref = Double(c0[i * N + j]), mag = abs(ref)
                        for k in 0..<K {
                            let x = Double(a.data[transA ? k * M + i : i * K + k]), y = Double(b.data[transB ? j * K + k : k * N + j])
                            ref += 0.5 * x * y; mag += abs(0.5 * x * y)
                        }
                        worst = max(worst, abs(Double(here[i * N + j]) - ref) / mag)
                    }
                }
                XCTAssertLessThan(worst, 1e-6, "\(what): off the float64 reference")
            }
        }

        // A loop: rows are independent, so any split gives the same result; with a CPU idle its second half is lent.
        let n = 1 << 19
        let x = Tensor(shape: [n]), y = Tensor(shape: [n]), z = Tensor(shape: [n])
        rng.fillNormal(x.data, n)
        titan_cpu_board_set_waiting(other, 0)
        let lentBefore = IdleCPUs.lentTasks
        parallelFor(n) { r in for i in r { y.data[i] = x.data[i] * 3 + 1 } }
        XCTAssertEqual(IdleCPUs.lentTasks, lentBefore, "loop lent with no CPU idle")
        titan_cpu_board_set_waiting(other, 1)
        parallelFor(n) { r in for i in r { z.data[i] = x.data[i] * 3 + 1 } }
        XCTAssertEqual(IdleCPUs.lentTasks, lentBefore + 1, "the loop's second half did not run on the helper")
        XCTAssertEqual(zip(z.toArray(), y.toArray()).filter { $0 != $1 }.count, 0, "lent loop half differs")
    }
}
