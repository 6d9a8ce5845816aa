import ArgumentParser
import Cluster
import Collectives
import Foundation

/// Options every rank program shares.
struct CommOptions: ParsableArguments {
    @Option(name: .customLong("comm.timeout_seconds"), help: "Timeout of every collective, in seconds.")
    var timeoutSeconds: Double = 300
    @Option(name: .customLong("rdzv-dir"), help: "Where ranks started by a scheduler that does not say which host each runs on (mpirun, torchrun on several hosts) meet: a folder every host sees.")
    var rdzvDir: String?
    @Option(name: .customLong("job-secret-file"), help: ArgumentHelp(JobSecretOption.help, valueName: "path"))
    var jobSecretFile: String?

    /// Runs `program` as this process's rank (see `RankRuntime.identity`).
    func run(_ command: String, _ program: RankProgram) throws -> Never {
        let identity: RankIdentity?
        do {
            identity = try RankRuntime.identity(rendezvousFolder: rdzvDir, dumpFolder: nil, timeoutSeconds: timeoutSeconds)
        } catch {
            FileHandle.standardError.write(Data("titan \(command): \(error)\n".utf8))
            throw ExitCode(2)
        }
        RankRuntime.runThisProcess(identity: identity, timeoutSeconds: timeoutSeconds, jobSecretFile: jobSecretFile, program)
    }
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
        try comm.run("collectives", Self.program(largeBytes: largeBytes))
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Collective bandwidth table (nccl-tests definitions of algbw and busbw) plus one JSON line per row.")

    @OptionGroup var comm: CommOptions
    @Option(help: "Comma-separated total buffer sizes in bytes.")
    var sizes: String = CollectiveBench.sizes.map(String.init).joined(separator: ",")
    @Option(help: "Comma-separated collectives to time, of \(CollectiveBench.collectives.joined(separator: ", ")).")
    var collectives: String = CollectiveBench.collectives.joined(separator: ",")

    static func program(sizes: [Int], collectives: [String]) -> RankProgram {
        { comm, out in
            _ = try CollectiveBench.run(comm: comm, sizes: sizes, collectives: collectives) { out.print($0) }
            return 0
        }
    }

    func run() throws {
        let parsed = sizes.split(separator: ",").compactMap { Int($0) }
        guard !parsed.isEmpty else { throw ValidationError("--sizes needs comma-separated byte counts") }
        let names = collectives.split(separator: ",").map(String.init)
        if let unknown = names.first(where: { !CollectiveBench.collectives.contains($0) }) {
            throw ValidationError("--collectives: unknown collective '\(unknown)' (\(CollectiveBench.collectives.joined(separator: ", ")))")
        }
        guard !names.isEmpty else { throw ValidationError("--collectives needs comma-separated collective names") }
        try comm.run("bench", Self.program(sizes: parsed, collectives: names))
    }
}
