// Per-step metrics (torchtitan's MetricsProcessor): what a step did summed over every rank (`StepStats`), written by
// rank 0 to DUMP/metrics.jsonl (one JSON object per step, keys sorted) and as a short console line every log_freq
// steps. Further sinks plug in beside the jsonl writer: TensorBoard event files (TensorBoard.swift) and, on a terminal,
// a progress line and the end-of-run summary (ConsoleProgress.swift).

import Collectives
import Config
import Foundation
import Model
import Runtime
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// [metrics]
public struct MetricsConfig: ConfigSection {
    public var log_freq = 1
    public var enable_tensorboard = false
    public var save_tb_folder = "tb"
    public var peak_tflops = -1.0
    public init() {}

    public static let doc = "metrics.jsonl and the console"
    public static let fields: [ConfigField<MetricsConfig>] = [
        ConfigField("log_freq", \.log_freq, "print metrics every N steps (metrics.jsonl gets every step)"),
        ConfigField("enable_tensorboard", \.enable_tensorboard, "also write TensorBoard event files (rank 0)"),
        ConfigField("save_tb_folder", \.save_tb_folder, "TensorBoard folder under the dump folder"),
        ConfigField("peak_tflops", \.peak_tflops, "the job's peak TFLOP/s for mfu (<= 0: measured at start by a short GEMM timing on every rank)"),
    ]

    public func validate() throws {
        if log_freq < 1 { throw ConfigError.invalid(key: "log_freq", reason: "must be >= 1") }
        if save_tb_folder.isEmpty { throw ConfigError.invalid(key: "save_tb_folder", reason: "must not be empty") }
    }
}

/// What one step did, summed over every rank of the job.
public struct StepStats {
    /// Σ −log p(label) over the global batch.
    public var lossSum: Double
    /// Tokens routed to each expert, per layer (empty for dense layers).
    public var tokensPerExpert: [[Int]]
    /// Payload bytes the ranks handed to their sockets in the step's collectives, in total and per kind.
    public var sentBytes: Double
    public var sentBytesByKind: [(kind: CollectiveKind, bytes: Double)]
    /// The part of `sentBytes` that went to ranks on another host of the topology.
    public var interHostBytes: Double = 0
    /// Token-row bytes the expert-parallel dispatchers exchanged with other ranks.
    public var epDispatchBytes: Double
    /// Each rank's peak resident set size so far, MiB (index: rank).
    public var maxRSSMegabytesPerRank: [Double] = []
    /// Each rank's Σ −log p(label) over its own share of the batch (index: rank; every rank is a data-parallel rank).
    public var lossSumPerRank: [Double] = []

    static let kinds: [CollectiveKind] = [.allGather, .reduceScatter, .allReduce, .allToAll]

    /// Sums this rank's part over `world` (two all-reduces, whose own bytes are not in `traffic`).
    public static func reduce(_ result: StepResult, traffic: Traffic, epDispatchBytes: Int, over world: ProcessGroup) throws -> StepStats {
        // Every rank's peak RSS and loss ride in the same all-reduce: its own slot, zeros elsewhere.
        var rss = [Double](repeating: 0, count: world.size), losses = rss
        rss[world.rank] = maxRSSMegabytes()
        losses[world.rank] = result.lossSum
        let sums = try world.allReduce([result.lossSum, Double(epDispatchBytes), Double(traffic.totalSent.bytes)]
                                       + kinds.map { Double(traffic.sent($0).bytes) } + rss + losses
                                       + [Double(traffic.totalSentInterHost.bytes)], op: .sum)
        let counts = try world.allReduce(result.tokensPerExpert.flatMap { $0.map(Int64.init) }, op: .sum)
        var perLayer: [[Int]] = []
        var offset = 0
        for layer in result.tokensPerExpert {
            perLayer.append(counts[offset..<(offset + layer.count)].map { Int($0) })
            offset += layer.count
        }
        return StepStats(lossSum: sums[0], tokensPerExpert: perLayer, sentBytes: sums[2],
                         sentBytesByKind: kinds.enumerated().map { ($1, sums[3 + $0]) }, interHostBytes: sums.last!,
                         epDispatchBytes: sums[1],
                         maxRSSMegabytesPerRank: Array(sums[(3 + kinds.count)..<(3 + kinds.count + world.size)]),
                         lossSumPerRank: Array(sums[(3 + kinds.count + world.size)..<(sums.count - 1)]))
    }
}

