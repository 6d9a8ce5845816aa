import Config
import Foundation
@testable import Train
import XCTest

final class AdamWTests: XCTestCase {
    /// Two steps computed by hand (double precision) from torch.optim.AdamW's update rule:
    /// p=1, g=(0.5, -0.25), lr=0.1, betas=(0.9, 0.999), eps=1e-8, wd=0.01.
    ///   step 1: p = 0.999 - 1.0 * 0.05 / (0.5 + 1e-8)                        = 0.899000002
    ///   step 2: p = 0.899000002*0.999 - (0.1/0.19) * 0.02 / (sqrt(0.00031225/0.001999) + 1e-8)
    ///             = 0.8714672987
    func testTwoStepsAgainstHandComputed() {
        let cfg = AdamWConfig(lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01)
        var p: [Float] = [1.0, 2.0], m: [Float] = [0, 0], v: [Float] = [0, 0]
        AdamW.step(param: &p, grad: [0.5, 0], expAvg: &m, expAvgSq: &v, step: 1, lr: 0.1, config: cfg)
        XCTAssertEqual(p[0], 0.899000002, accuracy: 1e-6)
        XCTAssertEqual(m[0], 0.05, accuracy: 1e-7)
        XCTAssertEqual(v[0], 0.00025, accuracy: 1e-8)
        XCTAssertEqual(p[1], 2.0 * 0.999, accuracy: 1e-6)  // zero grad: only weight decay moves it
        AdamW.step(param: &p, grad: [-0.25, 0], expAvg: &m, expAvgSq: &v, step: 2, lr: 0.1, config: cfg)
        XCTAssertEqual(p[0], 0.8714672987, accuracy: 1e-6)
        XCTAssertEqual(m[0], 0.02, accuracy: 1e-7)
        XCTAssertEqual(v[0], 0.00031225, accuracy: 1e-8)
        XCTAssertEqual(p[1], 2.0 * 0.999 * 0.999, accuracy: 1e-6)
    }

    /// The first step of Adam moves every parameter by about lr * sign(g), whatever |g|.
    func testFirstStepIsSignLike() {
        let cfg = AdamWConfig(lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 0, weight_decay: 0)
        var p: [Float] = [0, 0, 0], m = [Float](repeating: 0, count: 3), v = m
        AdamW.step(param: &p, grad: [1e-3, -5, 100], expAvg: &m, expAvgSq: &v, step: 1, lr: 0.01, config: cfg)
        XCTAssertEqual(p[0], -0.01, accuracy: 1e-7)
        XCTAssertEqual(p[1], 0.01, accuracy: 1e-7)
        XCTAssertEqual(p[2], -0.01, accuracy: 1e-7)
    }

    /// Sharding: updating two halves separately equals updating the whole, and the kernel
    /// never writes outside the elements it is given.
    func testShardsAndBounds() {
        let cfg = AdamWConfig(lr: 1e-2)
        let n = 10
        let grad: [Float] = (0..<n).map { Float($0) * 0.1 - 0.3 }
        var whole: [Float] = (0..<n).map { Float($0) }, mW = [Float](repeating: 0, count: n), vW = mW
        var shard = whole, mS = mW, vS = vW
        for t in 1...3 {
            AdamW.step(param: &whole, grad: grad, expAvg: &mW, expAvgSq: &vW, step: t, lr: 1e-2, config: cfg)
            grad.withUnsafeBufferPointer { g in
                shard.withUnsafeMutableBufferPointer { p in
                    mS.withUnsafeMutableBufferPointer { m in
                        vS.withUnsafeMutableBufferPointer { v in
                            for (lo, hi) in [(0, 4), (4, 10)] {
                                AdamW.step(param: p.baseAddress! + lo, grad: g.baseAddress! + lo, expAvg: m.baseAddress! + lo,
                                           expAvgSq: v.baseAddress! + lo, count: hi - lo, step: t, lr: 1e-2, config: cfg)
                            }
                        }
                    }
                }
            }
        }
        XCTAssertEqual(whole, shard)
        XCTAssertEqual(mW, mS)

        var buf: [Float] = [7, 7, 7, 7, 7], m2 = [Float](repeating: 9, count: 5), v2 = m2
        let g2: [Float] = [1, 1, 1, 1, 1]
        g2.withUnsafeBufferPointer { g in buf.withUnsafeMutableBufferPointer { p in m2.withUnsafeMutableBufferPointer { m in
            v2.withUnsafeMutableBufferPointer { v in
                AdamW.step(param: p.baseAddress! + 1, grad: g.baseAddress! + 1, expAvg: m.baseAddress! + 1,
                           expAvgSq: v.baseAddress! + 1, count: 2, step: 1, lr: 0.1, config: cfg)
            } } } }
        XCTAssertEqual([buf[0], buf[3], buf[4]], [7, 7, 7])
        XCTAssertEqual([m2[0], m2[3], m2[4], v2[0], v2[4]], [9, 9, 9, 9, 9])
        XCTAssertNotEqual(buf[1], 7)
    }

