import ArgumentParser
import Cluster
import Collectives
import Foundation
import Runtime
import Tensor
import Train

/// How a rank program prints: plain lines in its own process (the launcher prefixes them and writes
/// the log file), or prefixed and logged here when every rank is a thread of one process.
struct RankOutput: @unchecked Sendable {
    let rank: Int
    private let prefix: String
    private let logFile: FileHandle?
    private static let lock = NSLock()

    init(rank: Int, prefixed: Bool, logPath: String?) {
        self.rank = rank
        prefix = prefixed ? "[rank \(rank)] " : ""
        logFile = logPath.flatMap { path in
            _ = FileManager.default.createFile(atPath: path, contents: nil)   // FileHandle below fails alike
            return FileHandle(forWritingAtPath: path)
        }
    }

    /// The progress line on screen (a line starting with `progressLinePrefix`): redrawn below every other line.
    nonisolated(unsafe) private static var progress: String?
    private static let onTerminal = isatty(STDOUT_FILENO) != 0

    func print(_ line: String) {
        Self.lock.lock(); defer { Self.lock.unlock() }
        if line.hasPrefix(progressLinePrefix) && !Self.onTerminal {
            Swift.print(line)   // to the launcher, which draws it in place (and never logs it)
        } else if line.hasPrefix(progressLinePrefix) {   // redrawn in place, never logged; an empty one clears it
            let text = line.dropFirst(progressLinePrefix.count)
            Self.progress = text.isEmpty ? nil : prefix + text
            Swift.print("\r\u{1B}[K" + (Self.progress ?? ""), terminator: "")
        } else {
            Swift.print((Self.progress == nil ? "" : "\r\u{1B}[K") + prefix + line)
            if let p = Self.progress { Swift.print(p, terminator: "") }
            try? logFile?.write(contentsOf: Data((line + "\n").utf8))   // a full disk loses log lines, not the rank
        }
        fflush(stdout)
    }

    func error(_ line: String) {
        Self.lock.lock(); defer { Self.lock.unlock() }
        FileHandle.standardError.write(Data((prefix + line + "\n").utf8))
        try? logFile?.write(contentsOf: Data((line + "\n").utf8))
    }
}

/// A program every rank runs (train, collectives, bench): returns its exit status.
typealias RankProgram = @Sendable (Communicator, RankOutput) throws -> Int32

enum RankRuntime {
    /// This process's identity: our launcher's, else that of the scheduler that started it (Slurm, MPI, torchrun; the
    /// ranks of one that does not name their hosts meet in `rendezvousFolder` first), else nil (a process on its own).
    static func identity(rendezvousFolder: String?, dumpFolder: String?, timeoutSeconds: Double) throws -> RankIdentity? {
        if let identity = try RankIdentity.fromEnvironment() { return identity }
        if let scheduler = try SchedulerEnvironment.detect() {
            return try scheduler.identity(rendezvousFolder: rendezvousFolder, dumpFolder: dumpFolder, timeoutSeconds: timeoutSeconds)
        }
        if let note = SchedulerEnvironment.aloneWarning() { FileHandle.standardError.write(Data((note + "\n").utf8)) }
        return nil
    }

