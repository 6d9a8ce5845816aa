// Vectorised exp (Cephes expf polynomial, ~1 ulp) and the loops built on it.

public typealias F16 = SIMD16<Float>

/// e^x for 16 lanes. Inputs are clamped to [-87.3, 88.7] (results below ~1.2e-38 are not produced).
@inline(__always)
public func exp16(_ xin: F16) -> F16 {
    var x = xin.clamped(lowerBound: F16(repeating: -87.3), upperBound: F16(repeating: 88.7))
    let n = (x * 1.44269504088896341).rounded(.toNearestOrEven)
    x = x - n * 0.693359375
    x = x - n * -2.12194440e-4
    var y = F16(repeating: 1.9875691500e-4)
    y = y * x + 1.3981999507e-3
    y = y * x + 8.3334519073e-3
    y = y * x + 4.1665795894e-2
    y = y * x + 1.6666665459e-1
    y = y * x + 5.0000001201e-1
    y = y * (x * x) + x + 1
    let bits = (SIMD16<Int32>(n) &+ 127) &<< 23
    return y * unsafeBitCast(bits, to: F16.self)
}

/// Scalar e^x with the same polynomial as `exp16` (for loop tails, so results do not depend on the position).
@inline(__always)
public func exp1(_ x: Float) -> Float { exp16(F16(repeating: x))[0] }

@inline(__always) func load16(_ p: UnsafePointer<Float>) -> F16 { UnsafeRawPointer(p).loadUnaligned(as: F16.self) }
@inline(__always) func store16(_ v: F16, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: F16.self) }

/// dst[i] = e^(src[i] − m) for i < n (dst may alias src); returns Σ dst (Float lanes, fixed order).
@inline(__always)
public func exp_shifted(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int, minus m: Float) -> Float {
    var acc = F16(repeating: 0)
    var i = 0
    let mv = F16(repeating: m)
    while i + 16 <= n {
        let e = exp16(load16(src + i) - mv)
        store16(e, dst + i)
        acc += e
        i += 16
    }
    var s = acc.sum()
    while i < n { let e = exp1(src[i] - m); dst[i] = e; s += e; i += 1 }
    return s
}

/// max of p[0..<n] (n >= 1).
@inline(__always)
public func vmax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var i = 0
    var m = -Float.infinity
    if n >= 16 {
        var acc = load16(p)
        i = 16
        while i + 16 <= n { acc = pointwiseMax(acc, load16(p + i)); i += 16 }
        m = acc.max()
    }
    while i < n { m = max(m, p[i]); i += 1 }
    return m
}

/// p[i] *= s for i < n.
@inline(__always)
public func vscale(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ s: Float) {
    var i = 0
    let sv = F16(repeating: s)
    while i + 16 <= n { store16(load16(p + i) * sv, p + i); i += 16 }
    while i < n { p[i] *= s; i += 1 }
}
