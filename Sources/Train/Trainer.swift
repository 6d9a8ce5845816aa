import CLinux
import Collectives
import Config
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Model
import Parallel
import Runtime
import Tensor

/// The training loop (torchtitan's Trainer): builds the model, applies expert parallelism and FSDP
/// from outside, and runs steps of forward/backward, gradient clipping and AdamW on this rank's shards.
/// The same code runs on one rank and on many; only the mesh differs.
public final class Trainer {
    public let config: TrainerConfig
    let comm: Communicator
    let log: (String) -> Void

    public struct Summary {
        public var losses: [Double]
        public var gradNorms: [Double]
    }

    public init(config: TrainerConfig, comm: Communicator, log: @escaping (String) -> Void) {
        self.config = config
        self.comm = comm
        self.log = log
    }

    /// The parallelism degrees, with data_parallel_shard_degree -1 filling the rest of the world.
    static func dims(_ p: ParallelismSection, worldSize: Int) -> ParallelDims {
        let shard = p.data_parallel_shard_degree == -1
            ? worldSize / max(p.data_parallel_replicate_degree, 1) : p.data_parallel_shard_degree
        return ParallelDims(replicate: p.data_parallel_replicate_degree, shard: shard, ep: p.expert_parallel_degree)
    }

    /// Architecture and initial weights: from an HF folder when asked, else the config's args and seed.
    /// `resuming`: a checkpoint will overwrite the weights, so an HF folder only supplies the architecture.
    func buildModel(resuming: Bool = false) throws -> Qwen3Model {
        let job = config.job
        var args = config.model_args
        var initial: InitialWeights?
        if job.checkpoint.initial_load_in_hf {
            guard let path = job.checkpoint.initial_load_path else {
                throw ConfigError.invalid(key: "checkpoint.initial_load_path", reason: "checkpoint.initial_load_in_hf needs a folder")
            }
            // The shape comes from the folder's config.json; how experts are computed stays ours. The weights are read
            // on demand: each rank reads just its slices (HF has no expert bias: it starts at 0).
            var hfArgs = try HFConfig.load(path: (path as NSString).appendingPathComponent("config.json"))
            if !resuming { initial = try HFInitialWeights(folder: path, args: hfArgs) }
            hfArgs.moe.use_grouped_mm = args.moe.use_grouped_mm
            hfArgs.moe.load_balance_coeff = args.moe.load_balance_coeff
            args = hfArgs
        }
        if job.training.seq_len > args.max_seq_len {
            throw ConfigError.invalid(key: "training.seq_len", reason: "\(job.training.seq_len) exceeds the model's max_seq_len \(args.max_seq_len)")
        }
        // Nothing is materialized here: FSDP (after expert parallelism) initialises only this rank's shards, with the
        // values the whole model would hold there (random for the seed, or read from the initial weights).
        let model = try Qwen3Model(args: args, seed: UInt64(job.training.seed), materialize: false)
        if let initial { try model.setInitialWeights(initial) }
        return model
    }

    /// The step folder to resume from, decided by rank 0 and shared with every rank, so all ranks
    /// resume from the same checkpoint (or all start fresh) even without a shared view of the folder.
    func agreedResumeFolder(_ folder: String) throws -> String? {
        var decision: [UInt8] = []
        if comm.rank == 0 {
            do { decision = Array(("+" + (try Checkpoint.latestStepFolder(in: folder) ?? "")).utf8) }
            catch { decision = Array(("!" + "\(error)").utf8) }
        }
        let text = String(decoding: try comm.world.allGatherBytes(decision)[0], as: UTF8.self)
        if text.hasPrefix("!") { throw CheckpointError(path: folder, "rank 0 could not pick a checkpoint: \(text.dropFirst())") }
        let path = String(text.dropFirst())
        return path.isEmpty ? nil : path
    }

