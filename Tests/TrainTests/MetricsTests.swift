import Foundation
@testable import Train
import XCTest

final class MetricsTests: XCTestCase {
    func testJSONLines() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let w = try MetricsWriter(path: dir + "/metrics.jsonl")
        try w.write(StepMetrics(step: 1, loss: 7.625, grad_norm: 1.5, lr: 3e-4, tokens_per_sec: 1234.5, step_time_s: 0.25,
                            extra: [("max_rss_mb", 120)]))
        try w.write(StepMetrics(step: 2, loss: .nan, grad_norm: .infinity, lr: 0, tokens_per_sec: 1, step_time_s: 1))
        let lines = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        XCTAssertEqual(String(lines[0]), #"{"grad_norm":1.5,"loss":7.625,"lr":0.0003,"max_rss_mb":120,"step":1,"step_time_s":0.25,"tokens_per_sec":1234.5}"#)
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        XCTAssertEqual(o["step"] as? Int, 1)
        XCTAssertEqual(o["max_rss_mb"] as? Double, 120)
        let o2 = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any])
        XCTAssertTrue(o2["loss"] is NSNull)
        XCTAssertTrue(o2["grad_norm"] is NSNull)

        // append mode keeps earlier lines (resume)
        let w2 = try MetricsWriter(path: dir + "/metrics.jsonl", append: true)
        try w2.write(StepMetrics(step: 3, loss: 1, grad_norm: 1, lr: 1, tokens_per_sec: 1, step_time_s: 1))
        XCTAssertEqual(try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").count, 3)
    }

    /// A full disk (Linux's /dev/full fails every write with ENOSPC) is an error naming the file, not a crash.
    func testFailedWriteIsAnErrorNamingTheFile() throws {
        let w = try MetricsWriter(path: "/dev/full", append: true)
        XCTAssertThrowsError(try w.write(StepMetrics(step: 1, loss: 1, grad_norm: 1, lr: 1, tokens_per_sec: 1, step_time_s: 1))) {
            XCTAssertTrue("\($0)".contains("cannot write /dev/full"), "\($0)")
        }
    }

    func testConsoleLine() {
        let m = StepMetrics(step: 12, loss: 3.45123, grad_norm: 0.81234, lr: 3e-4, tokens_per_sec: 12345.4, step_time_s: 0.1234,
                            extra: [("max_rss_mb", 123.4)])
        XCTAssertEqual(m.consoleLine, "step   12  loss 3.4512  grad_norm 0.8123  lr 3.00e-04  tok/s 12345  0.123s  rss 123MB")
        XCTAssertGreaterThan(maxRSSMegabytes(), 1)
    }
}

final class ConsoleProgressTests: XCTestCase {
    func testProgressTextHasStepRateAndETA() {
        // 25 of steps 1...100 in 10 s: 2.5 steps/s, 75 steps left → 30 s.
        XCTAssertEqual(ConsoleProgress.progressText(step: 25, firstStep: 1, lastStep: 100, elapsed: 10, loss: 2.34567),
                       "[#####...............] 25/100  2.50 steps/s  ETA 0:30  loss 2.3457")
        // A resumed run counts from its first step.
        XCTAssertTrue(ConsoleProgress.progressText(step: 60, firstStep: 51, lastStep: 60, elapsed: 5, loss: 1)
            .hasPrefix("[####################] 60/60  2.00 steps/s  ETA 0:00"))
        XCTAssertEqual(ConsoleProgress.duration(3725), "1:02:05")
    }

    func testSteadyStepsSkipTheFirstTenth() {
        XCTAssertEqual(Array(ConsoleProgress.steadyRows(Array(1...30))), Array(4...30))
        XCTAssertEqual(Array(ConsoleProgress.steadyRows(Array(1...5))), Array(2...5))
        XCTAssertEqual(Array(ConsoleProgress.steadyRows([7])), [7])
    }
}
