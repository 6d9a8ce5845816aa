// Fused, vectorised AdamW update with torch.optim.AdamW's single-tensor semantics (decoupled weight decay, bias
// correction), gradient clipping applied in the same pass:
//   g  *= clip                                   (written back, as clip_grad_norm_ does, when clip < 1)
//   p  *= 1 - lr·wd
//   m   = lerp(m, g, 1-β1)                       (torch uses lerp_: same rounding, both of its branches)
//   v   = v·β2 + ((1-β2)·g)·g                    (ATen's addcmul operand order)
//   p  += (-lr / (1-β1^t))·m / (sqrt(v) / sqrt(1-β2^t) + eps)   (addcdiv)
// Scalars are formed in Double (Python floats) and rounded to Float once, as torch does. The 8-lane loop and the
// scalar tail run the same operations: IEEE add, mul, div and sqrt are correctly rounded lane by lane, so every element
// gets the same bits whichever part computes it.

/// Scalars of one AdamW step, formed once per step (in Double, rounded to Float once, as torch does).
public struct AdamWScalars {
    public var decay: Float          // 1 - lr·wd
    public var applyDecay: Bool
    public var w1: Float             // lerp weight 1 - β1
    public var b2: Float, oneMinusB2: Float
    public var negStepSize: Float    // -lr / (1 - β1^t)
    public var bc2Sqrt: Float        // sqrt(1 - β2^t)
    public var eps: Float
    /// Gradient clipping coefficient applied first (grad *= clip, written back) when < 1.
    public var clip: Float

    public init(lr: Double, beta1: Float, beta2: Float, eps: Float, weightDecay: Float, step: Int, clip: Float) {
        let b1 = Double(beta1), b2d = Double(beta2)
        decay = Float(1.0 - lr * Double(weightDecay))
        applyDecay = weightDecay != 0
        w1 = Float(1.0 - b1)
        b2 = Float(b2d); oneMinusB2 = Float(1.0 - b2d)
        let bc1 = 1.0 - _pow(b1, Double(step)), bc2 = 1.0 - _pow(b2d, Double(step))
        negStepSize = -Float(lr / bc1)
        bc2Sqrt = Float(bc2.squareRoot())
        self.eps = eps
        self.clip = clip
    }
}

/// grad *= clip (when clip < 1); then p = p·decay; m = lerp(m, g, w1); v = v·β2 + ((1-β2)·g)·g;
/// p += (negStepSize·m) / (sqrt(v)/bc2Sqrt + eps). In place on param, grad, m, v (count elements).
public func adamw_update(param: UnsafeMutablePointer<Float>, grad: UnsafeMutablePointer<Float>,
                         expAvg: UnsafeMutablePointer<Float>, expAvgSq: UnsafeMutablePointer<Float>, count: Int, _ s: AdamWScalars) {
    let clip = s.clip < 1
    let lerpLow = s.w1 < 0.5
    typealias V = SIMD8<Float>
    let vClip = V(repeating: s.clip), vDecay = V(repeating: s.decay), vW1 = V(repeating: s.w1), vOneMinusW1 = V(repeating: 1 - s.w1)
    let vB2 = V(repeating: s.b2), vOm = V(repeating: s.oneMinusB2), vStep = V(repeating: s.negStepSize)
    let vBc = V(repeating: s.bc2Sqrt), vEps = V(repeating: s.eps)
    var i = 0
    while i + 8 <= count {
        let gp = UnsafeMutableRawPointer(grad + i), pp = UnsafeMutableRawPointer(param + i)
        let mp = UnsafeMutableRawPointer(expAvg + i), vp = UnsafeMutableRawPointer(expAvgSq + i)
        var g = gp.loadUnaligned(as: V.self)
        if clip { g = g * vClip; gp.storeBytes(of: g, as: V.self) }
        var p = pp.loadUnaligned(as: V.self)
        if s.applyDecay { p = p * vDecay }
        let m0 = mp.loadUnaligned(as: V.self)
        let m = lerpLow ? m0 + vW1 * (g - m0) : g - (g - m0) * vOneMinusW1
        let v = vp.loadUnaligned(as: V.self) * vB2 + (vOm * g) * g
        let denom = v.squareRoot() / vBc + vEps
        p = p + (vStep * m) / denom
        mp.storeBytes(of: m, as: V.self)
        vp.storeBytes(of: v, as: V.self)
        pp.storeBytes(of: p, as: V.self)
        i += 8
    }
    while i < count {
        var g = grad[i]
        if clip { g = g * s.clip; grad[i] = g }
        var p = param[i]
        if s.applyDecay { p *= s.decay }
        let m0 = expAvg[i]
        let m = lerpLow ? m0 + s.w1 * (g - m0) : g - (g - m0) * (1 - s.w1)
        let v = expAvgSq[i] * s.b2 + (s.oneMinusB2 * g) * g
        let denom = v.squareRoot() / s.bc2Sqrt + s.eps
        p += (s.negStepSize * m) / denom
        expAvg[i] = m
        expAvgSq[i] = v
        param[i] = p
        i += 1
    }
}
