import Foundation
import XCTest

/// Idle-CPU lending in real rank processes (Sources/Runtime/IdleCPUs.swift): with at least as many ranks as CPUs the
/// launcher puts its ranks on a board and they lend halves of large GEMMs and loops to CPUs whose ranks all wait. Which thread runs a
/// half depends on timing, the result must not: the same run twice agrees bit for bit. `--no-lend-idle-cpus` turns it
/// off, and then the run agrees with the lending one to float32 round-off (only the GEMM splits differ).
final class IdleCPULendingTests: XCTestCase {
    struct Step: Decodable { var loss: Double; var grad_norm: Double }

    /// By default bench_moe on 8 ranks, expert parallel 8: GEMMs of 2^24+ multiply-adds, and hot experts that make
    /// others wait.
    private func train(_ launchFlags: [String], ranks: Int = 8,
                       model: [String] = ["--config", "bench_moe", "--training.steps", "3", "--training.local_batch_size", "2",
                                          "--parallelism.expert_parallel_degree", "8"])
        throws -> (steps: [Step], lent: Int, onBoard: Int, note: String) {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", String(ranks), "--dump-folder", dump] + launchFlags + ["--", "train"]
                              + model + ["--parallelism.data_parallel_shard_degree", String(ranks),
                                         "--job.dump_folder", dump, "--comm.timeout_seconds", "60"])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        let lines = (try? String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8))?.split(separator: "\n") ?? []
        let steps = try lines.map { try JSONDecoder().decode(Step.self, from: Data($0.utf8)) }
        var lent = 0, onBoard = 0
        for rank in 0..<ranks {
            let log = (try? String(contentsOfFile: "\(dump)/logs/rank-\(rank).log", encoding: .utf8)) ?? ""
            for line in log.split(separator: "\n") {
                if line.hasPrefix("bound to CPU(s) "), line.contains(", lending idle CPUs through ") { onBoard += 1 }
                if line.hasPrefix("idle CPUs: "), let n = line.split(separator: " ").dropFirst(2).first.flatMap({ Int($0) }) { lent += n }
            }
        }
        let note = (r.stdout + r.stderr).split(separator: "\n").first { $0.contains("starting \(ranks) rank(s)") }.map(String.init) ?? ""
        return (steps, lent, onBoard, note)
    }

    /// How many CPUs this process may run on (the launcher cuts these into blocks).
    private func allowedCPUs() throws -> Int {
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let list = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?.split(separator: ":").last ?? ""
        return list.split(separator: ",").reduce(0) { n, part in
            let b = part.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            return n + (b.count == 2 ? b[1] - b[0] + 1 : 1)
        }
    }

    func testLendingIsBitwiseRepeatableAndCanBeTurnedOff() throws {
        let cpus = try allowedCPUs()
        try XCTSkipIf(cpus < 2 || cpus >= 8, "lending needs more ranks (8) than CPUs, and at least two CPUs (\(cpus) here)")

        let a = try train([])
        try XCTSkipIf(!a.note.contains("bound to CPUs"), "the launcher could not bind ranks here: \(a.note)")
        let b = try train([])
        XCTAssertEqual(a.onBoard, 8, "every rank joins the board")
        XCTAssertTrue(a.note.contains("idle CPUs lent"), a.note)
        XCTAssertGreaterThan(a.lent + b.lent, 0, "no rank lent anything in two runs")
        XCTAssertEqual(a.steps.count, 3)
        XCTAssertEqual(a.steps.map(\.loss.bitPattern), b.steps.map(\.loss.bitPattern), "lent runs differ in loss")
        XCTAssertEqual(a.steps.map(\.grad_norm.bitPattern), b.steps.map(\.grad_norm.bitPattern), "lent runs differ in grad norm")

        let off = try train(["--no-lend-idle-cpus"])
        XCTAssertEqual(off.onBoard, 0)
        XCTAssertFalse(off.note.contains("idle CPUs lent"), off.note)
        XCTAssertEqual(off.steps.count, 3)
        for (x, y) in zip(off.steps, a.steps) {
            XCTAssertEqual(x.loss, y.loss, accuracy: 1e-5 * abs(y.loss))
            XCTAssertEqual(x.grad_norm, y.grad_norm, accuracy: 1e-4 * abs(y.grad_norm))
        }
    }

    /// One rank per CPU: each rank has a CPU of its own, which idles while its rank waits, so the ranks join the board
    /// too.
    func testRanksBoundOneToACPUJoinTheBoard() throws {
        let cpus = try allowedCPUs()
        try XCTSkipIf(cpus < 2 || cpus > 8, "needs 2-8 CPUs to start one rank per CPU (\(cpus) here)")
        let model = ["--config", "debugmodel_moe", "--training.steps", "2", "--training.local_batch_size", "2"]
        let a = try train([], ranks: cpus, model: model)
        try XCTSkipIf(!a.note.contains("bound to CPUs"), "the launcher could not bind ranks here: \(a.note)")
        XCTAssertEqual(a.onBoard, cpus, "every rank joins the board")
        XCTAssertTrue(a.note.contains("idle CPUs lent"), a.note)
        XCTAssertEqual(a.steps.count, 2)
    }
}
