import Foundation
@testable import Train
import XCTest

/// Our TensorBoard encoder against bytes TensorBoard's own writer made (scripts/make_tensorboard_fixture.py).
final class TensorBoardTests: XCTestCase {
    /// The events of the fixture, as the script lists them.
    static let fixtureEvents: [(wallTime: Double, step: Int64, scalars: [(tag: String, value: Float)])] = [
        (1700000000.25, 0, [("loss_metrics/global_avg_loss", 7.625)]),
        (1700000001.5, 1, [("loss_metrics/global_avg_loss", 7.5), ("grad_norm", 1.25), ("lr", 3e-4)]),
        (1700000002.75, 300, [("mfu(%)", 42.5), ("comm/sent_all_to_all(MiB)", -0.1), ("expert_load/cv_layer0", 1e-9)]),
    ]

    func testEncoderMatchesTensorBoardsWriterByteForByte() throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/scalars", withExtension: "tfevents"))
        let expected = [UInt8](try Data(contentsOf: url))
        var ours = TensorBoardEvents.record(TensorBoardEvents.fileVersionEvent(wallTime: 1700000000.0))
        for e in Self.fixtureEvents {
            ours += TensorBoardEvents.record(TensorBoardEvents.scalarsEvent(wallTime: e.wallTime, step: e.step, e.scalars))
        }
        XCTAssertEqual(ours.count, expected.count)
        XCTAssertEqual(ours, expected)
    }

    func testCRC32CKnownValues() {
        // RFC 3720 B.4 test vectors.
        XCTAssertEqual(TensorBoardEvents.crc32c([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(TensorBoardEvents.crc32c([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(TensorBoardEvents.crc32c(Array(0..<32)), 0x46DD_794E)
    }

    func testRowTagsFollowTorchtitan() {
        let m = StepMetrics(step: 3, loss: 2.5, grad_norm: 1, lr: 1e-3, tokens_per_sec: 1000, step_time_s: 0.5,
                            extra: [("mfu", 40), ("tflops", 0.1), ("validation_loss", 2.75), ("comm_wait_s", 0.125),
                                    ("comm_sent_mb_all_gather", 3), ("expert_load_cv_layer1", 0.5)])
        let tags = Dictionary(uniqueKeysWithValues: TensorBoardLogger.scalars(of: m).map { ($0.tag, $0.value) })
        XCTAssertEqual(tags["loss_metrics/global_avg_loss"], 2.5)
        XCTAssertEqual(tags["throughput(tps)"], 1000)
        XCTAssertEqual(tags["mfu(%)"], 40)
        XCTAssertEqual(tags["tflops"], 0.1)
        XCTAssertEqual(tags["validation_metrics/loss"], 2.75)
        XCTAssertEqual(tags["comm/wait(%)"], 25)
        XCTAssertEqual(tags["comm/sent_all_gather(MiB)"], 3)
        XCTAssertEqual(tags["expert_load/cv_layer1"], 0.5)
    }
}
