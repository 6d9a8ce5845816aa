// The launcher: starts the ranks of one host (or of every local host) as child processes,
// relays their output with a "[rank K] " prefix, writes DUMP/logs/rank-K.log, and supervises
// them: the first rank that fails stops the job, and no child is left behind. With --max-restarts
// it then starts every rank again (the trainer resumes from its latest checkpoint), up to N times;
// launchers of several hosts agree on restarts through a rendezvous folder (Rendezvous.swift).
//
// One thread does everything (poll on the output pipes and a signal self-pipe, then reap with
// WNOHANG), so output is written a whole line at a time and needs no locks.

import CLinux
import Foundation
import Collectives
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum LauncherError: Error, CustomStringConvertible, Equatable {
    case badNode(Int, hostCount: Int)
    case noLocalHost(addresses: [String])
    case system(String, Int32)
    case file(String)

    public var description: String {
        switch self {
        case .badNode(let node, let count):
            return "node \(node) does not exist: the topology has \(count) host(s), nodes 0..<\(count)"
        case .noLocalHost(let addresses):
            return "none of the topology's hosts (\(addresses.joined(separator: ", "))) is this machine; "
                + "pass the node index of this host (--node K)"
        case .system(let call, let code):
            return "\(call) failed: \(String(cString: strerror(code)))"
        case .file(let message):
            return message
        }
    }
}

/// Why a launch failed: the first rank that failed (with its last log lines), an interrupt,
/// a timeout, or a rank that could not be started.
public struct LaunchFailure: Error, CustomStringConvertible, Equatable, Sendable {
    public var rank: Int?
    public var status: RankStatus?
    public var reason: String
    public var logFile: String?
    public var lastLogLines: [String]

    public var description: String {
        var text = reason
        if !lastLogLines.isEmpty {
            text += "\nlast \(lastLogLines.count) line(s) of rank \(rank.map(String.init) ?? "?")"
            text += logFile.map { " (\($0))" } ?? ""
            text += ":\n" + lastLogLines.map { "  | " + $0 }.joined(separator: "\n")
        }
        return text
    }
}

public struct LaunchResult: Sendable {
    public var jobID: String
    /// Global ranks this launcher started, with their process ids and final statuses.
    public var pids: [Int: Int32]
    public var statuses: [Int: RankStatus]
    public var failure: LaunchFailure?
    /// 0 only when every rank exited with 0; else the failed rank's status (128 + signal for a
    /// signal), 128 + signal when interrupted, 124 on timeout, 1 when a rank could not start.
    public var exitStatus: Int32
    /// Stopped by a signal to the launcher (Ctrl-C) or its own timeout: not a failure to restart from.
    public var interrupted = false
    /// Stopped because another host's launcher failed (its ranks, or itself): this host's ranks did not fail.
    public var stoppedForPeer = false
    /// Restarts this launch made.
    public var restarts = 0
    public var succeeded: Bool { exitStatus == 0 }
}

public struct Launcher {
    public var topology: Topology
    /// The host whose ranks to start (torchrun's node rank). nil: every host whose address is
    /// this machine (all hosts for ipc; node 0 when there is only one host).
    public var node: Int?
    /// The rank command, normally the titan binary and a subcommand.
    public var executable: String
    public var arguments: [String]
    public var dumpFolder: String
    /// nil: a fresh id when this launcher starts every host; the topology's name when it starts
    /// only some hosts, so the launchers of the other hosts (run with the same topology) agree.
    public var jobID: String?
    /// Added to the launcher's own environment for every rank (the rank identity wins over it).
    public var extraEnvironment: [String: String]
    /// Where the started ranks run on this machine's CPUs: each rank is spawned bound to its block (`CPUBinding`).
    public var cpuBinding: CPUBindPolicy = .block
    /// Where binding puts several ranks on one CPU, let a computing rank use a CPU whose ranks all wait in collectives
    /// (Sources/Runtime/IdleCPUs.swift).
    public var lendIdleCPUs = true
    /// After the first failure: SIGTERM to the others, SIGKILL after this many seconds.
    public var graceSeconds: Double = 3
    /// Stop the whole job (exit status 124) when it runs longer than this.
    public var timeoutSeconds: Double?
    /// After a failed attempt (a rank failed: an error, a signal, or a hang its peers' collective timeouts found), stop
    /// every rank and start them all again, up to this many times (torchrun's --max-restarts).
    public var maxRestarts = 0
    /// Where the launchers of the hosts started by other launchers (--node) meet (`Rendezvous`); required for their
    /// restarts. nil: this launcher starts every host, or restarts are off.
    public var rendezvousFolder: String?
    /// A host whose launcher has not written to the rendezvous folder for this long is lost.
    public var rendezvousTimeout: Double = 30
    /// When a host is lost, restart on the hosts that are left (the mesh is recomputed: shard degree -1 fills it).
    public var elastic = false
    /// The job secret's file (--job-secret-file; created 0600 when absent), which the ranks' CURVE keys derive from. nil:
    /// a fresh secret when this launcher starts every host; required for CURVE when other launchers start other hosts.
    public var jobSecretFile: String?
    public var tailLineCount = 10
    /// Where the prefixed output goes (rank stdout → stdoutFD, rank stderr and launcher notes → stderrFD).
    public var stdoutFD: Int32 = STDOUT_FILENO
    public var stderrFD: Int32 = STDERR_FILENO

