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
            // The worse of the two ranks' mean losses: at least their mean (the loss), and the other one is >= 0.
            let loss = try XCTUnwrap(row["loss"] as? Double), worst = try XCTUnwrap(row["max_rank_loss"] as? Double)
            XCTAssertGreaterThanOrEqual(worst, loss * (1 - 1e-12))
            XCTAssertLessThan(worst, 2 * loss)
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
            tags = ["loss_metrics/global_avg_loss", "loss_metrics/global_max_loss", "grad_norm", "lr", "mfu(%)", "throughput(tps)"]
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
        for (tag, key) in [("loss_metrics/global_avg_loss", "loss"), ("loss_metrics/global_max_loss", "max_rank_loss"), ("grad_norm", "grad_norm"), ("lr", "lr"), ("mfu(%)", "mfu"),
                           ("throughput(tps)", "tokens_per_sec")] {
            let scalars = try XCTUnwrap(read[tag], tag)
            XCTAssertEqual(scalars.map { Int($0[0]) }, [1, 2, 3, 4, 5, 6], tag)
            for (s, row) in zip(scalars, rows) {
                XCTAssertEqual(Float(s[1]), Float(row[key] as! Double), "\(tag) at step \(Int(s[0]))")
            }
        }
    }
}

extension ObservabilityTests {
    /// The numbers a chart's series holds (data-y of the element with data-name `name` inside the svg `id`).
    static func series(_ html: String, chart id: String, name: String, attribute: String = "data-y") throws -> [Double] {
        let start = try XCTUnwrap(html.range(of: "<svg id=\"\(id)\""), "no chart \(id)")
        let end = try XCTUnwrap(html.range(of: "</svg>", range: start.upperBound..<html.endIndex))
        let svg = html[start.lowerBound..<end.upperBound]
        let named = try XCTUnwrap(svg.range(of: "data-name=\"\(name)\""), "chart \(id) has no series \(name)")
        let attr = try XCTUnwrap(svg.range(of: attribute + "=\"", range: named.upperBound..<svg.endIndex))
        let close = try XCTUnwrap(svg.range(of: "\"", range: attr.upperBound..<svg.endIndex))
        return svg[attr.upperBound..<close.lowerBound].split(separator: ",").map { Double($0) ?? .nan }
    }

    /// `titan report DUMP` (and the run itself) writes one self-contained page: no URL, script, stylesheet, font or
    /// image from anywhere; every chart is there and plots this run's numbers; checkpoints and the restart are marked.
    func testReportIsSelfContainedAndChartsTheRunsNumbers() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "4", "--max-restarts", "1", "--dump-folder", dump, "--", "train",
                               "--training.steps", "12", "--training.seq_len", "32", "--training.local_batch_size", "2",
                               "--parallelism.expert_parallel_degree", "2", "--checkpoint.enable", "true",
                               "--checkpoint.interval", "5", "--fault.rank", "1", "--fault.at_step", "8", "--fault.mode", "kill",
                               "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stdout.contains("[rank 0] report: \(dump)/report.html"), String(r.stdout.suffix(1500)))
        XCTAssertTrue(r.stdout.contains("[rank 0] summary: steps 6-12"), String(r.stdout.suffix(1500)))
        try FileManager.default.removeItem(atPath: dump + "/report.html")
        let cmd = try Titan.run(["report", dump])
        XCTAssertEqual(cmd.status, 0, cmd.stderr)
        let html = try String(contentsOfFile: dump + "/report.html", encoding: .utf8)

