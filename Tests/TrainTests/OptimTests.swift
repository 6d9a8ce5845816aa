import Config
import Foundation
import Tensor
@testable import Train
import XCTest

/// One AdamW step through the trainer's kernel (`adamw_update`), on arrays.
func adamwStep(_ p: inout [Float], _ g: [Float], _ m: inout [Float], _ v: inout [Float], step: Int, lr: Double,
               _ c: OptimizerConfig, clip: Float = 1, range: Range<Int>? = nil) {
    var grad = g
    let r = range ?? 0..<p.count
    let s = AdamWScalars(lr: lr, beta1: Float(c.beta1), beta2: Float(c.beta2), eps: Float(c.eps), weightDecay: Float(c.weight_decay),
                         step: step, clip: clip)
    p.withUnsafeMutableBufferPointer { pp in grad.withUnsafeMutableBufferPointer { gg in
        m.withUnsafeMutableBufferPointer { mm in v.withUnsafeMutableBufferPointer { vv in
            adamw_update(param: pp.baseAddress! + r.lowerBound, grad: gg.baseAddress! + r.lowerBound, expAvg: mm.baseAddress! + r.lowerBound,
                         expAvgSq: vv.baseAddress! + r.lowerBound, count: r.count, s)
        } }
    } }
}

func optimizerConfig(lr: Double, beta1: Double = 0.9, beta2: Double = 0.95, eps: Double = 1e-8, weightDecay: Double = 0.1) -> OptimizerConfig {
    var c = OptimizerConfig()
    c.lr = lr; c.beta1 = beta1; c.beta2 = beta2; c.eps = eps; c.weight_decay = weightDecay
    return c
}

final class AdamWTests: XCTestCase {
    /// Two steps computed by hand (double precision) from torch.optim.AdamW's update rule:
    /// p=1, g=(0.5, -0.25), lr=0.1, betas=(0.9, 0.999), eps=1e-8, wd=0.01.
    ///   step 1: p = 0.999 - 1.0 * 0.05 / (0.5 + 1e-8)                        = 0.899000002
    ///   step 2: p = 0.899000002*0.999 - (0.1/0.19) * 0.02 / (sqrt(0.00031225/0.001999) + 1e-8)
    ///             = 0.8714672987
    func testTwoStepsAgainstHandComputed() {
        let cfg = optimizerConfig(lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01)
        var p: [Float] = [1.0, 2.0], m: [Float] = [0, 0], v: [Float] = [0, 0]
        adamwStep(&p, [0.5, 0], &m, &v, step: 1, lr: 0.1, cfg)
        XCTAssertEqual(p[0], 0.899000002, accuracy: 1e-6)
        XCTAssertEqual(m[0], 0.05, accuracy: 1e-7)
        XCTAssertEqual(v[0], 0.00025, accuracy: 1e-8)
        XCTAssertEqual(p[1], 2.0 * 0.999, accuracy: 1e-6)  // zero grad: only weight decay moves it
        adamwStep(&p, [-0.25, 0], &m, &v, step: 2, lr: 0.1, cfg)
        XCTAssertEqual(p[0], 0.8714672987, accuracy: 1e-6)
        XCTAssertEqual(m[0], 0.02, accuracy: 1e-7)
        XCTAssertEqual(v[0], 0.00031225, accuracy: 1e-8)
        XCTAssertEqual(p[1], 2.0 * 0.999 * 0.999, accuracy: 1e-6)
    }

    /// The first step of Adam moves every parameter by about lr * sign(g), whatever |g|.
    func testFirstStepIsSignLike() {
        let cfg = optimizerConfig(lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 0, weightDecay: 0)
        var p: [Float] = [0, 0, 0], m = [Float](repeating: 0, count: 3), v = m
        adamwStep(&p, [1e-3, -5, 100], &m, &v, step: 1, lr: 0.01, cfg)
        XCTAssertEqual(p[0], -0.01, accuracy: 1e-7)
        XCTAssertEqual(p[1], 0.01, accuracy: 1e-7)
        XCTAssertEqual(p[2], -0.01, accuracy: 1e-7)
    }

