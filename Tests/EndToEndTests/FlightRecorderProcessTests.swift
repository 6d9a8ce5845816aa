import Cluster
import Collectives
import Foundation
import XCTest

/// Flight records of real rank processes: the ranks the launcher stops after a failure write theirs.
final class FlightRecorderProcessTests: XCTestCase {
    /// Rank 1 of 3 hangs (SIGSTOP), so the others block in their next collective with it, then dies (SIGKILL): the
    /// launcher stops ranks 0 and 2 with SIGTERM and each writes DUMP/flight/rank-K.json with that collective pending,
    /// within the launcher's grace period; rank 1 writes nothing, and the analysis names it. Two BLAS threads per rank, on
    /// more than one CPU (unbound), make OpenBLAS start a pool thread before main that does not block SIGTERM: it must
    /// pass the signal on.
    func testRanksStoppedAfterAFailureWriteTheirPendingCollective() throws {
        let dump = temporaryFolder()
        let started = Date()
        var victim: Int32 = 0
        let r = try Titan.run(["launch", "--ranks", "3", "--cpu-bind", "none", "--dump-folder", dump, "--",
                               "collectives"],
                              environment: ["OPENBLAS_NUM_THREADS": "2"]) { launcher in
            var ranks: [Int32: Int] = [:]
            for _ in 0..<200 where ranks.count < 3 {
                Thread.sleep(forTimeInterval: 0.05)
                ranks = CollectiveProcessTests.children(of: launcher)
            }
            Thread.sleep(forTimeInterval: 0.5)
            victim = ranks.first { $0.value == 1 }?.key ?? 0
            guard victim > 0 else { return }
            kill(victim, SIGSTOP)
            Thread.sleep(forTimeInterval: 1.5)
            kill(victim, SIGKILL)
        }
        XCTAssertGreaterThan(victim, 0, "never saw rank 1 start")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertFalse(r.stderr.contains("still running after"), "the stopped ranks should end on SIGTERM: \(r.stderr)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: FlightAnalysis.recordPath(folder: dump, rank: 1)))
        for rank in [0, 2] {
            let data = try Data(contentsOf: URL(fileURLWithPath: FlightAnalysis.recordPath(folder: dump, rank: rank)))
            let record = try JSONDecoder().decode(FlightRecord.self, from: data)
            XCTAssertEqual(record.rank, rank)
            XCTAssertEqual(record.reason, "stopped by SIGTERM")
            let pending = record.entries.filter { $0.state == .started || $0.state == .scheduled }
            XCTAssertTrue(pending.contains { $0.groupMembers.contains(1) }, "rank \(rank): \(record.entries.suffix(3))")
        }
        let line = FlightAnalysis.diagnose(folder: dump, worldSize: 3, since: started) ?? "nil"
        XCTAssertTrue(line.hasPrefix("flight recorder: "), line)
        XCTAssertTrue(line.contains("rank 1 wrote no record (stopped, hung or killed)"), line)
    }

    /// With every rank a thread of one process, a SIGTERM writes the record of each rank still running, then ends the
    /// process with 128 + SIGTERM.
    func testSingleProcessJobWritesEveryRanksRecordOnSIGTERM() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "3", "--single-process", "--dump-folder", dump, "--", "collectives"]) { process in
            // Once the last rank has opened its log, well before the 16 MiB cases are done.
            for _ in 0..<200 where !FileManager.default.fileExists(atPath: dump + "/logs/rank-2.log") {
                Thread.sleep(forTimeInterval: 0.05)
            }
            Thread.sleep(forTimeInterval: 0.2)
            kill(process, SIGTERM)
        }
        XCTAssertEqual(r.status, 128 + SIGTERM, r.stderr)
        for rank in 0..<3 {
            let data = try Data(contentsOf: URL(fileURLWithPath: FlightAnalysis.recordPath(folder: dump, rank: rank)))
            let record = try JSONDecoder().decode(FlightRecord.self, from: data)
            XCTAssertEqual(record.reason, "stopped by SIGTERM")
            XCTAssertEqual(record.worldSize, 3)
        }
    }
}