        for outside in ["http:", "https:", "//", "<script", "<link", "<img", "<iframe", "@import", "url(", "src=", "href="] {
            XCTAssertFalse(html.lowercased().contains(outside), "the report refers outside itself: \(outside)")
        }
        let rows = try Self.rows(dump)
        XCTAssertEqual(rows.map { $0["step"] as? Int }, Array(1...12))
        func column(_ key: String) -> [Double] { rows.map { ($0[key] as? NSNumber)?.doubleValue ?? .nan } }
        func assertClose(_ a: [Double], _ b: [Double], _ what: String) {
            XCTAssertEqual(a.count, b.count, what)
            for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: abs(y) * 1e-8 + 1e-12, what) }
        }
        assertClose(try Self.series(html, chart: "chart-loss", name: "loss"), column("loss"), "loss")
        assertClose(try Self.series(html, chart: "chart-loss", name: "loss", attribute: "data-x"), Array(1...12).map(Double.init), "steps")
        assertClose(try Self.series(html, chart: "chart-grad-norm", name: "grad_norm"), column("grad_norm"), "grad_norm")
        assertClose(try Self.series(html, chart: "chart-lr", name: "lr"), column("lr"), "lr")
        assertClose(try Self.series(html, chart: "chart-throughput", name: "tokens/s"), column("tokens_per_sec"), "tokens/s")
        assertClose(try Self.series(html, chart: "chart-throughput", name: "MFU % (right axis)"), column("mfu"), "mfu")
        assertClose(try Self.series(html, chart: "chart-step-time", name: "comm wait"), column("comm_wait_s"), "comm wait")
        assertClose(try Self.series(html, chart: "chart-step-time", name: "compute"),
                    zip(column("step_time_s"), column("comm_wait_s")).map { $0 - $1 }, "compute")
        for kind in ["all_gather", "reduce_scatter", "all_reduce", "all_to_all"] {
            assertClose(try Self.series(html, chart: "chart-comm", name: kind), column("comm_sent_mb_" + kind), kind)
        }
        let memory = try XCTUnwrap(rows.last?["max_rss_mb_per_rank"] as? [Double])
        XCTAssertEqual(memory.count, 4)
        assertClose(try Self.series(html, chart: "chart-memory", name: "MiB"), memory, "memory per rank")
        for layer in 0..<2 {
            let loads = rows.flatMap { ($0["expert_load_layer\(layer)"] as? [Double]) ?? [] }
            XCTAssertEqual(loads.count, 12 * 8)
            assertClose(try Self.series(html, chart: "chart-expert-load-layer\(layer)", name: "tokens per expert"), loads, "layer \(layer)")
        }
        // Checkpoints at 5, 10 and 12 (the last step); the restart resumed after step 5.
        for step in [5, 10, 12] { XCTAssertTrue(html.contains("checkpoint step-\(step)"), "no checkpoint \(step) marker") }
        XCTAssertTrue(html.contains("restart 1: resumed after step 5"), "no restart marker")
        XCTAssertTrue(html.contains("world 4 = replicate 1 × shard 4, expert parallel 2"), "no mesh in the header")
    }
}

extension ObservabilityTests {
    /// `--profiling.enable_trace true` merges the ranks' traces into DUMP/trace/trace.json: Chrome trace JSON, every
    /// rank a process with its training thread and group workers, every rank's spans, collectives labelled with
    /// group / sequence number / bytes, and flow arrows from the last rank to arrive: with rank 2 made a straggler
    /// (every collective 20 ms late), the arrows of the collectives it is in start at rank 2.
    func testMergedTraceHasEveryRanksSpansAndFlowsFromTheStraggler() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "4", "--dump-folder", dump, "--", "train", "--training.steps", "3",
                               "--training.seq_len", "32", "--training.local_batch_size", "2",
                               "--parallelism.expert_parallel_degree", "2", "--profiling.enable_trace", "true",
                               "--fault.rank", "2", "--fault.at_step", "1", "--fault.mode", "slow", "--fault.delay_ms", "20",
                               "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stdout.contains("[rank 0] merged trace: \(dump)/trace/trace.json"), String(r.stdout.suffix(1500)))
        let data = try Data(contentsOf: URL(fileURLWithPath: dump + "/trace/trace.json"))
        let root = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let events = try XCTUnwrap(root["traceEvents"] as? [[String: Any]])
        func int(_ e: [String: Any], _ k: String) -> Int? { (e[k] as? NSNumber)?.intValue }
        func args(_ e: [String: Any]) -> [String: Any] { e["args"] as? [String: Any] ?? [:] }

