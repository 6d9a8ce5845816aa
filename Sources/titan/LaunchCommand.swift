import ArgumentParser
import Cluster
import Collectives
import Foundation
import Train

/// `titan launch`: starts the ranks of a topology and supervises them (what run_cluster.sh calls).
struct Launch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start every rank of a topology running PROGRAM (train, collectives, bench; default train), or generate (one process).",
        discussion: """
            Launcher options and the program's arguments may be mixed: every argument this command does not know goes             to the program (a `--` ends the launcher's options). Examples: titan launch --ranks 8 collectives;             titan launch --ranks 8 --max-restarts 2 --training.steps 20.
            """)

    @Option(help: "Topology file (TOML).")
    var topology: String?
    @Option(help: "Number of local ranks: uses topologies/local-N.toml when it exists, else derives one.")
    var ranks: Int?
    @Option(help: "Start only this host's ranks (multi-host, like torchrun's node rank).")
    var node: Int?
    @Flag(help: "Run every rank as a thread of this process over ZeroMQ inproc (debugger-friendly).")
    var singleProcess = false
    @Option(help: "Run folder for logs (default: the program's --job.dump_folder, else outputs/PROGRAM-TIME).")
    var dumpFolder: String?
    @Option(help: "Job id shared by every rank (default: generated; multi-host launches must pass the same id).")
    var jobID: String?
    @Option(help: "Rank placement on this machine's CPUs: block (consecutive ranks share a CPU, or each gets its own CPUs) or none. Not used with --single-process.")
    var cpuBind: CPUBindPolicy = .block
    @Flag(name: .customLong("lend-idle-cpus"), inversion: .prefixedNo, help: "With ranks bound to one CPU each (at least as many ranks as CPUs), let a rank still computing run half of a large GEMM or loop on a CPU whose ranks all wait in collectives.")
    var lendIdleCPUs = true
    @Option(help: "When a rank fails (an error, a signal, a hang its peers' collective timeouts find), stop every rank and start them all again, up to N times; training resumes from the latest checkpoint.")
    var maxRestarts = 0
    @Flag(help: "With --max-restarts: when a whole host is lost, continue on the hosts that are left (the shard degree -1 fills the smaller world).")
    var elastic = false
    @Option(name: .customLong("rdzv-dir"), help: "A folder every host's launcher sees (e.g. on a shared file system), where launchers started with --node agree on restarts.")
    var rdzvDir: String?
    @Option(name: .customLong("rdzv-timeout"), help: "Seconds without a heartbeat in the rendezvous folder after which a host is lost.")
    var rdzvTimeout: Double = 30
    @Option(name: .customLong("job-secret-file"), help: "The job's secret, which every rank's CURVE keys (tcp) derive from: created 0600 with a fresh secret when absent, refused when others may read it. Give every launcher of a job started host by host (--node) the same file; without it a launcher that starts every host makes its own.")
    var jobSecretFile: String?
    @Argument(parsing: .allUnrecognized, help: "The rank program (train, collectives, bench; default train; generate on one rank) and its arguments.")
    var program: [String] = []

    static let programs = ["train", "collectives", "bench", "generate"]

    func run() throws {
        var args = program
        if args.first == "--" { args.removeFirst() }
        // The rank programs' --job-secret-file, given after `--`, is the launcher's: it hands the secret to every rank.
        let programSecretFile = try JobSecretOption.extract(from: &args)
        let jobSecretFile = self.jobSecretFile ?? programSecretFile
        if args.isEmpty { args = ["train"] }   // `./run_cluster.sh 8`: train with the defaults
        if let first = args.first, !Self.programs.contains(first) {
            guard first.hasPrefix("-") else {
                throw ValidationError("unknown rank program '\(first)': train, collectives, bench or generate")
            }
            args.insert("train", at: 0)   // only options: they are train's
        }
        let name = args[0]
        let topo = try resolveTopology()
        if name == "generate" {
            // One process decodes with the whole model: no ranks to start, so it runs here (`./run_cluster.sh 1 generate`).
            guard topo.worldSize == 1 else {
                throw ValidationError("generate runs in one process: use ./run_cluster.sh 1 generate ... (this topology has \(topo.worldSize) ranks)")
            }
            let command = try GenerateCommand.parse(Array(args.dropFirst()))
            try command.run()
            return
        }
        let dump = dumpFolder ?? Self.value(of: "--job.dump_folder", in: args) ?? Self.defaultDumpFolder(program: name)
        if name == "train", Self.value(of: "--job.dump_folder", in: args) == nil {
            args += ["--job.dump_folder", dump]
        }

        // A train config is parsed here first, so a bad key fails once, before any rank starts.
        var trainRequest: JobConfigRequest?
        if name == "train" {
            do { trainRequest = try TrainCommand.resolve(topology: topo, arguments: Array(args.dropFirst())) }
            catch {
                FileHandle.standardError.write(Data("titan train: \(error)\n".utf8))
                throw ExitCode(2)
            }
            if case .help(let text) = trainRequest { print(text); return }
        }
        if singleProcess {
            guard maxRestarts == 0 && !elastic else { throw ValidationError("--max-restarts and --elastic need rank processes, not --single-process") }
            if topo.networkSpec != nil {
                FileHandle.standardError.write(Data("titan launch: warning: --single-process runs the ranks over inproc without the topology's simulated [network]\n".utf8))
            }
            let status = try runAsThreads(topology: topo, args: args, trainRequest: trainRequest, dump: dump)
            throw ExitCode(status)
        }
        var launcher = Launcher(topology: topo, node: node, executable: Self.executablePath(),
                                arguments: args, dumpFolder: dump, jobID: jobID)
        launcher.graceSeconds = 3
        launcher.cpuBinding = cpuBind
        launcher.lendIdleCPUs = lendIdleCPUs
        launcher.maxRestarts = maxRestarts
        launcher.elastic = elastic
        launcher.rendezvousFolder = rdzvDir
        launcher.rendezvousTimeout = rdzvTimeout
        launcher.jobSecretFile = jobSecretFile
        guard maxRestarts >= 0 else { throw ValidationError("--max-restarts must be >= 0") }
        guard !elastic || maxRestarts > 0 else { throw ValidationError("--elastic restarts the job on the hosts that are left: give --max-restarts too") }
        let result = try launcher.run()
        if result.succeeded {
            let restarts = result.restarts > 0 ? " after \(result.restarts) restart(s)" : ""
            FileHandle.standardError.write(Data("titan: all \(result.statuses.count) rank(s) finished\(restarts); logs in \(dump)/logs\n".utf8))
        }
        throw ExitCode(result.exitStatus)
    }

    private func resolveTopology() throws -> Topology {
        switch (topology, ranks) {
        case let (path?, nil): return try Topology.load(path: path)
        case let (nil, n?):
            guard n >= 1 else { throw ValidationError("--ranks must be at least 1") }
            let shipped = "topologies/local-\(n).toml"
            return FileManager.default.fileExists(atPath: shipped) ? try Topology.load(path: shipped) : Topology.local(ranks: n)
        case (nil, nil): return Topology.local(ranks: 1)
        default: throw ValidationError("give either --topology or --ranks, not both")
        }
    }

    private func runAsThreads(topology: Topology, args: [String], trainRequest: JobConfigRequest?, dump: String) throws -> Int32 {
        let rankProgram: RankProgram
        switch args[0] {
        case "collectives":
            let c = try Collectives.parse(Array(args.dropFirst()))
            rankProgram = c.comm.withAlgorithm(try c.rankProgram())
        case "bench":
            let b = try Bench.parse(Array(args.dropFirst()))
            rankProgram = b.comm.withAlgorithm(Bench.program(sizes: b.sizes.split(separator: ",").compactMap { Int($0) },
                                                             collectives: b.collectives.split(separator: ",").map(String.init)))
        default:
            guard let request = trainRequest, let (program, config) = TrainCommand.program(request) else { return 0 }
            return RankRuntime.runAsThreads(worldSize: topology.worldSize, dumpFolder: dump, timeoutSeconds: config.comm.init_timeout_seconds,
                                            traceBufferSize: config.comm.trace_buf_size, program)
        }
        let timeout = Double(Self.value(of: "--comm.timeout_seconds", in: args) ?? "") ?? 300
        return RankRuntime.runAsThreads(worldSize: topology.worldSize, dumpFolder: dump, timeoutSeconds: timeout, rankProgram)
    }

    static func value(of option: String, in args: [String]) -> String? {
        for (i, a) in args.enumerated() {
            if a == option, i + 1 < args.count { return args[i + 1] }
            if a.hasPrefix(option + "=") { return String(a.dropFirst(option.count + 1)) }
        }
        return nil
    }

    static func defaultDumpFolder(program: String) -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyyMMdd-HHmmss"
        return "outputs/\(program)-\(f.string(from: Date()))"
    }

    /// This binary, so every rank runs the same build as the launcher.
    static func executablePath() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

extension CPUBindPolicy: ExpressibleByArgument {}
