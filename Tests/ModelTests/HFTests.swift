import Foundation
import XCTest
@testable import Model
import Tensor

/// HF interchange: safetensors reader/writer, config.json mapping, torchtitan <-> HF state-dict
/// adapter, HF folder load/save. Fixtures come from scripts/make_hf_fixtures.py (HF transformers 4.x).
final class HFTests: XCTestCase {
    static let fixtureNames = ["qwen3_moe", "qwen3_dense", "qwen3_tied"]

    func fixturesDir() throws -> String {
        guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            throw XCTSkip("Fixtures folder not in the test bundle")
        }
        return url.path
    }

    func fixture(_ name: String) throws -> String {
        (try fixturesDir() as NSString).appendingPathComponent(name)
    }

    func tempDir(_ tag: String) throws -> String {
        let dir = (NSTemporaryDirectory() as NSString).appendingPathComponent("hftests-\(tag)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func readJSON(_ path: String) throws -> [String: Any] {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: path), path)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any], path)
    }

    func expectedJSON(_ name: String) throws -> [String: Any] {
        try readJSON((try fixture(name) as NSString).appendingPathComponent("expected.json"))
    }

    /// Raw safetensors bytes: length prefix + header text + data.
    func craft(_ header: String, _ data: [UInt8]) -> [UInt8] {
        let h = Array(header.utf8)
        var out = [UInt8]()
        let n = UInt64(h.count)
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: n >> (8 * UInt64(i)))) }
        return out + h + data
    }

    func writeBytes(_ bytes: [UInt8], _ dir: String, _ name: String) throws -> String {
        let p = (dir as NSString).appendingPathComponent(name)
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    /// Asserts that reading `bytes` (as a file and in memory) fails with `kind`, naming the file (and tensor).
    func assertCorrupt(_ bytes: [UInt8], _ kind: SafeTensorsError.Kind, tensor: String? = nil,
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let dir = try tempDir("corrupt")
        let path = try writeBytes(bytes, dir, "bad.safetensors")
        XCTAssertThrowsError(try SafeTensorsReader(path: path), file: file, line: line) { error in
            guard let e = error as? SafeTensorsError else {
                return XCTFail("unexpected error type \(error)", file: file, line: line)
            }
            XCTAssertEqual(e.kind, kind, "\(e)", file: file, line: line)
            XCTAssertTrue(e.description.contains(path), "error does not name the file: \(e)", file: file, line: line)
            if let t = tensor {
                XCTAssertEqual(e.tensor, t, "\(e)", file: file, line: line)
                XCTAssertTrue(e.description.contains(t), "error does not name the tensor: \(e)", file: file, line: line)
            }
        }
        XCTAssertThrowsError(try SafeTensors.decode(bytes), file: file, line: line) { error in
            XCTAssertEqual((error as? SafeTensorsError)?.kind, kind, "\(error)", file: file, line: line)
        }
    }

    // MARK: fixtures

    func testReadFixturesAndCheckSums() throws {
        for name in Self.fixtureNames {
            let dir = try fixture(name)
            let args = try HFConfig.load(path: dir)
            let reader = try SafeTensorsReader(path: (dir as NSString).appendingPathComponent("model.safetensors"))
            XCTAssertEqual(reader.metadata["format"], "pt")
            let shapes = try StateDictAdapter(qwen3: args).hfShapes
            XCTAssertEqual(Set(reader.names), Set(shapes.keys), name)
            for n in reader.names {
                let info = try reader.info(n)
                XCTAssertEqual(info.dtype, .F32, n)
                XCTAssertEqual(info.shape, shapes[n], n)
            }
            // The sums torch computed over the same weights (float64 accumulation).
            let expected = try expectedJSON(name)
            let sums = try XCTUnwrap((expected["debug"] as? [String: Any])?["initial_param_sums_hf"] as? [String: Any])
            XCTAssertEqual(Set(sums.keys), Set(reader.names), name)
            for (n, s) in sums {
                let t = try reader.tensor(n)
                let mine = t.values.reduce(0.0) { $0 + Double($1) }
                let ref = try XCTUnwrap(JSONValue.double(s))
                XCTAssertEqual(mine, ref, accuracy: 1e-9 * max(1, abs(ref)) + 1e-9, "\(name) \(n)")
            }
        }
    }

    func testExpectedFilesFormat() throws {
        let tokensPath = (try fixturesDir() as NSString).appendingPathComponent("tokens.npy")
        let npy = try XCTUnwrap(FileManager.default.contents(atPath: tokensPath))
        XCTAssertEqual(Array(npy.prefix(6)), [0x93] + Array("NUMPY".utf8))
        let headerLen = Int(npy[8]) | Int(npy[9]) << 8
        let header = String(decoding: npy[10..<(10 + headerLen)], as: UTF8.self)
        XCTAssertTrue(header.contains("'descr': '<i4'"), header)
        let nTokens = (npy.count - 10 - headerLen) / 4
        for name in Self.fixtureNames {
            let e = try expectedJSON(name)
            let recipe = try XCTUnwrap(e["recipe"] as? [String: Any])
            func field(_ section: String, _ key: String) -> Any? { (recipe[section] as? [String: Any])?[key] }
            let steps = try XCTUnwrap(field("training", "steps").flatMap(JSONValue.int))
            let G = try XCTUnwrap(field("training", "local_batch_size").flatMap(JSONValue.int))
            let L = try XCTUnwrap(field("training", "seq_len").flatMap(JSONValue.int))
            XCTAssertEqual(steps, 10)
            XCTAssertGreaterThanOrEqual(nTokens, steps * G * (L + 1))
            XCTAssertEqual(field("optimizer", "weight_decay").flatMap(JSONValue.double), 0.1)
            XCTAssertEqual(field("lr_scheduler", "warmup_steps").flatMap(JSONValue.int), 0)
            for key in ["losses", "grad_norms", "losses_fp64", "grad_norms_fp64"] {
                let v = try XCTUnwrap(e[key] as? [Any], key)
                XCTAssertEqual(v.count, steps, key)
                XCTAssertTrue(v.allSatisfy { (JSONValue.double($0) ?? .nan).isFinite }, key)
            }
            let l32 = (e["losses"] as! [Any]).map { JSONValue.double($0)! }, l64 = (e["losses_fp64"] as! [Any]).map { JSONValue.double($0)! }
            for (a, b) in zip(l32, l64) { XCTAssertEqual(a, b, accuracy: 1e-4) }
            XCTAssertLessThan(l32.last!, l32.first!, "training should lower the loss")
        }
        let moe = try expectedJSON("qwen3_moe")
        let tpe = try XCTUnwrap((moe["debug"] as? [String: Any])?["step1_tokens_per_expert"] as? [Any])
        XCTAssertEqual(tpe.count, 2)
        for layer in tpe { XCTAssertEqual((layer as! [Any]).reduce(0) { $0 + JSONValue.int($1)! }, 8 * 16 * 2) }
    }

    // MARK: config.json

    func testConfigMapping() throws {
        let moe = try HFConfig.load(path: try fixture("qwen3_moe"))
        XCTAssertTrue(moe.moe_enabled)
        XCTAssertEqual(moe.vocab_size, 256)
        XCTAssertEqual(moe.dim, 32)
        XCTAssertEqual(moe.n_layers, 2)
        XCTAssertEqual(moe.n_heads, 4)
        XCTAssertEqual(moe.n_kv_heads, 2)
        XCTAssertEqual(moe.head_dim, 8)
        XCTAssertEqual(moe.hidden_dim, 64)
        XCTAssertEqual(moe.norm_eps, 1e-6)
        XCTAssertEqual(moe.rope_theta, 1_000_000)
        XCTAssertEqual(moe.max_seq_len, 128)
        XCTAssertEqual(moe.init_std, 0.05)
        XCTAssertFalse(moe.enable_weight_tying)
        XCTAssertEqual(moe.decoder_sparse_step, 1)
        XCTAssertEqual(moe.moe.num_experts, 8)
        XCTAssertEqual(moe.moe.top_k, 2)
        XCTAssertEqual(moe.moe.hidden_dim, 16)
        XCTAssertTrue(moe.moe.route_norm)
        XCTAssertEqual(moe.moe.score_func, .softmax)
        XCTAssertEqual(moe.moe.num_shared_experts, 0)
        XCTAssertTrue(moe.isMoELayer(0) && moe.isMoELayer(1))

        let dense = try HFConfig.load(path: try fixture("qwen3_dense"))
        XCTAssertFalse(dense.moe_enabled)
        XCTAssertFalse(dense.enable_weight_tying)
        XCTAssertEqual(dense.hidden_dim, 64)
        XCTAssertEqual(dense.head_dim, 8)
        let tied = try HFConfig.load(path: try fixture("qwen3_tied"))
        XCTAssertTrue(tied.enable_weight_tying)
        XCTAssertFalse(tied.moe_enabled)
    }

    func testConfigExportRoundTrip() throws {
        for name in Self.fixtureNames {
            let path = (try fixture(name) as NSString).appendingPathComponent("config.json")
            let original = try readJSON(path)
            let args = try HFConfig.load(path: path)
            let exported = try HFConfig.export(args)
            XCTAssertEqual(try HFConfig.parse(object: exported), args, name)
            XCTAssertEqual(try HFConfig.parse(HFConfig.exportJSON(args)), args, name)
            // Every field the mapping covers has the value the HF file had, in the exported object and in the
            // written text (so floats from Float are written as 1e-06, not 9.999999974752427e-07).
            let written = try XCTUnwrap(JSONSerialization.jsonObject(with: HFConfig.exportJSON(args)) as? [String: Any])
            for key in ["architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps", "rope_theta",
                        "max_position_embeddings", "tie_word_embeddings", "initializer_range", "hidden_act",
                        "num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
                        "decoder_sparse_step", "mlp_only_layers"] where original[key] != nil {
                for (what, out) in [("exported", exported), ("written", written)] {
                    let a = original[key]!, b = out[key]
                    if let x = JSONValue.double(a), let y = b.flatMap(JSONValue.double) {
                        XCTAssertEqual(x, y, "\(name) \(key) \(what)")
                    } else {
                        XCTAssertEqual(JSONValue.describe(a), b.map(JSONValue.describe), "\(name) \(key) \(what)")
                    }
                }
            }
        }
    }

    func testConfigErrors() throws {
        let path = (try fixture("qwen3_moe") as NSString).appendingPathComponent("config.json")
        let base = try readJSON(path)
        // Each edit is checked on the object and on its JSON text, whose numbers and booleans JSONSerialization
        // returns as NSNumber.
        func expectError(_ edit: (inout [String: Any]) -> Void, key: String, _ line: UInt = #line) throws {
            var o = base
            edit(&o)
            let text = try JSONSerialization.data(withJSONObject: o)
            for parse in [{ try HFConfig.parse(object: o, source: "test.json") }, { try HFConfig.parse(text, source: "test.json") }] {
                XCTAssertThrowsError(try parse(), line: line) { error in
                    guard let e = error as? HFConfigError else { return XCTFail("\(error)", line: line) }
                    XCTAssertEqual(e.key, key, "\(e)", line: line)
                    XCTAssertTrue(e.description.contains("test.json"), "\(e)", line: line)
                }
            }
        }
        try expectError({ $0["architectures"] = ["LlamaForCausalLM"] }, key: "architectures")
        try expectError({ $0["architectures"] = nil; $0["model_type"] = "llama" }, key: "model_type")
        try expectError({ $0["model_type"] = "qwen3" }, key: "model_type")
        try expectError({ $0["mlp_only_layers"] = [0] }, key: "mlp_only_layers")
        try expectError({ $0["hidden_act"] = "gelu" }, key: "hidden_act")
        try expectError({ $0["attention_bias"] = true }, key: "attention_bias")
        try expectError({ $0["use_sliding_window"] = true }, key: "use_sliding_window")
        try expectError({ $0["rope_scaling"] = ["rope_type": "yarn", "factor": 4.0] as [String: Any] }, key: "rope_scaling")
        try expectError({ $0["vocab_size"] = nil }, key: "vocab_size")
        try expectError({ $0["hidden_size"] = "32" }, key: "hidden_size")
        try expectError({ $0["hidden_size"] = 32.5 }, key: "hidden_size")
        try expectError({ $0["hidden_size"] = true }, key: "hidden_size")
        try expectError({ $0["norm_topk_prob"] = 1 }, key: "norm_topk_prob")
        try expectError({ $0["num_experts_per_tok"] = 9 }, key: "num_experts_per_tok")
        try expectError({ $0["num_local_experts"] = 4 }, key: "num_local_experts")   // disagrees with num_experts 8
        try expectError({ $0["num_experts"] = nil; $0["num_local_experts"] = 0 }, key: "num_local_experts")
        try expectError({ $0["rope_parameters"] = ["rope_type": "yarn", "factor": 4.0] as [String: Any] }, key: "rope_parameters.rope_type")
        try expectError({ $0["num_key_value_heads"] = 3 }, key: "num_key_value_heads")
        // An integral float is an integer.
        XCTAssertEqual(try HFConfig.parse(Data(#"{"model_type":"qwen3","vocab_size":10.0,"hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4}"#.utf8)).vocab_size, 10)
        // Not JSON, or not an object: the error names the file.
        for bad in ["[1]", "{\"a\":"] {
            XCTAssertThrowsError(try HFConfig.parse(Data(bad.utf8), source: "bad.json")) { error in
                XCTAssertTrue("\(error)".contains("bad.json"), "\(error)")
            }
        }

        // Options HF cannot express are export errors.
        var a = try HFConfig.parse(object: base)
        a.moe.score_func = .sigmoid
        XCTAssertThrowsError(try HFConfig.export(a)) { XCTAssertEqual(($0 as? HFConfigError)?.key, "moe.score_func") }
        a = try HFConfig.parse(object: base)
        a.moe.num_shared_experts = 1
        XCTAssertThrowsError(try HFConfig.export(a)) { XCTAssertEqual(($0 as? HFConfigError)?.key, "moe.num_shared_experts") }
        a = try HFConfig.parse(object: base)
        a.moe.load_balance_coeff = 1e-3  // the expert bias is simply not exported
        XCTAssertNoThrow(try HFConfig.export(a))
    }

    func testConfigDefaultsFollowTransformers() throws {
        let dense = try HFConfig.parse(Data(#"{"architectures":["Qwen3ForCausalLM"],"vocab_size":10,"hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4}"#.utf8))
        XCTAssertEqual(dense.head_dim, 128)       // Qwen3Config default
        XCTAssertEqual(dense.n_kv_heads, 4)
        XCTAssertEqual(dense.rope_theta, 10000)
        let moe = try HFConfig.parse(Data(#"{"model_type":"qwen3_moe","vocab_size":10,"hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,"num_experts":4,"num_experts_per_tok":2}"#.utf8))
        XCTAssertTrue(moe.moe_enabled)
        XCTAssertEqual(moe.head_dim, 16)          // Qwen3MoeConfig: hidden_size / heads
        XCTAssertFalse(moe.moe.route_norm)        // norm_topk_prob defaults to false
    }

    // MARK: state-dict adapter

    func testAdapterRoundTripOnFixtures() throws {
        for name in Self.fixtureNames {
            let dir = try fixture(name)
            let args = try HFConfig.load(path: dir)
            let hf = try SafeTensors.read(path: (dir as NSString).appendingPathComponent("model.safetensors"))
            let adapter = try StateDictAdapter(qwen3: args)
            let titan = try adapter.fromHF(hf)
            let shapes = adapter.spec.stateDictShapes
            XCTAssertEqual(Set(titan.keys), Set(shapes.keys), name)
            for (k, t) in titan { XCTAssertEqual(t.shape, shapes[k], "\(name) \(k)") }
            XCTAssertEqual(try adapter.toHF(titan), hf, "\(name): HF -> torchtitan -> HF must be identical")
            XCTAssertEqual(titan["tok_embeddings.weight"], hf["model.embed_tokens.weight"])
            XCTAssertEqual(titan["layers.1.attention.k_norm.weight"], hf["model.layers.1.self_attn.k_norm.weight"])
            XCTAssertEqual(titan["layers.0.ffn_norm.weight"], hf["model.layers.0.post_attention_layernorm.weight"])
            if args.enable_weight_tying {
                XCTAssertNil(titan["output.weight"])
                XCTAssertNil(hf["lm_head.weight"])
            } else {
                XCTAssertEqual(titan["output.weight"], hf["lm_head.weight"])
            }
            if !args.moe_enabled {
                XCTAssertEqual(titan["layers.0.feed_forward.w1.weight"], hf["model.layers.0.mlp.gate_proj.weight"])
                XCTAssertEqual(titan["layers.0.feed_forward.w2.weight"], hf["model.layers.0.mlp.down_proj.weight"])
                XCTAssertEqual(titan["layers.0.feed_forward.w3.weight"], hf["model.layers.0.mlp.up_proj.weight"])
            }
        }
    }

    /// transformers 5 re-saved the qwen3_moe fixture (scripts/make_tf5_fixture.py): config.json uses
    /// num_local_experts and rope_parameters, the weights are per expert as in 4.x. Both folders load to the same
    /// model args and state dict.
    func testTransformers5FolderLoadsLikeTransformers4() throws {
        let v4 = try HFCheckpoint.load(folder: try fixture("qwen3_moe"))
        let v5dir = try fixture("qwen3_moe_tf5")
        let config = try XCTUnwrap(String(contentsOfFile: (v5dir as NSString).appendingPathComponent("config.json"), encoding: .utf8))
        XCTAssertTrue(config.contains("\"num_local_experts\"") && !config.contains("\"num_experts\""), config)
        XCTAssertTrue(config.contains("\"rope_parameters\"") && config.contains("\"transformers_version\": \"5."), config)
        let v5 = try HFCheckpoint.load(folder: v5dir)
        XCTAssertEqual(v5.args.moe.num_experts, 8)
        XCTAssertEqual(v5.args, v4.args)
        XCTAssertEqual(v5.stateDict, v4.stateDict)
    }

    func testExpertStacking() throws {
        let dir = try fixture("qwen3_moe")
        let (args, titan) = try HFCheckpoint.load(folder: dir)
        let hf = try SafeTensors.read(path: (dir as NSString).appendingPathComponent("model.safetensors"))
        let E = args.moe.num_experts, Fe = args.moe.hidden_dim, D = args.dim
        for layer in 0..<args.n_layers {
            let w1 = try XCTUnwrap(titan["layers.\(layer).moe.experts.w1"])
            let w2 = try XCTUnwrap(titan["layers.\(layer).moe.experts.w2"])
            let w3 = try XCTUnwrap(titan["layers.\(layer).moe.experts.w3"])
            XCTAssertEqual(w1.shape, [E, Fe, D])
            XCTAssertEqual(w2.shape, [E, D, Fe])
            XCTAssertEqual(w3.shape, [E, Fe, D])
            XCTAssertEqual(titan["layers.\(layer).moe.router.gate.weight"], hf["model.layers.\(layer).mlp.gate.weight"])
            XCTAssertNil(titan["layers.\(layer).moe.expert_bias"], "no load balancing in these args: no expert bias")
            for e in [0, 3, E - 1] {
                let p = "model.layers.\(layer).mlp.experts.\(e)."
                let gate = hf[p + "gate_proj.weight"]!, up = hf[p + "up_proj.weight"]!, down = hf[p + "down_proj.weight"]!
                for (f, d) in [(0, 0), (Fe - 1, D - 1), (5, 17)] {
                    XCTAssertEqual(w1.values[(e * Fe + f) * D + d], gate.values[f * D + d])
                    XCTAssertEqual(w3.values[(e * Fe + f) * D + d], up.values[f * D + d])
                    XCTAssertEqual(w2.values[(e * D + d) * Fe + f], down.values[d * Fe + f])
                }
            }
        }
        XCTAssertNil(titan["layers.0.feed_forward.w1.weight"])
        // With load balancing the model has an expert bias, which HF lacks: it starts at zero.
        var balanced = args
        balanced.moe.load_balance_coeff = 1e-3
        let withBias = try StateDictAdapter(qwen3: balanced).fromHF(hf)
        XCTAssertEqual(withBias["layers.1.moe.expert_bias"], HostTensor(shape: [E], values: .init(repeating: 0, count: E)))
    }

    func testAdapterErrors() throws {
        let dir = try fixture("qwen3_moe")
        let args = try HFConfig.load(path: dir)
        let hf = try SafeTensors.read(path: (dir as NSString).appendingPathComponent("model.safetensors"))
        let adapter = try StateDictAdapter(qwen3: args)
        func expect(_ sd: StateDict, _ kind: StateDictAdapterError.Kind, _ tensor: String, toHF: Bool = false, line: UInt = #line) {
            XCTAssertThrowsError(toHF ? try adapter.toHF(sd) : try adapter.fromHF(sd), line: line) { error in
                guard let e = error as? StateDictAdapterError else { return XCTFail("\(error)", line: line) }
                XCTAssertEqual(e.kind, kind, "\(e)", line: line)
                XCTAssertEqual(e.tensor, tensor, "\(e)", line: line)
                XCTAssertTrue(e.description.contains(tensor), line: line)
            }
        }
        var bad = hf
        bad["model.layers.1.mlp.experts.5.up_proj.weight"] = nil
        expect(bad, .missing, "model.layers.1.mlp.experts.5.up_proj.weight")
        bad = hf
        bad["model.layers.0.self_attn.q_proj.weight"] = HostTensor(shape: [16, 64], values: .init(repeating: 0, count: 1024))
        expect(bad, .shapeMismatch, "model.layers.0.self_attn.q_proj.weight")
        bad = hf
        bad["model.layers.0.mlp.experts.8.up_proj.weight"] = HostTensor(shape: [16, 32], values: .init(repeating: 0, count: 512))
        expect(bad, .unexpected, "model.layers.0.mlp.experts.8.up_proj.weight")
        bad = hf
        bad["model.layers.0.self_attn.rotary_emb.inv_freq"] = HostTensor(shape: [4], values: [1, 2, 3, 4])
        XCTAssertEqual(try adapter.fromHF(bad), try adapter.fromHF(hf))   // ignorable buffer

        let titan = try adapter.fromHF(hf)
        var t = titan
        t["layers.0.moe.experts.w2"] = HostTensor(shape: [8, 16, 32], values: t["layers.0.moe.experts.w2"]!.values)
        expect(t, .shapeMismatch, "layers.0.moe.experts.w2", toHF: true)
        t = titan
        t["layers.0.feed_forward.w1.weight"] = HostTensor(shape: [1], values: [0])
        expect(t, .unexpected, "layers.0.feed_forward.w1.weight", toHF: true)
        t = titan
        t["norm.weight"] = nil
        expect(t, .missing, "norm.weight", toHF: true)
        // A model without load balancing has no expert_bias; one with it drops it on export (HF has none).
        t = titan
        t["layers.0.moe.expert_bias"] = HostTensor(shape: [8], values: .init(repeating: 0.5, count: 8))
        expect(t, .unexpected, "layers.0.moe.expert_bias", toHF: true)
        var balanced = args
        balanced.moe.load_balance_coeff = 1e-3
        t["layers.1.moe.expert_bias"] = HostTensor(shape: [8], values: .init(repeating: 0.5, count: 8))
        XCTAssertEqual(try StateDictAdapter(qwen3: balanced).toHF(t), hf)

        // Tied: an lm_head equal to the embedding is tolerated, a different one is an error.
        let tdir = try fixture("qwen3_tied")
        let targs = try HFConfig.load(path: tdir)
        let thf = try SafeTensors.read(path: (tdir as NSString).appendingPathComponent("model.safetensors"))
        let tadapter = try StateDictAdapter(qwen3: targs)
        var withHead = thf
        withHead["lm_head.weight"] = thf["model.embed_tokens.weight"]
        XCTAssertEqual(try tadapter.fromHF(withHead), try tadapter.fromHF(thf))
        var emb = thf["model.embed_tokens.weight"]!
        emb.values[0] += 1
        withHead["lm_head.weight"] = emb
        XCTAssertThrowsError(try tadapter.fromHF(withHead)) { XCTAssertEqual(($0 as? StateDictAdapterError)?.kind, .tiedMismatch) }
        var tt = try tadapter.fromHF(thf)
        tt["output.weight"] = thf["model.embed_tokens.weight"]
        XCTAssertThrowsError(try tadapter.toHF(tt)) { XCTAssertEqual(($0 as? StateDictAdapterError)?.tensor, "output.weight") }
        // An untied model needs lm_head.
        let ddir = try fixture("qwen3_dense")
        var dhf = try SafeTensors.read(path: (ddir as NSString).appendingPathComponent("model.safetensors"))
        dhf["lm_head.weight"] = nil
        XCTAssertThrowsError(try StateDictAdapter(qwen3: HFConfig.load(path: ddir)).fromHF(dhf)) {
            XCTAssertEqual(($0 as? StateDictAdapterError)?.tensor, "lm_head.weight")
        }
    }

    // MARK: HF folders

    func testSaveLoadFolderSingleAndSharded() throws {
        for name in Self.fixtureNames {
            let src = try fixture(name)
            let (args, titan) = try HFCheckpoint.load(folder: src)
            let originalHF = try SafeTensors.read(path: (src as NSString).appendingPathComponent("model.safetensors"))

            let out = try tempDir("save-\(name)")
            try HFCheckpoint.save(args: args, stateDict: titan, folder: out)
            if let dumpRoot = ProcessInfo.processInfo.environment["HF_EXPORT_DIR"] {  // for scripts/check_hf_export.py
                try HFCheckpoint.save(args: args, stateDict: titan, folder: (dumpRoot as NSString).appendingPathComponent(name))
                try HFCheckpoint.save(args: args, stateDict: titan, folder: (dumpRoot as NSString).appendingPathComponent(name + "_sharded"),
                                      maxShardBytes: 40_000)
            }
            let saved = (out as NSString).appendingPathComponent("model.safetensors")
            XCTAssertEqual(try SafeTensors.read(path: saved), originalHF, name)
            let (args2, titan2) = try HFCheckpoint.load(folder: out)
            XCTAssertEqual(args2, args)
            XCTAssertEqual(titan2, titan)

            let sharded = try tempDir("shard-\(name)")
            try HFCheckpoint.save(args: args, stateDict: titan, folder: sharded, maxShardBytes: 40_000)
            let files = try FileManager.default.contentsOfDirectory(atPath: sharded)
            XCTAssertTrue(files.contains(HFCheckpoint.indexFileName), "\(files)")
            XCTAssertFalse(files.contains("model.safetensors"))
            XCTAssertGreaterThan(files.filter { $0.hasPrefix("model-0") }.count, 1, "\(files)")
            let (args3, titan3) = try HFCheckpoint.load(folder: sharded)
            XCTAssertEqual(args3, args)
            XCTAssertEqual(titan3, titan)
            // Partial read: only the tensors asked for.
            let some = try HFCheckpoint.readHFTensors(folder: sharded, names: ["model.norm.weight", "model.embed_tokens.weight"])
            XCTAssertEqual(Set(some.keys), ["model.norm.weight", "model.embed_tokens.weight"])
            XCTAssertEqual(some["model.norm.weight"], originalHF["model.norm.weight"])
        }
    }

    /// HF folders read on demand (what each rank of a run does) give exactly the loaded state dict: whole parameters
    /// and slices crossing expert and tensor boundaries, from single files, sharded folders and transformers-5 saves.
    func testInitialWeightsReadOnDemandMatchLoadedStateDict() throws {
        var folders: [String] = []
        for name in Self.fixtureNames + ["qwen3_moe_tf5"] { folders.append(try fixture(name)) }
        let (margs, mtitan) = try HFCheckpoint.load(folder: try fixture("qwen3_moe"))
        let sharded = try tempDir("lazy-sharded")
        try HFCheckpoint.save(args: margs, stateDict: mtitan, folder: sharded, maxShardBytes: 40_000)
        folders.append(sharded)
        var rng = SplitMix64(seed: 4)
        for dir in folders {
            let (args, titan) = try HFCheckpoint.load(folder: dir)
            let w = try HFInitialWeights(folder: dir, adapter: try StateDictAdapter(qwen3: args))
            XCTAssertEqual(w.parameterShapes, titan.mapValues(\.shape), dir)
            XCTAssertNil(w.buffer("layers.0.moe.expert_bias"))
            for (fqn, t) in titan.sorted(by: { $0.key < $1.key }) {
                let n = t.values.count
                var ranges = [0..<n, 0..<0, (n / 3)..<(n / 3)]
                for _ in 0..<4 {
                    let a = Int(rng.next() % UInt64(n)), b = Int(rng.next() % UInt64(n))
                    ranges.append(min(a, b)..<(max(a, b) + 1))
                }
                for r in ranges {
                    var out = [Float](repeating: .nan, count: r.count)
                    try out.withUnsafeMutableBufferPointer { buf in
                        try w.read(fqn, elements: r, into: buf.baseAddress ?? UnsafeMutablePointer(bitPattern: 64)!)
                    }
                    XCTAssertEqual(out, Array(t.values[r]), "\(dir) \(fqn)[\(r)]")
                }
            }
            // A model started from them gathers back to the same weights (buffers zero).
            let model = try Qwen3Model(args: args, seed: 1, materialize: false)
            try model.setInitialWeights(w)
            for p in model.parameters {
                let v = Tensor(shape: p.shape)
                try model.initialValues(of: p, elements: 0..<p.count, into: v.data)
                XCTAssertEqual(v.toArray(), titan[p.fqn]!.values, p.fqn)
            }
        }
    }

    /// Opening an HF folder on demand checks it as loading does: missing, misshapen and unknown tensors, a tied
    /// lm_head that differs from the embedding.
    func testInitialWeightsReadOnDemandRejectBadFolders() throws {
        func folder(_ name: String, _ edit: (inout StateDict) -> Void) throws -> (String, Qwen3ModelArgs) {
            let src = try fixture(name)
            let args = try HFConfig.load(path: src)
            var hf = try SafeTensors.read(path: (src as NSString).appendingPathComponent("model.safetensors"))
            edit(&hf)
            let dir = try tempDir("lazy-bad")
            try HFCheckpoint.saveHFTensors(hf, args: args, folder: dir)
            return (dir, args)
        }
        func expect(_ f: (String, Qwen3ModelArgs), _ kind: StateDictAdapterError.Kind, _ tensor: String, line: UInt = #line) {
            XCTAssertThrowsError(try HFInitialWeights(folder: f.0, adapter: try StateDictAdapter(qwen3: f.1)), line: line) { error in
                guard let e = error as? StateDictAdapterError else { return XCTFail("\(error)", line: line) }
                XCTAssertEqual(e.kind, kind, "\(e)", line: line)
                XCTAssertEqual(e.tensor, tensor, "\(e)", line: line)
            }
        }
        expect(try folder("qwen3_moe") { $0["model.layers.1.mlp.experts.5.up_proj.weight"] = nil }, .missing, "model.layers.1.mlp.experts.5.up_proj.weight")
        expect(try folder("qwen3_moe") { $0["model.layers.0.self_attn.q_proj.weight"] = HostTensor(shape: [16, 64], values: .init(repeating: 0, count: 1024)) },
               .shapeMismatch, "model.layers.0.self_attn.q_proj.weight")
        expect(try folder("qwen3_moe") { $0["model.layers.0.mlp.experts.8.up_proj.weight"] = HostTensor(shape: [16, 32], values: .init(repeating: 0, count: 512)) },
               .unexpected, "model.layers.0.mlp.experts.8.up_proj.weight")
        let same = try folder("qwen3_tied") { $0["lm_head.weight"] = $0["model.embed_tokens.weight"] }
        XCTAssertNoThrow(try HFInitialWeights(folder: same.0, adapter: try StateDictAdapter(qwen3: same.1)))
        expect(try folder("qwen3_tied") { hf in var e = hf["model.embed_tokens.weight"]!; e.values[e.values.count - 1] += 1; hf["lm_head.weight"] = e },
               .tiedMismatch, "lm_head.weight")
    }

    func testLoadFolderErrors() throws {
        let empty = try tempDir("empty")
        XCTAssertThrowsError(try HFCheckpoint.load(folder: empty)) { XCTAssertTrue("\($0)".contains("config.json"), "\($0)") }
        // Shard index pointing at a missing tensor / file.
        let (args, titan) = try HFCheckpoint.load(folder: try fixture("qwen3_dense"))
        let dir = try tempDir("badindex")
        try HFCheckpoint.save(args: args, stateDict: titan, folder: dir, maxShardBytes: 40_000)
        let indexPath = (dir as NSString).appendingPathComponent(HFCheckpoint.indexFileName)
        var index = try readJSON(indexPath)
        var wm = try XCTUnwrap(index["weight_map"] as? [String: Any])
        wm["model.norm.weight"] = "model-00009-of-00009.safetensors"
        index["weight_map"] = wm
        try JSONSerialization.data(withJSONObject: index).write(to: URL(fileURLWithPath: indexPath))
        XCTAssertThrowsError(try HFCheckpoint.load(folder: dir)) { error in
            XCTAssertEqual((error as? SafeTensorsError)?.kind, .io, "\(error)")
            XCTAssertTrue("\(error)".contains("model-00009-of-00009.safetensors"), "\(error)")
        }
    }

    // MARK: safetensors writer / reader

    func testWriterReaderRoundTrip() throws {
        var rng = SystemRandomNumberGenerator()
        let sd: StateDict = [
            "b.weight": HostTensor(shape: [3, 5], values: (0..<15).map { _ in Float.random(in: -3...3, using: &rng) }),
            "a.bias": HostTensor(shape: [7], values: (0..<7).map { Float($0) - 3.5 }),
            "scalar": HostTensor(shape: [], values: [42]),
            "empty": HostTensor(shape: [0, 4], values: []),
            "special \"name\"": HostTensor(shape: [2], values: [.infinity, -0.0]),
            "dir/w": HostTensor(shape: [1], values: [1]),
        ]
        let bytes = try SafeTensors.encode(sd, metadata: ["format": "pt", "note": "x"])
        // Header: 8-byte aligned data start, names readable, data in name order.
        var n = 0
        for i in 0..<8 { n |= Int(bytes[i]) << (8 * i) }
        XCTAssertEqual((8 + n) % 8, 0)
        let header = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
        XCTAssertTrue(header.contains(#""dir/w""#) && header.contains(#""special \"name\"""#), header)
        let parsed = try SafeTensorsHeader.parse(json: Array(bytes[8..<(8 + n)]), dataLength: bytes.count - 8 - n, file: "rt")
        let offsets = sd.keys.sorted().map { parsed.tensors[$0]!.dataOffsets.lowerBound }
        XCTAssertEqual(offsets, offsets.sorted())
        let decoded = try SafeTensors.decode(bytes)
        XCTAssertEqual(decoded.tensors, sd)
        XCTAssertEqual(decoded.metadata, ["format": "pt", "note": "x"])

        let dir = try tempDir("rt")
        let path = (dir as NSString).appendingPathComponent("rt.safetensors")
        try SafeTensors.write(sd, to: path, metadata: ["format": "pt"])
        XCTAssertEqual(Array(try Data(contentsOf: URL(fileURLWithPath: path))), try SafeTensors.encode(sd, metadata: ["format": "pt"]))
        let reader = try SafeTensorsReader(path: path)
        XCTAssertEqual(reader.names, sd.keys.sorted())
        XCTAssertEqual(try reader.tensor("b.weight"), sd["b.weight"])
        XCTAssertEqual(try reader.tensors(), sd)
        XCTAssertThrowsError(try reader.tensor("nope")) { XCTAssertEqual(($0 as? SafeTensorsError)?.kind, .missingTensor) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["rt.safetensors"], "no temporary file left")

        // BF16 writing rounds to nearest even and reads back as Float.
        let bf = try SafeTensors.decode(SafeTensors.encode(["x": HostTensor(shape: [3], values: [1.0, 1.00390625, -2.5])], dtype: .BF16))
        XCTAssertEqual(bf.tensors["x"]!.values, [1.0, 1.0, -2.5])
    }

    func testHalfAndBFloat16Decoding() throws {
        // F16: 1, -2, 65504, 2^-24 (subnormal), +inf, -0;  BF16: 1, -3, 0.5
        let f16: [UInt16] = [0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x8000]
        let bf16: [UInt16] = [0x3F80, 0xC040, 0x3F00]
        var data = [UInt8]()
        for v in bf16 + f16 { data += [UInt8(v & 0xFF), UInt8(v >> 8)] }
        let header = #"{"h":{"dtype":"F16","shape":[2,3],"data_offsets":[6,18]},"g":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]}}"#
        let (_, sd) = try SafeTensors.decode(craft(header, data))
        XCTAssertEqual(sd["g"]!.values, [1, -3, 0.5])
        let h = sd["h"]!.values
        XCTAssertEqual(sd["h"]!.shape, [2, 3])
        XCTAssertEqual(Array(h[0..<4]), [1, -2, 65504, Float(sign: .plus, exponent: -24, significand: 1)])
        XCTAssertEqual(h[4], .infinity)
        XCTAssertEqual(h[5].bitPattern, (-0.0 as Float).bitPattern)
        XCTAssertEqual(SafeTensors.halfToFloat(0x3555), 0.333251953125)
    }

    /// F32 / F16 / BF16 / 0-d / empty tensors written by the Python safetensors library.
    func testDtypeFixtureFromSafetensorsLibrary() throws {
        let dir = (try fixturesDir() as NSString).appendingPathComponent("dtypes")
        let expected = try readJSON((dir as NSString).appendingPathComponent("expected.json"))
        let reader = try SafeTensorsReader(path: (dir as NSString).appendingPathComponent("dtypes.safetensors"))
        XCTAssertEqual(Set(reader.names), Set(expected.keys))
        XCTAssertEqual(try reader.info("values.f16").dtype, .F16)
        XCTAssertEqual(try reader.info("values.bf16").dtype, .BF16)
        for (name, entry) in expected {
            let t = try reader.tensor(name)
            let e = try XCTUnwrap(entry as? [String: Any], name)
            XCTAssertEqual(t.shape, (e["shape"] as! [Any]).map { JSONValue.int($0)! }, name)
            let want: [Float] = (e["values"] as! [Any]).map { v in
                switch v as? String {
                case "inf": return .infinity
                case "-inf": return -.infinity
                default: return Float(JSONValue.double(v)!)
                }
            }
            XCTAssertEqual(t.values.count, want.count, name)
            for (i, (a, b)) in zip(t.values, want).enumerated() {
                XCTAssertEqual(a.bitPattern, b.bitPattern, "\(name)[\(i)]: \(a) != \(b)")
            }
            // Element ranges read by byte range alone decode to the same values.
            for r in [0..<want.count, 0..<(want.count / 2), (want.count / 3)..<want.count] {
                var part = [Float](repeating: .nan, count: r.count)
                try part.withUnsafeMutableBufferPointer { try reader.read(name, elements: r, into: $0.baseAddress ?? UnsafeMutablePointer(bitPattern: 64)!) }
                XCTAssertEqual(part.map(\.bitPattern), want[r].map(\.bitPattern), "\(name)[\(r)]")
            }
        }
    }

    func testCorruptFiles() throws {
        let good = try SafeTensors.encode(["a": HostTensor(shape: [2, 2], values: [1, 2, 3, 4]),
                                           "b": HostTensor(shape: [3], values: [5, 6, 7])])
        XCTAssertNoThrow(try SafeTensors.decode(good))
        let d28 = [UInt8](repeating: 0, count: 28)

        // Truncated files.
        try assertCorrupt(Array(good.prefix(5)), .truncated)
        try assertCorrupt(Array(good.prefix(20)), .headerLength)
        try assertCorrupt(Array(good.dropLast(4)), .offsetsOutOfRange, tensor: "b")
        // Bad header length.
        var huge = good
        huge[7] = 0x7F
        try assertCorrupt(huge, .headerLength)
        var zero = good
        for i in 0..<8 { zero[i] = 0 }
        try assertCorrupt(zero, .headerLength)
        // Header not JSON / not an object / bad entries.
        try assertCorrupt(craft("{\"a\":{\"dtype\":\"F32\",", d28), .headerJSON)
        try assertCorrupt(craft("[1,2]", []), .headerJSON)
        // A duplicate name: JSONSerialization keeps the last entry (as Python's json and the safetensors package
        // do), so the bytes of the first are not covered.
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}}"#, d28), .gap, tensor: "a")
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","data_offsets":[0,28]}}"#, d28), .badEntry, tensor: "a")
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[-7],"data_offsets":[0,28]}}"#, d28), .badEntry, tensor: "a")
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[7],"data_offsets":[0]}}"#, d28), .badEntry, tensor: "a")
        // Bad dtypes.
        try assertCorrupt(craft(#"{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}}"#, d28), .unsupportedDType, tensor: "a")
        try assertCorrupt(craft(#"{"a":{"dtype":"Q7","shape":[7],"data_offsets":[0,28]}}"#, d28), .unsupportedDType, tensor: "a")
        // Offsets out of range / reversed.
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#, d28), .offsetsOutOfRange, tensor: "a")
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[30,34]}}"#, d28), .offsetsOutOfRange, tensor: "a")
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#, d28), .offsetsOutOfRange, tensor: "a")
        // shape x dtype size != span.
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,28]}}"#, d28), .sizeMismatch, tensor: "a")
        try assertCorrupt(craft(#"{"a":{"dtype":"BF16","shape":[7],"data_offsets":[0,28]}}"#, d28), .sizeMismatch, tensor: "a")
        // Overlap, gap, uncovered trailing bytes.
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}}"#, d28), .overlap, tensor: "b")
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}}"#, d28), .gap, tensor: "b")
        try assertCorrupt(craft(#"{"a":{"dtype":"F32","shape":[6],"data_offsets":[0,24]}}"#, d28), .gap)
        // A valid hand-made file with metadata, a zero-size tensor and padding is accepted.
        let ok = craft(#"{"__metadata__":{"k":"v"},"z":{"dtype":"F32","shape":[0],"data_offsets":[28,28]},"a":{"dtype":"F32","shape":[7],"data_offsets":[0,28]}}   "#, d28)
        let (meta, sd) = try SafeTensors.decode(ok)
        XCTAssertEqual(meta, ["k": "v"])
        XCTAssertEqual(sd["a"]?.values, [Float](repeating: 0, count: 7))
        XCTAssertEqual(sd["z"]?.shape, [0])
        // Missing file.
        XCTAssertThrowsError(try SafeTensorsReader(path: "/nonexistent/x.safetensors")) {
            XCTAssertEqual(($0 as? SafeTensorsError)?.kind, .io)
        }
    }

    /// The typing rules the HF readers rely on, on values as JSONSerialization returns them: booleans are not
    /// numbers, integers may be written as integral floats, and integers parse exactly (offsets past 4 GB).
    func testJSONValues() throws {
        let v = try XCTUnwrap(JSONValue.parse(Data(#"[1, 4.0, 1e2, 4.5, true, false, null, "7", 9007199254740993, 18446744073709551615, 1e16, [], {}]"#.utf8)) as? [Any])
        XCTAssertEqual(v.map(JSONValue.int), [1, 4, 100, nil, nil, nil, nil, nil, 9007199254740993, nil, nil, nil, nil])
        XCTAssertEqual(v.map(JSONValue.bool), [nil, nil, nil, nil, true, false, nil, nil, nil, nil, nil, nil, nil])
        XCTAssertEqual(v.map(JSONValue.typeName), ["integer", "number", "number", "number", "bool", "bool", "null", "string",
                                                   "integer", "integer", "number", "array", "object"])
        XCTAssertEqual(JSONValue.describe(v[7]), #"string "7""#)
        XCTAssertEqual(JSONValue.describe(["a/b": [1, 2.5]]), #"object {"a/b":[1,2.5]}"#)
        XCTAssertNil(JSONValue.bool(1))
        XCTAssertNil(JSONValue.int(true))
        for bad in ["", "{", "{\"a\" 1}", "01", "\"abc", "tru", "[1] x", "[NaN]"] {
            XCTAssertThrowsError(try JSONValue.parse(Data(bad.utf8)), bad)
        }
        let big = #"{"a":{"dtype":"F32","shape":[1250000000],"data_offsets":[0,5000000000]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[5000000000,5000000004]}}"#
        let header = try SafeTensorsHeader.parse(json: Array(big.utf8), dataLength: 5_000_000_004, file: "big")
        XCTAssertEqual(header.tensors["b"]?.dataOffsets, 5_000_000_000..<5_000_000_004)
    }
}