/// One row of metrics.jsonl.
public struct StepMetrics {
    public var step: Int
    public var loss: Double
    public var grad_norm: Double
    public var lr: Double
    public var tokens_per_sec: Double
    public var step_time_s: Double
    /// Further numbers (e.g. max_rss_mb).
    public var extra: [(key: String, value: Double)] = []
    /// Further lists of numbers (e.g. expert_load_layer0: tokens per expert).
    public var lists: [(key: String, values: [Double])] = []

    public init(step: Int, loss: Double, grad_norm: Double, lr: Double, tokens_per_sec: Double, step_time_s: Double,
                extra: [(key: String, value: Double)] = []) {
        self.step = step; self.loss = loss; self.grad_norm = grad_norm; self.lr = lr
        self.tokens_per_sec = tokens_per_sec; self.step_time_s = step_time_s
        self.extra = extra
    }

    /// One JSON object, no newline, keys sorted. Non-finite numbers are written as null (JSON has no NaN).
    public var json: String {
        var object: [String: Any] = ["step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr,
                                     "tokens_per_sec": tokens_per_sec, "step_time_s": step_time_s]
        for (k, v) in extra { object[k] = v }
        for (k, v) in lists { object[k] = v }
        return jsonLine(object)
    }

    /// e.g. "step   12  loss 3.4512  grad_norm 0.8123  lr 3.00e-04  tok/s 12,345  0.123s  rss 123MB"
    public var consoleLine: String {
        var s = "step \(String(step).leftPad(4))  loss \(String(format: "%.4f", loss))  grad_norm \(String(format: "%.4f", grad_norm))"
        s += "  lr \(String(format: "%.2e", lr))  tok/s \(String(format: "%.0f", tokens_per_sec))  \(String(format: "%.3f", step_time_s))s"
        if let rss = self["max_rss_mb"] { s += "  rss \(String(format: "%.0f", rss))MB" }
        if let mfu = self["mfu"] { s += "  mfu \(String(format: "%.1f", mfu))%" }
        if let v = self["validation_loss"] { s += "  validation_loss \(String(format: "%.4f", v))" }
        return s
    }

    /// A number of the row by its metrics.jsonl key (the fixed ones or an extra).
    public subscript(key: String) -> Double? {
        switch key {
        case "step": return Double(step)
        case "loss": return loss
        case "grad_norm": return grad_norm
        case "lr": return lr
        case "tokens_per_sec": return tokens_per_sec
        case "step_time_s": return step_time_s
        default: return extra.first(where: { $0.key == key })?.value
        }
    }
}

extension String {
    fileprivate func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}

/// Rank 0's metrics: every step to DUMP/metrics.jsonl (and TensorBoard when enabled), every log_freq-th (and the
/// last) to the console; on a terminal a progress line, and a summary at the end.
public final class MetricsProcessor {
    let config: MetricsConfig
    let writer: MetricsWriter
    let tensorBoard: TensorBoardLogger?
    let console: ConsoleProgress
    let log: (String) -> Void
    /// Ranks in the job and tokens per step, for the per-rank and per-second numbers.
    let worldSize: Int
    /// Hosts of the topology (several: comm_inter_host_mb is written).
    let hosts: Int
    let tokensPerStep: Int
    let lastStep: Int
    /// Model FLOPs per training token, and the job's peak FLOP/s (every rank's together), for tflops and mfu.
    let flopsPerToken: Double
    private(set) var peakFlops = Double.nan

