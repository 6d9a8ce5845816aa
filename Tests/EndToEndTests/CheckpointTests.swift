import Foundation
import XCTest

/// Distributed checkpoints through the CLI, on real rank processes: save on one topology, resume on another
/// (resharding), atomic saves under a killed rank, HF export and `titan convert`, corrupt checkpoints.
/// Model and data: the tiny HF fixture recipe (Tests/ModelTests/Fixtures/qwen3_moe), 10 steps, global batch 8.
final class CheckpointTests: XCTestCase {
    static let fixtures = TrainingParityTests.fixtures

    struct Step: Decodable, Equatable { var step: Int; var loss: Double; var grad_norm: Double }

    /// Fixture recipe + aux-loss-free load balancing (so the expert_bias buffers are part of the state).
    static func recipe(_ model: String = "qwen3_moe") throws -> [String] {
        try TrainingParityTests.expected(model).recipe.cli_overrides + [
            "--checkpoint.initial_load_path", "\(fixtures)/\(model)", "--checkpoint.initial_load_in_hf", "true",
            "--dataloader.dataset", "tokens", "--dataloader.dataset_path", "\(fixtures)/tokens.npy",
            "--comm.timeout_seconds", "30", "--model.moe.load_balance_coeff", "0.001"]
    }

    /// (ranks, extra overrides) of a topology with global batch 8.
    static func topology(ranks: Int, replicate: Int = 1, ep: Int) -> (Int, [String]) {
        (ranks, ["--training.local_batch_size", "\(8 / ranks)",
                 "--parallelism.data_parallel_replicate_degree", "\(replicate)",
                 "--parallelism.data_parallel_shard_degree", "\(ranks / replicate)",
                 "--parallelism.expert_parallel_degree", "\(ep)"])
    }

    @discardableResult
    func train(dump: String, _ topo: (Int, [String]), _ extra: [String] = [], model: String = "qwen3_moe",
               expectSuccess: Bool = true, file: StaticString = #filePath, line: UInt = #line) throws -> Titan.Run {
        let args = try Self.recipe(model) + topo.1 + ["--job.dump_folder", dump] + extra
        let r = try Titan.run(["launch", "--ranks", "\(topo.0)", "--dump-folder", dump, "--", "train"] + args)
        if expectSuccess {
            XCTAssertEqual(r.status, 0, "\(topo) \(extra): \(r.stderr.suffix(3000))", file: file, line: line)
        }
        return r
    }

