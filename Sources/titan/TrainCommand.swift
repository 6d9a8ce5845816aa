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

    /// Options of the rank itself, taken out of the config arguments wherever they stand.
    static let rankOptionsHelp = """
        Rank options (not config keys):
          --rdzv-dir PATH   ranks started by a scheduler that does not say which host each runs on (mpirun, torchrun on
                            several hosts) meet in this folder, which every host must see (default: --job.dump_folder)
          --job-secret-file PATH
                            \(JobSecretOption.help)
        """

    func run() throws {
        do {
            var arguments = self.arguments
            let rdzvDir = try Self.take("--rdzv-dir", from: &arguments)
            let jobSecretFile = try JobSecretOption.extract(from: &arguments)   // before the config overrides
            var identity = try RankIdentity.fromEnvironment()
            let scheduler = identity == nil ? try SchedulerEnvironment.detect() : nil
            // A scheduler's job has the default degrees of a local job of its size (its hosts may not be known yet).
            let topology = try identity?.loadTopology() ?? scheduler.map { Topology.local(ranks: $0.worldSize) }
            let request = try Self.resolve(topology: topology, arguments: arguments)
            if case .run(let config) = request {
                if let scheduler {
                    identity = try scheduler.identity(rendezvousFolder: rdzvDir ?? config.job.dump_folder,
                                                      dumpFolder: config.job.dump_folder,
                                                      timeoutSeconds: config.comm.init_timeout_seconds)
                } else if identity == nil, let note = SchedulerEnvironment.aloneWarning() {
                    FileHandle.standardError.write(Data((note + "\n").utf8))
                }
            }
            guard let (program, config) = Self.program(request, identity: identity) else {
                print(Self.rankOptionsHelp)
                return
            }
            // Under the launcher it writes the rank logs; on its own or under a scheduler, this process keeps its own.
            let logFolder = identity?.scheduler != nil || identity == nil ? config.job.dump_folder + "/logs" : nil
            RankRuntime.runThisProcess(identity: identity, timeoutSeconds: config.comm.init_timeout_seconds, logFolder: logFolder,
                                       traceBufferSize: config.comm.trace_buf_size, jobSecretFile: jobSecretFile, program)
        } catch {
            FileHandle.standardError.write(Data("titan train: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }

    /// Removes `--name VALUE` / `--name=VALUE` from `arguments` (the last one wins) and returns the value.
    static func take(_ name: String, from arguments: inout [String]) throws -> String? {
        var value: String?
        var i = 0
        while i < arguments.count {
            if arguments[i] == name {
                guard i + 1 < arguments.count else { throw ValidationError("\(name) needs a value") }
                value = arguments[i + 1]
                arguments.removeSubrange(i ... i + 1)
            } else if arguments[i].hasPrefix(name + "=") {
                value = String(arguments[i].dropFirst(name.count + 1))
                arguments.remove(at: i)
            } else {
                i += 1
            }
        }
        return value
    }
}
