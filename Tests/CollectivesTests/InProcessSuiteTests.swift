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

    /// The bandwidth benchmark runs on thread ranks: every collective and size gets one row with the same numbers on
    /// every rank, the transport ring ceiling is measured first, and the JSON lines carry the documented keys.
    func testBenchmarkRowsAndRingCeiling() throws {
        let results = ResultBox<([CollectiveBench.Row], [String])>()
        let failures = InProcessCluster.run(worldSize: 3, timeoutSeconds: 60) { comm in
            var lines: [String] = []
            let rows = try CollectiveBench.run(comm: comm, sizes: [4 << 10, 96 << 10], print: { lines.append($0) })
            results.set(comm.rank, (rows, lines))
        }
        for (rank, error) in failures.enumerated() { XCTAssertNil(error, "rank \(rank): \(String(describing: error))") }
        let (rows, lines) = try XCTUnwrap(results.get(0))
        XCTAssertEqual(rows.map(\.collective), CollectiveBench.collectives + CollectiveBench.collectives)
        for r in rows {
            XCTAssertEqual(r.world, 3)
            XCTAssertTrue(r.timeMicroseconds > 0 && r.busbwGBps > 0 && r.ofRing > 0, "\(r)")
        }
        for rank in 1..<3 { XCTAssertEqual(try XCTUnwrap(results.get(rank)).0.map(\.timeMicroseconds), rows.map(\.timeMicroseconds)) }
        XCTAssertTrue(lines.first?.hasPrefix("transport ring ceiling: ") ?? false, "\(lines)")
        let objects = lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
        let c = try XCTUnwrap(objects.first { $0["transport_ring_gbps"] != nil })
        let gbps = try XCTUnwrap(c["transport_ring_gbps"] as? Double)
        XCTAssertGreaterThan(gbps, 0)
        for r in rows { XCTAssertEqual(r.ofRing, r.busbwGBps / gbps, accuracy: 1e-3 * r.ofRing + 1e-4) }
        let o = try XCTUnwrap(objects.first { $0["collective"] != nil })
        XCTAssertEqual(Set(o.keys), ["collective", "world", "bytes", "time_us", "algbw_gbps", "busbw_gbps", "of_ring", "security",
                                      "algorithm", "inter_host_bytes"])
        XCTAssertEqual(o["inter_host_bytes"] as? Int, 0, "one host")
        XCTAssertEqual(o["security"] as? String, "none", "inproc has no CURVE")
    }

    /// On two simulated hosts of 2 every collective gets a ring row and a hierarchical row; the hierarchical all-gather
    /// and reduce-scatter send each byte across once (the buffer, summed over the ranks), the ring 3/4 of it over each of
    /// its two boundary links.
    func testBenchmarkRowsPerAlgorithmOnTwoHosts() throws {
        let results = ResultBox<[CollectiveBench.Row]>()
        let failures = InProcessCluster.run(worldSize: 4, timeoutSeconds: 60, hostIndexOfRank: [0, 0, 1, 1]) { comm in
            results.set(comm.rank, try CollectiveBench.run(comm: comm, sizes: [96 << 10], print: { _ in }))
        }
        for (rank, error) in failures.enumerated() { XCTAssertNil(error, "rank \(rank): \(String(describing: error))") }
        let rows = try XCTUnwrap(results.get(0))
        XCTAssertEqual(rows.map(\.collective), CollectiveBench.collectives.flatMap { [$0, $0] })
        XCTAssertEqual(rows.map(\.algorithm), Array(repeating: ["ring", "hierarchical"], count: 4).flatMap { $0 })
        for pair in stride(from: 0, to: 4, by: 2) {
            let ring = rows[pair], hierarchical = rows[pair + 1]
            XCTAssertEqual(hierarchical.interHostBytes, ring.bytes, ring.collective)
            XCTAssertEqual(ring.interHostBytes, ring.bytes * 3 / 2, ring.collective)
        }
    }

    func testWorldOfOneNeedsNoSockets() throws {
        let failures = InProcessCluster.run(worldSize: 1) { comm in
            let failed = try CollectiveSuite(comm: comm, largeBytes: 1 << 20, print: { _ in }).run()
            XCTAssertEqual(failed, 0)
        }
        XCTAssertNil(failures[0] ?? nil)
    }
}

/// Per-rank results written by thread ranks.
private final class ResultBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int: T] = [:]
    func set(_ rank: Int, _ v: T) { lock.lock(); values[rank] = v; lock.unlock() }
    func get(_ rank: Int) -> T? { lock.lock(); defer { lock.unlock() }; return values[rank] }
}
