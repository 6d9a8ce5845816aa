import Foundation
import XCTest
import Model
import Tensor

/// The model against HF transformers' reference numbers (fixtures from scripts/make_hf_fixtures.py):
/// step-1 logits, loss, tokens per expert, per-parameter gradient norms, and 10 AdamW steps.
final class HFNumericsTests: XCTestCase {
    func fixture(_ name: String) throws -> String {
        guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            throw XCTSkip("Fixtures folder not in the test bundle")
        }
        let p = (url.path as NSString).appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: p) else { throw XCTSkip("fixture \(name) not present") }
        return p
    }

    func readNpyTokens(_ path: String) throws -> [Int32] { try readNpyTokensFile(path) }

    func doubles(_ j: Any?) -> [Double] { (j as? [Any] ?? []).compactMap { ($0 as? NSNumber)?.doubleValue } }

    func runFixture(_ name: String) throws {
        let folder = try fixture(name)
        let expected = try XCTUnwrap(JSONSerialization.jsonObject(with: XCTUnwrap(FileManager.default.contents(atPath: folder + "/expected.json"))) as? [String: Any])
        let debug = try XCTUnwrap(expected["debug"] as? [String: Any])
        let (args, sd, _) = try HFCheckpoint.loadModel(folder: folder)
        let model = try args.build(seed: 0)
        try model.load(stateDict: sd, allowMissingBuffers: true)
        let tokens = try readNpyTokens(try fixture("tokens.npy"))
        let G = 8, L = 16
        func batch(_ step: Int) -> ([Int32], [Int32]) {
            var x: [Int32] = [], y: [Int32] = []
            for w in ((step - 1) * G)..<(step * G) {
                let win = Array(tokens[(w * (L + 1))..<((w + 1) * (L + 1))])
                x += win[0..<L]; y += win[1...L]
            }
            return (x, y)
        }
        let (x1, _) = batch(1)
        XCTAssertEqual(Array(x1[0..<L]).map { Double($0) }, doubles(debug["step1_window0_input"]))

        // logits
        let logits = model.logits(inputs: x1, B: G, T: L)
        let sum = logits.reduce(0.0) { $0 + Double($1) }, abs = logits.reduce(0.0) { $0 + Double(Swift.abs($1)) }
        let eSum = try XCTUnwrap((debug["step1_logits_sum"] as? NSNumber)?.doubleValue), eAbs = try XCTUnwrap((debug["step1_logits_abs_sum"] as? NSNumber)?.doubleValue)
        XCTAssertEqual(abs, eAbs, accuracy: 1e-5 * eAbs, "\(name): Σ|logits|")
        XCTAssertEqual(sum, eSum, accuracy: 1e-5 * eAbs, "\(name): Σ logits")
        for (i, v) in doubles(debug["step1_logits_b0_t0_first8"]).enumerated() {
            XCTAssertEqual(Double(logits[i]), v, accuracy: 1e-5, "\(name): logits[0,0,\(i)]")
        }
        let V = args.vocab_size
        for (i, v) in doubles(debug["step1_logits_last_last_first8"]).enumerated() {
            XCTAssertEqual(Double(logits[(G * L - 1) * V + i]), v, accuracy: 1e-5, "\(name): logits[-1,-1,\(i)]")
        }

        // training: 10 steps of clip + torch AdamW, fp32
        let losses = doubles(expected["losses"]), gradNorms = doubles(expected["grad_norms"])
        XCTAssertEqual(losses.count, 10)
        let lr: Float = 0.003, b1: Float = 0.9, b2: Float = 0.95, eps: Float = 1e-8, wd: Float = 0.1, maxNorm = 1.0
        let params = model.parameters
        var maxLossDiff = 0.0, maxGradNormRel = 0.0
        defer { print("\(name): 10 steps vs HF fp32: max |Δloss| \(maxLossDiff), max relative Δgrad_norm \(maxGradNormRel)") }
        var m = params.map { [Float](repeating: 0, count: $0.count) }, v = m
        for step in 1...losses.count {
            let (x, y) = batch(step)
            model.zeroGrad()
            let r = model.forwardBackward(inputs: x, labels: y, B: G, T: L, lossScale: 1 / Float(G * L))
            XCTAssertEqual(r.tokenCount, G * L)
            XCTAssertEqual(r.meanLoss, losses[step - 1], accuracy: 2e-5, "\(name): loss at step \(step)")
            let norm = params.reduce(0.0) { $0 + $1.grad.sumOfSquares() }.squareRoot()
            maxLossDiff = max(maxLossDiff, Swift.abs(r.meanLoss - losses[step - 1]))
            maxGradNormRel = max(maxGradNormRel, Swift.abs(norm - gradNorms[step - 1]) / gradNorms[step - 1])
            XCTAssertEqual(norm, gradNorms[step - 1], accuracy: 2e-5 * gradNorms[step - 1], "\(name): grad norm at step \(step)")
            if step == 1 {
                if let tpe = debug["step1_tokens_per_expert"] as? [Any] {
                    XCTAssertEqual(r.tokensPerExpert.filter { !$0.isEmpty }, tpe.map { ($0 as? [Any] ?? []).compactMap { $0 as? Int } }, "\(name): tokens per expert")
                }
                // per-parameter gradient norms in HF names
                var gsd: StateDict = [:]
                for p in params { gsd[p.fqn] = HostTensor(shape: p.shape, values: p.grad.toArray()) }
                let hf = try args.adapter().toHF(gsd)
                let want = try XCTUnwrap(debug["step1_param_grad_norms_hf"] as? [String: Any])
                XCTAssertEqual(Set(hf.keys), Set(want.keys), "\(name): HF parameter names")
                var worst = (0.0, "")
                defer { print("\(name): step-1 per-parameter grad norms vs HF: worst relative difference \(worst.0) (\(worst.1))") }
                for (k, w) in want {
                    guard let g = hf[k], let wv = (w as? NSNumber)?.doubleValue else { continue }
                    let n = g.values.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
                    if wv > 0, Swift.abs(n - wv) / wv > worst.0 { worst = (Swift.abs(n - wv) / wv, k) }
                    XCTAssertEqual(n, wv, accuracy: 1e-4 * wv + 1e-7, "\(name): grad norm of \(k)")
                }
            }
            let clip = Float(min(1.0, maxNorm / (norm + 1e-6)))
            let bc1 = 1 - pow(b1, Float(step)), bc2 = 1 - pow(b2, Float(step))
            for (pi, p) in params.enumerated() {
                let w = p.value.data, g = p.grad.data
                for i in 0..<p.count {
                    let gi = g[i] * clip
                    w[i] *= 1 - lr * wd
                    m[pi][i] = b1 * m[pi][i] + (1 - b1) * gi
                    v[pi][i] = b2 * v[pi][i] + (1 - b2) * gi * gi
                    let denom = v[pi][i].squareRoot() / bc2.squareRoot() + eps
                    w[i] -= lr / bc1 * m[pi][i] / denom
                }
            }
        }
    }

    func testQwen3MoEMatchesHF() throws { try runFixture("qwen3_moe") }
    func testQwen3DenseMatchesHF() throws { try runFixture("qwen3_dense") }
    func testQwen3TiedMatchesHF() throws { try runFixture("qwen3_tied") }

    /// DeepSeek-V3 (transformers 5.x DeepseekV3ForCausalLM): MLA with the q low-rank path, YaRN (factor 40,
    /// mscale = mscale_all_dim = 1: softmax scale × mscale²), interleaved rope, 4 expert groups of which 2 are kept,
    /// a nonzero e_score_correction_bias (selection only), one shared expert, the first layer dense.
    func testDeepSeekV3MatchesHF() throws { try runFixture("deepseek_v3") }
    /// q_lora_rank null (q_proj), rotate-half rope, YaRN with mscale ≠ mscale_all_dim (cos / sin × attention_factor).
    func testDeepSeekV3PlainQueryMatchesHF() throws { try runFixture("deepseek_v3_q0") }
}