        var membersOf: [String: [Int]] = [:]   // "pid/tid" → group members
        for rank in 0..<4 {
            let meta = events.filter { int($0, "pid") == rank && $0["ph"] as? String == "M" }
            XCTAssertTrue(meta.contains { $0["name"] as? String == "process_name" && args($0)["name"] as? String == "rank \(rank)" })
            XCTAssertTrue(meta.contains { $0["name"] as? String == "thread_name" && args($0)["name"] as? String == "train" })
            for m in meta where m["name"] as? String == "thread_name" {
                if let members = args(m)["members"] as? [Int] { membersOf["\(rank)/\(int(m, "tid")!)"] = members }
            }
            let spans = events.filter { int($0, "pid") == rank && $0["ph"] as? String == "X" }
            let names = Set(spans.compactMap { $0["name"] as? String })
            for want in ["step", "forward", "backward", "optimizer", "all_gather", "reduce_scatter", "all_to_all", "all_reduce"] {
                XCTAssertTrue(names.contains(want), "rank \(rank) lacks \(want) in the merged trace")
            }
            for c in spans where ["all_gather", "reduce_scatter", "all_to_all", "all_reduce"].contains(c["name"] as? String ?? "") {
                let a = args(c)
                XCTAssertNotNil(a["group"]); XCTAssertNotNil(a["seq"]); XCTAssertNotNil(a["bytes_sent"])
                XCTAssertNotNil(membersOf["\(rank)/\(int(c, "tid")!)"], "a collective on a track without its group's members")
            }
        }
        // Flows: each "s" has one "f" with its id on another rank; collectives with rank 2 start at rank 2.
        let starts = events.filter { $0["ph"] as? String == "s" }, finishes = events.filter { $0["ph"] as? String == "f" }
        XCTAssertGreaterThan(starts.count, 0)
        XCTAssertEqual(Set(starts.compactMap { int($0, "id") }), Set(finishes.compactMap { int($0, "id") }))
        XCTAssertEqual(starts.count, Set(starts.compactMap { int($0, "id") }).count)
        let finishByID = Dictionary(uniqueKeysWithValues: finishes.map { (int($0, "id")!, $0) })
        var fromTwo = 0, withTwo = 0
        for s in starts {
            let f = try XCTUnwrap(finishByID[int(s, "id")!])
            XCTAssertNotEqual(int(s, "pid"), int(f, "pid"))
            if membersOf["\(int(s, "pid")!)/\(int(s, "tid")!)"]?.contains(2) == true {
                withTwo += 1
                if int(s, "pid") == 2 { fromTwo += 1 }
            }
        }
        XCTAssertGreaterThan(withTwo, 0)
        XCTAssertGreaterThanOrEqual(Double(fromTwo), 0.9 * Double(withTwo), "the straggler is not where the flows start: \(fromTwo) of \(withTwo)")
    }
}

extension ObservabilityTests {
    /// On a terminal (a pseudo-terminal from util-linux `script`) a run of more than a few seconds shows rank 0's
    /// progress line, redrawn in place through the launcher, and ends with the summary; the log gets the step lines
    /// but never the progress line. A straggler (every collective of rank 1 50 ms late) makes the run long enough.
    func testProgressLineOnATerminalOnlyAndSummaryAtTheEnd() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/script") else {
            throw XCTSkip("no /usr/bin/script (util-linux) to give the launcher a terminal")
        }
        let dump = temporaryFolder()
        let command = [Titan.path, "launch", "--ranks", "2", "--dump-folder", dump, "--", "train", "--training.steps", "5",
                       "--training.seq_len", "32", "--training.local_batch_size", "2", "--fault.rank", "1",
                       "--fault.at_step", "1", "--fault.mode", "slow", "--fault.delay_ms", "50", "--job.dump_folder", dump]
        let r = try Titan.runProgram("/usr/bin/script", ["-qec", command.joined(separator: " "), "/dev/null"])
        XCTAssertEqual(r.status, 0, String(r.stdout.suffix(3000)))
        XCTAssertTrue(r.stdout.contains("\r\u{1B}[K[rank 0] [####"), String(r.stdout.suffix(2000)))
        XCTAssertTrue(r.stdout.contains("steps/s  ETA "), String(r.stdout.suffix(2000)))
        XCTAssertTrue(r.stdout.contains("[rank 0] summary: steps 1-5 in "), String(r.stdout.suffix(2000)))
        let log = try String(contentsOfFile: dump + "/logs/rank-0.log", encoding: .utf8)
        XCTAssertTrue(log.contains("step    5  loss"))
        XCTAssertFalse(log.contains("ETA"), "the progress line reached the log")
        XCTAssertFalse(log.contains("\r"), "the progress line reached the log")
    }
}

extension Titan {
    /// Runs any program (here: `script`, to give titan a terminal), output captured.
    static func runProgram(_ path: String, _ arguments: [String]) throws -> Run {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Run(status: p.terminationStatus, stdout: String(decoding: data, as: UTF8.self), stderr: "")
    }
}
