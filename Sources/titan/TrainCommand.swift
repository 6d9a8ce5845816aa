import ArgumentParser
import Cluster
import Collectives
import Foundation
import Train

/// `titan train`: one rank of a training job (or the whole job, in one process, with world size 1).
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a model: --module M --config C, then any --section.field value (see titan train --help); --job-secret-file PATH for ranks started without titan launch.",
        helpNames: [])

    @Argument(parsing: .captureForPassthrough, help: "Config selection and overrides, torchtitan style.")
    var arguments: [String] = []

    /// Resolves the config for a job on `topology` (nil: one process on its own): its degrees are the defaults
    /// the command line overrides, checked against its world size before any rank starts.
    static func resolve(topology: Topology?, arguments: [String]) throws -> JobConfigRequest {
        try JobConfig.resolve(arguments: arguments, topology: topology?.parallelism, worldSize: topology?.worldSize ?? 1)
    }

    /// The rank program for a resolved config; nil after printing --help. `identity`: this process's, when a
    /// launcher started it (the attempt and host a fault injection looks at).
    static func program(_ request: JobConfigRequest, identity: RankIdentity? = nil) -> (RankProgram, JobConfig)? {
        switch request {
        case .help(let text):
            print(text)
            return nil
        case .run(let config):
            let program: RankProgram = { comm, out in
                try Trainer(config: config, comm: comm, attempt: identity?.attempt ?? 0, node: identity?.nodeRank ?? 0,
                            log: { out.print($0) }).train()
                return 0
            }
            return (program, config)
        }
    }

    func run() throws {
        do {
            var arguments = self.arguments
            let jobSecretFile = try JobSecretOption.extract(from: &arguments)   // before the config overrides
            let identity = try RankIdentity.fromEnvironment()
            var request = try Self.resolve(topology: try identity?.loadTopology(), arguments: arguments)
            if case .help(let text) = request {
                request = .help(text + "\n\n\(JobSecretOption.name) PATH (rank option, before or among the overrides)\n    "
                                + JobSecretOption.help)
            }
            guard let (program, config) = Self.program(request, identity: identity) else { return }
            // Under the launcher it writes the rank logs; alone, this process keeps its own.
            let logFolder = identity == nil ? config.job.dump_folder + "/logs" : nil
            RankRuntime.runThisProcess(timeoutSeconds: config.comm.init_timeout_seconds, logFolder: logFolder,
                                       traceBufferSize: config.comm.trace_buf_size, jobSecretFile: jobSecretFile, program)
        } catch {
            FileHandle.standardError.write(Data("titan train: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}
