import ArgumentParser
import Collectives
import Foundation

/// Options every rank program shares.
struct CommOptions: ParsableArguments {
    @Option(name: .customLong("comm.timeout_seconds"), help: "Timeout of every collective, in seconds.")
    var timeoutSeconds: Double = 300
    @Option(name: .customLong("job-secret-file"), help: ArgumentHelp(JobSecretOption.help, valueName: "path"))
    var jobSecretFile: String?
}

struct Collectives: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Collective correctness suite: every collective × sizes × groups × ops, checked against local references.")

    @OptionGroup var comm: CommOptions
    @Option(help: "Total buffer size of the largest case, in bytes.")
    var largeBytes: Int = 16 << 20

    static func program(largeBytes: Int) -> RankProgram {
        { comm, out in
            let suite = CollectiveSuite(comm: comm, largeBytes: largeBytes) { line in if comm.rank == 0 { out.print(line) } }
            let failed = try suite.run()
            return failed == 0 ? 0 : 1
        }
    }

    func run() throws {
        RankRuntime.runThisProcess(timeoutSeconds: comm.timeoutSeconds, jobSecretFile: comm.jobSecretFile, Self.program(largeBytes: largeBytes))
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Collective bandwidth table (nccl-tests definitions of algbw and busbw) plus one JSON line per row.")

    @OptionGroup var comm: CommOptions
    @Option(help: "Comma-separated total buffer sizes in bytes.")
    var sizes: String = CollectiveBench.sizes.map(String.init).joined(separator: ",")

    static func program(sizes: [Int]) -> RankProgram {
        { comm, out in
            _ = try CollectiveBench.run(comm: comm, sizes: sizes) { out.print($0) }
            return 0
        }
    }

    func run() throws {
        let parsed = sizes.split(separator: ",").compactMap { Int($0) }
        guard !parsed.isEmpty else { throw ValidationError("--sizes needs comma-separated byte counts") }
        RankRuntime.runThisProcess(timeoutSeconds: comm.timeoutSeconds, jobSecretFile: comm.jobSecretFile, Self.program(sizes: parsed))
    }
}
