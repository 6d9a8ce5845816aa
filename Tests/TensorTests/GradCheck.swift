import XCTest
import Tensor

/// Random array of normals.
func randn(_ n: Int, _ rng: inout SplitMix64, std: Float = 1) -> [Float] {
    (0..<n).map { _ in std * rng.nextNormal() }
}

func dotD(_ a: UnsafePointer<Float>, _ b: [Float]) -> Double {
    var s = 0.0
    for i in 0..<b.count { s += Double(a[i]) * Double(b[i]) }
    return s
}

/// Central-difference check of an analytic gradient.
/// `f` evaluates the scalar objective (a random projection of the kernel's outputs) reading the inputs at `x`.
/// Checks every coordinate when n <= maxChecks, else a deterministic random sample.
func checkGradient(_ name: String, x: UnsafeMutablePointer<Float>, n: Int, grad: [Float],
                   eps: Float = 1e-2, rtol: Double = 2e-2, atol: Double = 2e-3, maxChecks: Int = 80,
                   file: StaticString = #filePath, line: UInt = #line, f: () -> Double) {
    XCTAssertEqual(grad.count, n, "\(name): gradient size", file: file, line: line)
    XCTAssertGreaterThan(n, 0, "\(name): nothing to check", file: file, line: line)
    let maxAbs = grad.map { abs($0) }.max() ?? 0
    XCTAssertGreaterThan(maxAbs, 1e-6, "\(name): analytic gradient is identically zero", file: file, line: line)
    var rng = SplitMix64(seed: 1234)
    let indices: [Int] = n <= maxChecks ? Array(0..<n) : (0..<maxChecks).map { _ in Int(rng.next() % UInt64(n)) }
    var worst = 0.0
    for i in indices {
        let old = x[i]
        x[i] = old + eps
        let fp = f()
        x[i] = old - eps
        let fm = f()
        x[i] = old
        let fd = (fp - fm) / Double(2 * eps)
        let an = Double(grad[i])
        let err = abs(fd - an)
        let tol = atol + rtol * max(abs(fd), abs(an))
        worst = max(worst, err / tol)
        if err > tol {
            XCTFail("\(name)[\(i)]: analytic \(an) vs finite difference \(fd) (err \(err) > tol \(tol))", file: file, line: line)
            return
        }
    }
    XCTAssertLessThanOrEqual(worst, 1.0, file: file, line: line)
}

/// Owns a mutable Float array at a stable address for the test's duration.
final class Buf {
    let t: Tensor
    init(_ values: [Float]) { t = Tensor(shape: [values.count], values: values) }
    init(zeros n: Int) { t = Tensor(shape: [n]) }
    var p: UnsafeMutablePointer<Float> { t.data }
    var a: [Float] { t.toArray() }
    var n: Int { t.count }
}
