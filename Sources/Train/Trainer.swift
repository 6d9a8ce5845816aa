import CLinux
import Collectives
import Foundation
import Model
import Parallel
import Runtime
import Tensor

/// The training loop (torchtitan's Trainer). `init` builds the components the job config describes (model,
/// parallelism applied from outside, data loader, optimizer, LR schedule, checkpointer, metrics, profiler) and
/// restores a checkpoint; `train` runs the steps. The same code runs on one rank and on many; only the mesh differs.
public final class Trainer {
    public let config: JobConfig
    let comm: Communicator
    let log: (String) -> Void

    /// The architecture built: the config's, or an HF folder's when training starts from one.
    let modelArgs: ModelArgs
    let model: TrainableModel
    let mesh: DeviceMesh
    /// The model with expert parallelism and FSDP applied: this rank's parameter shards.
    let parallel: FullyShardedModel
    let dataLoader: DataLoader
    /// The validation loss every validation.freq steps, when enabled.
    let validator: Validator?
    let optimizer: AdamW
    let lrSchedule: LRSchedule
    let checkpointer: Checkpointer
    /// Rank 0 writes the metrics.
    let metrics: MetricsProcessor?
    let profiler: Profiler?
    /// Tokens of one step's global batch (the loss is their mean).
    let tokensPerStep: Int
    /// This rank's fault to inject (first attempt only), if any.
    let fault: FaultConfig?
    /// The last step done (a resumed run starts after the checkpoint's).
    public private(set) var step: Int

