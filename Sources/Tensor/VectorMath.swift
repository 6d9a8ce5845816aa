// Row helpers for softmax-like loops. exp runs 8 lanes at a time (Cephes expf: range reduction by ln 2 in two parts,
// a degree-6 polynomial, the power of two built from the integer bits): within 2 ulp of glibc's expf, and the same
// value for the same input wherever it is called, so results stay deterministic.

public typealias Float8 = SIMD8<Float>

/// e^x in 8 lanes. Underflows to 0 below -87.3, overflows to +inf above 88.7, NaN stays NaN.
@inline(__always)
public func vexp8(_ x: Float8) -> Float8 {
    let log2e: Float = 1.44269504088896341
    let magic: Float = 12582912          // 1.5·2^23: adding it rounds to an integer in the low mantissa bits
    let t = x * log2e + magic
    let n = t - magic                    // round(x·log2 e)
    let r = (x - n * 0.693359375) - n * (-2.12194440e-4)
    var p = Float8(repeating: 1.9875691500e-4)
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    let y = p * (r * r) + r + 1
    // 2^n from the bits of t: the integer n sits in the low mantissa bits of t (two's complement)
    let ni = unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000
    let scale = unsafeBitCast((ni &+ 127) &<< 23, to: Float8.self)
    var e = y * scale
    e.replace(with: 0, where: x .< -87.33654)
    e.replace(with: .infinity, where: x .> 88.72283)
    return e
}

/// e^x for one value (the same polynomial as `vexp8`, so scalar tails agree with vector lanes).
@inline(__always)
public func vexp1(_ x: Float) -> Float { vexp8(Float8(repeating: x))[0] }

/// dst[i] = e^(src[i] − m) for i < n (dst may alias src); returns Σ dst (Float, summed in 8 lanes, then the tail).
@inline(__always)
public func exp_shifted(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int, minus m: Float) -> Float {
    var acc = Float8(repeating: 0)
    var i = 0
    let mv = Float8(repeating: m)
    while i + 8 <= n {
        let e = vexp8(UnsafeRawPointer(src + i).loadUnaligned(as: Float8.self) - mv)
        UnsafeMutableRawPointer(dst + i).storeBytes(of: e, as: Float8.self)
        acc += e
        i += 8
    }
    var s = acc.sum()
    while i < n { let e = vexp1(src[i] - m); dst[i] = e; s += e; i += 1 }
    return s
}

/// dst[i] = e^(src[i] − m) for i < n (dst may alias src); returns Σ dst accumulated in Double (8 lanes, then the tail).
@inline(__always)
public func exp_shifted_double_sum(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int, minus m: Float) -> Double {
    var acc = SIMD8<Double>(repeating: 0)
    var i = 0
    let mv = Float8(repeating: m)
    while i + 8 <= n {
        let e = vexp8(UnsafeRawPointer(src + i).loadUnaligned(as: Float8.self) - mv)
        UnsafeMutableRawPointer(dst + i).storeBytes(of: e, as: Float8.self)
        acc += SIMD8<Double>(e)
        i += 8
    }
    var s = acc.sum()
    while i < n { let e = vexp1(src[i] - m); dst[i] = e; s += Double(e); i += 1 }
    return s
}

/// max of p[0..<n] (8 lanes, then across lanes; the maximum does not depend on the order).
@inline(__always)
public func vmax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var m = -Float.infinity
    var i = 0
    if n >= 8 {
        var mv = Float8(repeating: -.infinity)
        while i + 8 <= n {
            let v = UnsafeRawPointer(p + i).loadUnaligned(as: Float8.self)
            mv.replace(with: v, where: v .> mv)
            i += 8
        }
        for l in 0..<8 { m = max(m, mv[l]) }
    }
    while i < n { m = max(m, p[i]); i += 1 }
    return m
}

/// p[i] *= s for i < n.
@inline(__always)
public func vscale(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ s: Float) {
    var i = 0
    let sv = Float8(repeating: s)
    while i + 8 <= n {
        let r = UnsafeMutableRawPointer(p + i)
        r.storeBytes(of: r.loadUnaligned(as: Float8.self) * sv, as: Float8.self)
        i += 8
    }
    while i < n { p[i] *= s; i += 1 }
}
