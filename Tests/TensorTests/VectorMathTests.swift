import XCTest
import Foundation
import Tensor

final class VectorMathTests: XCTestCase {
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
            var out2 = [Float](repeating: 0, count: n)
            let s2 = xs.withUnsafeBufferPointer { src in out2.withUnsafeMutableBufferPointer { exp_shifted_double_sum($0.baseAddress!, src.baseAddress!, n, minus: 0.5) } }
            XCTAssertEqual(out2, out)
            XCTAssertEqual(s2, ref, accuracy: 1e-6 * ref)
            out.withUnsafeMutableBufferPointer { vscale($0.baseAddress!, n, 2) }
            XCTAssertEqual(out, out2.map { 2 * $0 })
        }
    }
}