    /// `attempt`: restarts before this one (a fault is injected on the first attempt only); `node`: this rank's host.
    public init(config: JobConfig, comm: Communicator, attempt: Int = 0, node: Int = 0, log: @escaping (String) -> Void) throws {
        self.config = config
        self.comm = comm
        self.log = log
        comm.setAlgorithm(config.comm.algorithm)   // before the first collective: every group runs the job's choice
        let rank = comm.rank, L = config.training.seq_len, B = config.training.local_batch_size
        fault = config.fault.targets(rank: rank, node: node, attempt: attempt) ? config.fault : nil

        // Where the run starts: a checkpoint to resume, else initial weights (an HF folder or a distributed
        // checkpoint), else the seed. An HF folder also brings its architecture, checked like the config's.
        checkpointer = Checkpointer(config.checkpoint, dumpFolder: config.job.dump_folder, comm: comm, log: log)
        let resumeFolder = try checkpointer.resumeFolder()
        let (args, initialWeights) = try checkpointer.initialModel(config.model, resuming: resumeFolder != nil)
        var built = config
        built.model.modelArgs = args
        try built.validate()
        modelArgs = args

        // Nothing is materialized: parallelizing (expert parallelism, then FSDP) initialises only this rank's shards,
        // with the values the whole model would hold there (torchtitan's meta-device init).
        model = try args.build(seed: UInt64(config.training.seed), materialize: false)
        if let initialWeights { try model.setInitialWeights(initialWeights) }
        let dims = try built.dims(worldSize: comm.worldSize)
        let microBatches = try built.microBatches(dims)
        let mixedPrecision = MixedPrecisionPolicy(param: config.training.mixed_precision_param,
                                                  reduce: config.training.mixed_precision_reduce)
        var placement = config.parallelism.expert_parallel_placement
        if placement == .auto {
            let traffic = ExpertTraffic(model: model, dims: dims, tokens: B * L, mixedPrecision: mixedPrecision,
                                        reshardAfterForward: config.parallelism.fsdp_reshard_after_forward)
            placement = traffic.placement(dims: dims, hostOfRank: comm.spec.hostIndexOfRank)
        }
        mesh = try DeviceMesh(comm: comm, dims: dims, expertPlacement: placement)
        parallel = try parallelize(model, mesh: mesh, reshardAfterForward: config.parallelism.fsdp_reshard_after_forward,
                                   mixedPrecision: mixedPrecision)
        BLAS.matmulPrecision = mixedPrecision.param   // autocast: the model's matmuls compute in the parameters' format
        model.clearInitialWeights()   // the shards hold what this rank needs

        let globalBatch = B * mesh.dataParallelDegree * microBatches
        tokensPerStep = globalBatch * L
        optimizer = config.optimizer.build(shards: parallel.shards)
        lrSchedule = LRSchedule(config.lr_scheduler, baseLR: config.optimizer.lr, trainingSteps: config.training.steps)
        step = try checkpointer.load(resumeFolder: resumeFolder, model: parallel, optimizer: optimizer, modelArgs: args)
        // The data continue where the checkpoint's left off: its next window (older checkpoints: step × this global
        // batch), and for a document file where that window starts.
        let resumedData = checkpointer.resumedDataLoader
        let source = try config.dataloader.windows(seqLen: L, globalBatch: globalBatch, steps: config.training.steps,
                                                   seed: config.training.seed, vocabSize: args.vocab_size, resume: resumedData?.document)
        dataLoader = DataLoader(source: source, localBatchSize: B, dpDegree: mesh.dataParallelDegree, dpRank: mesh.dataParallelRank,
                                microBatches: microBatches, startStep: step, startWindow: resumedData?.next_window ?? step * globalBatch)
        validator = config.validation.enable
            ? try Validator(config.validation, training: config, vocabSize: args.vocab_size, dpDegree: mesh.dataParallelDegree,
                            dpRank: mesh.dataParallelRank)
            : nil

        var modelLine = "", meshLine = ""   // rank 0's description of the run, for the log and DUMP/run.json
        if rank == 0 {
            try writeConfigJSON(config, dumpFolder: config.job.dump_folder)
            metrics = try MetricsProcessor(config.metrics, dumpFolder: config.job.dump_folder, resumedAt: step,
                                           worldSize: comm.worldSize, hosts: Set(comm.spec.hostIndexOfRank).count,
                                           tokensPerStep: tokensPerStep, lastStep: config.training.steps,
                                           flopsPerToken: args.flopsPerToken(seqLen: L), log: log)
            let source = config.checkpoint.initial_load_in_hf && config.checkpoint.initial_load_path != nil ? "HF config.json" : config.model.flavor
            modelLine = "\(args.family)/\(source): \(model.parameterCount) parameters, \(args.n_layers) layers"
                + (args.hasMoE ? ", \(args.moe.num_experts) experts top-\(args.moe.top_k)" : "") + " (\(args.summary))"
            meshLine = "world \(comm.worldSize) = replicate \(mesh.dims.replicate) × shard \(mesh.dims.shard), expert parallel \(mesh.dims.ep)"
                + (mesh.dims.ep > 1 && placement == .strided ? " (strided)" : "") + "; "
                + "global batch \(globalBatch) × \(L) tokens" + (microBatches > 1 ? " in \(microBatches) micro-batches" : "")
                + (mesh.placementSummary.map { "; " + $0 } ?? "")
            log("model " + modelLine)
            log("mesh: " + meshLine)
        } else {
            metrics = nil
        }
        log("memory per rank: \(parallel.memoryReport), optimizer \(MemoryReport.mebibytes(optimizer.stateBytes))")
        profiler = Profiler.start(config.profiling, rank: rank, dumpFolder: config.job.dump_folder, mesh: mesh, model: model)

        // Large scratch (collective messages, gathered parameters) is reused from the heap instead of being mmapped and
        // unmapped every step: no page faults / zeroing of fresh pages in the step loop.
        _ = titan_mallopt(-3 /* M_MMAP_THRESHOLD */, 256 << 20)
        _ = titan_mallopt(-1 /* M_TRIM_THRESHOLD */, 512 << 20)
        // Large GEMMs split over the kernel threads, and halves lent to idle CPUs, unless the run must give the same
        // bits whatever the thread count and lending (every GEMM implementation runs single-threaded).
        if config.debug.deterministic { IdleCPUs.lendsWork = false } else { BLAS.splitOnKernelThreads() }
        Runtime.install(BlockedTime.observer)
        // The MFU's peak, timed now that GEMMs run as the steps will run them (kernel threads, precision).
        let peakFlops = try jobPeakFlops(config.metrics, world: comm.world)
        metrics?.setPeak(flops: peakFlops, measured: config.metrics.peak_tflops <= 0)
        if rank == 0 {
            let computeLine = "\(KernelThreads.count) kernel thread(s) per rank; GEMMs on "
                + (BLAS.matmulPrecision == .bfloat16 ? "bfloat16 inputs with fp32 accumulation, \(BLAS.bf16Kernel.rawValue)" : BLAS.description)
                + (IdleCPUs.enabled ? "; idle CPUs lent (GEMMs of >= 2^24 multiply-adds run in two halves)" : "")
                + (config.debug.deterministic ? "; deterministic: GEMMs never split or lent" : "")
            log("compute: " + computeLine)
            try recordRunInfo(attempt: attempt, model: modelLine, mesh: meshLine, compute: computeLine, peakFlops: peakFlops)
        }
    }

