// DUMP/run.json: what the report's header needs and metrics.jsonl does not hold — the model and mesh as the trainer
// built them, the MFU's peak, versions, and one entry per attempt (a restarted job's attempts, with their start time
// and the step each resumed after). Rank 0 writes it at start; an attempt adds itself to the earlier ones'.

import Foundation
import Tensor

public struct RunInfo: Codable {
    public struct Attempt: Codable {
        public var attempt: Int
        /// Unix time the attempt's training started (after initialisation and any checkpoint load).
        public var started: Double
        /// The checkpoint step it resumed after (0: from the start).
        public var resumed_after_step: Int
        public var world_size: Int
        public var mesh: String
        public var host: String
        /// The topology file the launcher gave the ranks, if any, and its text.
        public var topology_path: String?
        public var topology: String?
    }

    public var model: String
    public var compute: String
    public var flops_per_token: Double
    public var peak_tflops: Double
    public var peak_measured: Bool
    public var versions: [String: String]
    public var attempts: [Attempt]

    public static func path(dumpFolder: String) -> String { dumpFolder + "/run.json" }

    public static func read(dumpFolder: String) -> RunInfo? {
        guard let data = FileManager.default.contents(atPath: path(dumpFolder: dumpFolder)) else { return nil }
        return try? JSONDecoder().decode(RunInfo.self, from: data)
    }

    /// Adds `attempt` to the file's earlier attempts (dropping any with the same or a later number: a rerun of the
    /// folder) and writes the rest as this attempt sees it.
    public static func record(dumpFolder: String, attempt: Attempt, model: String, compute: String, flopsPerToken: Double,
                              peakFlops: Double, peakMeasured: Bool) throws {
        var earlier = read(dumpFolder: dumpFolder)?.attempts.filter { $0.attempt < attempt.attempt } ?? []
        if attempt.attempt == 0 { earlier = [] }
        let info = RunInfo(model: model, compute: compute, flops_per_token: flopsPerToken, peak_tflops: peakFlops / 1e12,
                           peak_measured: peakMeasured, versions: versions(), attempts: earlier + [attempt])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(info).write(to: URL(fileURLWithPath: path(dumpFolder: dumpFolder)), options: .atomic)
    }

    /// The machine and the libraries the numbers came from.
    static func versions() -> [String: String] {
        var v: [String: String] = ["os": ProcessInfo.processInfo.operatingSystemVersionString, "gemm": BLAS.description]
        #if compiler(>=6.3)
        v["swift"] = ">= 6.3"
        #elseif compiler(>=6.0)
        v["swift"] = "6.x"
        #endif
        if let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
           let line = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
           let colon = line.firstIndex(of: ":") {
            v["cpu"] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                + " × \(ProcessInfo.processInfo.activeProcessorCount)"
        }
        return v
    }
}

extension Trainer {
    /// Rank 0 adds this attempt to DUMP/run.json.
    func recordRunInfo(attempt: Int, model modelLine: String, mesh meshLine: String, compute: String, peakFlops: Double) throws {
        let env = ProcessInfo.processInfo.environment
        let topologyPath = env["TITAN_TOPOLOGY"].flatMap { $0.isEmpty ? nil : $0 }
        let entry = RunInfo.Attempt(attempt: attempt, started: Date().timeIntervalSince1970, resumed_after_step: step,
                                    world_size: comm.worldSize, mesh: meshLine, host: ProcessInfo.processInfo.hostName,
                                    topology_path: topologyPath,
                                    topology: topologyPath.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) })
        try RunInfo.record(dumpFolder: config.job.dump_folder, attempt: entry, model: modelLine, compute: compute,
                           flopsPerToken: model.flopsPerToken(seqLen: config.training.seq_len), peakFlops: peakFlops,
                           peakMeasured: config.metrics.peak_tflops <= 0)
    }
}
