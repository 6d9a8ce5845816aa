// Element types and reduction operators. Reductions are applied by the algorithms in a fixed order,
// so results are bitwise identical on every rank and every run.

import Foundation

public enum ReduceOp: String, Sendable, CaseIterable {
    case sum, avg, max
}

/// Types a collective can carry: Float32 data, Float64 scalars (loss sums), Int32/Int64 counts, raw bytes (no reductions).
public protocol CollectiveElement: Sendable {
    /// dst[i] = a[i] op b[i] for i < count; `dst` may alias `a` or `b`. Avg accumulates like sum.
    static func combine(_ op: ReduceOp, _ dst: UnsafeMutablePointer<Self>, _ a: UnsafePointer<Self>,
                        _ b: UnsafePointer<Self>, count: Int)
    /// Finishes an average: p[i] /= divisor.
    static func divide(_ p: UnsafeMutablePointer<Self>, count: Int, by divisor: Int)
    static var isReducible: Bool { get }
}

extension CollectiveElement where Self: Numeric & Comparable {
    @inline(__always)
    static func combineNumeric(_ op: ReduceOp, _ dst: UnsafeMutablePointer<Self>, _ a: UnsafePointer<Self>,
                               _ b: UnsafePointer<Self>, count: Int) {
        switch op {
        case .sum, .avg: for i in 0..<count { dst[i] = a[i] + b[i] }
        case .max: for i in 0..<count { dst[i] = Swift.max(a[i], b[i]) }
        }
    }
}

extension CollectiveElement where Self: BinaryFloatingPoint {
    public static func combine(_ op: ReduceOp, _ dst: UnsafeMutablePointer<Self>, _ a: UnsafePointer<Self>,
                               _ b: UnsafePointer<Self>, count: Int) {
        combineNumeric(op, dst, a, b, count: count)
    }
    public static func divide(_ p: UnsafeMutablePointer<Self>, count: Int, by divisor: Int) {
        let d = Self(divisor)
        for i in 0..<count { p[i] /= d }
    }
    public static var isReducible: Bool { true }
}

extension Float: CollectiveElement {}
extension Double: CollectiveElement {}

extension CollectiveElement where Self: FixedWidthInteger {
    public static func combine(_ op: ReduceOp, _ dst: UnsafeMutablePointer<Self>, _ a: UnsafePointer<Self>,
                               _ b: UnsafePointer<Self>, count: Int) {
        combineNumeric(op, dst, a, b, count: count)
    }
    public static func divide(_ p: UnsafeMutablePointer<Self>, count: Int, by divisor: Int) {
        for i in 0..<count { p[i] /= Self(divisor) }
    }
    public static var isReducible: Bool { true }
}

extension Int32: CollectiveElement {}
extension Int64: CollectiveElement {}

extension UInt8: CollectiveElement {
    public static func combine(_ op: ReduceOp, _ dst: UnsafeMutablePointer<UInt8>, _ a: UnsafePointer<UInt8>,
                               _ b: UnsafePointer<UInt8>, count: Int) {
        preconditionFailure("bytes are not reducible")
    }
    public static func divide(_ p: UnsafeMutablePointer<UInt8>, count: Int, by divisor: Int) {
        preconditionFailure("bytes are not reducible")
    }
    public static var isReducible: Bool { false }
}

/// A reduction over raw bytes, as the algorithms see it.
struct ByteReduction {
    let elementSize: Int
    /// dst = a op b over `bytes` bytes (dst may alias a or b).
    let combine: (UnsafeMutableRawPointer, UnsafeRawPointer, UnsafeRawPointer, Int) -> Void

    init<T: CollectiveElement>(_ type: T.Type, _ op: ReduceOp) {
        elementSize = MemoryLayout<T>.stride
        combine = { dst, a, b, bytes in
            let n = bytes / MemoryLayout<T>.stride
            T.combine(op, dst.assumingMemoryBound(to: T.self), a.assumingMemoryBound(to: T.self),
                      b.assumingMemoryBound(to: T.self), count: n)
        }
    }

    /// dst = (…((o₀ op o₁) op o₂) …) op o_last over `bytes` bytes, left to right (dst = o₀ for one operand). dst must
    /// not alias any operand but the first.
    func foldLeft(into dst: UnsafeMutableRawPointer, _ operands: [UnsafeRawPointer], count bytes: Int) {
        guard bytes > 0 else { return }
        guard operands.count > 1 else { memcpy(dst, operands[0], bytes); return }
        combine(dst, operands[0], operands[1], bytes)
        for o in operands.dropFirst(2) { combine(dst, dst, o, bytes) }
    }
}