    /// Runs the remaining steps, then the HF export (when asked) and the trace.
    public func train() throws {
        while step < config.training.steps {
            step += 1
            try trainStep(step)
            try comm.setTimeout(seconds: config.comm.timeout_seconds)   // start-up is over: a silent rank is found sooner
        }
        try checkpointer.exportHFIfAsked(step: step, model: parallel, modelArgs: modelArgs)
        if IdleCPUs.enabled { log("idle CPUs: \(IdleCPUs.lentTasks) GEMM or loop half(s) of this rank ran on another rank's idle CPU") }
        if comm.rank == 0 { log("metrics: \(config.job.dump_folder)/metrics.jsonl") }
        metrics?.finish()
        if let profiler {
            let (path, dropped) = try profiler.write()
            log("trace: \(path)" + (dropped > 0 ? " (\(dropped) events dropped: buffer full)" : ""))
            if let (merged, missing) = try profiler.mergeAfterEveryRankWrote(world: comm.world) {
                log("merged trace: \(merged)" + (missing.isEmpty ? "" : " (without ranks \(missing): their files are on other hosts)"))
            }
        }
    }

    /// One optimizer step, llm.c style: zero grad → forward/backward of each micro-batch (gradients reduced after the
    /// last) → finish backward → clip → optimizer step → expert-load balancing → validation (when due) → metrics →
    /// checkpoint.
    func trainStep(_ step: Int) throws {
        try fault?.apply(atStep: step, comm: comm, log: log)
        let start = Runtime.now()
        BlockedTime.reset()
        let trafficBefore = comm.traffic

        parallel.zeroGrad()
        var result: StepResult?
        for m in 0..<dataLoader.microBatches {
            let batch = try dataLoader.batch(step: step, microBatch: m)
            parallel.requiresGradientSync = m == dataLoader.microBatches - 1   // reduce once, after the last
            let r = model.forwardBackward(inputs: batch.inputs_BL, labels: batch.labels_BL, B: batch.batchSize, T: batch.seqLen,
                                          lossScale: 1 / Float(tokensPerStep))
            result = result.map { $0 + r } ?? r
        }
        try ExpertParallel.throwIfFailed(model)
        try parallel.finishBackward()   // every gradient reduced onto its shard
        let gradNorm = try parallel.gradNormSquared().squareRoot()
        let clip = clipCoefficient(totalNorm: Float(gradNorm), maxNorm: Float(config.training.max_norm))
        let lr = lrSchedule.lr(step: step)
        let optimizerStart = Runtime.now()
        optimizer.step(step, lr: lr, gradScale: clip)   // clipping applied in the same pass
        Trace.record("optimizer", pid: comm.rank, tid: 0, start: optimizerStart, end: Runtime.now())

        let stats = try StepStats.reduce(result!, traffic: comm.traffic - trafficBefore,
                                         epDispatchBytes: ExpertParallel.dispatchBytes(of: model), over: comm.world)
        model.updateExpertBias(tokensPerExpert: stats.tokensPerExpert)   // aux-loss-free balancing (when on)
        let end = Runtime.now()
        Trace.record("step", arg: .step(step), pid: comm.rank, tid: 0, start: start, end: end)
        // Validation is not part of the step's time: tokens/s stays the training's.
        var validationLoss: Double?
        if let validator, validator.isDue(step: step, lastStep: config.training.steps) {
            let validationStart = Runtime.now()
            validationLoss = try validator.run(model: model, parallel: parallel, world: comm.world)
            Trace.record("validation", pid: comm.rank, tid: 0, start: validationStart, end: Runtime.now())
        }
        try metrics?.record(step: step, stats: stats, gradNorm: gradNorm, lr: lr, seconds: Double(end - start) / 1e9,
                        blockedSeconds: Double(BlockedTime.nanoseconds) / 1e9, expertParallel: mesh.ep != nil,
                        validationLoss: validationLoss)
        try checkpointer.saveIfDue(step: step, lastStep: config.training.steps, model: parallel, optimizer: optimizer,
                                   modelArgs: modelArgs, dataloader: { try dataLoader.state(after: step) })
    }
}

/// Writes the resolved config to DUMP/config.json.
public func writeConfigJSON(_ config: JobConfig, dumpFolder: String) throws {
    let dir = URL(fileURLWithPath: dumpFolder)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try config.json().write(to: dir.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
}
