import Foundation
import XCTest

/// The user-facing contract of `titan train` / `titan launch -- train`: run folder, metrics keys, errors.
final class TrainCommandTests: XCTestCase {
    func testDefaultEightRankJobWritesTheRunFolder() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "8", "--dump-folder", dump, "--", "train",
                               "--training.steps", "4", "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        let config = try String(contentsOfFile: dump + "/config.json", encoding: .utf8)
        XCTAssertTrue(config.contains("\"expert_parallel_degree\""), config)
        let lines = try String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 4)
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as! [String: Any]
        for key in ["step", "loss", "grad_norm", "lr", "tokens_per_sec", "step_time_s", "max_rss_mb"] {
            XCTAssertNotNil(first[key], "metrics.jsonl lacks \(key)")
        }
        // Traffic per rank and step, in total and per kind: FSDP gathers and reduces, the gradient norm is all-reduced,
        // expert parallelism dispatches tokens.
        let kinds = ["all_gather", "reduce_scatter", "all_reduce", "all_to_all"]
        let total = try XCTUnwrap(first["comm_sent_mb"] as? Double, "metrics.jsonl lacks comm_sent_mb")
        let parts = try kinds.map { try XCTUnwrap(first["comm_sent_mb_\($0)"] as? Double, "metrics.jsonl lacks comm_sent_mb_\($0)") }
        for (kind, mb) in zip(kinds, parts) { XCTAssertGreaterThan(mb, 0, kind) }
        XCTAssertEqual(total, parts.reduce(0, +), accuracy: total * 1e-9)
        for k in 0..<8 { XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dump)/logs/rank-\(k).log"), "rank \(k) log") }
        XCTAssertTrue(r.stdout.contains("[rank 0] step    4"), String(r.stdout.suffix(2000)))
    }

    /// What a newcomer types (`./run_cluster.sh 8` hands `titan launch --ranks 8` nothing else): the ranks train the
    /// default model with the defaults into a run folder under ./outputs, every step of its config.
    func testBareLaunchTrainsWithTheDefaults() throws {
        let dir = temporaryFolder()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let r = try Titan.run(["launch", "--ranks", "8"], directory: dir)
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        let runs = try FileManager.default.contentsOfDirectory(atPath: dir + "/outputs")
        XCTAssertEqual(runs.count, 1, "\(runs)")
        let run = dir + "/outputs/" + (runs.first ?? "")
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/config.json"))) as? [String: Any]
        let steps = try XCTUnwrap((config?["training"] as? [String: Any])?["steps"] as? Int)
        let lines = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, steps)
        XCTAssertTrue(r.stdout.contains("titan: all 8 rank(s) finished") || r.stderr.contains("titan: all 8 rank(s) finished"), r.stdout.suffix(500).description)
    }

    /// `--profiling.enable_trace true` writes one Chrome/Perfetto trace per rank with forward/backward spans per
    /// parameter group, the optimizer, waits and every collective kind, and every track's spans nest (a viewer draws
    /// overlapping spans of one track wrongly) — also with tied weights, whose embedding group stays open across the
    /// blocks' backward.
    func testTraceHasEverySpanKindAndNestsPerTrack() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "4", "--dump-folder", dump, "--", "train", "--config", "debugmodel_moe",
                               "--model.enable_weight_tying", "true", "--training.steps", "3",
                               "--parallelism.data_parallel_shard_degree", "4", "--parallelism.expert_parallel_degree", "2",
                               "--profiling.enable_trace", "true", "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        for rank in 0..<4 {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(dump)/trace/rank-\(rank).json"))
            let root = try JSONSerialization.jsonObject(with: data)
            let all = (root as? [String: Any])?["traceEvents"] as? [[String: Any]] ?? (root as? [[String: Any]] ?? [])
            let spans = all.filter { $0["ph"] as? String == "X" }
            let names = Set(spans.compactMap { $0["name"] as? String })
            for want in ["step", "forward", "backward", "optimizer", "wait", "all_gather", "reduce_scatter", "all_to_all", "all_reduce"] {
                XCTAssertTrue(names.contains(want), "rank \(rank) trace lacks \(want): \(names.sorted())")
            }
            // Every collective span says how many payload bytes it sent; FSDP's gathers send some.
            let collectives = spans.filter { ["all_gather", "reduce_scatter", "all_to_all", "all_reduce"].contains($0["name"] as? String ?? "") }
            let sent = collectives.map { (($0["args"] as? [String: Any])?["bytes_sent"] as? NSNumber)?.intValue ?? -1 }
            XCTAssertTrue(sent.allSatisfy { $0 >= 0 }, "rank \(rank): a collective span without bytes_sent")
            XCTAssertGreaterThan(zip(collectives, sent).filter { $0.0["name"] as? String == "all_gather" }.map(\.1).reduce(0, +), 0)
            // Per (pid, tid) track, sorted by start: each span lies within the enclosing one or after it.
            var tracks: [String: [(Double, Double)]] = [:]
            for e in spans {
                let ts = (e["ts"] as? NSNumber)?.doubleValue ?? -1, dur = (e["dur"] as? NSNumber)?.doubleValue ?? -1
                XCTAssertGreaterThanOrEqual(ts, 0); XCTAssertGreaterThanOrEqual(dur, 0)
                tracks["\(e["pid"] ?? "")/\(e["tid"] ?? "")", default: []].append((ts, ts + dur))
            }
            for (track, list) in tracks {
                var open: [Double] = []   // end times of the enclosing spans
                for (start, end) in list.sorted(by: { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 > $1.1) }) {
                    while let top = open.last, top <= start { open.removeLast() }
                    if let top = open.last { XCTAssertLessThanOrEqual(end, top + 0.002, "rank \(rank) track \(track): span [\(start), \(end)] overlaps one ending at \(top)") }
                    open.append(end)
                }
            }
        }
    }

    /// The default 8-rank topology asks for expert parallelism; a dense model still runs on it.
    /// `--debug.deterministic`: the same bits with one kernel thread and with two, even on the loop expert path whose
    /// large GEMMs are otherwise split over the threads (and may then round differently).
    func testDeterministicRunIsTheSameForAnyThreadCount() throws {
        var metrics: [[String]] = []
        for threads in ["1", "2"] {
            let dump = temporaryFolder()
            let r = try Titan.run(["train", "--config", "bench_moe", "--training.steps", "2", "--training.local_batch_size", "2",
                                   "--training.seq_len", "128", "--model.moe.use_grouped_mm", "false", "--debug.deterministic",
                                   "--job.dump_folder", dump], environment: ["OPENBLAS_NUM_THREADS": threads])
            XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
            XCTAssertTrue(r.stdout.contains("\(threads) kernel thread(s) per rank") && r.stdout.contains("deterministic: GEMMs never split"),
                          String(r.stdout.prefix(2000)))
            let lines = try String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            metrics.append(try lines.map { line in
                let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                return "\(o["loss"]!) \(o["grad_norm"]!)"
            })
        }
        XCTAssertEqual(metrics[0].count, 2)
        XCTAssertEqual(metrics[0], metrics[1])
    }

    func testDenseModelRunsOnTheDefaultTopology() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "8", "--dump-folder", dump, "--", "train", "--config", "debugmodel",
                               "--training.steps", "2", "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(2000)))
        XCTAssertTrue(r.stdout.contains("expert parallel 1"), String(r.stdout.prefix(2000)))
    }

    /// A bad key fails once, in the launcher, before any rank starts.
    func testBadKeyFailsBeforeRanksStart() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "4", "--dump-folder", dump, "--", "train", "--training.stepz", "3"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("did you mean '--training.steps'"), r.stderr)
        XCTAssertFalse(r.stdout.contains("[rank"), r.stdout)
    }

    func testUnknownKeyIsAnErrorNamingTheClosestKey() throws {
        let r = try Titan.run(["train", "--training.stepz", "3"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("training.stepz"), r.stderr)
        XCTAssertTrue(r.stderr.contains("training.steps"), r.stderr)
    }

    func testBadlyTypedValueIsAnErrorNamingTheKey() throws {
        let r = try Titan.run(["train", "--optimizer.lr", "fast"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("optimizer.lr"), r.stderr)
    }

    func testHelpListsEveryFieldWithTypeAndDefault() throws {
        let r = try Titan.run(["train", "--help"])
        XCTAssertEqual(r.status, 0, r.stderr)
        for key in ["--training.steps", "--parallelism.expert_parallel_degree", "--checkpoint.initial_load_in_hf", "--model.moe.num_experts"] {
            XCTAssertTrue(r.stdout.contains(key), "help lacks \(key)")
        }
    }
}