    /// Runs `program` as this process's rank `identity` (nil: a world of one), then exits. Errors become a message on
    /// stderr and exit status 1; a program that throws, or a SIGTERM, also writes the rank's flight record to
    /// DUMP/flight/rank-K.json (DUMP: the identity's dump folder).
    /// `logFolder`: where a process started without the launcher (on its own, or by a scheduler) writes its rank-K.log.
    /// `traceBufferSize`: collectives the flight recorder keeps (0: no recorder, no record).
    /// `jobSecretFile`: the rank's --job-secret-file (else the launcher's TITAN_JOB_SECRET), for tcp with CURVE.
    static func runThisProcess(identity: RankIdentity?, timeoutSeconds: Double, logFolder: String? = nil,
                               traceBufferSize: Int = Communicator.defaultTraceBufferSize, jobSecretFile: String? = nil,
                               _ program: RankProgram) -> Never {
        FlightDump.blockSIGTERM()   // first, before any thread starts
        BLAS.prepare()   // before any thread starts (it may set an environment variable)
        // A scheduler forwards the ranks' output as the launcher does, but does not say whether its console is a
        // terminal (Open MPI gives every rank a pty even when mpirun's output goes to a file): per-step lines only,
        // unless TITAN_PROGRESS=1 asks for the progress line.
        if identity?.scheduler != nil { setenv("TITAN_PROGRESS", "0", 0) }
        var status: Int32 = 1
        var scheduledOutput: RankOutput?   // a scheduler's rank logs its start-up errors too
        do {
            let comm: Communicator
            let output: RankOutput
            if let identity, identity.scheduler != nil {
                output = try startScheduled(identity, logFolder: logFolder)
                scheduledOutput = output
                try identity.prepareIPCDirectory()
                FlightDump.atSIGTERM = { identity.removeIPCSockets() }   // the scheduler stops the job's ranks so
                var spec = try identity.clusterSpec(timeoutSeconds: timeoutSeconds)
                spec.jobSecret = try JobSecretFile.rankSecret(file: jobSecretFile)
                comm = try Communicator(spec: spec, rank: identity.rank, traceBufferSize: traceBufferSize,
                                        securityLog: { output.error("transport: \($0)") })
            } else if let identity {
                // The launcher spawned this process bound already (so even OpenBLAS's pool, started before main, is);
                // binding again covers a rank started by hand with TITAN_CPUS, before this code starts any thread.
                var bindingFailure: Error?
                do { try identity.bindToCPUs() } catch { bindingFailure = error }
                identity.startParentWatchdog()
                output = RankOutput(rank: identity.rank, prefixed: false, logPath: nil)
                var spec = try identity.clusterSpec(timeoutSeconds: timeoutSeconds)
                spec.jobSecret = try JobSecretFile.rankSecret(file: jobSecretFile)
                if spec.transport == .tcp, spec.transportSecurity == .none, identity.rank == 0, identity.launcherPID == nil {
                    // Under a launcher, the launcher warns.
                    output.error("warning: transport_security = \"none\": this job's tcp traffic is neither authenticated nor encrypted; use it on a trusted network only")
                }
                comm = try Communicator(spec: spec, rank: identity.rank, traceBufferSize: traceBufferSize,
                                        securityLog: { output.error("transport: \($0)") })
                if let bindingFailure {
                    output.error("warning: running unbound: \(bindingFailure)")
                } else if let cpus = identity.cpus {
                    var lending = ""
                    if let board = ProcessInfo.processInfo.environment[RankEnvironment.cpuBoard], cpus.count == 1,
                       KernelThreads.count == 1 {
                        do {
                            try IdleCPUs.join(boardPath: board, ranks: identity.worldSize, rank: identity.rank, cpu: cpus[0])
                            lending = ", lending idle CPUs through \(board)"
                        } catch {
                            output.error("warning: not lending idle CPUs: \(error)")
                        }
                    }
                    // Every thread's mask, read back after the communicator (and the lending helper) started their threads.
                    output.print("bound to CPU(s) \(CPUBinding.formatList(CPUBinding.processCPUs()))\(lending)")
                }
            } else {
                comm = try Communicator(spec: ClusterSpec(jobID: "single", worldSize: 1, transport: .ipc,
                                                          timeoutSeconds: timeoutSeconds), rank: 0,
                                        traceBufferSize: traceBufferSize)
                if let logFolder { try FileManager.default.createDirectory(atPath: logFolder, withIntermediateDirectories: true) }
                output = RankOutput(rank: 0, prefixed: false, logPath: logFolder.map { $0 + "/rank-0.log" })
            }
            FlightDump.takeSIGTERM()   // a SIGTERM that came earlier waited, blocked, until now
            FlightDump.started(comm, folder: identity?.dumpFolder)
            do {
                status = try program(comm, output)
            } catch {
                output.error("error: \(error)")
                FlightDump.failed(comm, error: error)
                status = 1
            }
            FlightDump.finished(comm)
            comm.shutdown()
            if identity?.scheduler != nil { identity?.removeIPCSockets() }
        } catch {
            if let scheduledOutput { scheduledOutput.error("error: \(error)") }
            else { FileHandle.standardError.write(Data("error: \(error)\n".utf8)) }
        }
        exit(status)
    }

