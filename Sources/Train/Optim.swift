// AdamW, the LR schedule and gradient clipping, with the exact semantics of
// torch.optim.AdamW (single-tensor path), torchtitan's linear_warmup_stable_decay and
// torch.nn.utils.clip_grad_norm_. The kernels take raw buffers so they run unchanged on an
// FSDP shard: they touch exactly the `count` elements they are given.

import Config
import Foundation

// MARK: - AdamW

public struct AdamWConfig: Equatable {
    public var lr: Float
    public var beta1: Float
    public var beta2: Float
    public var eps: Float
    public var weight_decay: Float
    public init(lr: Float, beta1: Float = 0.9, beta2: Float = 0.95, eps: Float = 1e-8, weight_decay: Float = 0.1) {
        self.lr = lr; self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weight_decay = weight_decay
    }
    public init(_ s: OptimizerSection) {
        self.init(lr: Float(s.lr), beta1: Float(s.beta1), beta2: Float(s.beta2), eps: Float(s.eps), weight_decay: Float(s.weight_decay))
    }
}

public enum AdamW {
    /// One AdamW step on `count` elements, in place on param / exp_avg / exp_avg_sq.
    /// `step` is the 1-based number of this update (torch's state["step"] after increment);
    /// `lr` is the scheduled learning rate of this step (overrides `config.lr`).
    /// Mirrors torch's `_single_tensor_adam` with decoupled weight decay:
    ///   p   *= 1 - lr*wd
    ///   m    = lerp(m, g, 1-β1)              (torch uses lerp_, so we do too: same rounding)
    ///   v    = v*β2 + (1-β2)*g*g
    ///   p   += -(lr / (1-β1^t)) * m / (sqrt(v) / sqrt(1-β2^t) + eps)
    /// Scalars are formed in Double (Python floats) and rounded to Float once, as torch does.
    public static func step(param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>,
                            expAvg: UnsafeMutablePointer<Float>, expAvgSq: UnsafeMutablePointer<Float>,
                            count: Int, step: Int, lr: Double, config c: AdamWConfig) {
        precondition(step >= 1, "AdamW: step is 1-based")
        let lrD = lr
        let beta1 = Double(c.beta1), beta2 = Double(c.beta2)
        let decay = Float(1.0 - lrD * Double(c.weight_decay))
        let w1 = Float(1.0 - beta1)                      // lerp weight
        let b2 = Float(beta2), oneMinusB2 = Float(1.0 - beta2)
        let biasCorrection1 = 1.0 - pow(beta1, Double(step))
        let biasCorrection2 = 1.0 - pow(beta2, Double(step))
        let negStepSize = -Float(lrD / biasCorrection1)
        let bc2Sqrt = Float(biasCorrection2.squareRoot())
        let eps = c.eps
        let applyDecay = c.weight_decay != 0
        for i in 0..<count {
            let g = grad[i]
            var p = param[i]
            if applyDecay { p *= decay }
            // torch lerp: weight < 0.5 → self + w*(end-self); else end - (end-self)*(1-w)
            let m0 = expAvg[i]
            let m = w1 < 0.5 ? m0 + w1 * (g - m0) : g - (g - m0) * (1 - w1)
            // Operand order as ATen's CPU kernels: addcmul = self + (value*t1)*t2,
            // addcdiv = self + (value*t1)/t2.
            let v = expAvgSq[i] * b2 + (oneMinusB2 * g) * g
            let denom = v.squareRoot() / bc2Sqrt + eps
            p += (negStepSize * m) / denom
            expAvg[i] = m
            expAvgSq[i] = v
            param[i] = p
        }
    }

    /// Array convenience (tests, small models). Buffers must have equal counts.
    public static func step(param: inout [Float], grad: [Float], expAvg: inout [Float], expAvgSq: inout [Float],
                            step t: Int, lr: Double, config: AdamWConfig) {
        precondition(param.count == grad.count && grad.count == expAvg.count && expAvg.count == expAvgSq.count,
                     "AdamW: buffer sizes differ")
        let n = param.count
        param.withUnsafeMutableBufferPointer { p in
            grad.withUnsafeBufferPointer { g in
                expAvg.withUnsafeMutableBufferPointer { m in
                    expAvgSq.withUnsafeMutableBufferPointer { v in
                        guard n > 0 else { return }
                        step(param: p.baseAddress!, grad: g.baseAddress!, expAvg: m.baseAddress!, expAvgSq: v.baseAddress!,
                             count: n, step: t, lr: lr, config: config)
                    }
                }
            }
        }
    }
}