    public init(topology: Topology, node: Int? = nil, executable: String, arguments: [String] = [],
                dumpFolder: String, jobID: String? = nil, extraEnvironment: [String: String] = [:]) {
        self.topology = topology
        self.node = node
        self.executable = executable
        self.arguments = arguments
        self.dumpFolder = dumpFolder
        self.jobID = jobID
        self.extraEnvironment = extraEnvironment
    }

    /// The hosts that run on this machine (this launcher's, and others' started from here with --node), in order.
    func machineHosts() throws -> [Int] {
        let mine = try selectedNodes()
        if topology.transport == .ipc { return Array(topology.hosts.indices) }
        return topology.hosts.indices.filter { mine.contains($0) || isLocalAddress(topology.hosts[$0].address) }
    }

    /// The host indices this launcher starts.
    public func selectedNodes() throws -> [Int] {
        if let node {
            guard topology.hosts.indices.contains(node) else {
                throw LauncherError.badNode(node, hostCount: topology.hosts.count)
            }
            return [node]
        }
        if topology.hosts.count == 1 || topology.transport == .ipc { return Array(topology.hosts.indices) }
        let local = topology.hosts.indices.filter { isLocalAddress(topology.hosts[$0].address) }
        guard !local.isEmpty else { throw LauncherError.noLocalHost(addresses: topology.hosts.map(\.address)) }
        return local
    }