    func metrics(_ dump: String) throws -> [Step] {
        let lines = (try? String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8))?.split(separator: "\n") ?? []
        return try lines.map { try JSONDecoder().decode(Step.self, from: Data($0.utf8)) }
    }

    /// A fresh run folder whose checkpoint folder holds only `stepFolder` (copied), named by `latest`.
    func runFolder(resumingFrom stepFolder: String) throws -> String {
        let dump = temporaryFolder()
        let ckpt = dump + "/checkpoint"
        try FileManager.default.createDirectory(atPath: ckpt, withIntermediateDirectories: true)
        let name = (stepFolder as NSString).lastPathComponent
        try FileManager.default.copyItem(atPath: stepFolder, toPath: ckpt + "/" + name)
        try Data((name + "\n").utf8).write(to: URL(fileURLWithPath: ckpt + "/latest"))
        return dump
    }

    func latest(_ dump: String) -> String? {
        (try? String(contentsOfFile: dump + "/checkpoint/latest", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func contents(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }

    func assertClose(_ got: [Step], _ want: [Step], rel: Double, _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.map(\.step), want.map(\.step), label, file: file, line: line)
        for (g, w) in zip(got, want) {
            XCTAssertLessThan(abs(g.loss - w.loss) / abs(w.loss), rel, "\(label) step \(g.step) loss \(g.loss) vs \(w.loss)", file: file, line: line)
            XCTAssertLessThan(abs(g.grad_norm - w.grad_norm) / abs(w.grad_norm), rel,
                              "\(label) step \(g.step) grad_norm \(g.grad_norm) vs \(w.grad_norm)", file: file, line: line)
        }
    }

    /// Save at step 5 on 8 ranks (shard 8 × ep 2); resume to step 10 on the same topology (bit for bit the
    /// uninterrupted run, down to the saved step-10 files and the HF export) and on 4 ranks (shard 4 × ep 4),
    /// 1 rank and HSDP 2 × 4 (within 1e-5 relative).
    func testResumeReshardsAcrossTopologiesAndSameTopologyIsBitwise() throws {
        let eight = Self.topology(ranks: 8, ep: 2)
        let ckptArgs = ["--checkpoint.enable", "true", "--checkpoint.interval", "5", "--checkpoint.last_save_in_hf", "true"]
        let full = temporaryFolder()
        try train(dump: full, eight, ckptArgs)
        let reference = try metrics(full)
        XCTAssertEqual(reference.map(\.step), Array(1...10))
        XCTAssertEqual(latest(full), "step-10")
        let fm = FileManager.default
        for f in ["step-5/metadata.json", "step-10/metadata.json", "step-10-hf/config.json", "step-10-hf/model.safetensors"] {
            XCTAssertTrue(fm.fileExists(atPath: full + "/checkpoint/" + f), f)
        }
        for k in 0..<8 { XCTAssertTrue(fm.fileExists(atPath: full + "/checkpoint/step-5/rank-\(k).safetensors"), "rank-\(k)") }
        let want = Array(reference[5...])

        // Same topology: bitwise.
        let same = try runFolder(resumingFrom: full + "/checkpoint/step-5")
        let r = try train(dump: same, eight, ckptArgs)
        XCTAssertTrue(r.stdout.contains("resumed from"), r.stdout.suffix(2000).description)
        let resumed = try metrics(same)
        XCTAssertEqual(resumed.map(\.step), Array(6...10), "resume logs only the remaining steps")
        XCTAssertEqual(resumed.map(\.loss.bitPattern), want.map(\.loss.bitPattern), "same-topology resume is bitwise")
        XCTAssertEqual(resumed.map(\.grad_norm.bitPattern), want.map(\.grad_norm.bitPattern))
        for k in 0..<8 {
            let f = "/checkpoint/step-10/rank-\(k).safetensors"
            XCTAssertEqual(contents(same + f), contents(full + f), "\(f): weights and AdamW state after resume")
        }
        XCTAssertEqual(contents(same + "/checkpoint/step-10-hf/model.safetensors"), contents(full + "/checkpoint/step-10-hf/model.safetensors"))

        // Other topologies: resharded weights, optimizer state and expert bias.
        for (label, topo) in [("4 ranks shard 4 ep 4", Self.topology(ranks: 4, ep: 4)),
                              ("1 rank", Self.topology(ranks: 1, ep: 1)),
                              ("HSDP 2x4 ep 2", Self.topology(ranks: 8, replicate: 2, ep: 2))] {
            let dump = try runFolder(resumingFrom: full + "/checkpoint/step-5")
            try train(dump: dump, topo, ["--checkpoint.enable", "true", "--checkpoint.interval", "5"])
            assertClose(try metrics(dump), want, rel: 1e-5, label)
        }

        // A checkpoint saved with HSDP (only replica 0 writes) resumes on 4 ranks.
        let hsdp = temporaryFolder()
        try train(dump: hsdp, Self.topology(ranks: 8, replicate: 2, ep: 2), ["--checkpoint.enable", "true", "--checkpoint.interval", "5"])
        XCTAssertTrue(fm.fileExists(atPath: hsdp + "/checkpoint/step-5/rank-3.safetensors"))
        XCTAssertFalse(fm.fileExists(atPath: hsdp + "/checkpoint/step-5/rank-4.safetensors"), "replica 1 holds duplicates and writes nothing")
        let fromHSDP = try runFolder(resumingFrom: hsdp + "/checkpoint/step-5")
        try train(dump: fromHSDP, Self.topology(ranks: 4, ep: 2), ["--checkpoint.enable", "true"])
        assertClose(try metrics(fromHSDP), want, rel: 1e-5, "saved on HSDP, resumed on 4 ranks")
    }

    /// Checkpoints hold the fp32 masters whatever the precision: a bfloat16 run resumes an fp32 checkpoint and an fp32
    /// run a bfloat16 one, each continuing like the uninterrupted run of its own precision from that state (the same
    /// master weights and optimizer state: within 2e-3 of the uninterrupted run's loss, the bfloat16 bound).
    func testMixedPrecisionResumesAcrossPrecisions() throws {
        let topo = Self.topology(ranks: 4, ep: 2)
        let save = ["--checkpoint.enable", "true", "--checkpoint.interval", "5"]
        let bf16 = ["--training.mixed_precision_param", "bfloat16"]
        for (saved, resumed) in [([String](), bf16), (bf16, [])] {
            let full = temporaryFolder()
            try train(dump: full, topo, save + saved)
            let uninterrupted = temporaryFolder()
            try train(dump: uninterrupted, topo, resumed)
            let dump = try runFolder(resumingFrom: full + "/checkpoint/step-5")
            let r = try train(dump: dump, topo, save + resumed)
            XCTAssertTrue(r.stdout.contains("resumed from"), String(r.stdout.suffix(2000)))
            let got = try metrics(dump), whole = try metrics(uninterrupted)
            XCTAssertEqual(got.map(\.step), Array(6...10))
            for (g, w) in zip(got, whole[5...]) {
                XCTAssertLessThan(abs(g.loss - w.loss) / w.loss, 2e-3, "saved \(saved), resumed \(resumed): step \(g.step)")
            }
        }
    }

    /// A rank SIGKILLed while saving step 10 (after writing its rank file, before the save completed) leaves
    /// `latest` on step 5, which then resumes; the next good save removes the stale temporary folder.
    func testRankKilledDuringSaveLeavesPreviousCheckpointLoadable() throws {
        let topo = Self.topology(ranks: 4, ep: 2)
        let args = ["--checkpoint.enable", "true", "--checkpoint.interval", "5", "--checkpoint.keep_latest_k", "1"]
        let dump = temporaryFolder()
        setenv("TITAN_TEST_CRASH_DURING_SAVE", "2:10", 1)
        defer { unsetenv("TITAN_TEST_CRASH_DURING_SAVE") }
        let crashed = try train(dump: dump, topo, args, expectSuccess: false)
        unsetenv("TITAN_TEST_CRASH_DURING_SAVE")
        XCTAssertNotEqual(crashed.status, 0)
        XCTAssertEqual(latest(dump), "step-5")
        let names = try FileManager.default.contentsOfDirectory(atPath: dump + "/checkpoint")
        XCTAssertFalse(names.contains("step-10"), "\(names)")
        XCTAssertTrue(names.contains { $0.hasPrefix("step-10.tmp-") }, "the crashed save's temporary folder: \(names)")
        let before = try metrics(dump)
        XCTAssertEqual(before.map(\.step), Array(1...10))

        try train(dump: dump, topo, args)
        let after = try metrics(dump)
        XCTAssertEqual(after.map(\.step), Array(1...10), "the crashed run's steps 6-10 are replaced, not repeated")
        XCTAssertEqual(after.map(\.loss.bitPattern), before.map(\.loss.bitPattern), "steps 6-10 trained again identically")
        XCTAssertEqual(latest(dump), "step-10")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dump + "/checkpoint").sorted(), ["latest", "step-10"],
                       "stale temp folder removed, step-5 pruned by keep_latest_k 1")
    }

    /// Rank 0 SIGKILLed at the later points of saving step 10: with the metadata written but the folder not renamed
    /// (like a crash before it, a temporary folder is left), and with step-10 renamed into place but `latest` not
    /// moved yet (the save is not complete: `latest` still names step-5). Either way the run resumes from step 5, trains
    /// 6-10 again to the same bits, and the next save replaces what the crash left.
    func testRankZeroKilledLateInSaveResumesFromPreviousCheckpoint() throws {
        let topo = Self.topology(ranks: 4, ep: 2)
        let args = ["--checkpoint.enable", "true", "--checkpoint.interval", "5", "--checkpoint.keep_latest_k", "1"]
        for point in ["metadata", "renamed"] {
            let dump = temporaryFolder()
            setenv("TITAN_TEST_CRASH_DURING_SAVE", "0:10:" + point, 1)
            defer { unsetenv("TITAN_TEST_CRASH_DURING_SAVE") }
            let crashed = try train(dump: dump, topo, args, expectSuccess: false)
            unsetenv("TITAN_TEST_CRASH_DURING_SAVE")
            XCTAssertNotEqual(crashed.status, 0, point)
            XCTAssertEqual(latest(dump), "step-5", point)
            let names = try FileManager.default.contentsOfDirectory(atPath: dump + "/checkpoint")
            if point == "metadata" {
                XCTAssertFalse(names.contains("step-10"), "\(point): \(names)")
                XCTAssertTrue(names.contains { $0.hasPrefix("step-10.tmp-") }, "\(point): \(names)")
            } else {
                XCTAssertTrue(names.contains("step-10"), "\(point): \(names)")
                XCTAssertFalse(names.contains { $0.contains(".tmp-") }, "\(point): \(names)")
            }
            let before = try metrics(dump)
            XCTAssertEqual(before.map(\.step), Array(1...10), point)

            try train(dump: dump, topo, args)
            let after = try metrics(dump)
            XCTAssertEqual(after.map(\.step), Array(1...10), point)
            XCTAssertEqual(after.map(\.loss.bitPattern), before.map(\.loss.bitPattern), "\(point): steps 6-10 trained again identically")
            XCTAssertEqual(latest(dump), "step-10", point)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dump + "/checkpoint").sorted(), ["latest", "step-10"], point)
        }
    }

    /// `titan convert` writes the same HF folder as the trainer's export; corrupt and mismatched checkpoints are
    /// clear errors naming the file, before training starts.
    func testConvertMatchesExportAndCorruptCheckpointsFail() throws {
        let dump = temporaryFolder()
        try train(dump: dump, Self.topology(ranks: 4, ep: 2),
                  ["--training.steps", "6", "--checkpoint.enable", "true", "--checkpoint.interval", "3", "--checkpoint.last_save_in_hf", "true"])
        let ckpt = dump + "/checkpoint"
        let out = temporaryFolder()
        var r = try Titan.run(["convert", "--from", ckpt, "--to", out])   // the checkpoint folder: its latest
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertNotNil(contents(out + "/model.safetensors"))
        XCTAssertEqual(contents(out + "/model.safetensors"), contents(ckpt + "/step-6-hf/model.safetensors"))
        XCTAssertEqual(contents(out + "/config.json"), contents(ckpt + "/step-6-hf/config.json"))
        r = try Titan.run(["convert", "--from", ckpt + "/step-3", "--to", out + "-3"])
        XCTAssertEqual(r.status, 0, r.stderr)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: out + "-3") }
        XCTAssertNotEqual(contents(out + "-3/model.safetensors"), contents(out + "/model.safetensors"))

        // Corruptions of a copy of step-6; each must name the file at fault, for convert and for a resume.
        typealias Corruption = (name: String, mustName: String, apply: (String) throws -> Void)
        let corruptions: [Corruption] = [
            ("truncated rank file", "rank-1.safetensors", { step in
                let h = try FileHandle(forWritingTo: URL(fileURLWithPath: step + "/rank-1.safetensors"))
                try h.truncate(atOffset: 500); try h.close() }),
            ("missing rank file", "rank-2.safetensors", { step in try FileManager.default.removeItem(atPath: step + "/rank-2.safetensors") }),
            ("bad safetensors header", "rank-0.safetensors", { step in
                let h = try FileHandle(forWritingTo: URL(fileURLWithPath: step + "/rank-0.safetensors"))
                try h.write(contentsOf: Data([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])); try h.close() }),
            ("garbage metadata", "metadata.json", { step in try Data("{not json".utf8).write(to: URL(fileURLWithPath: step + "/metadata.json")) }),
            ("missing pieces", "metadata.json", { step in
                // Drop every piece stored in rank-3.safetensors from the layout.
                let url = URL(fileURLWithPath: step + "/metadata.json")
                var meta = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
                var state = meta["state"] as! [String: [String: Any]]
                for (key, var entry) in state {
                    entry["pieces"] = (entry["pieces"] as! [[String: Any]]).filter { ($0["file"] as! String) != "rank-3.safetensors" }
                    state[key] = entry
                }
                meta["state"] = state
                try JSONSerialization.data(withJSONObject: meta).write(to: url) }),
        ]
        for c in corruptions {
            let resume = try runFolder(resumingFrom: ckpt + "/step-6")
            let step = resume + "/checkpoint/step-6"
            try c.apply(step)
            let conv = try Titan.run(["convert", "--from", step, "--to", resume + "/hf"])
            XCTAssertNotEqual(conv.status, 0, c.name)
            XCTAssertTrue(conv.stderr.contains(c.mustName), "\(c.name): \(conv.stderr)")
            let t = try train(dump: resume, Self.topology(ranks: 2, ep: 2), ["--training.steps", "8", "--checkpoint.enable", "true"],
                              expectSuccess: false)
            XCTAssertNotEqual(t.status, 0, c.name)
            XCTAssertTrue((t.stderr + t.stdout).contains(c.mustName), "\(c.name): \(t.stderr.suffix(2000))")
            XCTAssertEqual(try metrics(resume), [], "\(c.name): nothing trained")
        }

        // A checkpoint of another model shape.
        let other = try runFolder(resumingFrom: ckpt + "/step-6")
        let t = try train(dump: other, Self.topology(ranks: 2, ep: 1), ["--training.steps", "8", "--checkpoint.enable", "true"],
                          model: "qwen3_dense", expectSuccess: false)
        XCTAssertNotEqual(t.status, 0)
        XCTAssertTrue(t.stderr.contains("metadata.json") && t.stderr.contains("does not match the model"), t.stderr.suffix(2000).description)
        XCTAssertEqual(try metrics(other), [])
    }
}
