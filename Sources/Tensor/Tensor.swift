// Tensor: a small owning Float32 buffer (llm.c style).
// Storage is 64-byte aligned, zero-initialised, never copied on write: kernels work on `data`.

/// An n-dimensional row-major Float32 buffer.
///
/// A tensor either owns its storage (freed on deinit) or is a view into another tensor's
/// storage (it keeps the base alive).
public final class Tensor {
    public let shape: [Int]
    public let count: Int
    /// The elements, row-major. Valid for `count` elements for the tensor's lifetime.
    public let data: UnsafeMutablePointer<Float>
    private let owns: Bool
    private let base: AnyObject?

    /// A new zero-filled tensor with 64-byte aligned storage.
    public convenience init(shape: [Int]) { self.init(shape: shape, zeroed: true) }

    /// `zeroed: false` leaves the storage uninitialised, for scratch that is always written before it is read: a
    /// large buffer's pages are then faulted in only where (and when) they are first used.
    public init(shape: [Int], zeroed: Bool) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let bytes = max(self.count, 1) * MemoryLayout<Float>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        if zeroed { raw.initializeMemory(as: Float.self, repeating: 0, count: max(self.count, 1)) }
        self.data = raw.assumingMemoryBound(to: Float.self)
        self.owns = true
        self.base = nil
    }

    public convenience init(shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count, "Tensor: shape \(shape) does not match \(values.count) values")
        self.init(shape: shape)
        values.withUnsafeBufferPointer { src in
            if let p = src.baseAddress, !values.isEmpty { data.update(from: p, count: values.count) }
        }
    }

    /// A view of `shape.reduce(1,*)` elements of `base` starting at element `offset`. Keeps `base` alive.
    public init(viewOf base: Tensor, offset: Int = 0, shape: [Int]) {
        let n = shape.reduce(1, *)
        precondition(offset >= 0 && offset + n <= base.count, "Tensor view [\(offset), \(offset + n)) out of range of \(base.count) elements")
        self.shape = shape
        self.count = n
        self.data = base.data + offset
        self.owns = false
        self.base = base
    }

    deinit {
        if owns { UnsafeMutableRawPointer(data).deallocate() }
    }

    public var ptr: UnsafePointer<Float> { UnsafePointer(data) }
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

    /// Zeroes every element, split over the kernel threads when large (a gradient shard, a residual stream).
    public func zero() { zero_N(data, count) }
    public func fill(_ v: Float) { data.update(repeating: v, count: count) }

    /// Copies all elements of `other` (same element count) into this tensor.
    public func copy(from other: Tensor) {
        precondition(other.count == count, "Tensor.copy: \(other.count) elements into \(count)")
        if other.data != data { data.update(from: other.data, count: count) }
    }

    public func toArray() -> [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    /// A new tensor with its own storage and the same contents.
    public func clone() -> Tensor {
        let t = Tensor(shape: shape)
        t.copy(from: self)
        return t
    }

    public subscript(i: Int) -> Float {
        get { precondition(i >= 0 && i < count); return data[i] }
        set { precondition(i >= 0 && i < count); data[i] = newValue }
    }

    /// Sum of squares in Double (for grad norms and tests).
    public func sumOfSquares() -> Double {
        var s = 0.0
        for i in 0..<count { let v = Double(data[i]); s += v * v }
        return s
    }
}

/// SplitMix64 pseudo-random generator with uniform and normal (Box-Muller) draws. Deterministic across platforms.
public struct SplitMix64 {
    public var state: UInt64
    private var spare: Float? = nil
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= SplitMix64.golden
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextDouble() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Uniform in [0, 1).
    public mutating func nextUniform() -> Float { Float(next() >> 40) * 0x1.0p-24 }

    /// Standard normal (Box-Muller in Double, rounded to Float): the cosine branch of two uniform draws, then the sine
    /// branch of the same draws.
    public mutating func nextNormal() -> Float {
        if let s = spare { spare = nil; return s }
        let (c, s) = nextNormalPair()
        spare = s
        return c
    }

    /// Both Box-Muller branches of the next two draws. u1 is in (0, 1], so no draw is ever rejected and element k of
    /// a fresh generator's normal stream always comes from draws 2·(k/2) and 2·(k/2)+1 (see `fillNormal(seed:...)`).
    private mutating func nextNormalPair() -> (Float, Float) {
        let u1 = Double((next() >> 11) + 1) * 0x1.0p-53
        let u2 = nextDouble()
        let r = (-2.0 * _log(u1)).squareRoot()
        let th = 2.0 * Double.pi * u2
        return (Float(r * _cos(th)), Float(r * _sin(th)))
    }

    /// Fills `n` floats with normal(mean, std).
    public mutating func fillNormal(_ p: UnsafeMutablePointer<Float>, _ n: Int, mean: Float = 0, std: Float = 1) {
        for i in 0..<n { p[i] = mean + std * nextNormal() }
    }

    /// Writes elements `range` of the normal stream of `SplitMix64(seed: seed)` (what `fillNormal` on a fresh generator
    /// writes at those positions) to p[0..<range.count], without generating the elements before them: a shard of a
    /// tensor initialises exactly as its part of the whole would.
    public static func fillNormal(seed: UInt64, elements range: Range<Int>, into p: UnsafeMutablePointer<Float>,
                                  mean: Float = 0, std: Float = 1) {
        guard !range.isEmpty else { return }
        var rng = SplitMix64(seed: seed &+ UInt64(range.lowerBound / 2 * 2) &* golden)
        var k = range.lowerBound
        var out = p
        if k % 2 == 1 {
            out.pointee = mean + std * rng.nextNormalPair().1
            out += 1; k += 1
        }
        while k + 1 < range.upperBound {
            let (c, s) = rng.nextNormalPair()
            out[0] = mean + std * c
            out[1] = mean + std * s
            out += 2; k += 2
        }
        if k < range.upperBound { out.pointee = mean + std * rng.nextNormalPair().0 }
    }

    private static let golden: UInt64 = 0x9E37_79B9_7F4A_7C15
}

/// FNV-1a 64-bit hash of a string (stable seed derivation, e.g. per parameter name).
public func fnv1a64(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return h
}