    /// Starts the ranks and supervises them until all have ended, restarting them after a failure up to
    /// `maxRestarts` times. Throws only when nothing could be started (bad node, folders, a restart of several
    /// launchers that cannot agree); rank failures come back in the result (already reported on stderrFD). Installs
    /// SIGINT/SIGTERM/SIGHUP handlers for the duration (the first one is forwarded to the ranks, a second one SIGKILLs
    /// them): one launch at a time per process.
    public func run() throws -> LaunchResult {
        try topology.validate()
        let nodes = try selectedNodes()
        let everyHost = nodes.count == topology.hosts.count
        let jobID = self.jobID ?? Launcher.defaultJobID(topology: topology, everyHost: everyHost)
        let secret = try jobSecret(everyHost: everyHost)
        let dump = URL(fileURLWithPath: dumpFolder).standardizedFileURL.path
        do {
            try FileManager.default.createDirectory(atPath: dump + "/logs", withIntermediateDirectories: true)
        } catch {
            throw LauncherError.file("cannot create the log folder \(dump)/logs: \(error.localizedDescription)")
        }
        // A short path: socket paths must fit in sun_path (~104 bytes).
        let ipcDirectory = "/tmp/titan-" + Launcher.pathSafe(jobID)
        var createdIPCDirectory = false
        // An existing folder belongs to another launcher of the same job (another node on this
        // machine), or is left over from a killed launcher; ZeroMQ replaces stale socket files.
        if mkdir(ipcDirectory, 0o700) == 0 {
            createdIPCDirectory = true
        } else if errno != EEXIST {
            throw LauncherError.system("mkdir \(ipcDirectory)", errno)
        } else {
            try Launcher.checkPrivateFolder(ipcDirectory)
        }
        defer { if createdIPCDirectory { try? FileManager.default.removeItem(atPath: ipcDirectory) } }

        var rendezvous: Rendezvous?
        if !everyHost && (maxRestarts > 0 || elastic) {
            guard let folder = rendezvousFolder, nodes.count == 1 else {
                throw LauncherError.file("restarts of a job whose hosts are started by several launchers (--node) need "
                    + "--rdzv-dir: a folder every launcher sees, where they agree on restarts (and one --node per launcher)")
            }
            rendezvous = try Rendezvous(folder: folder, jobID: jobID, node: nodes[0], timeout: rendezvousTimeout)
        }

        let signals = SignalForwarding()
        defer { signals.restore() }
        var hosts = Array(topology.hosts.indices)   // hosts of the current attempt (fewer after an elastic shrink)
        var attempt = 0
        while true {
            let attemptStart = Date()
            var result = try runAttempt(attempt, hosts: hosts, nodes: nodes.filter(hosts.contains), jobID: jobID, dump: dump,
                                        ipcDirectory: ipcDirectory, rendezvous: rendezvous, signals: signals, secret: secret)
            result.restarts = attempt
            let reason = result.failure?.reason ?? "exit status \(result.exitStatus)"
            if result.succeeded {
                rendezvous?.publish(phase: .done)
                return result
            }
            rendezvous?.publish(phase: result.stoppedForPeer ? .stopped : .failed, reason: reason)
            if result.interrupted { return result }
            // Every host's ranks have stopped (and written their flight records) before they are read.
            let lost = try rendezvous?.awaitStopped(hosts: hosts) ?? []
            if let diagnosis = FlightAnalysis.diagnose(folder: dump, worldSize: hosts.reduce(0) { $0 + topology.hosts[$1].ranks },
                                                       since: attemptStart) {
                note(diagnosis)
            }
            guard attempt < maxRestarts else {
                if maxRestarts > 0 { note("giving up after \(maxRestarts) restart(s); the last failure: \(reason)") }
                return result
            }
            if let rendezvous {
                hosts = try rendezvous.nextAttempt(hosts: hosts, lost: lost, elastic: elastic, log: note)
            }
            attempt += 1
            note("restart \(attempt) of \(maxRestarts) after: \(reason); starting every rank again "
                + "(training resumes from the latest checkpoint in its checkpoint.folder)")
        }
    }

    private func note(_ message: String) {
        writeAll(stderrFD, Array("[launcher] \(message)\n".utf8))
    }

