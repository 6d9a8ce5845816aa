import Foundation
import XCTest

/// A topology's [network] enforced on real rank processes over real (ipc) sockets: bandwidth, latency, the bytes that
/// crossed hosts, and placement-aware expert-parallel groups.
final class SimulatedNetworkTests: XCTestCase {
    /// A topology file of `hosts` hosts × `ranks` ipc ranks with `network` lines in its [network] table.
    private func topology(hosts: Int = 2, ranks: Int = 4, network: String) throws -> String {
        let path = temporaryFolder() + ".toml"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        let text = String(repeating: "[[hosts]]\nranks = \(ranks)\n", count: hosts) + "[network]\n" + network + "\n"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// `titan bench` on `topology` under `algorithm`; its JSON rows by collective.
    private func bench(_ topology: String, sizes: Int, collectives: [String], algorithm: String = "ring") throws -> [String: [String: Any]] {
        let r = try Titan.run(["launch", "--topology", topology, "--dump-folder", temporaryFolder(), "--", "bench",
                               "--sizes", "\(sizes)", "--collectives", collectives.joined(separator: ","),
                               "--comm.timeout_seconds", "60", "--comm.algorithm", algorithm])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(2000)))
        var rows: [String: [String: Any]] = [:]
        for line in r.stdout.split(separator: "\n") where line.hasPrefix("[rank 0] {\"algbw") {
            let object = try JSONSerialization.jsonObject(with: Data(line.dropFirst("[rank 0] ".count).utf8)) as! [String: Any]
            XCTAssertEqual(object["algorithm"] as? String, algorithm)
            rows[object["collective"] as! String] = object
        }
        XCTAssertEqual(Set(rows.keys), Set(collectives), r.stdout)
        return rows
    }

    /// Two hosts of 4 ranks linked at 1.6 Gbit/s: a ring crosses each host boundary once per direction, so the link
    /// between hosts is every ring's bottleneck and busbw (the rate each link sustains) is that link's 0.2 GB/s.
    func testRingBusbwMatchesTheInterHostLink() throws {
        let rows = try bench(topology(network: "inter_host_gbit = 1.6"), sizes: 16 << 20,
                             collectives: ["all_gather", "reduce_scatter"])
        for (name, row) in rows {
            let busbw = try XCTUnwrap(row["busbw_gbps"] as? Double)
            XCTAssertGreaterThanOrEqual(busbw, 0.75 * 0.2, "\(name): \(row)")
            XCTAssertLessThanOrEqual(busbw, 1.10 * 0.2, "\(name): \(row)")
            // Ranks 3 and 7 each pass 7 of the 8 chunks of 2 MiB to the other host.
            XCTAssertEqual(row["inter_host_bytes"] as? Int, 2 * 7 * (2 << 20), "\(name): \(row)")
        }
    }

    /// 2 ms one-way between hosts, no bandwidth limit: a small ring all-gather or reduce-scatter takes about two
    /// latencies, since its last chunk crosses both host boundaries (the hop count), one after the other.
    func testLatencyIsAddedPerHostCrossing() throws {
        let latencySeconds = 0.002
        let rows = try bench(topology(network: "inter_host_latency_us = 2000"), sizes: 1024,
                             collectives: ["all_gather", "reduce_scatter"])
        for (name, row) in rows {
            let seconds = try XCTUnwrap(row["time_us"] as? Double) / 1e6
            XCTAssertGreaterThanOrEqual(seconds, 2 * latencySeconds * 0.95, "\(name): \(row)")
            XCTAssertLessThanOrEqual(seconds, 2 * latencySeconds + 0.003, "\(name): \(row)")
        }
    }

    /// A delivery time past the collective's deadline (a 60 s link latency, a 2 s timeout) is a timeout naming the
    /// rank, after the timeout: the receiver does not sleep on.
    func testDeliveryPastTheDeadlineTimesOut() throws {
        let start = Date()
        let r = try Titan.run(["launch", "--topology", try topology(hosts: 2, ranks: 1, network: "inter_host_latency_us = 60000000"),
                               "--dump-folder", temporaryFolder(), "--", "bench", "--sizes", "1024", "--collectives", "all_gather",
                               "--comm.timeout_seconds", "2"])
        let seconds = Date().timeIntervalSince(start)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("timed out after 2.0s waiting for rank(s)"), String(r.stderr.suffix(2000)))
        XCTAssertLessThan(seconds, 30, "the receivers gave up at their deadline, not at the 60 s delivery time")
    }

    /// comm_inter_host_mb per step, and expert-parallel groups within a host by default (across with `strided`):
    /// the log says where each kind of group runs, and both placements train the same model.
    func testInterHostBytesAndExpertPlacement() throws {
        let topology = try topology(ranks: 2, network: "inter_host_gbit = 10")
        var losses: [[Double]] = []
        // auto: at 64 tokens per rank the experts' weights outweigh the tokens, so it chooses strided
        for placement in ["consecutive", "strided", "auto"] {
            let dump = temporaryFolder()
            let r = try Titan.run(["launch", "--topology", topology, "--dump-folder", dump, "--", "train",
                                   "--training.steps", "2", "--training.seq_len", "32", "--training.local_batch_size", "2",
                                   "--parallelism.data_parallel_shard_degree", "4", "--parallelism.expert_parallel_degree", "2",
                                   "--parallelism.expert_parallel_placement", placement])
            XCTAssertEqual(r.status, 0, String(r.stderr.suffix(2000)))
            let log = try String(contentsOfFile: dump + "/logs/rank-0.log", encoding: .utf8)
            XCTAssertTrue(log.contains(placement == "consecutive" ? "ep within a host, expert_shard across 2 hosts"
                                                                  : "(strided); global batch"), log)
            XCTAssertEqual(log.contains("ep across 2 hosts, expert_shard within a host"), placement != "consecutive", log)
            let rows = try String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
                try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
            }
            XCTAssertEqual(rows.count, 2)
            for row in rows {
                let interHost = try XCTUnwrap(row["comm_inter_host_mb"] as? Double), sent = try XCTUnwrap(row["comm_sent_mb"] as? Double)
                XCTAssertGreaterThan(interHost, 0)
                XCTAssertLessThan(interHost, sent)
            }
            losses.append(rows.map { $0["loss"] as! Double })
        }
        for (a, b) in zip(losses[0], losses[1]) { XCTAssertEqual(a, b, accuracy: 1e-5 * abs(a)) }
        XCTAssertEqual(losses[2], losses[1], "auto ran the strided groups")
    }
}