    /// A rank a scheduler started writes its own log (LOGS/rank-K.log: the launcher is not there to), keeps the CPUs
    /// the scheduler gave it, and runs as many kernel threads as those CPUs (OPENBLAS_NUM_THREADS wins).
    private static func startScheduled(_ identity: RankIdentity, logFolder: String?) throws -> RankOutput {
        if let logFolder { try FileManager.default.createDirectory(atPath: logFolder, withIntermediateDirectories: true) }
        let output = RankOutput(rank: identity.rank, prefixed: false, logPath: logFolder.map { "\($0)/rank-\(identity.rank).log" })
        let allowed = CPUBinding.allowedCPUs()
        let online = ProcessInfo.processInfo.activeProcessorCount
        if ProcessInfo.processInfo.environment[RankEnvironment.openBLASThreads] == nil {
            BLAS.setThreads(SchedulerEnvironment.kernelThreads(allowedCPUs: allowed.count, onlineCPUs: online,
                                                               ranksOnHost: identity.localWorldSize))
        }
        let topology = try identity.loadTopology()
        output.print("started by \(identity.scheduler!.rawValue): rank \(identity.rank) of \(identity.worldSize), "
            + "local rank \(identity.localRank) of \(identity.localWorldSize) on \(topology.hosts[identity.nodeRank].address) "
            + "(host \(identity.nodeRank) of \(topology.hosts.count), \(topology.transport.rawValue)), job \(identity.jobID)")
        if !allowed.isEmpty && allowed.count < online {
            output.print("bound to CPU(s) \(CPUBinding.formatList(allowed))")
        }
        return output
    }

    /// Runs every rank of `worldSize` as a thread of this process over ZeroMQ inproc. A rank whose program throws, and
    /// every rank still running at a SIGTERM, writes its flight record to `dumpFolder`/flight/rank-K.json.
    static func runAsThreads(worldSize: Int, dumpFolder: String, timeoutSeconds: Double,
                             traceBufferSize: Int = Communicator.defaultTraceBufferSize,
                             _ program: @escaping RankProgram) -> Int32 {
        FlightDump.blockSIGTERM()   // first, before any thread starts
        BLAS.prepare()   // before any thread starts (it may set an environment variable)
        FlightDump.takeSIGTERM()
        try? FileManager.default.createDirectory(atPath: dumpFolder + "/logs", withIntermediateDirectories: true)
        let statuses = StatusBox(count: worldSize)
        let errors = InProcessCluster.run(worldSize: worldSize, timeoutSeconds: timeoutSeconds,
                                          traceBufferSize: traceBufferSize) { comm in
            let output = RankOutput(rank: comm.rank, prefixed: true, logPath: "\(dumpFolder)/logs/rank-\(comm.rank).log")
            FlightDump.started(comm, folder: dumpFolder)
            defer { FlightDump.finished(comm) }
            do {
                statuses.set(comm.rank, try program(comm, output))
            } catch {
                output.error("error: \(error)")
                FlightDump.failed(comm, error: error)
                throw error
            }
        }
        for (rank, error) in errors.enumerated() where error != nil {
            statuses.set(rank, 1)
            // A rank that threw said so on its own output; one abandoned while stuck could not.
            if let stuck = error as? InProcessCluster.RankDidNotEnd {
                FileHandle.standardError.write(Data("titan: \(stuck)\n".utf8))
            }
        }
        if let failed = statuses.values.firstIndex(where: { $0 != 0 }) {
            FileHandle.standardError.write(Data("titan: rank \(failed) failed (status \(statuses.values[failed])); logs in \(dumpFolder)/logs\n".utf8))
            return statuses.values[failed]
        }
        return 0
    }

    private final class StatusBox: @unchecked Sendable {
        private let lock = NSLock()
        private(set) var values: [Int32]
        init(count: Int) { values = Array(repeating: 0, count: count) }
        func set(_ i: Int, _ v: Int32) { lock.lock(); values[i] = v; lock.unlock() }
    }
}

/// `--job-secret-file PATH` of the rank programs (train, collectives, bench), for ranks that no launcher started.
enum JobSecretOption {
    static let name = "--job-secret-file"
    static let help = "The job's secret, from which every rank's CURVE keys derive (tcp with transport_security = "
        + "\"curve\"): created 0600 with a fresh secret when absent, refused when others may read it. Give every rank of "
        + "the job the same file (ranks a scheduler starts without titan launch); under titan launch the launcher hands "
        + "each rank the job's secret itself."

    /// Takes `--job-secret-file PATH` (or `--job-secret-file=PATH`) out of `arguments`, before the config overrides are
    /// parsed; the path, or nil.
    static func extract(from arguments: inout [String]) throws -> String? {
        try TrainCommand.take(name, from: &arguments)
    }
}