    /// `resumedAt`: the step a resumed run starts after (its later lines, from a crashed run, are dropped).
    public init(_ config: MetricsConfig, dumpFolder: String, resumedAt: Int, worldSize: Int, hosts: Int = 1, tokensPerStep: Int,
                lastStep: Int, flopsPerToken: Double, log: @escaping (String) -> Void) throws {
        self.config = config
        let path = dumpFolder + "/metrics.jsonl"
        // Steps a crashed run logged after its last checkpoint are trained again: drop their old lines.
        if resumedAt > 0 { try MetricsWriter.dropSteps(after: resumedAt, path: path) }
        writer = try MetricsWriter(path: path, append: resumedAt > 0)
        tensorBoard = config.enable_tensorboard ? try TensorBoardLogger(folder: dumpFolder + "/" + config.save_tb_folder) : nil
        console = ConsoleProgress(firstStep: resumedAt + 1, lastStep: lastStep, dumpFolder: dumpFolder, log: log)
        self.log = log
        self.worldSize = worldSize
        self.hosts = hosts
        self.tokensPerStep = tokensPerStep
        self.lastStep = lastStep
        self.flopsPerToken = flopsPerToken
    }

    /// The job's peak FLOP/s for mfu (`jobPeakFlops`); until it is set mfu is null.
    public func setPeak(flops: Double, measured: Bool) {
        peakFlops = flops
        log("mfu against a peak of \(String(format: "%.3f", flops / 1e12)) TFLOP/s ("
            + (measured ? "GEMMs timed on every rank at start; --metrics.peak_tflops sets it" : "--metrics.peak_tflops") + "), "
            + "\(String(format: "%.4g", flopsPerToken)) model FLOPs per token")
    }

    public func record(step: Int, stats: StepStats, gradNorm: Double, lr: Double, seconds: Double, blockedSeconds: Double,
                       expertParallel: Bool, validationLoss: Double? = nil) throws {
        let tokensPerSecond = Double(tokensPerStep) / seconds
        // torchtitan's: achieved model FLOP/s (here of the whole job, whose ranks share the CPUs) over the peak.
        let achievedFlops = flopsPerToken * tokensPerSecond
        var extra: [(key: String, value: Double)] = [("max_rss_mb", maxRSSMegabytes()), ("comm_wait_s", blockedSeconds),
                                                     ("current_rss_mb", currentRSSMegabytes()),
                                                     ("tflops", achievedFlops / 1e12), ("mfu", 100 * achievedFlops / peakFlops)]
        if let validationLoss { extra.append(("validation_loss", validationLoss)) }
        // torchtitan's global_max_loss: the largest of the data-parallel ranks' mean losses (each has 1/world of the tokens).
        if let worst = stats.lossSumPerRank.max(), worldSize > 1 {
            extra.append(("max_rank_loss", worst / (Double(tokensPerStep) / Double(worldSize))))
        }
        if expertParallel { extra.append(("ep_dispatch_bytes", stats.epDispatchBytes)) }
        if worldSize > 1 {
            // Payload MiB each rank handed to its sockets in this step, the mean over ranks: in total and per kind.
            let perRank = { (bytes: Double) in bytes / Double(self.worldSize) / 1_048_576 }
            extra.append(("comm_sent_mb", perRank(stats.sentBytes)))
            for (kind, bytes) in stats.sentBytesByKind { extra.append(("comm_sent_mb_\(kind)", perRank(bytes))) }
            // The part of comm_sent_mb that went to ranks on other hosts (what the links between hosts carried).
            if hosts > 1 { extra.append(("comm_inter_host_mb", perRank(stats.interHostBytes))) }
        }
        var lists: [(key: String, values: [Double])] = [("max_rss_mb_per_rank", stats.maxRSSMegabytesPerRank)]
        for (layer, counts) in stats.tokensPerExpert.enumerated() where !counts.isEmpty {
            let mean = Double(counts.reduce(0, +)) / Double(counts.count)
            let variance = counts.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(counts.count)
            extra += [("expert_load_min_layer\(layer)", Double(counts.min()!)),
                      ("expert_load_max_layer\(layer)", Double(counts.max()!)),
                      ("expert_load_cv_layer\(layer)", mean > 0 ? variance.squareRoot() / mean : 0)]
            lists.append(("expert_load_layer\(layer)", counts.map(Double.init)))
        }
        var m = StepMetrics(step: step, loss: stats.lossSum / Double(tokensPerStep), grad_norm: gradNorm, lr: lr,
                            tokens_per_sec: tokensPerSecond, step_time_s: seconds, extra: extra)
        m.lists = lists
        try write(m)
    }