/// Minimal .npy reader for little-endian int32 / int64 / uint16 1-D arrays.
func readNpyTokensFile(_ path: String) throws -> [Int32] {
    let b = [UInt8](try XCTUnwrap(FileManager.default.contents(atPath: path)))
    XCTAssertEqual(Array(b[0..<6]), [0x93] + Array("NUMPY".utf8))
    let major = b[6]
    let hlen = major == 1 ? Int(b[8]) | Int(b[9]) << 8 : Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24
    let start = (major == 1 ? 10 : 12) + hlen
    let header = String(decoding: b[(major == 1 ? 10 : 12)..<start], as: UTF8.self)
    let body = Array(b[start...])
    func le(_ o: Int, _ n: Int) -> Int64 {
        var r: UInt64 = 0
        for k in 0..<n { r |= UInt64(body[o + k]) << UInt64(8 * k) }
        return n == 8 ? Int64(bitPattern: r) : (n == 4 ? Int64(Int32(bitPattern: UInt32(r))) : Int64(r))
    }
    let width = header.contains("'<i4'") ? 4 : header.contains("'<i8'") ? 8 : header.contains("'<u2'") ? 2 : 0
    if width > 0 { return stride(from: 0, to: body.count, by: width).map { Int32(le($0, width)) } }
    throw XCTSkip("unsupported npy dtype: \(header)")
}