    /// One attempt: starts this launcher's ranks of the `hosts` of the original topology and supervises them.
    func runAttempt(_ attempt: Int, hosts: [Int], nodes: [Int], jobID: String, dump: String, ipcDirectory: String,
                    rendezvous: Rendezvous?, signals: SignalForwarding, secret: JobSecret? = nil) throws -> LaunchResult {
        // The topology of this attempt: every host, or those left after an elastic shrink (renumbered, the shard
        // degree filling the world again).
        var current = topology
        if hosts.count < topology.hosts.count {
            current.hosts = hosts.map { topology.hosts[$0] }
            current.parallelism.data_parallel_shard_degree = -1
            current.sourcePath = nil
        }
        let index = { (host: Int) in hosts.firstIndex(of: host)! }   // original host index → this attempt's
        let ranks = nodes.flatMap { current.globalRanks(ofHost: index($0)) }
        let topologyPath = try topologyPathForRanks(current, dump: dump, attempt: attempt, shared: rendezvous?.folder)
        let baseEnvironment = ProcessInfo.processInfo.environment.merging(extraEnvironment) { $1 }
        try? FileManager.default.removeItem(atPath: dump + "/flight")   // records of this attempt only

        // Blocks are cut over the ranks of every host on this machine, so that the launchers of several hosts
        // sharing it (--node) divide its CPUs between them instead of each starting from the first CPU.
        let allowedCPUs = CPUBinding.allowedCPUs()
        let machineRanks = try machineHosts().filter(hosts.contains).flatMap { current.globalRanks(ofHost: index($0)) }
        let placement = ranks.map { rank in
            CPUBinding.assignment(cpuBinding, index: machineRanks.firstIndex(of: rank)!, count: machineRanks.count,
                                  cpus: allowedCPUs)
        }
        var binding = ""
        // Ranks bound to one CPU each lend their CPU while they all wait (with more ranks than CPUs, while every rank
        // sharing it waits): a board file in the job's IPC folder says who waits. (On one CPU no rank is bound.)
        let board = lendIdleCPUs && machineRanks.count >= allowedCPUs.count ? ipcDirectory + "/cpu-board" : nil
        if placement.contains(where: { $0 != nil }) {
            binding = "; \(machineRanks.count) rank(s) on this machine bound to CPUs \(CPUBinding.formatList(allowedCPUs)) in blocks"
                + (board != nil ? ", idle CPUs lent" : "")
        } else if cpuBinding == .block && allowedCPUs.isEmpty {
            binding = "; ranks unbound: this process's CPU affinity is unknown"
        }

        var supervisor = Supervisor(launcher: self, jobID: jobID, appendLogs: attempt > 0)
        supervisor.note("job \(jobID): starting \(ranks.count) rank(s) of \(current.worldSize) "
            + "(topology \(current.name), node(s) \(nodes.map(String.init).joined(separator: ","))"
            + (attempt > 0 ? ", attempt \(attempt + 1)" : "") + ")\(binding)")
        if let rendezvous {
            supervisor.checkPeers = { rendezvous.peerFailure(hosts: hosts) }
        }

        for (i, rank) in ranks.enumerated() {
            let (host, localRank) = current.location(ofRank: rank)
            let identity = RankIdentity(
                rank: rank, worldSize: current.worldSize, localRank: localRank,
                localWorldSize: current.hosts[host].ranks, nodeRank: host, jobID: jobID,
                topologyPath: topologyPath, localRanks: topologyPath == nil ? current.worldSize : nil,
                ipcDirectory: ipcDirectory, launcherPID: getpid(), dumpFolder: dump, cpus: placement[i], attempt: attempt)
            var environment = baseEnvironment.merging(identity.environment) { $1 }
            environment[JobSecret.environmentVariable] = secret?.hex   // only this user (and root) can read it
            environment[RankEnvironment.cpuBoard] = placement[i]?.count == 1 ? board : nil
            // Rank 0 draws a progress line only when the console it reaches through this launcher is a terminal.
            environment["TITAN_PROGRESS"] = isatty(stdoutFD) != 0 ? "1" : "0"
            if baseEnvironment[RankEnvironment.openBLASThreads] == nil {
                // Ranks on this machine share the CPUs this launcher may use; a kernel thread per CPU each would
                // oversubscribe. A bound rank gets one kernel thread per CPU of its block.
                let cpus = allowedCPUs.isEmpty ? ProcessInfo.processInfo.activeProcessorCount : allowedCPUs.count
                let threads = placement[i]?.count ?? max(1, cpus / machineRanks.count)
                environment[RankEnvironment.openBLASThreads] = String(threads)
            }
            let logPath = "\(dump)/logs/rank-\(rank).log"
            do {
                do {
                    try CPUBinding.withCallingThread(boundTo: placement[i]) {
                        try supervisor.start(rank: rank, environment: environment, logPath: logPath)
                    }
                } catch let error as CPUBindingError {
                    // A sandbox may forbid setting affinity: run unbound rather than not at all (the rank warns too).
                    supervisor.note("rank \(rank) starts unbound: \(error)")
                    try supervisor.start(rank: rank, environment: environment, logPath: logPath)
                }
            } catch {
                supervisor.fail(LaunchFailure(rank: rank, status: nil, reason: "could not start rank \(rank): \(error)",
                                              logFile: nil, lastLogLines: []), exitStatus: 1)
                break
            }
        }
        return supervisor.superviseUntilDone(signals: signals)
    }

    /// What ranks get as TITAN_TOPOLOGY: the file the topology came from; nil (→ empty, plus
    /// TITAN_LOCAL_RANKS) for the derived local topology; otherwise the topology written to
    /// DUMP/topology.toml (after an elastic shrink: `shared`, the rendezvous folder every host sees), so ranks read
    /// exactly what the launcher used.
    func topologyPathForRanks(_ topology: Topology, dump: String, attempt: Int, shared: String?) throws -> String? {
        if let path = topology.sourcePath { return path }
        if topology == Topology.local(ranks: topology.worldSize) { return nil }
        let path = (shared ?? dump) + (attempt > 0 ? "/topology-attempt-\(attempt).toml" : "/topology.toml")
        do {
            try topology.tomlString().write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw LauncherError.file("cannot write \(path): \(error.localizedDescription)")
        }
        return path
    }