    /// Writes a finished row to every sink. Rows other code adds keys to (validation loss) come through here too.
    public func write(_ m: StepMetrics) throws {
        try writer.write(m)
        try tensorBoard?.write(m)
        console.record(m, peakRSSMegabytes: m.lists.first(where: { $0.key == "max_rss_mb_per_rank" })?.values.max())
        if m.step % config.log_freq == 0 || m.step == lastStep || m["validation_loss"] != nil { console.line(m.consoleLine) }
    }

    /// At the end of the run: DUMP/report.html (`titan report` writes it again from the folder at any time), and the
    /// summary on the console (final loss, steady-state throughput and MFU, peak memory, where the report is).
    public func finish() {
        do { try tensorBoard?.close() } catch { log("tensorboard: \(error)") }
        var report: String?
        do { report = try RunReport.write(dumpFolder: console.dumpFolder) } catch { log("report: not written: \(error)") }
        console.summary(report: report)
    }
}

/// Appends one line per step to DUMP/metrics.jsonl and flushes it, so a crashed run keeps
/// every finished step and `tail -f` works.
public final class MetricsWriter {
    public let path: String
    private let handle: FileHandle

    /// Rewrites `path` without the lines of steps after `step` (temp file + rename); no file, no-op.
    public static func dropSteps(after step: Int, path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
        let kept = text.split(separator: "\n").filter { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let s = object["step"] as? Int else { return true }
            return s <= step
        }
        let tmp = path + ".tmp"
        try Data((kept.joined(separator: "\n") + (kept.isEmpty ? "" : "\n")).utf8).write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, path) == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
    }

    /// Creates the folder if needed. `append` keeps existing lines (resume); otherwise truncates.
    public init(path: String, append: Bool = false) throws {
        self.path = path
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        if append && FileManager.default.fileExists(atPath: path) {
            handle = try FileHandle(forWritingTo: url)
            handle.seekToEndOfFile()
        } else {
            guard FileManager.default.createFile(atPath: path, contents: nil) else {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
            }
            handle = try FileHandle(forWritingTo: url)
        }
    }

    /// Appends `m` and flushes it to disk; a failed write (a full disk) is an error naming the file.
    public func write(_ m: StepMetrics) throws {
        do {
            try handle.write(contentsOf: Data((m.json + "\n").utf8))
            try handle.synchronize()
        } catch {
            throw MetricsError.write(path: path, "\(error)")
        }
    }

    deinit { handle.closeFile() }
}

/// Peak resident set size of this process in MiB (getrusage: KiB on Linux, bytes on macOS).
public func maxRSSMegabytes() -> Double {
    var u = rusage()
    #if os(Linux)
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_maxrss) / 1024
    #else
    getrusage(RUSAGE_SELF, &u)
    return Double(u.ru_maxrss) / (1024 * 1024)
    #endif
}

/// Current resident set size of this process in MiB (/proc/self/statm on Linux; the peak elsewhere).
public func currentRSSMegabytes() -> Double {
    #if os(Linux)
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return maxRSSMegabytes() }
    let parts = text.split(separator: " ")
    guard parts.count >= 2, let pages = Int(parts[1]) else { return maxRSSMegabytes() }
    return Double(pages * Int(sysconf(Int32(_SC_PAGESIZE)))) / 1_048_576
    #else
    return maxRSSMegabytes()
    #endif
}

/// A metrics sink that could not be written.
public enum MetricsError: Error, CustomStringConvertible {
    case write(path: String, String)
    public var description: String {
        switch self { case .write(let path, let why): return "cannot write \(path): \(why)" }
    }
}
