// How a rank process learns who it is: the launcher sets these environment variables
// (torchrun's names where torchrun has one), the rank reads them with RankIdentity.fromEnvironment(). A rank that a
// cluster scheduler started instead (Slurm, MPI, torchrun) gets the same identity from that scheduler's variables
// (SchedulerEnvironment.swift).

import Foundation
import Collectives
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Names of the environment variables of the launcher → rank contract.
public enum RankEnvironment {
    public static let rank = "RANK"
    public static let worldSize = "WORLD_SIZE"
    public static let localRank = "LOCAL_RANK"
    public static let localWorldSize = "LOCAL_WORLD_SIZE"
    public static let nodeRank = "NODE_RANK"
    public static let jobID = "TITAN_JOB_ID"
    /// Absolute path of the topology file; empty when the topology is the derived local one.
    public static let topology = "TITAN_TOPOLOGY"
    /// Rank count of the derived local topology (set when TITAN_TOPOLOGY is empty).
    public static let localRanks = "TITAN_LOCAL_RANKS"
    public static let ipcDirectory = "TITAN_IPC_DIR"
    public static let launcherPID = "TITAN_LAUNCHER_PID"
    public static let dumpFolder = "TITAN_DUMP_FOLDER"
    /// The CPUs the launcher placed the rank on (kernel cpu-list syntax, e.g. "0" or "2-3"); a rank started by hand
    /// binds itself to them. Unset: unbound.
    public static let cpus = "TITAN_CPUS"
    public static let openBLASThreads = "OPENBLAS_NUM_THREADS"
    /// The board file of idle-CPU lending (Sources/Runtime/IdleCPUs.swift): set by the launcher for ranks it binds to a
    /// CPU they share with other ranks, unless lending is off.
    public static let cpuBoard = "TITAN_CPU_BOARD"
    /// How many times the launcher has restarted the job (torchrun's TORCHELASTIC_RESTART_COUNT); 0 on the first
    /// attempt.
    public static let restartCount = "TITAN_RESTART_COUNT"

    /// Whether `env` is our launcher's: RANK with the TITAN_* variables that only the launcher sets (a torchrun-style
    /// environment has RANK and WORLD_SIZE too, without them).
    public static func isLauncher(_ env: [String: String]) -> Bool {
        env[rank] != nil && (env[jobID] != nil || env[topology] != nil || env[ipcDirectory] != nil)
    }
}

public struct RankIdentity: Sendable, Equatable {
    public var rank: Int
    public var worldSize: Int
    /// Rank within its host, and the number of ranks on that host.
    public var localRank: Int
    public var localWorldSize: Int
    /// Index of the host (in the topology's `hosts`) this rank runs on.
    public var nodeRank: Int
    public var jobID: String
    /// Absolute path of the topology file; nil for the derived local topology of `localRanks`.
    public var topologyPath: String?
    public var localRanks: Int?
    public var ipcDirectory: String
    public var launcherPID: Int32?
    public var dumpFolder: String?
    /// The CPUs the launcher placed this rank on (`CPUBindPolicy`); nil: unbound.
    public var cpus: [Int]?
    /// Restarts before this attempt (0: the first).
    public var attempt: Int
    /// The topology derived from a scheduler's environment (no file); nil under our launcher.
    public var topology: Topology?
    /// The scheduler that started this rank; nil: our launcher.
    public var scheduler: SchedulerKind?

    public init(rank: Int, worldSize: Int, localRank: Int, localWorldSize: Int, nodeRank: Int,
                jobID: String, topologyPath: String?, localRanks: Int?, ipcDirectory: String,
                launcherPID: Int32?, dumpFolder: String?, cpus: [Int]? = nil, attempt: Int = 0,
                topology: Topology? = nil, scheduler: SchedulerKind? = nil) {
        self.rank = rank
        self.worldSize = worldSize
        self.localRank = localRank
        self.localWorldSize = localWorldSize
        self.nodeRank = nodeRank
        self.jobID = jobID
        self.topologyPath = topologyPath
        self.localRanks = localRanks
        self.ipcDirectory = ipcDirectory
        self.launcherPID = launcherPID
        self.dumpFolder = dumpFolder
        self.cpus = cpus
        self.attempt = attempt
        self.topology = topology
        self.scheduler = scheduler
    }