    /// The secret the ranks' CURVE keys derive from: the --job-secret-file's, else a fresh one when this launcher starts
    /// every host; nil without CURVE. Warns once when a tcp job runs without CURVE.
    func jobSecret(everyHost: Bool) throws -> JobSecret? {
        let curve = topology.transport == .tcp && topology.transportSecurity == .curve
        if curve && !CurveSupport.isAvailable { throw LauncherError.file(CurveSupport.unavailableMessage) }
        if topology.transport == .tcp && !curve {
            note("warning: transport_security = \"none\": this job's tcp traffic is neither authenticated nor encrypted, "
                + "and anyone who reaches its ports can disturb it; use it on a trusted network only")
        }
        if let jobSecretFile { return try JobSecretFile.loadOrCreate(path: jobSecretFile) }
        guard curve else { return nil }
        guard everyHost else {
            throw LauncherError.file("hosts started by separate launchers (--node) share the job's secret through a file: "
                + "give every launcher the same --job-secret-file PATH (created 0600 with a fresh secret when absent; copy it "
                + "to each host, or use a shared folder), or set transport_security = \"none\" on a trusted network")
        }
        return JobSecret.generate()
    }

    /// Refuses an existing socket folder that is not a directory of this user's that only this user can enter: another
    /// user could otherwise connect to the job's ipc sockets, or swap them for their own.
    static func checkPrivateFolder(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw LauncherError.system("lstat \(path)", errno) }
        let mode = info.st_mode & 0o7777
        if info.st_mode & S_IFMT != S_IFDIR {
            throw LauncherError.file("the job's socket folder \(path) exists and is not a directory (a symbolic link or a "
                + "file); remove it, or pick another --job-id")
        }
        if info.st_uid != geteuid() {
            throw LauncherError.file("the job's socket folder \(path) belongs to uid \(info.st_uid), not to this user (uid "
                + "\(geteuid())): another user could reach the job's sockets; pick another --job-id")
        }
        if mode & 0o077 != 0 {
            throw LauncherError.file("the job's socket folder \(path) has mode \(String(format: "%04o", mode)): other users "
                + "could reach the job's sockets; it must be 0700 (chmod 700 \(path), or remove it)")
        }
    }

    static func defaultJobID(topology: Topology, everyHost: Bool) -> String {
        let name = pathSafe(topology.name)
        guard everyHost else { return name }
        return name + "-" + String(UInt32.random(in: 0 ... UInt32.max), radix: 16)
    }

    /// Letters, digits, '-', '_' and '.', at most 40 characters: safe in a short /tmp path.
    static func pathSafe(_ text: String) -> String {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        let cleaned = String(text.map { allowed.contains($0) ? $0 : "_" }.prefix(40))
        return cleaned.isEmpty || cleaned.allSatisfy({ $0 == "." }) ? "job" : cleaned
    }
}

// MARK: - Signals

/// The self-pipe a signal handler writes the signal number into; poll() watches its read end.
private var signalPipeWriteFD: Int32 = -1

private func forwardSignalHandler(_ signal: Int32) {
    var byte = UInt8(truncatingIfNeeded: signal)
    _ = write(signalPipeWriteFD, &byte, 1)
}

/// Catches SIGINT/SIGTERM/SIGHUP for the launcher's lifetime (to forward them to the ranks, which
/// run in their own process groups and so do not see the terminal's signals) and ignores SIGPIPE
/// (a closed output pipe must not kill the supervisor of live ranks); restores all of them.
final class SignalForwarding {
    let readFD: Int32
    private let writeFD: Int32
    private var previous: [(Int32, (@convention(c) (Int32) -> Void)?)] = []

    init() {
        let ends = (try? makePipe()) ?? (-1, -1)
        readFD = ends.0
        writeFD = ends.1
        if readFD >= 0 {
            setNonBlocking(readFD)
            setNonBlocking(writeFD)
        }
        signalPipeWriteFD = writeFD
        previous.append((SIGINT, signal(SIGINT, forwardSignalHandler)))
        previous.append((SIGTERM, signal(SIGTERM, forwardSignalHandler)))
        previous.append((SIGHUP, signal(SIGHUP, forwardSignalHandler)))
        previous.append((SIGPIPE, signal(SIGPIPE, SIG_IGN)))
    }

