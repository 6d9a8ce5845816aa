import XCTest
@testable import Collectives

/// The full correctness suite with every rank as a thread over ZeroMQ inproc (single-process mode).
/// Largest case 1 MiB here (debug build); the multi-process tests run the 16 MiB cases.
final class InProcessSuiteTests: XCTestCase {
    func testSuitePassesOnFourThreadRanks() throws {
        let failures = InProcessCluster.run(worldSize: 4, timeoutSeconds: 60) { comm in
            let suite = CollectiveSuite(comm: comm, largeBytes: 1 << 20, print: { line in if comm.rank == 0, line.hasPrefix("FAIL") || !line.hasPrefix("PASS") { print(line) } })
            let failed = try suite.run()
            XCTAssertEqual(failed, 0, "rank \(comm.rank)")
        }
        for (rank, error) in failures.enumerated() { XCTAssertNil(error, "rank \(rank): \(String(describing: error))") }
    }

    func testWorldOfOneNeedsNoSockets() throws {
        let failures = InProcessCluster.run(worldSize: 1) { comm in
            let failed = try CollectiveSuite(comm: comm, largeBytes: 1 << 20, print: { _ in }).run()
            XCTAssertEqual(failed, 0)
        }
        XCTAssertNil(failures[0] ?? nil)
    }
}