    /// Sharding: updating pieces separately (a vector body and a scalar tail each) equals updating the whole, bit for
    /// bit, and the kernel never writes outside the elements it is given.
    func testShardsAndBounds() {
        let cfg = optimizerConfig(lr: 1e-2)
        let n = 37
        let grad: [Float] = (0..<n).map { Float($0) * 0.1 - 0.3 }
        var whole: [Float] = (0..<n).map { Float($0) }, mW = [Float](repeating: 0, count: n), vW = mW
        var shard = whole, mS = mW, vS = vW
        for t in 1...3 {
            adamwStep(&whole, grad, &mW, &vW, step: t, lr: 1e-2, cfg)
            for r in [0..<4, 4..<21, 21..<37] { adamwStep(&shard, grad, &mS, &vS, step: t, lr: 1e-2, cfg, range: r) }
        }
        XCTAssertEqual(whole, shard)
        XCTAssertEqual(mW, mS)
        XCTAssertEqual(vW, vS)

        var buf: [Float] = [7, 7, 7, 7, 7], m2 = [Float](repeating: 9, count: 5), v2 = m2
        adamwStep(&buf, [1, 1, 1, 1, 1], &m2, &v2, step: 1, lr: 0.1, cfg, range: 1..<3)
        XCTAssertEqual([buf[0], buf[3], buf[4]], [7, 7, 7])
        XCTAssertEqual([m2[0], m2[3], m2[4], v2[0], v2[4]], [9, 9, 9, 9, 9])
        XCTAssertNotEqual(buf[1], 7)
    }

    /// Clipping in the same pass: the step with coefficient c equals the step on gradients multiplied by c first, and
    /// the gradients are left scaled (as clip_grad_norm_ leaves them).
    func testClipInThePassEqualsClippingFirst() {
        let cfg = optimizerConfig(lr: 3e-3)
        let g: [Float] = (0..<19).map { Float($0 % 7) - 2.5 }
        let c: Float = 0.37
        var p1: [Float] = (0..<19).map { Float($0) * 0.01 }, m1 = [Float](repeating: 0.1, count: 19), v1 = m1
        var p2 = p1, m2 = m1, v2 = v1
        adamwStep(&p1, g, &m1, &v1, step: 3, lr: 3e-3, cfg, clip: c)
        adamwStep(&p2, g.map { $0 * c }, &m2, &v2, step: 3, lr: 3e-3, cfg)
        XCTAssertEqual(p1, p2); XCTAssertEqual(m1, m2); XCTAssertEqual(v1, v2)
        var grad = g, p = [Float](repeating: 0, count: 19), m = p, v = p
        let s = AdamWScalars(lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, step: 1, clip: c)
        adamw_update(param: &p, grad: &grad, expAvg: &m, expAvgSq: &v, count: 19, s)
        XCTAssertEqual(grad, g.map { $0 * c })
    }
}

final class LRScheduleTests: XCTestCase {
    func testWarmupStableLinearDecay() {
        // torchtitan: steps 10, warmup 2, decay_ratio 0.8 → decay 8, stable 10+1-2-8 = 1
        let s = LRSchedule(baseLR: 1.0, trainingSteps: 10, warmupSteps: 2, decayRatio: 0.8, decayType: .linear, minLRFactor: 0.1)
        XCTAssertEqual(s.warmupSteps, 2); XCTAssertEqual(s.decaySteps, 8); XCTAssertEqual(s.stableSteps, 1)
        let lrs = (1...10).map { s.lr(step: $0) }
        let expected = [0.5, 1.0, 1.0] + (4...10).map { step -> Double in
            let progress = Double(step - 3) / 8   // (current_step + 1 - warmup_stable) / decay, current = step-1
            return 0.1 + 0.9 * (1 - progress)
        }
        for (a, e) in zip(lrs, expected) { XCTAssertEqual(a, e, accuracy: 1e-12) }
        XCTAssertEqual(s.lr(step: 4), 0.8875, accuracy: 1e-12)
        XCTAssertEqual(s.lr(step: 10), 0.2125, accuracy: 1e-12)  // last step never reaches min (virtual extra step)
    }

    func testConstantWhenNoWarmupNoDecay() {
        let s = LRSchedule(baseLR: 3e-4, trainingSteps: 20, warmupSteps: 0, decayRatio: 0, decayType: .cosine, minLRFactor: 0)
        for t in 1...20 { XCTAssertEqual(s.lr(step: t), 3e-4) }
    }

    func testCosineAndSqrtDecayOverAllSteps() {
        // decay_ratio none: decay = steps - warmup = 10, stable = 1
        let c = LRSchedule(baseLR: 2.0, trainingSteps: 10, warmupSteps: 0, decayRatio: nil, decayType: .cosine, minLRFactor: 0)
        XCTAssertEqual(c.lr(step: 1), 2.0)
        XCTAssertEqual(c.lr(step: 2), 2.0 * 0.5 * (1 + cos(Double.pi * 0.1)), accuracy: 1e-12)
        XCTAssertEqual(c.lr(step: 10), 2.0 * 0.5 * (1 + cos(Double.pi * 0.9)), accuracy: 1e-12)
        let q = LRSchedule(baseLR: 1.0, trainingSteps: 10, warmupSteps: 0, decayRatio: nil, decayType: .sqrt, minLRFactor: 0.5)
        XCTAssertEqual(q.lr(step: 5), 0.5 + 0.5 * (1 - 0.4.squareRoot()), accuracy: 1e-12)
    }

