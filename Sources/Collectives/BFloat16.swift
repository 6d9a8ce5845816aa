import CKernels
import Runtime

/// bfloat16: the top half of a Float32 (its sign, 8 exponent bits and 7 mantissa bits), the payload of mixed-precision
/// collectives (FSDP's parameter all-gather and gradient reduce-scatter, expert-parallel dispatch). Conversions from
/// Float32 round to nearest even, and every NaN becomes 0x7FC0, as torch's c10::BFloat16 does; widening is exact.
/// Sums and averages add in Float32 and round once per combine, as NCCL and Gloo reduce bfloat16.
public struct BFloat16: CollectiveElement, Equatable, Sendable {
    public var bits: UInt16

    public init(bits: UInt16) { self.bits = bits }

    public init(_ x: Float) {
        let u = x.bitPattern
        bits = x.isNaN ? 0x7FC0 : UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
    }

    public var float: Float { Float(bitPattern: UInt32(bits) << 16) }

    /// y[i] = BFloat16(x[i]) for i < count, over the kernel threads.
    public static func narrow(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<BFloat16>, count: Int) {
        y.withMemoryRebound(to: UInt16.self, capacity: count) { y16 in
            parallelFor(count) { r in titan_f32_to_bf16(x + r.lowerBound, y16 + r.lowerBound, Int64(r.count)) }
        }
    }

    /// y[i] = x[i].float for i < count, over the kernel threads.
    public static func widen(_ x: UnsafePointer<BFloat16>, into y: UnsafeMutablePointer<Float>, count: Int) {
        x.withMemoryRebound(to: UInt16.self, capacity: count) { x16 in
            parallelFor(count) { r in titan_bf16_to_f32(x16 + r.lowerBound, y + r.lowerBound, Int64(r.count)) }
        }
    }

    public static func combine(_ op: ReduceOp, _ dst: UnsafeMutablePointer<BFloat16>, _ a: UnsafePointer<BFloat16>,
                               _ b: UnsafePointer<BFloat16>, count: Int) {
        switch op {
        case .sum, .avg: for i in 0..<count { dst[i] = BFloat16(a[i].float + b[i].float) }
        case .max: for i in 0..<count { dst[i] = BFloat16(Swift.max(a[i].float, b[i].float)) }
        }
    }

    public static func divide(_ p: UnsafeMutablePointer<BFloat16>, count: Int, by divisor: Int) {
        let d = Float(divisor)
        for i in 0..<count { p[i] = BFloat16(p[i].float / d) }
    }

    public static var isReducible: Bool { true }
}

/// A BFloat16 scratch buffer (payloads of mixed-precision collectives), grow-only: `get` reallocates only when a larger
/// size is asked for (by at least 25%, so drifting sizes such as routed-token counts settle quickly).
public final class BFloat16Buffer {
    public private(set) var count: Int
    public private(set) var data: UnsafeMutablePointer<BFloat16>

    public init(count: Int = 0) {
        self.count = count
        data = .allocate(capacity: max(count, 1))
    }

    deinit { data.deallocate() }

    /// At least `n` elements, uninitialised.
    public func get(_ n: Int) -> UnsafeMutablePointer<BFloat16> {
        if count < n {
            data.deallocate()
            count = max(n, count * 5 / 4)
            data = .allocate(capacity: count)
        }
        return data
    }

    /// The first `n` elements (n <= count).
    public func buffer(_ n: Int) -> UnsafeMutableBufferPointer<BFloat16> {
        precondition(n <= count, "BFloat16Buffer: \(n) elements asked of \(count)")
        return UnsafeMutableBufferPointer(start: data, count: n)
    }

    public func zero(_ n: Int) { buffer(n).update(repeating: BFloat16(bits: 0)) }
}
