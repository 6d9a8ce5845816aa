import Foundation
import XCTest
@testable import Model
import Tensor

/// DeepSeek-V3: finite-difference gradients of the whole model (MLA, group-limited sigmoid routing with the correction
/// bias, shared experts), that the fixture's expert groups and bias really change the routing, HF config errors,
/// multi-token-prediction layers skipped on import, the HF export round trip, and the FLOPs count.
final class DeepSeekV3Tests: XCTestCase {
    func fixture(_ name: String) throws -> String {
        guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            throw XCTSkip("Fixtures folder not in the test bundle")
        }
        return (url.path as NSString).appendingPathComponent(name)
    }

    func tempDir(_ tag: String) throws -> String {
        let dir = (NSTemporaryDirectory() as NSString).appendingPathComponent("dsv3tests-\(tag)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func configObject(_ name: String) throws -> [String: Any] {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: try fixture(name) + "/config.json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// A nonzero correction bias that changes the selection: gradients must still flow through the unbiased scores.
    func setBias(_ m: DeepSeekV3Model) {
        for l in m.layers { if let moe = l.moe { for e in 0..<8 { moe.expertBias.data[e] = Float((e * 5) % 8) * 0.03 } } }
    }

    // MARK: gradients

    func testFiniteDifferencesLowRankQueryInterleavedYaRNGroups() throws {
        let m = try DeepSeekV3Model(args: tinyDeepSeekArgs(), seed: 11)
        XCTAssertNotNil(m.layers[0].feedForward); XCTAssertNotNil(m.layers[1].moe); XCTAssertNotNil(m.layers[1].attention.wqA)
        setBias(m)
        checkModelGradients(m, B: 2, T: 6)
    }

    func testFiniteDifferencesPlainQueryRotateHalfLoopPath() throws {
        let m = try DeepSeekV3Model(args: tinyDeepSeekArgs(qLoraRank: 0, interleave: false, yarn: false, grouped: false), seed: 12)
        XCTAssertNotNil(m.layers[1].attention.wq)
        setBias(m)
        checkModelGradients(m, B: 2, T: 5)
    }

    /// Every layer MoE (n_dense_layers 0), tied embeddings, load balancing on (the bias is a buffer either way).
    func testFiniteDifferencesAllMoETiedWithLoadBalancing() throws {
        var a = tinyDeepSeekArgs(groups: 2, keep: 1)
        a.n_dense_layers = 0; a.n_layers = 2; a.enable_weight_tying = true; a.moe.load_balance_coeff = 1e-3
        let m = try DeepSeekV3Model(args: a, seed: 14)
        XCTAssertNil(m.output); XCTAssertEqual(m.moeModules.count, 2)
        setBias(m)
        checkModelGradients(m, B: 2, T: 5)
        m.updateExpertBias(tokensPerExpert: [[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]])
        XCTAssertEqual(m.layers[0].moe!.expertBias.data[0], 0.001 + 0, accuracy: 1e-9)
    }

    /// The grouped and the loop expert paths give the same bits with one kernel thread.
    func testLoopAndGroupedExpertPathsAgree() throws {
        let a = try DeepSeekV3Model(args: tinyDeepSeekArgs(grouped: true), seed: 13)
        let b = try DeepSeekV3Model(args: tinyDeepSeekArgs(grouped: false), seed: 13)
        let x = randomTokens(12, vocab: 24, seed: 1), y = randomTokens(12, vocab: 24, seed: 2)
        let ra = a.forwardBackward(inputs: x, labels: y, B: 2, T: 6, lossScale: 1 / 12)
        let rb = b.forwardBackward(inputs: x, labels: y, B: 2, T: 6, lossScale: 1 / 12)
        XCTAssertEqual(ra, rb)
        for (p, q) in zip(a.parameters, b.parameters) { XCTAssertEqual(p.grad.toArray(), q.grad.toArray(), p.fqn) }
    }

    // MARK: routing in the fixture

    /// The deepseek_v3 fixture's routing depends on its groups (4, keep 2) and on its e_score_correction_bias: without
    /// either, the step-1 tokens per expert differ from transformers' (which the model with both reproduces).
    func testFixtureGroupsAndCorrectionBiasChangeTheRouting() throws {
        let folder = try fixture("deepseek_v3")
        let expected = try XCTUnwrap(JSONSerialization.jsonObject(with: XCTUnwrap(FileManager.default.contents(atPath: folder + "/expected.json"))) as? [String: Any])
        let debug = try XCTUnwrap(expected["debug"] as? [String: Any])
        let want = try XCTUnwrap(debug["step1_tokens_per_expert"] as? [[Int]])
        let input = try XCTUnwrap(debug["step1_window0_input"] as? [Int]).map { Int32($0) }
        let (args, sd, _) = try HFCheckpoint.loadModel(folder: folder)
        guard case .deepseekV3(let a) = args else { return XCTFail("not DeepSeek-V3: \(args)") }
        XCTAssertEqual(a.n_expert_groups, 4); XCTAssertEqual(a.n_limited_groups, 2)
        XCTAssertTrue(sd.contains { $0.key.hasSuffix("expert_bias") && $0.value.values.contains { $0 != 0 } })
        // one window only: compare against a fresh count on that window with the full model
        func tpe(_ a: DeepSeekV3ModelArgs, zeroBias: Bool) throws -> [[Int]] {
            let m = try DeepSeekV3Model(args: a)
            try m.load(stateDict: sd)
            if zeroBias { for l in m.layers { l.moe?.expertBias.zero() } }
            return m.evaluate(inputs: input, labels: input, B: 1, T: input.count).tokensPerExpert.filter { !$0.isEmpty }
        }
        let full = try tpe(a, zeroBias: false)
        var ungrouped = a
        ungrouped.n_expert_groups = 1; ungrouped.n_limited_groups = 1
        XCTAssertNotEqual(try tpe(ungrouped, zeroBias: false), full, "groups do not change the routing of the fixture")
        XCTAssertNotEqual(try tpe(a, zeroBias: true), full, "the correction bias does not change the routing of the fixture")
        XCTAssertEqual(full.count, want.count)
    }

    // MARK: HF config

    func parseError(_ obj: [String: Any]) -> String {
        do {
            _ = try HFModelConfig.parse(JSONSerialization.data(withJSONObject: obj), source: "x/config.json")
            return "no error"
        } catch { return "\(error)" }
    }

    func testConfigErrorsNameTheKey() throws {
        let base = try configObject("deepseek_v3")
        guard case .deepseekV3(let a) = try HFModelConfig.parse(JSONSerialization.data(withJSONObject: base)) else { return XCTFail() }
        XCTAssertEqual(a.q_lora_rank, 24); XCTAssertEqual(a.rope_scaling, .yarn); XCTAssertEqual(a.rope_factor, 40)
        XCTAssertEqual(a.moe.route_scale, 2.5); XCTAssertEqual(a.moe.score_func, .sigmoid)
        for key in ["kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "n_group", "first_k_dense_replace", "routed_scaling_factor"] {
            var o = base
            o.removeValue(forKey: key)
            let e = parseError(o)
            XCTAssertTrue(e.contains("x/config.json") && e.contains("'\(key)'") && e.contains("missing"), e)
        }
        var rope = base
        var rp = try XCTUnwrap(base["rope_parameters"] as? [String: Any])
        rp["rope_type"] = "dynamic"
        rope["rope_parameters"] = rp
        var e = parseError(rope)
        XCTAssertTrue(e.contains("'rope_parameters.rope_type'") && e.contains("dynamic") && e.contains("not supported"), e)
        // transformers 4.x layout
        var legacy = base
        legacy.removeValue(forKey: "rope_parameters")
        legacy["rope_theta"] = 10000.0
        legacy["rope_scaling"] = ["type": "linear", "factor": 2.0]
        e = parseError(legacy)
        XCTAssertTrue(e.contains("'rope_scaling.type'") && e.contains("linear"), e)
        legacy["rope_scaling"] = ["type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 1.0]
        guard case .deepseekV3(let b) = try HFModelConfig.parse(JSONSerialization.data(withJSONObject: legacy)) else { return XCTFail() }
        XCTAssertEqual(b, a)
        var yarn = base
        rp = try XCTUnwrap(base["rope_parameters"] as? [String: Any])
        rp.removeValue(forKey: "factor")
        yarn["rope_parameters"] = rp
        e = parseError(yarn)
        XCTAssertTrue(e.contains("'rope_parameters.factor'") && e.contains("missing"), e)
        var groups = base
        groups["n_group"] = 3
        e = parseError(groups)
        XCTAssertTrue(e.contains("'n_group'") && e.contains("divide"), e)
        var gqa = base
        gqa["num_key_value_heads"] = 2
        e = parseError(gqa)
        XCTAssertTrue(e.contains("'num_key_value_heads'"), e)
    }

    // MARK: multi-token prediction layers

    /// A checkpoint with num_nextn_predict_layers' layer (model.layers.{num_hidden_layers}.*, as DeepSeek-V3's own
    /// checkpoint has layer 61) imports as transformers does: those tensors skipped, one note naming them.
    func testMTPLayersAreSkippedWithOneNote() throws {
        let src = try fixture("deepseek_v3")
        let dir = try tempDir("mtp")
        var hf = try HFCheckpoint.readHFTensors(folder: src)
        let original = try HFCheckpoint.loadModel(folder: src)
        XCTAssertNil(original.skipped)
        for name in ["eh_proj.weight", "enorm.weight", "hnorm.weight", "self_attn.kv_b_proj.weight", "mlp.experts.0.up_proj.weight"] {
            hf["model.layers.3.\(name)"] = HostTensor(shape: [2, 2], values: [1, 2, 3, 4])
        }
        try SafeTensors.write(hf, to: dir + "/model.safetensors", metadata: ["format": "pt"])
        try FileManager.default.copyItem(atPath: src + "/config.json", toPath: dir + "/config.json")
        let loaded = try HFCheckpoint.loadModel(folder: dir)
        XCTAssertEqual(loaded.stateDict, original.stateDict)
        let note = try XCTUnwrap(loaded.skipped)
        XCTAssertTrue(note.contains("skipped 5 tensor(s) of layer(s) 3") && note.contains("num_nextn_predict_layers"), note)
        let weights = try HFInitialWeights(folder: dir, adapter: try loaded.args.adapter())
        XCTAssertEqual(weights.skippedNote, note)
        // a stray tensor inside the model's own layers is still an error
        hf["model.layers.1.self_attn.stray.weight"] = HostTensor(shape: [1], values: [0])
        try SafeTensors.write(hf, to: dir + "/model.safetensors", metadata: ["format": "pt"])
        XCTAssertThrowsError(try HFCheckpoint.loadModel(folder: dir)) { XCTAssertTrue("\($0)".contains("model.layers.1.self_attn.stray.weight"), "\($0)") }
    }

    // MARK: fused experts

    /// Routed experts stored fused as transformers 5 holds them (experts.gate_up_proj [E, 2F, D], experts.down_proj
    /// [E, D, F]) import to the same weights as the per-expert layout, whole (loadModel) and read by slices
    /// (HFInitialWeights, what training starts from).
    func testFusedExpertLayoutImports() throws {
        for name in ["deepseek_v3", "qwen3_moe"] {
            let src = try fixture(name)
            let hf = try HFCheckpoint.readHFTensors(folder: src)
            let (args, sd, _) = try HFCheckpoint.loadModel(folder: src)
            var fused = hf
            let prefixes = Set(hf.keys.compactMap { k -> String? in
                guard let r = k.range(of: ".experts.0.gate_proj.weight") else { return nil }
                return String(k[..<r.lowerBound]) + ".experts."
            })
            XCTAssertFalse(prefixes.isEmpty)
            for p in prefixes {
                var E = 0
                while hf["\(p)\(E).gate_proj.weight"] != nil { E += 1 }
                let g0 = hf["\(p)0.gate_proj.weight"]!.shape, d0 = hf["\(p)0.down_proj.weight"]!.shape
                var gateUp: [Float] = [], down: [Float] = []
                for e in 0..<E {
                    gateUp += hf["\(p)\(e).gate_proj.weight"]!.values + hf["\(p)\(e).up_proj.weight"]!.values
                    down += hf["\(p)\(e).down_proj.weight"]!.values
                    for w in ["gate_proj", "up_proj", "down_proj"] { fused.removeValue(forKey: "\(p)\(e).\(w).weight") }
                }
                fused[p + "gate_up_proj"] = HostTensor(shape: [E, 2 * g0[0], g0[1]], values: gateUp)
                fused[p + "down_proj"] = HostTensor(shape: [E] + d0, values: down)
            }
            let dir = try tempDir("fused-\(name)")
            try SafeTensors.write(fused, to: dir + "/model.safetensors", metadata: ["format": "pt"])
            try FileManager.default.copyItem(atPath: src + "/config.json", toPath: dir + "/config.json")
            XCTAssertEqual(try HFCheckpoint.loadModel(folder: dir).stateDict, sd, name)
            let weights = try HFInitialWeights(folder: dir, adapter: try args.adapter())
            for p in try args.spec().parameters where p.shape.count == 3 {
                var got = [Float](repeating: 0, count: p.count - 5)
                try got.withUnsafeMutableBufferPointer { try weights.read(p.fqn, elements: 5..<p.count, into: $0.baseAddress!) }
                XCTAssertEqual(got, Array(sd[p.fqn]!.values[5...]), "\(name) \(p.fqn)")
            }
        }
    }

    // MARK: export

    /// Import → export → import gives the same args and bits; the exported folder has exactly the fixture's tensor
    /// names (what transformers' DeepseekV3ForCausalLM loads: per-expert weights, the correction bias) and its config
    /// keys; the re-imported model's first loss is transformers'.
    func testHFExportRoundTrip() throws {
        for name in ["deepseek_v3", "deepseek_v3_q0"] {
            let src = try fixture(name)
            let (args, sd, _) = try HFCheckpoint.loadModel(folder: src)
            let dir = try tempDir("export-\(name)")
            try HFCheckpoint.save(model: args, stateDict: sd, folder: dir)
            if let dumpRoot = ProcessInfo.processInfo.environment["HF_EXPORT_DIR"] {  // for scripts/check_hf_export.py
                try HFCheckpoint.save(model: args, stateDict: sd, folder: (dumpRoot as NSString).appendingPathComponent(name))
                try HFCheckpoint.save(model: args, stateDict: sd, folder: (dumpRoot as NSString).appendingPathComponent(name + "_sharded"),
                                      maxShardBytes: 100_000)
            }
            XCTAssertEqual(try SafeTensors.read(path: dir + "/model.safetensors"), try SafeTensors.read(path: src + "/model.safetensors"),
                           "\(name): the exported tensors are the fixture's, bit for bit")
            let (args2, sd2, _) = try HFCheckpoint.loadModel(folder: dir)
            XCTAssertEqual(args2, args, name)
            XCTAssertEqual(sd2, sd, name)
            XCTAssertEqual(Set(try HFCheckpoint.readHFTensors(folder: dir).keys), Set(try HFCheckpoint.readHFTensors(folder: src).keys), name)
            let exported = try XCTUnwrap(JSONSerialization.jsonObject(with: XCTUnwrap(FileManager.default.contents(atPath: dir + "/config.json"))) as? [String: Any])
            let original = try configObject(name)
            for key in ["architectures", "model_type", "q_lora_rank", "kv_lora_rank", "n_group", "topk_group", "first_k_dense_replace",
                        "routed_scaling_factor", "rope_interleave", "n_routed_experts", "num_experts_per_tok", "n_shared_experts"] {
                XCTAssertEqual("\(exported[key] ?? "absent")", "\(original[key] ?? "absent")", "\(name): \(key)")
            }
            // sharded
            let sharded = try tempDir("export-sharded-\(name)")
            try HFCheckpoint.save(model: args, stateDict: sd, folder: sharded, maxShardBytes: 100_000)
            XCTAssertTrue(FileManager.default.fileExists(atPath: sharded + "/" + HFCheckpoint.indexFileName))
            XCTAssertEqual(try HFCheckpoint.loadModel(folder: sharded).stateDict, sd)
            // the loss transformers computed for step 1
            let expected = try XCTUnwrap(JSONSerialization.jsonObject(with: XCTUnwrap(FileManager.default.contents(atPath: src + "/expected.json"))) as? [String: Any])
            let losses = try XCTUnwrap(expected["losses"] as? [Double])
            let tokens = try readNpyTokensFile(try fixture("tokens.npy"))
            var x: [Int32] = [], y: [Int32] = []
            for w in 0..<8 { let win = Array(tokens[(w * 17)..<((w + 1) * 17)]); x += win[0..<16]; y += win[1...16] }
            let m = try args2.build()
            try m.load(stateDict: sd2)
            XCTAssertEqual(m.evaluate(inputs: x, labels: y, B: 8, T: 16).meanLoss, losses[0], accuracy: 1e-5 * losses[0], name)
        }
    }

    func testModelArgsCodable() throws {
        let d = ModelArgs.deepseekV3(DeepSeekV3Flavors.all["bench_moe"]!)
        let q = ModelArgs.qwen3(Qwen3Flavors.all["debugmodel_moe"]!)
        for a in [d, q] {
            let data = try JSONEncoder().encode(a)
            XCTAssertEqual(try JSONDecoder().decode(ModelArgs.self, from: data), a)
        }
        // Qwen3 args are stored as before (checkpoints written before DeepSeek-V3 still load)
        XCTAssertEqual(try JSONDecoder().decode(ModelArgs.self, from: JSONEncoder().encode(Qwen3Flavors.all["debugmodel_moe"]!)), q)
        XCTAssertFalse(String(decoding: try JSONEncoder().encode(q), as: UTF8.self).contains("family"))
    }

    /// activeParameters = every matrix a token multiplies by: all parameters but the embedding, the norms and the
    /// routed experts it is not sent to; the FLOPs add MLA's score and value products.
    func testActiveParametersAndFlops() throws {
        for a in [tinyDeepSeekArgs(), tinyDeepSeekArgs(qLoraRank: 0), DeepSeekV3Flavors.all["bench_moe"]!] {
            let spec = try DeepSeekV3Model.spec(a)
            var n = 0
            for p in spec.parameters where p.shape.count == 2 && p.fqn != "tok_embeddings.weight" { n += p.count }
            for p in spec.parameters where p.shape.count == 3 { n += p.count / a.moe.num_experts * a.moe.top_k }
            XCTAssertEqual(a.activeParameters, n)
            XCTAssertEqual(a.flopsPerToken(seqLen: 32), 6 * Double(n) + 6 * Double(a.n_layers * a.n_heads * (a.qkHeadDim + a.v_head_dim) * 32))
        }
    }

    /// The softmax scale and rope tables as transformers computes them for DeepSeek-V3's own rope_parameters.
    func testYaRNNumbers() throws {
        var a = DeepSeekV3ModelArgs()
        a.qk_nope_head_dim = 128; a.qk_rope_head_dim = 64; a.rope_theta = 10000
        a.rope_scaling = .yarn; a.rope_factor = 40; a.original_seq_len = 4096; a.mscale = 1; a.mscale_all_dim = 1
        // yarn_get_mscale(40, 1) = 0.1·ln 40 + 1; scale = 192^-0.5 · mscale²
        let m = 0.1 * Foundation.log(40.0) + 1
        XCTAssertEqual(Double(a.softmaxScale), Foundation.pow(192.0, -0.5) * m * m, accuracy: 1e-7)
        let (inv, factor) = a.ropeFrequencies
        XCTAssertEqual(factor, 1)
        XCTAssertEqual(inv.count, 32)
        // low = floor(64·ln(4096/(32·2π)) / (2 ln 10000)) = 10, high = ceil(64·ln(4096/(2π)) / (2 ln 10000)) = 23:
        // dims below 10 keep the original frequency, dims from 23 are divided by the factor
        XCTAssertEqual(inv[0], 1)
        // (float32 as transformers computes them: within a few float ulps of the exact values)
        let f9 = 1 / Foundation.pow(10000.0, 18.0 / 64), f31 = 1 / (40 * Foundation.pow(10000.0, 62.0 / 64))
        XCTAssertEqual(Double(inv[9]), f9, accuracy: 3e-7 * f9)
        XCTAssertEqual(Double(inv[31]), f31, accuracy: 3e-7 * f31)
        // a dim inside the ramp mixes both: dim 16 has ramp (16 − 10) / 13
        let ramp = 6.0 / 13, f16 = 1 / Foundation.pow(10000.0, 32.0 / 64)
        XCTAssertEqual(Double(inv[16]), f16 / 40 * ramp + f16 * (1 - ramp), accuracy: 3e-7 * f16)
        a.mscale = 0.8
        XCTAssertEqual(Double(a.ropeFrequencies.attentionFactor), (0.08 * Foundation.log(40.0) + 1) / m, accuracy: 1e-7)
    }
}