    /// The variables the launcher sets for this rank (OPENBLAS_NUM_THREADS is the launcher's).
    public var environment: [String: String] {
        typealias E = RankEnvironment
        var env = [
            E.rank: String(rank), E.worldSize: String(worldSize),
            E.localRank: String(localRank), E.localWorldSize: String(localWorldSize),
            E.nodeRank: String(nodeRank), E.jobID: jobID,
            E.topology: topologyPath ?? "", E.ipcDirectory: ipcDirectory,
        ]
        if topologyPath == nil, let localRanks { env[E.localRanks] = String(localRanks) }
        if let launcherPID { env[E.launcherPID] = String(launcherPID) }
        if let dumpFolder { env[E.dumpFolder] = dumpFolder }
        if let cpus { env[E.cpus] = CPUBinding.formatList(cpus) }
        env[E.restartCount] = String(attempt)
        return env
    }

    /// The identity the launcher gave this process; nil when the environment is not the launcher's (no RANK, or RANK
    /// without the launcher's TITAN_* variables: see `SchedulerEnvironment` for those). Throws, naming the variable,
    /// when a variable is missing or malformed.
    public static func fromEnvironment(
        _ env: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> RankIdentity? {
        typealias E = RankEnvironment
        guard E.isLauncher(env) else { return nil }

        func text(_ name: String) throws -> String {
            guard let value = env[name], !value.isEmpty else {
                throw RankIdentityError(variable: name, value: env[name],
                                        reason: "is required when RANK is set (the launcher sets it)")
            }
            return value
        }
        func number(_ name: String, atLeast minimum: Int) throws -> Int {
            let value = try text(name)
            guard let parsed = Int(value.trimmingCharacters(in: .whitespaces)), parsed >= minimum else {
                throw RankIdentityError(variable: name, value: value,
                                        reason: "must be an integer >= \(minimum)")
            }
            return parsed
        }

        let rank = try number(E.rank, atLeast: 0)
        let worldSize = try number(E.worldSize, atLeast: 1)
        guard rank < worldSize else {
            throw RankIdentityError(variable: E.rank, value: env[E.rank],
                                    reason: "must be less than WORLD_SIZE (\(worldSize))")
        }
        let localRank = try number(E.localRank, atLeast: 0)
        let localWorldSize = try number(E.localWorldSize, atLeast: 1)
        guard localRank < localWorldSize else {
            throw RankIdentityError(variable: E.localRank, value: env[E.localRank],
                                    reason: "must be less than LOCAL_WORLD_SIZE (\(localWorldSize))")
        }
        guard localWorldSize <= worldSize else {
            throw RankIdentityError(variable: E.localWorldSize, value: env[E.localWorldSize],
                                    reason: "must not exceed WORLD_SIZE (\(worldSize))")
        }
        let nodeRank = try number(E.nodeRank, atLeast: 0)
        let jobID = try text(E.jobID)
        let ipcDirectory = try text(E.ipcDirectory)

        guard let topologyValue = env[E.topology] else {
            throw RankIdentityError(variable: E.topology, value: nil,
                                    reason: "is required: the topology file's path, or empty for a local topology")
        }
        var topologyPath: String?
        var localRanks: Int?
        if topologyValue.isEmpty {
            localRanks = try number(E.localRanks, atLeast: 1)
            guard localRanks == worldSize else {
                throw RankIdentityError(variable: E.localRanks, value: env[E.localRanks],
                                        reason: "must equal WORLD_SIZE (\(worldSize)) for a local topology")
            }
        } else {
            guard topologyValue.hasPrefix("/") else {
                throw RankIdentityError(variable: E.topology, value: topologyValue,
                                        reason: "must be an absolute path (or empty for a local topology)")
            }
            topologyPath = topologyValue
        }

        var launcherPID: Int32?
        if let value = env[E.launcherPID], !value.isEmpty {
            guard let pid = Int32(value), pid > 0 else {
                throw RankIdentityError(variable: E.launcherPID, value: value, reason: "must be a process id > 0")
            }
            launcherPID = pid
        }
        let dumpFolder = env[E.dumpFolder].flatMap { $0.isEmpty ? nil : $0 }
        var cpus: [Int]?
        if let value = env[E.cpus], !value.isEmpty {
            guard let list = CPUBinding.parseList(value) else {
                throw RankIdentityError(variable: E.cpus, value: value, reason: "must be a CPU list such as 0 or 0,2-3")
            }
            cpus = list
        }
        var attempt = 0
        if let value = env[E.restartCount], !value.isEmpty {
            guard let n = Int(value), n >= 0 else {
                throw RankIdentityError(variable: E.restartCount, value: value, reason: "must be an integer >= 0")
            }
            attempt = n
        }

        return RankIdentity(rank: rank, worldSize: worldSize, localRank: localRank,
                            localWorldSize: localWorldSize, nodeRank: nodeRank, jobID: jobID,
                            topologyPath: topologyPath, localRanks: localRanks,
                            ipcDirectory: ipcDirectory, launcherPID: launcherPID, dumpFolder: dumpFolder, cpus: cpus,
                            attempt: attempt)
    }

    /// The topology the launcher used (the file, or the derived local topology), or the scheduler's.
    public func loadTopology() throws -> Topology {
        if let topology { return topology }
        let topology = try topologyPath.map { try Topology.load(path: $0) }
            ?? Topology.local(ranks: localRanks ?? worldSize)
        guard topology.worldSize == worldSize else {
            throw RankIdentityError(variable: RankEnvironment.worldSize, value: String(worldSize),
                                    reason: "does not match the topology's world size \(topology.worldSize)")
        }
        return topology
    }

    /// The transport's view of this job.
    public func clusterSpec(timeoutSeconds: Double) throws -> ClusterSpec {
        try loadTopology().clusterSpec(jobID: jobID, ipcDirectory: ipcDirectory, timeoutSeconds: timeoutSeconds)
    }

    /// Creates the folder of the ipc sockets when this rank is the first of its host to need it (a scheduler's ranks;
    /// the launcher makes it for its own): 0700 in /tmp, and an existing one must be this user's and 0700, as the
    /// launcher requires of its own.
    public func prepareIPCDirectory() throws {
        if mkdir(ipcDirectory, 0o700) != 0 && errno != EEXIST {
            throw LauncherError.file("cannot create the ipc socket folder \(ipcDirectory): \(String(cString: strerror(errno)))")
        }
        try Launcher.checkPrivateFolder(ipcDirectory)
    }

    /// After the communicator shut down: removes this rank's ipc socket files, and the folder when it is the last of
    /// its host to end (a scheduler's ranks; the launcher removes its own folder).
    public func removeIPCSockets() {
        guard let spec = try? clusterSpec(timeoutSeconds: 1), spec.transport == .ipc else { return }
        for slot in 0..<ClusterSpec.maxGroupsPerRank {
            unlink(String(spec.bindAddress(rank: rank, groupSlot: slot).dropFirst("ipc://".count)))
        }
        rmdir(ipcDirectory)
    }

    /// Binds this process's calling thread, and the threads it starts afterwards, to `cpus` (no-op when unbound).
    /// Call it first thing, before any thread is started.
    public func bindToCPUs() throws {
        if let cpus { try CPUBinding.bindCallingThread(to: cpus) }
    }

    /// Starts the watchdog for this rank when a launcher started it (see `ParentWatchdog`).
    public func startParentWatchdog(pollInterval: Double = 0.25) {
        guard let launcherPID else { return }
        ParentWatchdog.start(launcherPID: launcherPID, rank: rank, pollInterval: pollInterval)
    }
}

public struct RankIdentityError: Error, CustomStringConvertible, Equatable {
    public var variable: String
    public var value: String?
    public var reason: String