// MARK: - LR schedule

/// torchtitan's `linear_warmup_stable_decay` (components/lr_scheduler.py, min_lr_factor version).
/// torchtitan wraps it in LambdaLR and calls scheduler.step() after each optimizer step, so the
/// optimizer step s (1-based) uses factor(s - 1): `lr(step:)` does that translation.
public struct LRSchedule: Equatable {
    public let baseLR: Double
    public let warmupSteps: Int
    public let stableSteps: Int
    public let decaySteps: Int
    public let decayType: LRDecayType
    public let minLRFactor: Double

    public init(baseLR: Double, trainingSteps: Int, warmupSteps: Int, decayRatio: Double?,
                decayType: LRDecayType, minLRFactor: Double) {
        // Same clamping as torchtitan's build_lr_schedulers.
        let warmup = min(warmupSteps, trainingSteps)
        var decay: Int
        if let r = decayRatio {
            decay = Int((Double(trainingSteps) * r).rounded(.toNearestOrEven))   // Python round()
            if warmup + decay > trainingSteps { decay = trainingSteps - warmup }
        } else {
            decay = trainingSteps - warmup
        }
        self.baseLR = baseLR
        self.warmupSteps = warmup
        self.decaySteps = decay
        // "+1": a virtual last step so the final real step's lr does not drop to 0.
        self.stableSteps = trainingSteps + 1 - warmup - decay
        self.decayType = decayType
        self.minLRFactor = minLRFactor
    }

    public init(_ job: JobConfig) {
        self.init(baseLR: job.optimizer.lr, trainingSteps: job.training.steps,
                  warmupSteps: job.lr_scheduler.warmup_steps, decayRatio: job.lr_scheduler.decay_ratio,
                  decayType: job.lr_scheduler.decay_type, minLRFactor: job.lr_scheduler.min_lr_factor)
    }

    /// The LambdaLR multiplier for 0-based scheduler position `currentStep`.
    public func factor(_ currentStep: Int) -> Double {
        let warmupStable = warmupSteps + stableSteps
        if currentStep < warmupSteps {
            return Double(currentStep + 1) / Double(warmupSteps)
        } else if currentStep < warmupStable || decaySteps == 0 {
            return 1.0   // decaySteps == 0 only reaches here past the last step; torchtitan asserts
        }
        let progress = Double(currentStep + 1 - warmupStable) / Double(decaySteps)
        let adj: Double
        switch decayType {
        case .linear: adj = 1 - progress
        case .sqrt: adj = 1 - progress.squareRoot()
        case .cosine: adj = 0.5 * (1.0 + cos(Double.pi * progress))
        }
        return minLRFactor + (1 - minLRFactor) * adj
    }

    /// Learning rate used by optimizer step `step` (1-based).
    public func lr(step: Int) -> Double { baseLR * factor(step - 1) }
}

// MARK: - gradient clipping

public enum GradClip {
    /// torch.nn.utils.clip_grad_norm_'s multiplier: min(max_norm / (total_norm + 1e-6), 1),
    /// computed in float32 like torch's tensors. Returns 1 when max_norm <= 0 (clipping off).
    public static func coefficient(totalNorm: Float, maxNorm: Float) -> Float {
        guard maxNorm > 0 else { return 1 }
        let coef = maxNorm / (totalNorm + 1e-6)
        return min(coef, 1.0)
    }

    /// Multiply `count` gradients by `coef` (torch multiplies even when coef is 1; so do we,
    /// which is a bit-exact no-op). NaN total norms propagate into the grads, as in torch.
    public static func scale(_ grad: UnsafeMutablePointer<Float>, count: Int, by coef: Float) {
        for i in 0..<count { grad[i] *= coef }
    }

    public static func scale(_ grad: inout [Float], by coef: Float) {
        grad.withUnsafeMutableBufferPointer { g in
            guard let p = g.baseAddress else { return }
            scale(p, count: g.count, by: coef)
        }
    }

    /// Sum of squares of a buffer, accumulated in Double (the caller all-reduces the shard
    /// sums and takes sqrt to get the global norm).
    public static func sumOfSquares(_ grad: UnsafePointer<Float>, count: Int) -> Double {
        var s = 0.0
        for i in 0..<count { let g = Double(grad[i]); s += g * g }
        return s
    }

    public static func sumOfSquares(_ grad: [Float]) -> Double {
        grad.withUnsafeBufferPointer { g in g.baseAddress.map { sumOfSquares($0, count: g.count) } ?? 0 }
    }
}
