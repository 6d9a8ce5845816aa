// Row helpers for softmax-like loops (scalar libm expf: Swift's SIMD types compile to baseline SSE lane loops here,
// which measured slower than glibc's FMA-dispatched expf).

/// dst[i] = e^(src[i] − m) for i < n (dst may alias src); returns Σ dst (Float, sequential order).
@inline(__always)
public func exp_shifted(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int, minus m: Float) -> Float {
    var s: Float = 0
    for i in 0..<n { let e = _expf(src[i] - m); dst[i] = e; s += e }
    return s
}

/// max of p[0..<n].
@inline(__always)
public func vmax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var m = -Float.infinity
    for i in 0..<n { m = max(m, p[i]) }
    return m
}

/// p[i] *= s for i < n.
@inline(__always)
public func vscale(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ s: Float) {
    for i in 0..<n { p[i] *= s }
}
