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

    /// The topology's parallelism degrees, as overrides placed before the user's (which win).
    static func topologyDefaults(_ p: Topology.Parallelism) -> [String] {
        ["--parallelism.data_parallel_replicate_degree", String(p.dataParallelReplicateDegree),
         "--parallelism.data_parallel_shard_degree", String(p.dataParallelShardDegree),
         "--parallelism.expert_parallel_degree", String(p.expertParallelDegree)]
    }

    /// Parses the config once (errors and --help surface before any collective), then trains.
    static func program(arguments: [String]) throws -> (RankProgram, Double)? {
        switch try TrainerConfig.resolve(arguments: arguments) {
        case .help(let text):
            print(text)
            return nil
        case .run(let config):
            let program: RankProgram = { comm, out in
                try Trainer(config: config, comm: comm, log: { out.print($0) }).run()
                return 0
            }
            return (program, config.job.comm.timeout_seconds)
        }
    }

    func run() throws {
        var defaults: [String] = []
        if let identity = try RankIdentity.fromEnvironment() {
            defaults = Self.topologyDefaults(try identity.loadTopology().resolvedParallelism)
        }
        do {
            guard let (program, timeout) = try Self.program(arguments: defaults + arguments) else { return }
            RankRuntime.runThisProcess(timeoutSeconds: timeout, program)
        } catch {
            FileHandle.standardError.write(Data("titan train: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}