    public var description: String {
        let shown = value.map { " (got \"\($0)\")" } ?? " (not set)"
        return "environment variable \(variable) \(reason)\(shown)"
    }
}

/// Ends a rank whose launcher is gone, so no rank outlives its job even when the launcher is
/// SIGKILLed (and so cannot stop its ranks). A background thread polls: the parent process
/// changed (we were re-parented to init or a subreaper), or the launcher's pid no longer exists
/// (covers ranks started through an intermediate shell, whose parent is not the launcher).
public enum ParentWatchdog {
    public static func start(launcherPID: Int32, rank: Int, pollInterval: Double = 0.25) {
        let originalParent = getppid()
        let thread = Thread {
            while true {
                let parentChanged = getppid() != originalParent
                let launcherGone = kill(launcherPID, 0) != 0 && errno == ESRCH
                if parentChanged || launcherGone {
                    let message = "[rank \(rank)] launcher (pid \(launcherPID)) is gone; exiting\n"
                    message.withCString { _ = write(STDERR_FILENO, $0, strlen($0)) }
                    // _exit: no atexit handlers or stdio flushing that could block on a dead pipe.
                    _exit(1)
                }
                Thread.sleep(forTimeInterval: pollInterval)
            }
        }
        thread.name = "titan-parent-watchdog"
        thread.start()
    }
}
