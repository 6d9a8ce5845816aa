import Collectives
import Config
import Foundation
import Model
import Parallel
import Tensor
@testable import Train
import XCTest

/// Distributed checkpoint layout, validation and resharding, with ranks as threads of this process.
final class CheckpointUnitTests: XCTestCase {
    func folder() -> String {
        let path = NSTemporaryDirectory() + "titan-ckpt-unit-\(UUID().uuidString.prefix(8))"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    static var args: Qwen3ModelArgs {
        var a = Qwen3ModelArgs()
        a.vocab_size = 64; a.dim = 16; a.n_layers = 2; a.n_heads = 2; a.n_kv_heads = 1; a.head_dim = 8
        a.hidden_dim = 24; a.max_seq_len = 32; a.moe_enabled = true
        a.moe.num_experts = 4; a.moe.top_k = 2; a.moe.hidden_dim = 8; a.moe.load_balance_coeff = 1e-3
        return a
    }

    /// A value that depends only on (fqn, position in the full tensor, which state): any topology can check it.
    static func marker(_ fqn: String, _ i: Int, _ state: Int) -> Float {
        Float(fqn.utf8.reduce(0) { ($0 &* 31 &+ Int($1)) % 1000 }) + Float(i) * 0.001 + Float(state) * 1000
    }

    func testStepNames() {
        XCTAssertEqual(Checkpoint.stepNumber("step-12"), 12)
        XCTAssertNil(Checkpoint.stepNumber("step-12.tmp-job"))
        XCTAssertNil(Checkpoint.stepNumber("step-12-hf"))
        XCTAssertNil(Checkpoint.stepNumber("step-"))
        XCTAssertNil(Checkpoint.stepNumber("latest"))
    }

    func testFolderIsRelativeToDumpFolderUnlessAbsolute() {
        var c = CheckpointConfig()
        XCTAssertEqual(c.folder(dumpFolder: "/runs/a"), "/runs/a/checkpoint")
        c.folder = "/elsewhere/ck"
        XCTAssertEqual(c.folder(dumpFolder: "/runs/a"), "/elsewhere/ck")
    }

    func testLatestStepFolder() throws {
        let f = folder()
        let fm = FileManager.default
        XCTAssertNil(try Checkpoint.latestStepFolder(in: f), "no folder: no checkpoint")
        for n in ["step-2", "step-10", "step-20.tmp-x", "step-30-hf"] { try fm.createDirectory(atPath: f + "/" + n, withIntermediateDirectories: true) }
        XCTAssertNil(try Checkpoint.latestStepFolder(in: f), "no metadata anywhere: nothing complete")
        for n in ["step-2", "step-10", "step-20.tmp-x"] { _ = fm.createFile(atPath: f + "/\(n)/metadata.json", contents: Data("{}".utf8)) }
        XCTAssertEqual(try Checkpoint.latestStepFolder(in: f), f + "/step-10", "newest complete step without a marker")
        try Data("step-2\n".utf8).write(to: URL(fileURLWithPath: f + "/latest"))
        XCTAssertEqual(try Checkpoint.latestStepFolder(in: f), f + "/step-2", "the marker wins")
        try Data("step-7\n".utf8).write(to: URL(fileURLWithPath: f + "/latest"))
        XCTAssertThrowsError(try Checkpoint.latestStepFolder(in: f)) { e in
            XCTAssertTrue("\(e)".contains("step-7"), "\(e)")
        }
        XCTAssertThrowsError(try Checkpoint.resolveStepFolder(f + "/nope"))
    }

    func meta(_ pieces: [(Int, Int)], numel: Int) -> CheckpointMetadata {
        CheckpointMetadata(format: CheckpointMetadata.formatName, format_version: 1, step: 1, dataloader_position: 1,
                           lr_scheduler_step: 1, rng: "", model_args: .qwen3(Self.args),
                           topology: CheckpointTopology(world_size: 1, replicate: 1, shard: 1, ep: 1), job_id: "t",
                           files: ["rank-0.safetensors"],
                           state: ["model/w": CheckpointEntry(shape: [numel], pieces: pieces.map {
                               CheckpointPiece(file: "rank-0.safetensors", tensor: "model/w@\($0.0)", offset: $0.0, count: $0.1) })],
                           buffers: [:])
    }

    func testCoverageValidation() throws {
        XCTAssertNoThrow(try Checkpoint.validateCoverage(meta([(0, 4), (4, 6)], numel: 10), path: "m"))
        XCTAssertNoThrow(try Checkpoint.validateCoverage(meta([(4, 6), (0, 4)], numel: 10), path: "m"))
        for (pieces, what) in [([(0, 4), (5, 5)], "in no piece"), ([(0, 4), (3, 7)], "overlaps"), ([(0, 4)], "cover 4 of 10")] {
            XCTAssertThrowsError(try Checkpoint.validateCoverage(meta(pieces, numel: 10), path: "m")) { e in
                XCTAssertTrue("\(e)".contains(what) && "\(e)".contains("'model/w'"), "\(e)")
            }
        }
    }

    func testModelMismatchIsAClearError() {
        let m = meta([(0, 10)], numel: 10)
        XCTAssertThrowsError(try Checkpoint.validateModel(m, expected: ["model/w": [2, 5]], bufferShapes: [:], args: .qwen3(Self.args), path: "x/metadata.json")) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("x/metadata.json") && s.contains("does not match the model") && s.contains("'model/w' has shape [10]"), s)
        }
    }

    /// A checkpointer saving into `folder` (absolute, so the run folder does not matter).
    func checkpointer(_ folder: String, _ comm: Communicator) -> Checkpointer {
        var c = CheckpointConfig()
        c.enable = true
        c.folder = folder
        c.keep_latest_k = 0
        return Checkpointer(c, dumpFolder: "/unused", comm: comm, log: { _ in })
    }

    /// A save runs its collectives under the start-up deadline when the steady one is shorter (others wait on disks
    /// there), and the steady one is back afterwards.
    func testSaveRunsUnderTheStartUpDeadline() throws {
        let ckpt = folder()
        let args = Self.args
        let seen = DeadlineLog()
        let failures = InProcessCluster.run(worldSize: 2, timeoutSeconds: 30) { comm in
            let mesh = try DeviceMesh(comm: comm, dims: ParallelDims(replicate: 1, shard: 2, ep: 1), numExperts: args.moe.num_experts)
            let fsdp = try parallelize(try Qwen3Model(args: args, seed: 3), mesh: mesh, reshardAfterForward: .default)
            let optimizer = OptimizerConfig().build(shards: fsdp.shards)
            try comm.setTimeout(seconds: 5)   // as after the first step
            try self.checkpointer(ckpt, comm).saveIfDue(step: 2, lastStep: 2, model: fsdp, optimizer: optimizer, modelArgs: .qwen3(args),
                                                             dataloader: { seen.add(comm.timeoutSeconds); return DataLoaderState(next_window: 2, document: nil) })
            seen.add(comm.timeoutSeconds)
        }
        XCTAssertTrue(failures.allSatisfy { $0 == nil }, "\(failures)")
        XCTAssertEqual(seen.values.sorted(), [5, 5, 30, 30])
    }

    /// Save on 4 ranks (shard 4 × ep 2), load on 2 ranks (shard 2, no EP) and 3 ranks (uneven shards):
    /// parameters, both AdamW moments and the expert bias come back exactly, element by element.
    func testSaveOnFourRanksLoadOnTwoAndThree() throws {
        let ckpt = folder()
        let args = Self.args
        let saved = try Qwen3Model(args: args, seed: 3).stateDict()
        let failures = InProcessCluster.run(worldSize: 4, timeoutSeconds: 30) { comm in
            let mesh = try DeviceMesh(comm: comm, dims: ParallelDims(replicate: 1, shard: 4, ep: 2), numExperts: args.moe.num_experts)
            let model = try Qwen3Model(args: args, seed: 3)
            for b in model.buffers { b.tensor.data.update(repeating: Float(b.fqn.count), count: b.tensor.count) }
            let fsdp = try parallelize(model, mesh: mesh, reshardAfterForward: .default)
            let optimizer = OptimizerConfig().build(shards: fsdp.shards)
            for st in optimizer.states {
                for j in 0..<st.shard.count {
                    st.expAvg.data[j] = Self.marker(st.shard.fqn, st.shard.offset + j, 1)
                    st.expAvgSq.data[j] = Self.marker(st.shard.fqn, st.shard.offset + j, 2)
                }
            }
            try self.checkpointer(ckpt, comm).saveIfDue(step: 7, lastStep: 7, model: fsdp, optimizer: optimizer, modelArgs: .qwen3(args),
                                                             dataloader: { DataLoaderState(next_window: 7, document: nil) })
        }
        XCTAssertTrue(failures.allSatisfy { $0 == nil }, "\(failures)")
        XCTAssertEqual(try String(contentsOfFile: ckpt + "/latest", encoding: .utf8), "step-7\n")
        let meta = try Checkpoint.readMetadata(stepFolder: ckpt + "/step-7")
        XCTAssertEqual(meta.step, 7)
        XCTAssertEqual(meta.topology, CheckpointTopology(world_size: 4, replicate: 1, shard: 4, ep: 2))
        XCTAssertEqual(meta.files.count, 4)

        // One-process assembly (titan convert) gives back the full state dict.
        let full = try Checkpoint.assembleFull(stepFolder: ckpt + "/step-7").stateDict
        for (n, t) in saved where !n.hasSuffix("expert_bias") { XCTAssertEqual(full[n], t, n) }

        for dims in [ParallelDims(replicate: 1, shard: 2, ep: 1), ParallelDims(replicate: 1, shard: 3, ep: 1)] {
            let failures = InProcessCluster.run(worldSize: dims.world, timeoutSeconds: 30) { comm in
                let mesh = try DeviceMesh(comm: comm, dims: dims, numExperts: args.moe.num_experts)
                let model = try Qwen3Model(args: args, seed: 99)   // different weights: the checkpoint must overwrite them
                let fsdp = try parallelize(model, mesh: mesh, reshardAfterForward: .default)
                let optimizer = OptimizerConfig().build(shards: fsdp.shards)
                let checkpointer = self.checkpointer(ckpt, comm)
                let step = try checkpointer.load(resumeFolder: try checkpointer.resumeFolder(), model: fsdp, optimizer: optimizer, modelArgs: .qwen3(args))
                XCTAssertEqual(step, 7)
                for st in optimizer.states {
                    let s = st.shard
                    for j in 0..<s.count {
                        XCTAssertEqual(st.expAvg.data[j], Self.marker(s.fqn, s.offset + j, 1), "\(dims) \(s.fqn)[\(s.offset + j)]")
                        XCTAssertEqual(st.expAvgSq.data[j], Self.marker(s.fqn, s.offset + j, 2))
                        if st.expAvg.data[j] != Self.marker(s.fqn, s.offset + j, 1) { return }
                    }
                }
                let sd = try fsdp.fullStateDict()
                for (n, t) in saved {
                    if n.hasSuffix("expert_bias") {
                        XCTAssertEqual(sd[n]?.values, [Float](repeating: Float(n.count), count: t.values.count), n)
                    } else {
                        XCTAssertEqual(sd[n], t, "\(dims) \(n)")
                    }
                }
            }
            XCTAssertTrue(failures.allSatisfy { $0 == nil }, "\(dims): \(failures)")
        }
    }
}

private final class DeadlineLog: @unchecked Sendable {
    private let lock = NSLock()
    private var seen: [Double] = []
    func add(_ v: Double) { lock.lock(); seen.append(v); lock.unlock() }
    var values: [Double] { lock.lock(); defer { lock.unlock() }; return seen }
}
