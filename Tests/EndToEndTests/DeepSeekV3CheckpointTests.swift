import Foundation
import XCTest

/// DeepSeek-V3 checkpoints through the CLI: resume on the same topology (bitwise) and on others (resharded, expert
/// bias = e_score_correction_bias included: the recipe turns load balancing on), `titan convert` equal to
/// `--checkpoint.last_save_in_hf`, and the export loaded by transformers as DeepseekV3ForCausalLM giving the trainer's
/// loss (when the reference Python environment is present).
extension CheckpointTests {
    func testDeepSeekV3ResumeReshardsConvertsAndExports() throws {
        let model = "deepseek_v3"
        let eight = Self.topology(ranks: 8, ep: 2)
        let ckptArgs = ["--checkpoint.enable", "true", "--checkpoint.interval", "5", "--checkpoint.last_save_in_hf", "true"]
        let full = temporaryFolder()
        try train(dump: full, eight, ckptArgs, model: model)
        let reference = try metrics(full)
        XCTAssertEqual(reference.map(\.step), Array(1...10))
        let want = Array(reference[5...])

        let same = try runFolder(resumingFrom: full + "/checkpoint/step-5")
        try train(dump: same, eight, ckptArgs, model: model)
        let resumed = try metrics(same)
        XCTAssertEqual(resumed.map(\.loss.bitPattern), want.map(\.loss.bitPattern), "same-topology resume is bitwise")
        XCTAssertEqual(contents(same + "/checkpoint/step-10-hf/model.safetensors"), contents(full + "/checkpoint/step-10-hf/model.safetensors"))

        for (label, topo) in [("1 rank", Self.topology(ranks: 1, ep: 1)),
                              ("HSDP 2x4 ep 4", Self.topology(ranks: 8, replicate: 2, ep: 4))] {
            let dump = try runFolder(resumingFrom: full + "/checkpoint/step-5")
            try train(dump: dump, topo, ["--checkpoint.enable", "true", "--checkpoint.interval", "5"], model: model)
            let got = try metrics(dump)
            XCTAssertEqual(got.map(\.step), want.map(\.step), label)
            for (g, w) in zip(got, want) { XCTAssertLessThan(abs(g.loss - w.loss) / w.loss, 1e-5, "\(label) step \(g.step)") }
        }

        // titan convert of the last checkpoint is the HF export, config included
        let out = temporaryFolder()
        let r = try Titan.run(["convert", "--from", full + "/checkpoint", "--to", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(contents(out + "/model.safetensors"), contents(full + "/checkpoint/step-10-hf/model.safetensors"))
        XCTAssertEqual(contents(out + "/config.json"), contents(full + "/checkpoint/step-10-hf/config.json"))
        let config = try XCTUnwrap(JSONSerialization.jsonObject(with: XCTUnwrap(contents(out + "/config.json"))) as? [String: Any])
        XCTAssertEqual(config["architectures"] as? [String], ["DeepseekV3ForCausalLM"])

        // transformers loads the step-5 export and, on step 6's batch, computes the loss the trainer logged for step 6
        let python = ProcessInfo.processInfo.environment["TITAN_REF_PYTHON"] ?? "/tmp/ref/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no reference Python at \(python)") }
        let hf5 = temporaryFolder()
        XCTAssertEqual(try Titan.run(["convert", "--from", full + "/checkpoint/step-5", "--to", hf5]).status, 0)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("scripts/check_hf_export.py").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [script, "--loss", hf5, "--run", full, "--step", "6"]
        let pipe = Pipe()
        p.standardOutput = pipe; p.standardError = pipe
        try p.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("DeepseekV3ForCausalLM") && text.contains("OK"), text)
    }
}
