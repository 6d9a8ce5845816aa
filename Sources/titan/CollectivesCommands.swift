import ArgumentParser
import Cluster
import Collectives
import Foundation

/// Options every rank program shares.
struct CommOptions: ParsableArguments {
    @Option(name: .customLong("comm.timeout_seconds"), help: "Timeout of every collective, in seconds.")
    var timeoutSeconds: Double = 300
    @Option(name: .customLong("comm.algorithm"), help: "Collective algorithms: ring, hierarchical, or auto (hierarchical for groups spanning several hosts; collectives and bench then run both).")
    var algorithm: CollectiveAlgorithm = .auto
    @Option(name: .customLong("rdzv-dir"), help: "Where ranks started by a scheduler that does not say which host each runs on (mpirun, torchrun on several hosts) meet: a folder every host sees.")
    var rdzvDir: String?
    @Option(name: .customLong("job-secret-file"), help: ArgumentHelp(JobSecretOption.help, valueName: "path"))
    var jobSecretFile: String?

    /// Runs `program` as this process's rank (see `RankRuntime.identity`).
    func run(_ command: String, _ program: @escaping RankProgram) throws -> Never {
        let identity: RankIdentity?
        do {
            identity = try RankRuntime.identity(rendezvousFolder: rdzvDir, dumpFolder: nil, timeoutSeconds: timeoutSeconds)
        } catch {
            FileHandle.standardError.write(Data("titan \(command): \(error)\n".utf8))
            throw ExitCode(2)
        }
        RankRuntime.runThisProcess(identity: identity, timeoutSeconds: timeoutSeconds, jobSecretFile: jobSecretFile,
                                   withAlgorithm(program))
    }

    /// `program` with this command line's --comm.algorithm set first.
    func withAlgorithm(_ program: @escaping RankProgram) -> RankProgram {
        let algorithm = algorithm
        return { comm, out in
            comm.setAlgorithm(algorithm)
            return try program(comm, out)
        }
    }
}

extension CollectiveAlgorithm: ExpressibleByArgument {}

struct Collectives: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Collective correctness suite: every collective × sizes × groups × ops, checked against local references (under both algorithms on several hosts); or, with --fuzz, that many random collectives.")

    @OptionGroup var comm: CommOptions
    @Option(help: "Total buffer size of the largest case, in bytes.")
    var largeBytes: Int = 16 << 20
    @Option(help: "Run this many random collectives (the fuzzer) instead of the suite.")
    var fuzz: Int?
    @Option(help: "The fuzzer's seed (printed first; the same seed runs the same collectives).")
    var seed: UInt64 = 1
    @Option(name: .customLong("fuzz-op"), help: "Rerun only this op of the fuzzer's sequence (with its --seed).")
    var fuzzOp: Int?

    static func program(largeBytes: Int) -> RankProgram {
        { comm, out in
            let suite = CollectiveSuite(comm: comm, largeBytes: largeBytes) { line in if comm.rank == 0 { out.print(line) } }
            let failed = try suite.run()
            return failed == 0 ? 0 : 1
        }
    }

    /// The fuzzer: rank 0 prints the seed, the failed ops and the summary; a rank that sees a wrong result says so.
    static func fuzzProgram(ops: Int, seed: UInt64, only: Int?) -> RankProgram {
        { comm, out in
            let failed = try CollectiveFuzzer(comm: comm, seed: seed) { out.print($0) }.run(ops: ops, only: only)
            return failed == 0 ? 0 : 1
        }
    }

    /// The suite, or the fuzzer with --fuzz / --fuzz-op.
    func rankProgram() throws -> RankProgram {
        guard fuzz != nil || fuzzOp != nil else { return Self.program(largeBytes: largeBytes) }
        guard (fuzz ?? 1) >= 0, (fuzzOp ?? 0) >= 0 else { throw ValidationError("--fuzz and --fuzz-op need counts >= 0") }
        return Self.fuzzProgram(ops: fuzz ?? (fuzzOp! + 1), seed: seed, only: fuzzOp)
    }

    func run() throws {
        try comm.run("collectives", rankProgram())
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