    func testWarmupClampAndRounding() {
        // warmup > steps is clamped to steps (torchtitan); decay then gets no steps
        let w = LRSchedule(baseLR: 1.0, trainingSteps: 4, warmupSteps: 10, decayRatio: nil, decayType: .linear, minLRFactor: 0)
        XCTAssertEqual((1...4).map { w.lr(step: $0) }, [0.25, 0.5, 0.75, 1.0])
        // round(5 * 0.5) = round(2.5) = 2 in Python (banker's rounding)
        let r = LRSchedule(baseLR: 1.0, trainingSteps: 5, warmupSteps: 0, decayRatio: 0.5, decayType: .linear, minLRFactor: 0)
        XCTAssertEqual(r.decaySteps, 2)
        // warmup + decay > steps → decay = steps - warmup
        let o = LRSchedule(baseLR: 1.0, trainingSteps: 10, warmupSteps: 5, decayRatio: 0.9, decayType: .linear, minLRFactor: 0)
        XCTAssertEqual(o.decaySteps, 5); XCTAssertEqual(o.stableSteps, 1)
    }

    func testFromConfig() {
        var c = LRSchedulerConfig()
        c.warmup_steps = 2; c.decay_ratio = 0.8; c.min_lr_factor = 0.1
        XCTAssertEqual(LRSchedule(c, baseLR: 0.5, trainingSteps: 10).lr(step: 4), 0.5 * 0.8875, accuracy: 1e-12)
    }
}

final class GradClipTests: XCTestCase {
    /// torch's clip_grad_norm_ coefficient, in float32.
    func testClipping() {
        let coef = clipCoefficient(totalNorm: 5, maxNorm: 1)
        XCTAssertEqual(coef, Float(1) / (Float(5) + Float(1e-6)))
        XCTAssertEqual(clipCoefficient(totalNorm: 0.5, maxNorm: 1), 1)   // clamped: never scales up
        XCTAssertEqual(clipCoefficient(totalNorm: 0, maxNorm: 1), 1)
        XCTAssertEqual(clipCoefficient(totalNorm: 100, maxNorm: 0), 1)   // max_norm <= 0: off
        XCTAssertTrue(clipCoefficient(totalNorm: .nan, maxNorm: 1).isNaN)
    }
}

/// End to end without the model: a bigram logit table trained on the synthetic corpus with the
/// data loader, the schedule, clipping and AdamW. The loss must fall clearly within 100 steps.
final class BigramTrainingTests: XCTestCase {
    func testSyntheticBigramLossFalls() throws {
        let V = 64, L = 32, B = 4, steps = 100
        let cfg = optimizerConfig(lr: 0.05, weightDecay: 0)
        var sched = LRSchedulerConfig()
        sched.warmup_steps = 5; sched.decay_ratio = 0.5
        let tokens = try DataLoaderConfig().loadTokens(seqLen: L, globalBatch: B, steps: steps, seed: 0, vocabSize: V)
        let loader = DataLoader(tokens: tokens, seqLen: L, localBatchSize: B)
        let schedule = LRSchedule(sched, baseLR: cfg.lr, trainingSteps: steps)
        var w = [Float](repeating: 0, count: V * V), m = w, v = w
        var losses: [Double] = []
        for step in 1...steps {
            let batch = try loader.batch(step: step)
            var grad = [Float](repeating: 0, count: V * V)
            var loss = 0.0
            let n = Float(batch.inputs_BL.count)
            for (x32, y32) in zip(batch.inputs_BL, batch.labels_BL) {
                let x = Int(x32), y = Int(y32)
                let row = Array(w[(x * V)..<(x * V + V)])
                let mx = row.max()!
                let e = row.map { exp($0 - mx) }
                let z = e.reduce(0, +)
                loss -= Double(log(e[y] / z))
                for j in 0..<V { grad[x * V + j] += (e[j] / z - (j == y ? 1 : 0)) / n }
            }
            losses.append(loss / Double(n))
            let norm = Float(grad.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot())
            adamwStep(&w, grad, &m, &v, step: step, lr: schedule.lr(step: step), cfg, clip: clipCoefficient(totalNorm: norm, maxNorm: 1))
        }
        XCTAssertEqual(losses[0], log(Double(V)), accuracy: 1e-5)
        let last10 = losses.suffix(10).reduce(0, +) / 10
        XCTAssertLessThan(last10, 2.0, "losses: \(losses.map { String(format: "%.2f", $0) })")
    }
}
