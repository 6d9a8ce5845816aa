import Foundation
import XCTest

/// Idle-CPU lending in real rank processes (Sources/Tensor/IdleCPUs.swift): with more ranks than CPUs the launcher puts
/// its ranks on a board and they lend halves of large GEMMs and loops to CPUs whose ranks all wait. Which thread runs a
/// half depends on timing, the result must not: the same run twice agrees bit for bit. `--no-lend-idle-cpus` turns it
/// off, and then the run agrees with the lending one to float32 round-off (only the GEMM splits differ).
final class IdleCPULendingTests: XCTestCase {
    struct Step: Decodable { var loss: Double; var grad_norm: Double }

    /// bench_moe on 8 ranks, expert parallel 8: GEMMs of 2^24+ multiply-adds, and hot experts that make others wait.
    private func train(_ launchFlags: [String]) throws -> (steps: [Step], lent: Int, onBoard: Int, note: String) {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "8", "--dump-folder", dump] + launchFlags + ["--", "train",
                               "--config", "bench_moe", "--training.steps", "3", "--training.local_batch_size", "2",
                               "--parallelism.data_parallel_shard_degree", "8", "--parallelism.expert_parallel_degree", "8",
                               "--job.dump_folder", dump, "--comm.timeout_seconds", "60"])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        let lines = (try? String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8))?.split(separator: "\n") ?? []
        let steps = try lines.map { try JSONDecoder().decode(Step.self, from: Data($0.utf8)) }
        var lent = 0, onBoard = 0
        for rank in 0..<8 {
            let log = (try? String(contentsOfFile: "\(dump)/logs/rank-\(rank).log", encoding: .utf8)) ?? ""
            for line in log.split(separator: "\n") {
                if line.hasPrefix("bound to CPU(s) "), line.contains(", lending idle CPUs through ") { onBoard += 1 }
                if line.hasPrefix("idle CPUs: "), let n = line.split(separator: " ").dropFirst(2).first.flatMap({ Int($0) }) { lent += n }
            }
        }
        let note = (r.stdout + r.stderr).split(separator: "\n").first { $0.contains("starting 8 rank(s)") }.map(String.init) ?? ""
        return (steps, lent, onBoard, note)
    }

    func testLendingIsBitwiseRepeatableAndCanBeTurnedOff() throws {
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let list = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?.split(separator: ":").last ?? ""
        let cpus = list.split(separator: ",").reduce(0) { n, part in
            let b = part.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            return n + (b.count == 2 ? b[1] - b[0] + 1 : 1)
        }
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
}
