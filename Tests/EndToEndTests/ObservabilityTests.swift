import Foundation
import XCTest

/// What a run leaves to look at: metrics.jsonl's mfu / tflops / expert loads, TensorBoard event files read by
/// TensorBoard's own reader, the report, the merged trace.
final class ObservabilityTests: XCTestCase {
    static func rows(_ dump: String) throws -> [[String: Any]] {
        try String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    /// A Python that imports tensorboard: TITAN_TENSORBOARD_PYTHON (scripts/test.sh makes a venv with it), else
    /// python3. Without one the test skips, unless TITAN_REQUIRE_TENSORBOARD=1 (CI) makes that a failure.
    static func tensorBoardPython() throws -> String? {
        let env = ProcessInfo.processInfo.environment
        for candidate in [env["TITAN_TENSORBOARD_PYTHON"], "/usr/bin/python3", "/usr/local/bin/python3"].compactMap({ $0 })
        where FileManager.default.isExecutableFile(atPath: candidate) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: candidate)
            p.arguments = ["-c", "import tensorboard"]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            p.waitUntilExit()
            if p.terminationStatus == 0 { return candidate }
        }
        if env["TITAN_REQUIRE_TENSORBOARD"] == "1" {
            XCTFail("no Python with the tensorboard package (TITAN_TENSORBOARD_PYTHON or python3), and TITAN_REQUIRE_TENSORBOARD=1")
        }
        return nil
    }

    /// TensorBoard's EventAccumulator reads our event files: the loss at every step is metrics.jsonl's (as float32, the
    /// type of a TensorBoard scalar), and so are grad_norm, lr and mfu. The same run checks mfu and tflops against
    /// torchtitan's formula and the per-expert loads.
    func testTensorBoardReaderFindsEveryStepsMetricsAndMFUFollowsTheFormula() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "2", "--dump-folder", dump, "--", "train", "--training.steps", "6",
                               "--training.seq_len", "64", "--training.local_batch_size", "4",
                               "--parallelism.expert_parallel_degree", "2", "--metrics.enable_tensorboard", "true",
                               "--metrics.peak_tflops", "0.5", "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        let rows = try Self.rows(dump)
        XCTAssertEqual(rows.map { $0["step"] as? Int }, [1, 2, 3, 4, 5, 6])

        // debugmodel_moe at seq_len 64 (torchtitan's get_num_flop_per_token, counted by hand): per layer attention
        // 64·4·16·2 + 64·2·16·2, router 8·64, 2 routed experts 2·3·64·64; output 2048·64.
        let active = Double(2 * (64 * 4 * 16 * 2 + 64 * 2 * 16 * 2 + 8 * 64 + 2 * 3 * 64 * 64) + 2048 * 64)
        let flopsPerToken = 6 * active + 12 * Double(2 * 4 * 16 * 64)
        for row in rows {
            let tps = try XCTUnwrap(row["tokens_per_sec"] as? Double)
            let tflops = try XCTUnwrap(row["tflops"] as? Double, "no tflops")
            let mfu = try XCTUnwrap(row["mfu"] as? Double, "no mfu")
            XCTAssertEqual(tflops, flopsPerToken * tps / 1e12, accuracy: tflops * 1e-9)
            XCTAssertEqual(mfu, 100 * tflops / 0.5, accuracy: mfu * 1e-9)
            // Tokens per expert: each of the global batch's 2 × 4 × 64 tokens goes to 2 experts.
            let tokens = try XCTUnwrap(row["expert_load_layer0"] as? [Int], "no expert_load_layer0")
            XCTAssertEqual(tokens.count, 8)
            XCTAssertEqual(tokens.reduce(0, +), 2 * 4 * 64 * 2)
            XCTAssertEqual(tokens.min(), row["expert_load_min_layer0"] as? Int)
            XCTAssertEqual(tokens.max(), row["expert_load_max_layer0"] as? Int)
            XCTAssertEqual((row["max_rss_mb_per_rank"] as? [Double])?.count, 2)
        }

        let runs = try FileManager.default.contentsOfDirectory(atPath: dump + "/tb")
        XCTAssertEqual(runs.count, 1, "one TensorBoard run folder: \(runs)")
        guard let python = try Self.tensorBoardPython() else {
            throw XCTSkip("TensorBoard reader check skipped: no Python with the tensorboard package (scripts/test.sh makes one)")
        }
        let script = """
            import json, sys
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
            acc = EventAccumulator(sys.argv[1]); acc.Reload()
            tags = ["loss_metrics/global_avg_loss", "grad_norm", "lr", "mfu(%)", "throughput(tps)"]
            print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags}))
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", script, dump + "/tb/" + runs[0]]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let read = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: [[Double]]])
        for (tag, key) in [("loss_metrics/global_avg_loss", "loss"), ("grad_norm", "grad_norm"), ("lr", "lr"), ("mfu(%)", "mfu"),
                           ("throughput(tps)", "tokens_per_sec")] {
            let scalars = try XCTUnwrap(read[tag], tag)
            XCTAssertEqual(scalars.map { Int($0[0]) }, [1, 2, 3, 4, 5, 6], tag)
            for (s, row) in zip(scalars, rows) {
                XCTAssertEqual(Float(s[1]), Float(row[key] as! Double), "\(tag) at step \(Int(s[0]))")
            }
        }
    }
}