    @discardableResult
    public func run() throws -> Summary {
        let job = config.job
        let dims = Self.dims(job.parallelism, worldSize: comm.worldSize)
        // torchtitan: resume from checkpoint.folder when it holds a checkpoint; initial_load_path only otherwise.
        let ckptFolder = Checkpoint.folder(job)
        let resumeFrom = job.checkpoint.enable ? try agreedResumeFolder(ckptFolder) : nil
        let model = try buildModel(resuming: resumeFrom != nil)
        let args = model.args
        try dims.validate(worldSize: comm.worldSize, numExperts: args.moe_enabled ? args.moe.num_experts : nil)
        let mesh = try DeviceMesh(comm: comm, dims: dims)
        if let ep = mesh.ep {
            try ExpertParallel.apply(to: model, epGroup: ep)
            // A failed exchange becomes a typed error after backward instead of stopping the process.
            for dispatcher in ExpertParallel.dispatchers(in: model) { dispatcher.failFast = false }
        }
        let fsdp = try FullyShardedModel(model: model, mesh: mesh,
                                         reshardAfterForward: job.parallelism.fsdp_reshard_after_forward != .never,
                                         keepLastBlockGathered: job.parallelism.fsdp_reshard_after_forward == .default)
        model.clearInitialWeights()   // the shards hold what this rank needs

        let L = job.training.seq_len, B = job.training.local_batch_size
        let tokens = try loadTokenStream(job, vocabSize: args.vocab_size, dataParallelDegree: mesh.dataParallelDegree)
        let loader = DataLoader(tokens: tokens, seqLen: L, localBatchSize: B,
                                dpDegree: mesh.dataParallelDegree, dpRank: mesh.dataParallelRank)
        let globalTokens = B * L * mesh.dataParallelDegree

        let adamw = AdamWConfig(job.optimizer)
        let schedule = LRSchedule(job)
        let expAvg = fsdp.shards.map { Tensor(shape: [max($0.count, 1)]) }
        let expAvgSq = fsdp.shards.map { Tensor(shape: [max($0.count, 1)]) }

        // Checkpoint state: resharded onto this topology (validated before anything is trained).
        var lastStep = 0
        if let resumeFrom {
            lastStep = try Checkpoint.load(stepFolder: resumeFrom, fsdp: fsdp, modelArgs: args, expAvg: expAvg, expAvgSq: expAvgSq).step
            if comm.rank == 0 { log("checkpoint: resumed from \(resumeFrom) at step \(lastStep)") }
        } else if let path = job.checkpoint.initial_load_path, !job.checkpoint.initial_load_in_hf {
            // A distributed checkpoint as initial weights (torchtitan's initial_load_model_only): weights, not step.
            let stepFolder = try Checkpoint.resolveStepFolder(path)
            _ = try Checkpoint.load(stepFolder: stepFolder, fsdp: fsdp, modelArgs: args, expAvg: expAvg, expAvgSq: expAvgSq, modelOnly: true)
            if comm.rank == 0 { log("checkpoint: initial weights from \(stepFolder)") }
        }
        let totalSteps = job.training.steps

        let isLogger = comm.rank == 0
        var metrics: MetricsWriter?
        if isLogger {
            try writeConfigJSON(config, dumpFolder: job.job.dump_folder)
            let metricsPath = job.job.dump_folder + "/metrics.jsonl"
            // Steps a crashed run logged after its last checkpoint are trained again: drop their old lines.
            if lastStep > 0 { try MetricsWriter.dropSteps(after: lastStep, path: metricsPath) }
            metrics = try MetricsWriter(path: metricsPath, append: lastStep > 0)
            log("model \(job.model.name)/\(job.model.flavor): \(model.parameterCount) parameters, \(args.n_layers) layers"
                + (args.moe_enabled ? ", \(args.moe.num_experts) experts top-\(args.moe.top_k)" : ""))
            log("mesh: world \(comm.worldSize) = replicate \(dims.replicate) × shard \(dims.shard), expert parallel \(dims.ep); global batch \(B * mesh.dataParallelDegree) × \(L) tokens")
            log("compute: \(KernelThreads.count) kernel thread(s) per rank; GEMMs on \(BLAS.description)"
                + (IdleCPUs.enabled ? "; idle CPUs lent (GEMMs of >= 2^24 multiply-adds run in two halves)" : ""))
        }
        log("memory per rank: \(fsdp.memoryReport)")

        // Chrome/Perfetto trace (off by default): DUMP/trace/rank-K.json, written after the last step.
        let tracing = job.profiling.enable_trace
        let me = comm.rank
        if tracing {
            Trace.enable()
            Trace.nameThread(pid: me, tid: 0, "train")
            var named = Set<Int>()
            for g in [mesh.world, mesh.dpShard, mesh.dpReplicate, mesh.ep, mesh.expertShard].compactMap({ $0 })
            where named.insert(g.slot).inserted {
                Trace.nameThread(pid: me, tid: Trace.collectiveTrack(group: g.slot), "collectives: group \(g.slot) \(g.members)")
            }
        }

        // Large scratch (collective messages, gathered parameters) is reused from the heap instead of being mmapped and
        // unmapped every step: no page faults / zeroing of fresh pages in the step loop.
        _ = titan_mallopt(-3 /* M_MMAP_THRESHOLD */, 256 << 20)
        _ = titan_mallopt(-1 /* M_TRIM_THRESHOLD */, 512 << 20)

        // With several kernel threads, large GEMMs are split over them (every GEMM implementation runs single-threaded).
        BLAS.splitOnKernelThreads()

        Runtime.install(BlockedTime.observer)
        var summary = Summary(losses: [], gradNorms: [])
        for step in stride(from: lastStep + 1, through: totalSteps, by: 1) {
            let start = Runtime.now()
            BlockedTime.reset()
            let trafficBefore = comm.traffic
            let batch = loader.batch(step: step)
            fsdp.zeroGrad()
            let result = model.forwardBackward(inputs: batch.inputs_BL.map { Int32($0) }, labels: batch.labels_BL.map { Int32($0) },
                                               B: B, T: L, lossScale: 1 / Float(globalTokens))
            try ExpertParallel.throwIfFailed(model)
            try fsdp.finishBackward()

            // torch.nn.utils.clip_grad_norm_ over the global norm of every gradient.
            let gradNorm = try fsdp.gradNormSquared().squareRoot()
            let coefficient = GradClip.coefficient(totalNorm: Float(gradNorm), maxNorm: Float(job.training.max_norm))
            let lr = schedule.lr(step: step)
            let optStart = Trace.enabled ? Runtime.now() : 0
            // Clipping and AdamW fused and vectorised (bit-identical to GradClip.scale + AdamW.step), split into
            // element ranges on the kernel threads (same result for any split).
            let scalars = AdamWScalars(lr: lr, beta1: adamw.beta1, beta2: adamw.beta2, eps: adamw.eps,
                                       weightDecay: adamw.weight_decay, step: step, clip: coefficient)
            for (i, shard) in fsdp.shards.enumerated() where shard.count > 0 {
                let m = expAvg[i].data, v = expAvgSq[i].data
                parallelFor(shard.count, costPerItem: 16) { r in
                    let o = r.lowerBound
                    adamw_update(param: shard.param + o, grad: shard.grad + o, expAvg: m + o, expAvgSq: v + o, count: r.count, scalars)
                }
            }
            if Trace.enabled { Trace.record("optimizer", pid: me, tid: 0, start: optStart, end: Runtime.now()) }

            // Loss over the global batch; expert load and traffic summed over every rank (the step's collectives, up to
            // here: these bookkeeping all-reduces are not counted).
            let traffic = comm.traffic - trafficBefore
            let sentKinds: [CollectiveKind] = [.allGather, .reduceScatter, .allReduce, .allToAll]
            let sums = try comm.world.allReduce([result.lossSum, Double(ExpertParallel.dispatchBytes(of: model)),
                                                 Double(traffic.totalSent.bytes)] + sentKinds.map { Double(traffic.sent($0).bytes) },
                                                op: .sum)
            let lossSum = sums[0]
            let tokensPerExpert = try comm.world.allReduce(result.tokensPerExpert.flatMap { $0.map(Int64.init) }, op: .sum)
            var perLayer: [[Int]] = []
            var offset = 0
            for layer in result.tokensPerExpert {
                perLayer.append(tokensPerExpert[offset..<(offset + layer.count)].map { Int($0) })
                offset += layer.count
            }
            if args.moe_enabled, args.moe.load_balance_coeff > 0 { model.updateExpertBias(tokensPerExpert: perLayer) }

            let end = Runtime.now()
            let seconds = Double(end - start) / 1e9
            let commWait = Double(BlockedTime.nanoseconds) / 1e9
            if Trace.enabled { Trace.record("step", arg: step, argName: "step", pid: me, tid: 0, start: start, end: end) }
            let loss = lossSum / Double(globalTokens)
            summary.losses.append(loss)
            summary.gradNorms.append(gradNorm)
            if isLogger {
                var extra: [(key: String, value: Double)] = [("max_rss_mb", maxRSSMegabytes()), ("comm_wait_s", commWait),
                                                             ("current_rss_mb", currentRSSMegabytes())]
                if mesh.ep != nil { extra.append(("ep_dispatch_bytes", sums[1])) }
                if comm.worldSize > 1 {
                    // Payload MiB each rank handed to its sockets in this step, the mean over ranks: in total and per kind.
                    let ranks = Double(comm.worldSize)
                    let perRank = { (bytes: Double) in bytes / ranks / 1_048_576 }
                    extra.append(("comm_sent_mb", perRank(sums[2])))
                    for (i, kind) in sentKinds.enumerated() { extra.append(("comm_sent_mb_\(kind)", perRank(sums[3 + i]))) }
                }
                for (layer, counts) in perLayer.enumerated() where !counts.isEmpty {
                    let mean = Double(counts.reduce(0, +)) / Double(counts.count)
                    let variance = counts.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(counts.count)
                    extra += [("expert_load_min_layer\(layer)", Double(counts.min()!)),
                              ("expert_load_max_layer\(layer)", Double(counts.max()!)),
                              ("expert_load_cv_layer\(layer)", mean > 0 ? variance.squareRoot() / mean : 0)]
                }
                let m = StepMetrics(step: step, loss: loss, grad_norm: gradNorm, lr: lr,
                                    tokens_per_sec: Double(globalTokens) / seconds, step_time_s: seconds, extra: extra)
                metrics?.write(m)  // every step (DESIGN: one object per step); log_freq thins the console only
                if step % max(job.metrics.log_freq, 1) == 0 || step == totalSteps { log(m.consoleLine) }
            }
            if job.checkpoint.enable, step % job.checkpoint.interval == 0 || step == totalSteps {
                try Checkpoint.save(folder: ckptFolder, step: step, fsdp: fsdp, modelArgs: args, expAvg: expAvg, expAvgSq: expAvgSq,
                                    keepLatestK: job.checkpoint.keep_latest_k, log: log)
            }
            lastStep = step
        }
        if job.checkpoint.last_save_in_hf {
            // HF export of the final weights: checkpoint.folder/step-N-hf (config.json + model.safetensors).
            let sd = try fsdp.fullStateDict(root: 0)
            if isLogger {
                let hf = Checkpoint.hfExportFolder(folder: ckptFolder, step: lastStep)
                try HFCheckpoint.save(args: args, stateDict: sd, folder: hf)
                log("checkpoint: HF export to \(hf)")
            }
            try comm.world.barrier()
        }
        if IdleCPUs.enabled { log("idle CPUs: \(IdleCPUs.lentTasks) GEMM or loop half(s) of this rank ran on another rank's idle CPU") }
        if isLogger { log("metrics: \(job.job.dump_folder)/metrics.jsonl") }
        if tracing {
            let path = job.job.dump_folder + "/trace/rank-\(me).json"
            try Trace.write(path: path, pid: me)
            log("trace: \(path)" + (Trace.dropped > 0 ? " (\(Trace.dropped) events dropped: buffer full)" : ""))
        }
        return summary
    }
}
