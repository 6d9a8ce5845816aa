import Foundation
@testable import Train
import XCTest

/// The report from a hand-made run folder: rows another component extends (validation loss on some steps) are charted
/// with their own numbers, and rows without the optional keys still make a report.
final class RunReportTests: XCTestCase {
    func testValidationLossIsChartedAtItsSteps() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("report-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let w = try MetricsWriter(path: dir + "/metrics.jsonl")
        for step in 1...4 {
            var extra: [(key: String, value: Double)] = [("comm_wait_s", 0.01 * Double(step))]
            if step % 2 == 0 { extra.append(("validation_loss", 5.0 - Double(step) / 8)) }
            try w.write(StepMetrics(step: step, loss: 6.0 - Double(step) / 4, grad_norm: 1, lr: 1e-3, tokens_per_sec: 1000,
                                step_time_s: 0.1, extra: extra))
        }
        let html = try RunReport.render(dumpFolder: dir)
        func series(_ name: String, _ attribute: String) throws -> [Double] {
            let named = try XCTUnwrap(html.range(of: "data-name=\"\(name)\""), name)
            let attr = try XCTUnwrap(html.range(of: attribute + "=\"", range: named.upperBound..<html.endIndex))
            let close = try XCTUnwrap(html.range(of: "\"", range: attr.upperBound..<html.endIndex))
            return html[attr.upperBound..<close.lowerBound].split(separator: ",").map { Double($0)! }
        }
        XCTAssertEqual(try series("validation loss", "data-x"), [2, 4])
        XCTAssertEqual(try series("validation loss", "data-y"), [4.75, 4.5])
        XCTAssertEqual(try series("loss", "data-y"), [5.75, 5.5, 5.25, 5.0])
        XCTAssertTrue(html.contains("validation loss</div><div class=\"v\">4.5000"))
        XCTAssertFalse(html.contains("chart-expert-load"), "no expert loads in the rows, no heatmap")
        XCTAssertThrowsError(try RunReport.render(dumpFolder: dir + "/missing"))
    }
}
