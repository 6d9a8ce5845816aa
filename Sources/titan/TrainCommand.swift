import ArgumentParser
import Cluster
import Collectives
import Foundation
import Train

/// `titan train`: one rank of a training job (or the whole job, in one process, with world size 1).
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a model: --module M --config C, then any --section.field value (see titan train --help).",
        helpNames: [])

    @Argument(parsing: .captureForPassthrough, help: "Config selection and overrides, torchtitan style.")
    var arguments: [String] = []

    /// Resolves the config with the topology's parallelism degrees as defaults placed before the user's
    /// overrides (which win). The topology's expert-parallel degree applies only to models with routed
    /// experts, so a dense model runs on any topology.
    static func resolve(topology p: Topology.Parallelism?, arguments: [String]) throws -> TrainerConfigRequest {
        let plain = try TrainerConfig.resolve(arguments: arguments)
        guard let p, case .run(let config) = plain else { return plain }
        var defaults = ["--parallelism.data_parallel_replicate_degree", String(p.dataParallelReplicateDegree),
                        "--parallelism.data_parallel_shard_degree", String(p.dataParallelShardDegree)]
        if config.model_args.moe_enabled {
            defaults += ["--parallelism.expert_parallel_degree", String(p.expertParallelDegree)]
        }
        return try TrainerConfig.resolve(arguments: defaults + arguments)
    }

    /// The rank program for a resolved config, with its collective timeout; nil after printing --help.
    static func program(_ request: TrainerConfigRequest) -> (RankProgram, TrainerConfig)? {
        switch request {
        case .help(let text):
            print(text)
            return nil
        case .run(let config):
            let program: RankProgram = { comm, out in
                try Trainer(config: config, comm: comm, log: { out.print($0) }).run()
                return 0
            }
            return (program, config)
        }
    }

    func run() throws {
        do {
            let identity = try RankIdentity.fromEnvironment()
            let request = try Self.resolve(topology: try identity?.loadTopology().resolvedParallelism, arguments: arguments)
            guard let (program, config) = Self.program(request) else { return }
            // Under the launcher it writes the rank logs; alone, this process keeps its own.
            let logFolder = identity == nil ? config.job.job.dump_folder + "/logs" : nil
            RankRuntime.runThisProcess(timeoutSeconds: config.job.comm.timeout_seconds, logFolder: logFolder, program)
        } catch {
            FileHandle.standardError.write(Data("titan train: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}