    func testConfigFromOptimizerSection() {
        var s = OptimizerSection()
        s.lr = 3e-4; s.beta2 = 0.99; s.weight_decay = 0
        let c = AdamWConfig(s)
        XCTAssertEqual(c.lr, 3e-4); XCTAssertEqual(c.beta2, 0.99); XCTAssertEqual(c.weight_decay, 0); XCTAssertEqual(c.eps, 1e-8)
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

    func testFromJobConfig() {
        var j = JobConfig()
        j.training.steps = 10; j.optimizer.lr = 0.5
        j.lr_scheduler.warmup_steps = 2; j.lr_scheduler.decay_ratio = 0.8; j.lr_scheduler.min_lr_factor = 0.1
        XCTAssertEqual(LRSchedule(j).lr(step: 4), 0.5 * 0.8875, accuracy: 1e-12)
    }
}

final class GradClipTests: XCTestCase {
    func testClipping() {
        var g: [Float] = [3, 4]   // norm 5
        let norm = Float(GradClip.sumOfSquares(g).squareRoot())
        XCTAssertEqual(norm, 5)
        let coef = GradClip.coefficient(totalNorm: norm, maxNorm: 1)
        XCTAssertEqual(coef, Float(1) / (Float(5) + Float(1e-6)))
        GradClip.scale(&g, by: coef)
        XCTAssertEqual(g[0], 3 * coef); XCTAssertEqual(g[1], 4 * coef)
        XCTAssertEqual(Float(GradClip.sumOfSquares(g).squareRoot()), 1, accuracy: 1e-6)

        XCTAssertEqual(GradClip.coefficient(totalNorm: 0.5, maxNorm: 1), 1)   // clamped: never scales up
        XCTAssertEqual(GradClip.coefficient(totalNorm: 0, maxNorm: 1), 1)
        XCTAssertEqual(GradClip.coefficient(totalNorm: 100, maxNorm: 0), 1)   // max_norm <= 0: off
        XCTAssertTrue(GradClip.coefficient(totalNorm: .nan, maxNorm: 1).isNaN)
    }
}

/// End to end without the model: a bigram logit table trained on the synthetic corpus with the
/// data loader, the schedule, clipping and AdamW. The loss must fall clearly within 100 steps.
final class BigramTrainingTests: XCTestCase {
    func testSyntheticBigramLossFalls() throws {
        let V = 64, L = 32, B = 4, steps = 100
        var job = JobConfig()
        job.training.steps = steps; job.training.local_batch_size = B; job.training.seq_len = L
        job.optimizer.lr = 0.05; job.optimizer.weight_decay = 0
        job.lr_scheduler.warmup_steps = 5; job.lr_scheduler.decay_ratio = 0.5
        let tokens = try loadTokenStream(job, vocabSize: V, dataParallelDegree: 1)
        var loader = DataLoader(tokens: tokens, seqLen: L, localBatchSize: B)
        let schedule = LRSchedule(job)
        let cfg = AdamWConfig(job.optimizer)
        var w = [Float](repeating: 0, count: V * V), m = w, v = w
        var losses: [Double] = []
        for step in 1...steps {
            let batch = loader.next()
            var grad = [Float](repeating: 0, count: V * V)
            var loss = 0.0
            let n = Float(batch.inputs_BL.count)
            for (x, y) in zip(batch.inputs_BL, batch.labels_BL) {
                let row = Array(w[(x * V)..<(x * V + V)])
                let mx = row.max()!
                let e = row.map { exp($0 - mx) }
                let z = e.reduce(0, +)
                loss -= Double(log(e[y] / z))
                for j in 0..<V { grad[x * V + j] += (e[j] / z - (j == y ? 1 : 0)) / n }
            }
            losses.append(loss / Double(n))
            let norm = Float(GradClip.sumOfSquares(grad).squareRoot())
            GradClip.scale(&grad, by: GradClip.coefficient(totalNorm: norm, maxNorm: Float(job.training.max_norm)))
            AdamW.step(param: &w, grad: grad, expAvg: &m, expAvgSq: &v, step: step, lr: schedule.lr(step: step), config: cfg)
        }
        XCTAssertEqual(losses[0], log(Double(V)), accuracy: 1e-5)
        let last10 = losses.suffix(10).reduce(0, +) / 10
        XCTAssertLessThan(last10, 2.0, "losses: \(losses.map { String(format: "%.2f", $0) })")
    }
}