    /// Signals received since the last call.
    func drain() -> [Int32] {
        var received: [Int32] = []
        var buffer = [UInt8](repeating: 0, count: 64)
        while readFD >= 0 {
            let count = read(readFD, &buffer, buffer.count)
            guard count > 0 else { break }
            received += buffer[..<count].map { Int32($0) }
        }
        return received
    }

    func restore() {
        for (number, handler) in previous { signal(number, handler) }
        signalPipeWriteFD = -1
        if readFD >= 0 {
            close(readFD)
            close(writeFD)
        }
    }
}

// MARK: - Supervision

/// One output stream of a rank (its stdout or its stderr pipe).
private final class OutputPipe {
    var fd: Int32
    let destination: Int32
    var pending: [UInt8] = []

    init(fd: Int32, destination: Int32) {
        self.fd = fd
        self.destination = destination
    }
}

private final class ProgressLine {
    var line: [UInt8]?
}

private final class RankProcess {
    let rank: Int
    let pid: pid_t
    let logFD: Int32
    let logPath: String
    let streams: [OutputPipe]
    var status: RankStatus?
    var tail: [String] = []

    init(rank: Int, pid: pid_t, logFD: Int32, logPath: String, streams: [OutputPipe]) {
        self.rank = rank
        self.pid = pid
        self.logFD = logFD
        self.logPath = logPath
        self.streams = streams
    }
}

private struct Supervisor {
    let launcher: Launcher
    let jobID: String
    /// A restart: the rank logs go on after the earlier attempts' lines.
    let appendLogs: Bool
    var processes: [RankProcess] = []
    /// The progress line on the terminal (prefixed), redrawn below every other line.
    let progress = ProgressLine()
    var failure: LaunchFailure?
    var exitStatus: Int32 = 0
    /// The failure came from outside the ranks: a signal to the launcher or its timeout.
    var interrupted = false
    /// The failure was another host's (`checkPeers`).
    var stoppedForPeer = false
    let started = Date()
    /// Set once the job is being stopped: when the survivors get SIGKILL.
    var killDeadline: Date?
    var killed = false
    /// Asked a few times a second: why the ranks must stop although none of them failed (another host's did).
    var checkPeers: (() -> String?)?
    private var lastPeerCheck = Date.distantPast

    init(launcher: Launcher, jobID: String, appendLogs: Bool) {
        self.launcher = launcher
        self.jobID = jobID
        self.appendLogs = appendLogs
    }

    func note(_ message: String) {
        writeAll(launcher.stderrFD, Array("[launcher] \(message)\n".utf8))
    }

