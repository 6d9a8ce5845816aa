import XCTest
import Foundation
import Tensor

final class VectorMathTests: XCTestCase {
    func testExp16Accuracy() {
        var worst = 0.0
        var x: Float = -87
        while x < 88 {
            let v = exp16(F16(repeating: x))[0]
            let ref = Foundation.exp(Double(x))
            worst = max(worst, abs(Double(v) - ref) / ref)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 3e-7, "max relative error of exp16")
        XCTAssertEqual(exp1(0), 1)
        XCTAssertEqual(exp1(-1000), exp1(-87.3))  // clamped, tiny, finite
        XCTAssertLessThan(exp1(-1000), 1.3e-38)
    }

    func testExpShiftedSumAndMax() {
        var rng = SplitMix64(seed: 1)
        for n in [1, 15, 16, 17, 100] {
            let xs = (0..<n).map { _ in 3 * rng.nextNormal() }
            XCTAssertEqual(xs.withUnsafeBufferPointer { vmax($0.baseAddress!, n) }, xs.max()!)
            var out = [Float](repeating: 0, count: n)
            let s = xs.withUnsafeBufferPointer { src in out.withUnsafeMutableBufferPointer { exp_shifted($0.baseAddress!, src.baseAddress!, n, minus: 0.5) } }
            var ref = 0.0
            for i in 0..<n {
                let r = Foundation.exp(Double(xs[i]) - 0.5)
                XCTAssertEqual(Double(out[i]), r, accuracy: 3e-7 * r)
                ref += r
            }
            XCTAssertEqual(Double(s), ref, accuracy: 1e-6 * ref)
        }
    }
}