    mutating func start(rank: Int, environment: [String: String], logPath: String) throws {
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_CLOEXEC | (appendLogs ? O_APPEND : O_TRUNC), 0o644)
        guard logFD >= 0 else { throw LauncherError.system("open \(logPath)", errno) }
        if appendLogs { writeAll(logFD, Array("---- restarted (launcher) ----\n".utf8)) }
        let out: (read: Int32, write: Int32), err: (read: Int32, write: Int32)
        do {
            out = try makePipe()
            err = try makePipe()
        } catch {
            close(logFD)
            throw error
        }
        defer {
            // The child holds its own copies; the launcher keeps only the read ends.
            close(out.write)
            close(err.write)
        }
        let pid: pid_t
        do {
            pid = try spawnProcess(executable: launcher.executable, arguments: launcher.arguments,
                                   environment: environment, stdoutFD: out.write, stderrFD: err.write)
        } catch {
            close(out.read)
            close(err.read)
            close(logFD)
            throw error
        }
        setNonBlocking(out.read)
        setNonBlocking(err.read)
        processes.append(RankProcess(rank: rank, pid: pid, logFD: logFD, logPath: logPath, streams: [
            OutputPipe(fd: out.read, destination: launcher.stdoutFD),
            OutputPipe(fd: err.read, destination: launcher.stderrFD),
        ]))
    }

    /// Records the first failure and starts stopping the job: SIGTERM now, SIGKILL after the grace.
    mutating func fail(_ failure: LaunchFailure, exitStatus: Int32, signal: Int32 = SIGTERM) {
        guard self.failure == nil else { return }
        self.failure = failure
        self.exitStatus = exitStatus
        let running = processes.filter { $0.status == nil }
        if !running.isEmpty {
            note("\(failure.reason); stopping \(running.count) other rank(s)")
        }
        signalRunning(signal)
        killDeadline = Date().addingTimeInterval(launcher.graceSeconds)
    }

    /// Signals the process group of every rank still running (the rank and anything it started). A stopped rank
    /// (SIGSTOP) is continued after a SIGTERM, so that it ends now rather than at the SIGKILL.
    func signalRunning(_ signal: Int32) {
        for process in processes where process.status == nil {
            kill(-process.pid, signal)
            if signal == SIGTERM { kill(-process.pid, SIGCONT) }
        }
    }

    mutating func superviseUntilDone(signals: SignalForwarding) -> LaunchResult {
        var reapDeadline: Date?
        while processes.contains(where: { $0.status == nil }) {
            pumpOutput(timeoutMilliseconds: 50, signalFD: signals.readFD)

            for signal in signals.drain() {
                if failure == nil {
                    interrupted = true
                    fail(LaunchFailure(rank: nil, status: nil, reason: "interrupted by \(signalName(signal))",
                                       logFile: nil, lastLogLines: []),
                         exitStatus: 128 + signal, signal: signal)
                } else {
                    // A second Ctrl-C: the user does not want to wait for the grace period.
                    killDeadline = Date()
                }
            }

            reap()

            if failure == nil, let limit = launcher.timeoutSeconds, Date().timeIntervalSince(started) > limit {
                interrupted = true
                fail(LaunchFailure(rank: nil, status: nil, reason: "job exceeded its timeout of \(limit) s",
                                   logFile: nil, lastLogLines: []), exitStatus: 124)
            }
            if failure == nil, let checkPeers, Date().timeIntervalSince(lastPeerCheck) > 0.25 {
                lastPeerCheck = Date()
                if let reason = checkPeers() {
                    stoppedForPeer = true
                    fail(LaunchFailure(rank: nil, status: nil, reason: reason, logFile: nil, lastLogLines: []), exitStatus: 1)
                }
            }
            if !killed, let deadline = killDeadline, Date() >= deadline {
                let survivors = processes.filter { $0.status == nil }.map { String($0.rank) }
                if !survivors.isEmpty {
                    note("rank(s) \(survivors.joined(separator: ", ")) still running after "
                        + "\(launcher.graceSeconds) s; sending SIGKILL")
                }
                signalRunning(SIGKILL)
                killed = true
                reapDeadline = Date().addingTimeInterval(5)
            }
            if let deadline = reapDeadline, Date() >= deadline {
                // SIGKILL cannot be ignored; a process that still has not ended is stuck in the
                // kernel. Give up on it rather than hang the launcher.
                for process in processes where process.status == nil {
                    note("rank \(process.rank) (pid \(process.pid)) did not end after SIGKILL")
                    process.status = .unknown
                }
            }
        }

        // Every rank has ended (what each left in its process group was killed as it was reaped, see `reap`): read
        // the output that is still in the pipes.
        let drainDeadline = Date().addingTimeInterval(2)
        while processes.contains(where: { $0.streams.contains { $0.fd >= 0 } }), Date() < drainDeadline {
            pumpOutput(timeoutMilliseconds: 50, signalFD: -1)
        }
        for process in processes {
            for stream in process.streams where stream.fd >= 0 { closeStream(stream, of: process) }
            close(process.logFD)
        }

        if var failure, let rank = failure.rank, let process = processes.first(where: { $0.rank == rank }) {
            failure.lastLogLines = process.tail
            failure.logFile = process.logPath
            self.failure = failure
        }
        if let failure {
            note("job \(jobID) failed: \(failure)")
        }
        return LaunchResult(
            jobID: jobID,
            pids: Dictionary(uniqueKeysWithValues: processes.map { ($0.rank, $0.pid) }),
            statuses: Dictionary(uniqueKeysWithValues: processes.map { ($0.rank, $0.status ?? .unknown) }),
            failure: failure, exitStatus: exitStatus, interrupted: interrupted, stoppedForPeer: stoppedForPeer)
    }

    /// Collects the status of every rank that has ended; the first failure stops the job.
    mutating func reap() {
        for process in processes where process.status == nil {
            // Seen ended but not yet reaped, the rank still holds its pid and process group id: kill whatever it left
            // in its group now, when that group cannot be another's (after reaping, the id may be reused).
            let state = titan_child_ended(process.pid)
            if state == 0 { continue }
            if state == 1 { kill(-process.pid, SIGKILL) }
            var status: Int32 = 0
            let result = waitpid(process.pid, &status, WNOHANG)
            if result == process.pid {
                process.status = RankStatus(waitStatus: status)
            } else if result < 0 && errno == ECHILD {
                process.status = .unknown  // someone else reaped it (e.g. SIGCHLD set to SIG_IGN)
            } else {
                continue
            }
            let ended = process.status!
            if !ended.succeeded && failure == nil {
                fail(LaunchFailure(rank: process.rank, status: ended,
                                   reason: "rank \(process.rank) (pid \(process.pid)) failed: \(ended)",
                                   logFile: process.logPath, lastLogLines: []),
                     exitStatus: ended.shellStatus)
            }
        }
    }

    /// Waits up to `timeoutMilliseconds` for output (or a signal) and relays what arrived.
    func pumpOutput(timeoutMilliseconds: Int32, signalFD: Int32) {
        var watched: [(RankProcess, OutputPipe)] = []
        var fds: [pollfd] = []
        for process in processes {
            for stream in process.streams where stream.fd >= 0 {
                watched.append((process, stream))
                fds.append(pollfd(fd: stream.fd, events: Int16(POLLIN), revents: 0))
            }
        }
        if signalFD >= 0 { fds.append(pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)) }
        guard !fds.isEmpty else {
            usleep(UInt32(timeoutMilliseconds) * 1000)  // nothing to watch: still pace the caller's loop
            return
        }
        guard poll(&fds, nfds_t(fds.count), timeoutMilliseconds) > 0 else { return }

        var buffer = [UInt8](repeating: 0, count: 65536)
        for (index, (process, stream)) in watched.enumerated() where fds[index].revents != 0 {
            let count = read(stream.fd, &buffer, buffer.count)
            if count > 0 {
                stream.pending += buffer[..<count]
                emitCompleteLines(stream, of: process)
            } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
                closeStream(stream, of: process)  // end of file: every writer has exited
            }
        }
    }

    func emitCompleteLines(_ stream: OutputPipe, of process: RankProcess) {
        var start = 0
        while let newline = stream.pending[start...].firstIndex(of: UInt8(ascii: "\n")) {
            emit(Array(stream.pending[start ..< newline]), of: process, to: stream.destination)
            start = newline + 1
        }
        stream.pending.removeFirst(start)
        // A rank printing an endless line must not grow the buffer without bound.
        if stream.pending.count > 65536 {
            emit(stream.pending, of: process, to: stream.destination)
            stream.pending = []
        }
    }

    func closeStream(_ stream: OutputPipe, of process: RankProcess) {
        if !stream.pending.isEmpty {
            emit(stream.pending, of: process, to: stream.destination)  // last line without "\n"
            stream.pending = []
        }
        close(stream.fd)
        stream.fd = -1
    }

    /// One line: to the log file as is, to the terminal with the rank prefix, each in a single
    /// write so lines of different ranks never interleave.
    func emit(_ line: [UInt8], of process: RankProcess, to destination: Int32) {
        let clear = Array("\r\u{1B}[K".utf8)
        if line.first == UInt8(ascii: "\r") {
            // A progress line (the trainer's `progressLinePrefix`): redrawn in place on the terminal, never logged;
            // an empty one removes it.
            progress.line = line.count > 1 ? Array("[rank \(process.rank)] ".utf8) + line.dropFirst() : nil
            writeAll(destination, clear + (progress.line ?? []))
            return
        }
        writeAll(process.logFD, line + [UInt8(ascii: "\n")])
        let prefixed = Array("[rank \(process.rank)] ".utf8) + line + [UInt8(ascii: "\n")]
        if let progressLine = progress.line {   // the line goes above the progress line, which is drawn again below it
            writeAll(destination, clear + prefixed)
            writeAll(launcher.stdoutFD, progressLine)
        } else {
            writeAll(destination, prefixed)
        }
        process.tail.append(String(decoding: line, as: UTF8.self))
        if process.tail.count > launcher.tailLineCount { process.tail.removeFirst() }
    }
}
